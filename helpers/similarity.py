"""Uses of the learned vectors: similar items or users, top-N recommendations, a new user.

Everything here works on any object with the model protocol of the series (``user_factors``
U, ``item_factors`` V, ``user_bias``, ``item_bias``, ``global_bias`` μ, ``n_users``,
``n_items``, ``reg``, ``weighting``), so it serves ``MatrixFactorization``, ``ALS`` and the
implicit model alike. A model's score for user u and item i is

    s_ui = μ + b_u + b_i + u_uᵀ v_i

(μ = b = 0 for a model without biases). A user or item the model never saw in training keeps
its bias at 0 and contributes no factor term, exactly as in ``model.predict`` (read from the
model's boolean ``user_seen`` and ``item_seen`` masks when it has them).

Scores are computed for a batch of rows at a time, so memory grows with
``batch_size × n_items``, never with ``n_items²`` or ``n_users × n_items``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import tensorflow as tf

from helpers import data, linalg

METRICS = ("cosine", "dot")


class _Parts(NamedTuple):
    """The model's parameters as float32 NumPy arrays, with never-seen entities zeroed."""

    user_factors: np.ndarray
    item_factors: np.ndarray
    user_bias: np.ndarray
    item_bias: np.ndarray
    global_bias: float


# --------------------------------------------------------------------------------------------
# Similar items (or users)
# --------------------------------------------------------------------------------------------


