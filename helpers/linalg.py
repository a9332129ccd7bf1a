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
