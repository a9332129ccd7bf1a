"""Batched ridge regression: the closed-form step shared by ALS and by folding in a new user.

Every closed-form step in the series solves, for a batch of b independent problems,

    (Aᵀ A + λ_b I) x_b = Aᵀ y_b        i.e.   (gram_b + λ_b I) x_b = rhs_b

with a Cholesky factorization. ALS solves one such system per user (then per item) in each
half-step; folding in a new user solves one system for that user with the item factors fixed.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def solve_ridge(gram: tf.Tensor, rhs: tf.Tensor, reg: tf.Tensor | float) -> tf.Tensor:
    """Solve ``(gram[b] + reg[b] I) x[b] = rhs[b]`` for every b with a Cholesky factorization.

    Args:
        gram: float32 ``(b, k, k)``, symmetric positive semi-definite (AᵀA for each problem).
        rhs: float32 ``(b, k)`` (Aᵀy for each problem).
        reg: a scalar or float32 ``(b,)``; must be positive wherever ``gram[b]`` is singular.

    Returns:
        float32 ``(b, k)``, the solutions.
    """
    gram = tf.convert_to_tensor(gram, dtype=tf.float32)
    rhs = tf.convert_to_tensor(rhs, dtype=tf.float32)
    reg = tf.reshape(tf.cast(reg, tf.float32), [-1, 1, 1])
    rank = tf.shape(gram)[-1]
    system = gram + reg * tf.eye(rank, dtype=tf.float32)
    factor = tf.linalg.cholesky(system)
    return tf.linalg.cholesky_solve(factor, rhs[..., None])[..., 0]


def fold_in(
    item_factors: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    reg: float,
    *,
    item_bias: np.ndarray | None = None,
    global_bias: float = 0.0,
    weighting: str = "uniform",
) -> tuple[np.ndarray, float]:
    """Solve for one new user's factors (and bias) with the item side fixed: a ridge regression.

    Minimizes, over the user's vector u (and bias b_u when ``item_bias`` is given),

        Σ_i (r_i − μ − b_i − b_u − uᵀv_i)² + λ w (‖u‖² + b_u²),

    where w = 1 for ``weighting="uniform"`` and w = the number of ratings for ``"count"``.
    The optimum is where the gradient is zero, which is the linear system solved here.

    Args:
        item_factors: float ``(n_items, k)``, the fixed V.
        items: int ``(n,)``, indices of the items the user rated.
        ratings: float ``(n,)``, the user's ratings of those items.
        reg: λ ≥ 0 (must be > 0 when the user rated fewer than k items).
        item_bias: float ``(n_items,)`` or None for a model without biases.
        global_bias: μ.
        weighting: ``"uniform"`` or ``"count"``, as in the model that learned V.

    Returns:
        ``(user_factors, user_bias)``: float32 ``(k,)`` and a float (0.0 without biases).
    """
    item_factors = np.asarray(item_factors, dtype=np.float32)
    items = np.asarray(items)
    ratings = np.asarray(ratings, dtype=np.float32)
    _check_fold_in(item_factors, items, ratings, reg, weighting)

    features = item_factors[items]
    targets = ratings - np.float32(global_bias)
    if item_bias is not None:
        targets = targets - np.asarray(item_bias, dtype=np.float32)[items]
        features = np.concatenate([features, np.ones((len(items), 1), np.float32)], axis=1)
    weight = len(items) if weighting == "count" else 1
    solution = solve_ridge(
        (features.T @ features)[None], (features.T @ targets)[None], reg * weight
    ).numpy()[0]
    if item_bias is None:
        return solution, 0.0
    return solution[:-1], float(solution[-1])


def fold_in_implicit(
    item_factors: np.ndarray,
    items: np.ndarray,
    counts: np.ndarray,
    reg: float,
    alpha: float,
    *,
    weighting: str = "uniform",
) -> np.ndarray:
    """Solve for one new user's factors under the implicit-feedback loss, with V fixed.

    Hu, Koren and Volinsky's loss for one user is Σ_i c_i (p_i − uᵀv_i)² + λ w ‖u‖² over every
    item, with p_i = 1 and c_i = 1 + α·count_i for the items the user interacted with, and
    p_i = 0, c_i = 1 for the rest. Its optimum solves

        (VᵀV + Vᵀ(C − I)V + λ w I) u = Vᵀ C p,

    where only the interacted items enter Vᵀ(C − I)V and VᵀCp, so the cost is k² per item the
    user touched plus one k × k Gramian VᵀV.

    Args:
        item_factors: float ``(n_items, k)``, the fixed V (rows of unseen items set to 0).
        items: int ``(n,)``, distinct indices of the items the user interacted with.
        counts: float ``(n,)``, interaction counts, each > 0.
        reg: λ ≥ 0. alpha: α ≥ 0. weighting: ``"uniform"`` (w = 1) or ``"count"`` (w = n).

    Returns:
        float32 ``(k,)``, the user's factors.
    """
    item_factors = np.asarray(item_factors, dtype=np.float32)
    items = np.asarray(items)
    counts = np.asarray(counts, dtype=np.float32)
    _check_fold_in(item_factors, items, counts, reg, weighting)
    if (counts <= 0).any():
        raise ValueError("counts: interaction counts must be > 0")
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha: must be a finite number ≥ 0, got {alpha}")

    features = item_factors[items]
    boost = np.float32(alpha) * counts
    gram = item_factors.T @ item_factors + (features * boost[:, None]).T @ features
    weight = len(items) if weighting == "count" else 1
    return solve_ridge(gram[None], (features.T @ (1 + boost))[None], reg * weight).numpy()[0]


def _check_fold_in(item_factors, items, ratings, reg, weighting) -> None:
    if item_factors.ndim != 2:
        raise ValueError(f"item_factors: expected shape (n_items, k), got {item_factors.shape}")
    if items.ndim != 1 or len(items) == 0:
        raise ValueError(f"items: expected a non-empty 1-D array, got shape {items.shape}")
    if not np.issubdtype(items.dtype, np.integer):
        raise TypeError(f"items: expected integer indices, got dtype {items.dtype}")
    if items.min() < 0 or items.max() >= len(item_factors):
        raise ValueError(f"items: indices must lie in [0, {len(item_factors)})")
    if len(np.unique(items)) != len(items):
        raise ValueError("items: each item may appear once")
    if ratings.shape != items.shape:
        raise ValueError(f"ratings: expected shape {items.shape}, got {ratings.shape}")
    if not np.isfinite(ratings).all():
        raise ValueError("ratings: has NaN or infinite values")
    if not np.isfinite(reg) or reg < 0:
        raise ValueError(f"reg: must be a finite number ≥ 0, got {reg}")
    if weighting not in ("uniform", "count"):
        raise ValueError(f"weighting: expected 'uniform' or 'count', got {weighting!r}")