def most_similar(
    vectors,
    query,
    k: int = 10,
    metric: str = "cosine",
    exclude_query: bool = True,
    candidates=None,
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """The k rows of ``vectors`` most similar to each query row.

    Pass V (``model.item_factors``) for similar items, U for similar users.

    Args:
        vectors: float ``(n, k_factors)``.
        query: an int row index, or int ``(q,)`` row indices.
        k: how many neighbours per query, 1 ≤ k ≤ n (n − 1 with ``exclude_query``).
        metric: ``"cosine"`` (angle only; a zero vector has similarity 0 to everything) or
            ``"dot"`` (also grows with the vectors' lengths, which favours popular items).
        exclude_query: leave each query row out of its own neighbours.
        candidates: bool ``(n,)``, the rows allowed as neighbours (e.g. ``model.item_seen``,
            or items with enough ratings, whose vectors are better estimated); None allows
            all.
        batch_size: queries scored at once; memory grows with ``batch_size × n``.

    Returns:
        ``(indices, scores)``: int32 and float32, shape ``(k,)`` for an int query and
        ``(q, k)`` for an array, best first; ties go to the lower index.
    """
    vectors = _check_vectors(vectors)
    single = np.ndim(query) == 0
    queries = _check_indices(query, len(vectors), "query")
    if metric not in METRICS:
        raise ValueError(f"metric: expected 'cosine' or 'dot', got {metric!r}")
    allowed = _check_candidates(candidates, len(vectors))
    # The query only takes a place from the others when it is itself a candidate.
    available = int(allowed.sum()) - int(exclude_query and allowed[queries].any())
    k = _check_k(k, available, "candidate rows" + (" besides the query" * exclude_query))
    batch_size = _check_batch_size(batch_size)

    if metric == "cosine":
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    indices, scores = [], []
    for start in range(0, len(queries), batch_size):
        batch = queries[start : start + batch_size]
        block = vectors[batch] @ vectors.T
        block[:, ~allowed] = -np.inf
        if exclude_query:
            block[np.arange(len(batch)), batch] = -np.inf
        top = tf.math.top_k(block, k=k)
        indices.append(top.indices.numpy())
        scores.append(top.values.numpy())
    return _finish(indices, scores, k, single)


def pca_2d(vectors) -> tuple[np.ndarray, np.ndarray]:
    """Project row vectors onto their first two principal components, computed in TensorFlow.

    The rows are centred, the k × k covariance matrix is diagonalized with ``tf.linalg.eigh``
    (cost grows with n k², never n²), and the rows are projected onto the two leading
    eigenvectors. Each component's sign is fixed so that its largest-magnitude loading is
    positive, which makes the map reproducible.

    Args:
        vectors: float ``(n, k)`` with n ≥ 2 and k ≥ 2, e.g. ``model.item_factors``.

    Returns:
        ``(coords, explained)``: float32 ``(n, 2)`` coordinates and float64 ``(2,)``, the
        fraction of the total variance each component explains.
    """
    vectors = _check_vectors(vectors)
    if vectors.shape[0] < 2 or vectors.shape[1] < 2:
        raise ValueError(f"vectors: need at least 2 rows and 2 columns, got {vectors.shape}")
    x = tf.constant(vectors, dtype=tf.float64)
    centred = x - tf.reduce_mean(x, axis=0, keepdims=True)
    covariance = tf.matmul(centred, centred, transpose_a=True) / (vectors.shape[0] - 1)
    eigenvalues, eigenvectors = tf.linalg.eigh(covariance)  # ascending order
    leading = tf.reverse(eigenvectors[:, -2:], axis=[1])
    largest = tf.gather(
        tf.transpose(leading), tf.argmax(tf.abs(leading), axis=0), axis=1, batch_dims=1
    )
    leading = leading * tf.sign(largest)[None, :]
    coords = tf.matmul(centred, leading)
    variances = tf.maximum(eigenvalues, 0.0)
    total = tf.reduce_sum(variances)
    explained = tf.reverse(variances[-2:], axis=[0]) / tf.maximum(total, 1e-300)
    return coords.numpy().astype(np.float32), explained.numpy()


# --------------------------------------------------------------------------------------------
# Recommendation for known users
# --------------------------------------------------------------------------------------------


def recommend(
    model,
    users,
    k: int = 10,
    exclude: data.Ratings | None = None,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items for each user, by the model's score, leaving out the items in ``exclude``.

    Args:
        model: an object with the model protocol, or a float ``(n_items,)`` array of item
            scores used for every user (a baseline such as ``metrics.popularity_scores``).
        users: an int user index, or int ``(n,)`` user indices.
        k: list length; at most the number of items left to each user after exclusion.
        exclude: ratings whose (user, item) pairs must not be recommended, usually the
            training ratings (items the user has already seen); ``None`` excludes nothing.
        batch_size: users scored at once; memory grows with ``batch_size × n_items``.

    Returns:
        ``(indices, scores)``: int32 and float32, shape ``(k,)`` for an int user and
        ``(n, k)`` for an array, best first; ties go to the lower item index.
    """
    scorer, n_users, n_items = _scorer(model)
    single = np.ndim(users) == 0
    if n_users is None and exclude is not None:
        n_users = exclude.n_users
    users = _check_indices(users, n_users, "users")
    batch_size = _check_batch_size(batch_size)
    seen = _Seen(exclude, n_users, n_items)
    k = _check_k(k, n_items, "items in the catalogue")
    seen.check_room(users, k)

    indices, scores = [], []
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        block = scorer(batch)
        rows, columns = seen.pairs(batch)
        block[rows, columns] = -np.inf
        top = tf.math.top_k(block, k=k)
        indices.append(top.indices.numpy())
        scores.append(top.values.numpy())
    return _finish(indices, scores, k, single)


def _scorer(model):
    """A function users ``(b,)`` → scores float32 ``(b, n_items)``, plus n_users and n_items."""
    if isinstance(model, (np.ndarray, list, tuple, tf.Tensor)):
        item_scores = np.asarray(model, dtype=np.float32)
        if item_scores.ndim != 1 or not np.isfinite(item_scores).all():
            raise ValueError(
                "model: an array of item scores must be finite with shape (n_items,), "
                f"got shape {item_scores.shape}"
            )
        return (
            lambda batch: np.repeat(item_scores[None, :], len(batch), axis=0),
            None,
            len(item_scores),
        )
    parts = _parts(model)

    def score(batch: np.ndarray) -> np.ndarray:
        block = parts.user_factors[batch] @ parts.item_factors.T
        block += parts.item_bias[None, :]
        block += (parts.global_bias + parts.user_bias[batch])[:, None]
        return block

    return score, len(parts.user_factors), len(parts.item_factors)


class _Seen:
    """Excluded (user, item) pairs grouped by user, like a CSR matrix: cost grows with |Ω|."""

    def __init__(self, exclude: data.Ratings | None, n_users: int | None, n_items: int):
        self.n_items = n_items
        if exclude is None:
            self.indptr = None
            return
        if not isinstance(exclude, data.Ratings):
            raise TypeError(f"exclude: expected data.Ratings or None, got {type(exclude)}")
        if exclude.n_items != n_items or (n_users is not None and exclude.n_users != n_users):
            raise ValueError(
                f"exclude: has shape ({exclude.n_users}, {exclude.n_items}), the model "
                f"({n_users}, {n_items}); encode both with the same id maps"
            )
        order = np.argsort(exclude.users, kind="stable")
        self.items = exclude.items[order].astype(np.int64)
        counts = np.bincount(exclude.users, minlength=exclude.n_users)
        self.indptr = np.concatenate([[0], np.cumsum(counts)])

    def counts(self, users: np.ndarray) -> np.ndarray:
        """Number of distinct excluded items per user."""
        if self.indptr is None:
            return np.zeros(len(users), dtype=np.int64)
        rows, columns = self.pairs(users)
        return np.array([len(np.unique(columns[rows == r])) for r in range(len(users))])

    def check_room(self, users: np.ndarray, k: int) -> None:
        if self.indptr is None:
            return
        naive = self.indptr[users + 1] - self.indptr[users]
        suspect = np.flatnonzero(self.n_items - naive < k)  # repeats only add room
        if not len(suspect):
            return
        left = self.n_items - self.counts(users[suspect])
        short = suspect[left < k]
        if len(short):
            user = int(users[short[0]])
            raise ValueError(
                f"k: user {user} has only {int(left[left < k][0])} items left after excluding "
                f"the items they rated, fewer than k={k}"
            )

    def pairs(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in ``users``, item) of every excluded pair of these users."""
        if self.indptr is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        starts, ends = self.indptr[users], self.indptr[users + 1]
        counts = ends - starts
        rows = np.repeat(np.arange(len(users)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return rows, self.items[np.repeat(starts, counts) + offsets]


# --------------------------------------------------------------------------------------------
# A new user: fold-in, recommendations, explanations
# --------------------------------------------------------------------------------------------


def fold_in_user(model, items, ratings, reg: float | None = None) -> tuple[np.ndarray, float]:
    """A new user's vector u (and bias b_u) from a few ratings, with the model's V fixed.

    Solves the model's own objective restricted to one user (a ridge regression, via
    :func:`helpers.linalg.fold_in`) with the model's λ, weighting and biases.

    Args:
        model: an object with the model protocol.
        items: int ``(n,)`` distinct item indices the user rated.
        ratings: float ``(n,)``, their ratings.
        reg: λ; defaults to ``model.reg``.

    Returns:
        ``(user_factors, user_bias)``: float32 ``(k,)`` and a float (0.0 without biases).
    """
    parts = _parts(model)
    items = _check_indices(items, len(parts.item_factors), "items")
    if _is_implicit(model):
        if reg is not None or not callable(getattr(model, "fold_in", None)):
            raise ValueError(
                "model: an implicit-feedback model's fold-in weighs every item, not only the "
                "rated ones; it needs the model's own fold_in method and its own λ (reg=None)"
            )
        vector, bias = model.fold_in(items, np.asarray(ratings, dtype=np.float32))
        return np.asarray(vector, dtype=np.float32), float(bias)
    return linalg.fold_in(
        parts.item_factors,
        items,
        np.asarray(ratings, dtype=np.float32),
        _reg(model, reg),
        item_bias=parts.item_bias if _uses_bias(model) else None,
        global_bias=parts.global_bias,
        weighting=model.weighting,
    )


def recommend_for_new_user(
    model, items, ratings, k: int = 10, reg: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items for a user who is not in the model, from a handful of their ratings.

    The user is folded in (:func:`fold_in_user`), scored against every item, and the items
    they rated are left out. Nothing in the model changes.

    Args:
        model: an object with the model protocol.
        items: int ``(n,)`` distinct item indices the user rated.
        ratings: float ``(n,)``, their ratings.
        k: list length, at most ``n_items − n``.
        reg: λ for the fold-in; defaults to ``model.reg``.

    Returns:
        ``(indices, scores)``: int32 and float32 ``(k,)``, best first; the scores are predicted
        ratings μ + b_u + b_i + uᵀv_i.
    """
    parts = _parts(model)
    user_factors, user_bias = fold_in_user(model, items, ratings, reg)
    items = np.asarray(items, dtype=np.int64)
    k = _check_k(k, len(parts.item_factors) - len(items), "items left after the rated ones")

    scores = parts.item_factors @ user_factors + parts.item_bias
    scores += np.float32(parts.global_bias + user_bias)
    scores[items] = -np.inf
    top = tf.math.top_k(scores, k=k)
    return top.indices.numpy(), top.values.numpy()


def explain(
    model, user_items, user_ratings, item: int, top: int | None = 3, reg: float | None = None
) -> pd.DataFrame:
    """Which of the user's own ratings most support the model's score for ``item``.

    With V and the item biases fixed, the user's parameters θ = (u, b_u) solve the ridge
    regression of :func:`fold_in_user`: A θ = Σ_j x_j y_j with x_j = (v_j, 1) for each rated
    item j, y_j = r_j − μ − b_j (the rating relative to what the item's bias predicts) and
    A = Σ_j x_j x_jᵀ + λ w I. So the user-dependent part of the score splits exactly into one
    term per rated item:

        b_u + uᵀv_i = Σ_j y_j · x_iᵀ A⁻¹ x_j = Σ_j centred_rating_j · weight_j

    ``weight_j`` is a similarity between the target item i and the rated item j, measured in
    the user's own metric A⁻¹ (it discounts directions the user has rated many items along).
    A large positive contribution means "you rated j above its usual level, and j is like i".
    Without biases x_j = v_j and y_j = r_j. For a trained user pass their training ratings:
    at the optimum of the model's objective their vector is this same ridge solution.

    Args:
        model: an object with the model protocol.
        user_items: int ``(n,)`` distinct item indices the user rated.
        user_ratings: float ``(n,)``, their ratings.
        item: the item to explain.
        top: how many rows to return (largest contribution first); ``None`` returns all, and
            then ``contribution`` sums to b_u + uᵀv_i of the folded-in user.
        reg: λ; defaults to ``model.reg``.

    Returns:
        DataFrame with columns ``item``, ``rating``, ``centred_rating``, ``weight``,
        ``contribution`` (in stars), sorted by ``contribution`` descending.
    """
    parts = _parts(model)
    if np.ndim(item) != 0:
        raise ValueError(f"item: expected one item index, got shape {np.shape(item)}")
    target = int(_check_indices(item, len(parts.item_factors), "item")[0])
    items = _check_indices(user_items, len(parts.item_factors), "user_items")
    ratings = np.asarray(user_ratings, dtype=np.float32)
    if ratings.shape != items.shape:
        raise ValueError(f"user_ratings: expected shape {items.shape}, got {ratings.shape}")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top <= 0):
        raise ValueError(f"top: must be a positive integer or None, got {top!r}")
    if _is_implicit(model):
        raise ValueError("model: explain covers explicit-rating models, not implicit feedback")
    fold_in_user(model, items, ratings, reg)  # validates the ratings and the λ like fold-in

    features, centred = parts.item_factors[items], ratings - np.float32(parts.global_bias)
    target_features = parts.item_factors[target]
    if _uses_bias(model):
        centred = centred - parts.item_bias[items]
        features = np.concatenate([features, np.ones((len(items), 1), np.float32)], axis=1)
        target_features = np.append(target_features, np.float32(1.0))
    weight = len(items) if model.weighting == "count" else 1
    solved = linalg.solve_ridge(
        (features.T @ features)[None], target_features[None], _reg(model, reg) * weight
    ).numpy()[0]
    weights = features @ solved
    table = pd.DataFrame(
        {
            "item": items,
            "rating": ratings,
            "centred_rating": centred,
            "weight": weights,
            "contribution": centred * weights,
        }
    ).sort_values("contribution", ascending=False, kind="stable", ignore_index=True)
    return table if top is None else table.head(top)


# --------------------------------------------------------------------------------------------
# The model protocol and shared checks
# --------------------------------------------------------------------------------------------

_PROTOCOL = ("user_factors", "item_factors", "user_bias", "item_bias", "global_bias")


def _parts(model) -> _Parts:
    """Read the protocol attributes and zero the factors and biases of never-seen entities."""
    missing = [name for name in _PROTOCOL + ("reg", "weighting") if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"model: {type(model).__name__} lacks {missing} of the model protocol "
            "(user_factors, item_factors, user_bias, item_bias, global_bias, reg, weighting)"
        )
    user_factors = np.array(model.user_factors, dtype=np.float32)
    item_factors = np.array(model.item_factors, dtype=np.float32)
    user_bias = np.array(model.user_bias, dtype=np.float32).reshape(-1)
    item_bias = np.array(model.item_bias, dtype=np.float32).reshape(-1)
    if (
        user_factors.ndim != 2
        or item_factors.shape[1:] != user_factors.shape[1:]
        or user_bias.shape != user_factors.shape[:1]
        or item_bias.shape != item_factors.shape[:1]
    ):
        raise ValueError(
            f"model: inconsistent shapes: user_factors {user_factors.shape}, item_factors "
            f"{item_factors.shape}, user_bias {user_bias.shape}, item_bias {item_bias.shape}"
        )
    for seen, factors, bias in (
        (_seen_mask(model, "user"), user_factors, user_bias),
        (_seen_mask(model, "item"), item_factors, item_bias),
    ):
        if seen is not None:
            factors[~seen] = 0.0
            bias[~seen] = 0.0
    return _Parts(user_factors, item_factors, user_bias, item_bias, float(model.global_bias))


def _seen_mask(model, side: str) -> np.ndarray | None:
    """The model's ``user_seen`` or ``item_seen`` mask (entities with training ratings)."""
    mask = getattr(model, f"{side}_seen", None)
    return None if mask is None else np.asarray(mask, dtype=bool).reshape(-1)


def _is_implicit(model) -> bool:
    """Whether the model was trained on implicit feedback (its own flag, else False)."""
    return bool(getattr(model, "implicit_prefs", False) or getattr(model, "implicit", False))


def _uses_bias(model) -> bool:
    """Whether the model has bias terms: its ``use_bias`` flag, else any non-zero bias."""
    flag = getattr(model, "use_bias", None)
    if flag is not None:
        return bool(flag)
    return bool(model.global_bias != 0 or np.any(np.asarray(model.item_bias) != 0))


def _reg(model, reg: float | None) -> float:
    value = model.reg if reg is None else reg
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"reg: must be a number ≥ 0, got {value!r}")
    return float(value)


def _check_vectors(vectors) -> np.ndarray:
    array = np.array(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"vectors: expected a non-empty (n, k) array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("vectors: has NaN or infinite values")
    return array


def _check_indices(indices, size: int | None, name: str) -> np.ndarray:
    """Indices as int64 ``(m,)``; ``size`` None checks only the sign."""
    array = np.atleast_1d(np.asarray(indices))
    if array.ndim != 1:
        raise ValueError(f"{name}: expected an int or a 1-D array, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name}: expected integer indices, got dtype {array.dtype}")
    array = array.astype(np.int64)
    bad = (array < 0) | (array >= size) if size is not None else array < 0
    if bad.any():
        limit = f"[0, {size})" if size is not None else "[0, ∞)"
        raise ValueError(
            f"{name}: unknown index {int(array[bad][0])}; indices must lie in {limit}"
        )
    return array


def _check_candidates(candidates, n: int) -> np.ndarray:
    if candidates is None:
        return np.ones(n, dtype=bool)
    mask = np.asarray(candidates)
    if mask.dtype != bool or mask.shape != (n,):
        raise ValueError(
            f"candidates: expected a bool mask of shape ({n},), got {mask.dtype} {mask.shape}"
        )
    return mask


def _check_k(k, available: int, what: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k: must be a positive integer, got {k!r}")
    if k > available:
        raise ValueError(f"k: asked for {k} but there are only {available} {what}")
    return int(k)


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
    return batch_size


def _finish(indices: list, scores: list, k: int, single: bool) -> tuple[np.ndarray, np.ndarray]:
    index = np.concatenate(indices).astype(np.int32) if indices else np.zeros((0, k), np.int32)
    score = np.concatenate(scores).astype(np.float32) if scores else np.zeros((0, k), np.float32)
    return (index[0], score[0]) if single else (index, score)
