"""One place to fix every seed, so that a notebook gives the same numbers on every run."""

from __future__ import annotations

import random

import numpy as np


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow's kernels deterministic.

    Call it once in a notebook's Setup section. Library functions do not rely on it: each
    random function in ``helpers`` takes its own ``seed=`` argument.
    """
    import tensorflow as tf

    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds code that still uses the legacy global state
    tf.random.set_seed(seed)
    tf.config.experimental.enable_op_determinism()
