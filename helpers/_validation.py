"""Argument checks shared by the models: each error names the argument and the problem."""

from __future__ import annotations

import numpy as np


def check_int(value, name: str, minimum: int) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: must be an integer, got {value!r}")
    if value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
        raise ValueError(f"{name}: must be {what}, got {value}")


def check_number(value, name: str) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name}: must be a number, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name}: must be a finite number ≥ 0, got {value}")


def check_indices(indices, size: int, name: str) -> np.ndarray:
    array = np.asarray(indices)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of indices, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name}: expected integer indices, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= size):
        raise ValueError(f"{name}: indices must lie in [0, {size})")
    return array.astype(np.int64)
