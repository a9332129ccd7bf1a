"""Accuracy and ranking metrics for a trained model, and the popularity baseline.

Two questions, two kinds of metric:

* How close are the predicted ratings? :func:`rmse`, in stars.
* How good are the top-k lists? :func:`precision_at_k`, :func:`recall_at_k`, :func:`ndcg_at_k`
  and :func:`ranking_report`, with binary relevance: an item is relevant to a user when the user
  rated it in the test split at or above a threshold (:func:`relevant_items`).

Definitions, for one user with top-k list L (k distinct items) and relevant set R (|R| ≥ 1):

* precision@k = |L ∩ R| / k
* recall@k    = |L ∩ R| / |R|    (the plain |R|, so a user with |R| > k cannot reach 1)
* NDCG@k      = DCG / IDCG with DCG = Σ_{j=1..k} [L_j ∈ R] / log2(j + 1) and IDCG the DCG of
  a perfect list, Σ_{j=1..min(k, |R|)} 1 / log2(j + 1)

Each reported number is the mean over the users with at least one relevant item; users whose
relevant set is empty are left out of every average (their row of ``recommended`` is ignored).

Typical use::

    relevant = metrics.relevant_items(test, min_rating=4.0)
    recommended, _ = similarity.recommend(model, np.arange(test.n_users), k=10, exclude=train)
    metrics.ranking_report(recommended, relevant, k=10)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from helpers import data


def rmse(predictions, targets) -> float:
    """Root mean squared error between predicted and true ratings.

    Args:
        predictions: float array-like, any shape.
        targets: float array-like of the same shape.

    Returns:
        sqrt(mean((predictions − targets)²)) as a Python float (computed in float64).
    """
    predicted = np.asarray(predictions, dtype=np.float64)
    true = np.asarray(targets, dtype=np.float64)
    if predicted.shape != true.shape:
        raise ValueError(
            f"predictions: shape {predicted.shape} does not match targets {true.shape}"
        )
    if predicted.size == 0:
        raise ValueError("predictions: is empty; need at least one prediction")
    if not np.isfinite(predicted).all():
        raise ValueError("predictions: has NaN or infinite values")
    if not np.isfinite(true).all():
        raise ValueError("targets: has NaN or infinite values")
    return float(np.sqrt(np.mean((predicted - true) ** 2)))


def relevant_items(test: data.Ratings, min_rating: float | None = 4.0) -> list[np.ndarray]:
    """The relevant items of every user: those they rated ``min_rating`` or higher in ``test``.

    Args:
        test: the held-out ratings.
        min_rating: threshold on the rating (inclusive); ``None`` makes every test item relevant
            (implicit feedback).

    Returns:
        A list of ``test.n_users`` sorted int32 arrays; entry u holds user u's relevant item
        indices and is empty when the user has none.
    """
    if not isinstance(test, data.Ratings):
        raise TypeError(f"test: expected data.Ratings, got {type(test).__name__}")
    keep = np.ones(len(test), dtype=bool)
    if min_rating is not None:
        if not np.isfinite(min_rating):
            raise ValueError(f"min_rating: must be a finite number or None, got {min_rating}")
        keep = test.values >= min_rating
    users, items = test.users[keep], test.items[keep]
    order = np.lexsort((items, users))
    users, items = users[order], items[order].astype(np.int32)
    bounds = np.searchsorted(users, np.arange(test.n_users + 1))
    return [np.unique(items[bounds[u] : bounds[u + 1]]) for u in range(test.n_users)]


def precision_at_k(recommended, relevant: Sequence, k: int | None = None) -> float:
    """Mean precision@k = |top-k ∩ relevant| / k over users with ≥ 1 relevant item.

    Args:
        recommended: int ``(n_users, ≥ k)``, each row a user's items, best first, no repeats.
        relevant: ``n_users`` collections (arrays, lists or sets) of relevant item indices,
            aligned with the rows of ``recommended``; see :func:`relevant_items`.
        k: list length to score; defaults to ``recommended.shape[1]``.
    """
    hits, n_relevant, k = _hits(recommended, relevant, k)
    return float(np.mean(hits.sum(axis=1) / k))


def recall_at_k(recommended, relevant: Sequence, k: int | None = None) -> float:
    """Mean recall@k = |top-k ∩ relevant| / |relevant| over users with ≥ 1 relevant item.

    The denominator is the full |relevant|, not min(k, |relevant|). Arguments as in
    :func:`precision_at_k`.
    """
    hits, n_relevant, _ = _hits(recommended, relevant, k)
    return float(np.mean(hits.sum(axis=1) / n_relevant))


def ndcg_at_k(recommended, relevant: Sequence, k: int | None = None) -> float:
    """Mean NDCG@k with binary relevance over users with ≥ 1 relevant item.

    A hit at position j (1-based) is worth 1 / log2(j + 1); the sum is divided by that of a
    perfect list, which places min(k, |relevant|) hits first. Arguments as in
    :func:`precision_at_k`.
    """
    hits, n_relevant, k = _hits(recommended, relevant, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = hits @ discounts
    ideal = np.cumsum(discounts)[np.minimum(n_relevant, k) - 1]
    return float(np.mean(dcg / ideal))


def ranking_report(recommended, relevant: Sequence, k: int | None = None) -> pd.Series:
    """Precision, recall and NDCG at k in one Series (index ``precision@k``, ``recall@k``, ...).

    Arguments as in :func:`precision_at_k`. Put several reports side by side with
    ``pd.DataFrame({"model": report_a, "popularity": report_b})``.
    """
    k = _check_k(recommended, k)
    return pd.Series(
        {
            f"precision@{k}": precision_at_k(recommended, relevant, k),
            f"recall@{k}": recall_at_k(recommended, relevant, k),
            f"ndcg@{k}": ndcg_at_k(recommended, relevant, k),
        },
        name=f"k={k}",
    )


def popularity_scores(train: data.Ratings, min_rating: float | None = None) -> np.ndarray:
    """The popularity baseline: each item's number of training ratings.

    Rank with it like with a model, e.g.
    ``similarity.recommend(popularity_scores(train), users, k=10, exclude=train)``.

    Args:
        train: the training ratings.
        min_rating: count only ratings at or above this value; ``None`` counts all.

    Returns:
        float32 ``(n_items,)``; items without training ratings score 0.
    """
    if not isinstance(train, data.Ratings):
        raise TypeError(f"train: expected data.Ratings, got {type(train).__name__}")
    items = train.items if min_rating is None else train.items[train.values >= min_rating]
    return np.bincount(items, minlength=train.n_items).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Shared checks
# --------------------------------------------------------------------------------------------


def _check_k(recommended, k: int | None) -> int:
    recommended = np.asarray(recommended)
    if recommended.ndim != 2:
        raise ValueError(
            f"recommended: expected shape (n_users, k), got {recommended.shape}; "
            "for one user pass recommended[None]"
        )
    width = recommended.shape[1]
    if k is None:
        k = width
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k: must be a positive integer, got {k!r}")
    if k > width:
        raise ValueError(f"k: recommended holds {width} items per user, fewer than k={k}")
    return int(k)


def _hits(recommended, relevant: Sequence, k: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Boolean hits ``(m, k)`` and relevant counts ``(m,)`` for the m users with relevant items.

    Membership is tested on (row, item) keys at once, so the cost grows with n_users × k plus
    the number of relevant pairs, never with the catalogue size.
    """
    k = _check_k(recommended, k)
    top = np.asarray(recommended)[:, :k]
    if not np.issubdtype(top.dtype, np.integer):
        raise TypeError(f"recommended: expected integer item indices, got dtype {top.dtype}")
    if top.size and top.min() < 0:
        raise ValueError(f"recommended: item indices must be ≥ 0, got {top.min()}")
    ordered = np.sort(top, axis=1)
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        row = int(np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))[0])
        raise ValueError(f"recommended: row {row} repeats an item within its top {k}")
    if isinstance(relevant, (str, bytes)) or len(relevant) != len(top):
        raise ValueError(
            f"relevant: expected one collection per row of recommended ({len(top)}), "
            f"got {len(relevant)}"
        )

    sets = [np.unique(np.fromiter(items, dtype=np.int64)) for items in relevant]
    if any(items.size and items.min() < 0 for items in sets):
        raise ValueError("relevant: item indices must be ≥ 0")
    n_relevant = np.array([len(items) for items in sets], dtype=np.int64)
    if not n_relevant.any():
        raise ValueError("relevant: no user has a relevant item; nothing to average")
    span = int(max(top.max(initial=0), max(s.max(initial=0) for s in sets)) + 1)
    relevant_keys = np.concatenate([row * span + items for row, items in enumerate(sets)])
    top_keys = np.arange(len(top))[:, None] * span + top
    hits = np.isin(top_keys, relevant_keys).astype(np.float64)
    evaluated = n_relevant > 0
    return hits[evaluated], n_relevant[evaluated], k
