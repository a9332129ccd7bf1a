"""Helpers for the TensorFlow 2 matrix factorization notebook series.

The package is layered; a module only imports from the layers above it in this list:

* ``helpers.data``: loading MovieLens, id maps, the rating matrix M, splits.
* ``helpers.linalg``: batched ridge solves shared by ALS and fold-in.
* ``helpers.model``: ``MatrixFactorization`` trained with ``tf.GradientTape``.
* ``helpers.als``: ``ALS``, closed-form alternating least squares (explicit and implicit).
* ``helpers.implicit_model``: ``ImplicitMatrixFactorization``, implicit feedback by GradientTape.
* ``helpers.metrics``, ``helpers.similarity``, ``helpers.tuning``: uses of a trained model.
* ``helpers.plots``, ``helpers.widgets``: presentation.

Importing ``helpers`` imports nothing heavy and changes no settings; import the module you need
(``from helpers import data``).
"""

__version__ = "0.1.0"
