"""A factorization for implicit feedback (views, purchases), trained with ``tf.GradientTape``.

The data are interactions: for each (user, item) pair a count r_ui ≥ 0, with most pairs never
seen. Following Hu, Koren and Volinsky (2008), every pair gets a preference and a confidence:

* preference p_ui = 1 if the user interacted with the item, else 0;
* confidence c_ui = 1 + α r_ui on interactions and 1 on every other pair.

The model scores s_ui = u_uᵀ v_i (no biases) and minimizes, over ALL n_users × n_items pairs,

    J = Σ_u Σ_i c_ui (p_ui − s_ui)² + λ [Σ_u w_u ‖u_u‖² + Σ_i w_i ‖v_i‖²]

so every pair the user never touched is a weak negative (target 0, weight 1). Written that way
the sum has n_users × n_items terms, but it splits into a part over all pairs with a closed form
and a correction on the observed pairs Ω only:

    Σ_u Σ_i s_ui² = Σ_u Σ_i (u_uᵀ v_i)² = tr((UᵀU)(VᵀV))                  (k × k matrices)
    J = tr((UᵀU)(VᵀV)) + Σ_(u,i)∈Ω [c_ui (1 − s_ui)² − s_ui²] + λ [...]

Its cost grows with the number of interactions plus (n_users + n_items) k², never with
n_users × n_items. ``helpers.als.ALS(implicit_prefs=True)`` minimizes the same J in closed form;
this model reaches it by gradient descent (full-batch Adam on J / |Ω|), which is the form that
carries over to other losses and models.

On the project split (random 80/20 of ml-latest-small; relevant = test items rated ≥ 4,
candidates = items not rated in training) the defaults (rank 32, λ = 20, α = 1, 50 epochs of
Adam at 0.1) reach precision@10 ≈ 0.20 in a few seconds, against ≈ 0.12 for popularity
(``benchmarks/als.py``; λ was picked on that split).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import tensorflow as tf

from helpers import data, linalg
from helpers._validation import check_indices, check_int, check_number

logger = logging.getLogger(__name__)

WEIGHTINGS = ("uniform", "count")


class ImplicitMatrixFactorization:
    """Weighted matrix factorization of implicit feedback, with all unobserved pairs as negatives.

    Args:
        n_users, n_items: the shape of the interaction matrix.
        rank: k, the number of latent factors.
        reg: λ ≥ 0, in the units of the sum-form loss J (see the module docstring).
        alpha: α ≥ 0; an interaction counted r times has confidence 1 + α r.
        weighting: ``"uniform"`` (w = 1) or ``"count"`` (w = each user's and item's number of
            interactions, as in Spark).
        init_scale: standard deviation of the random normal initial factors.
        seed: seeds the initial factors; same seed, same data, same result.

    Attributes:
        user_factors: float32 ``(n_users, k)``; item_factors: float32 ``(n_items, k)``.
        user_bias, item_bias: float32 zeros (the model has no biases); global_bias: 0.0.
        user_seen, item_seen: bool, which users and items had interactions in training.
        n_users, n_items, rank, reg, weighting, alpha: as given.
        history_: the DataFrame returned by the last :meth:`fit`.

    Example::

        model = ImplicitMatrixFactorization(train.n_users, train.n_items)
        history = model.fit(interactions)
        model.predict(users, items)   # preference scores uᵀv, higher = more likely
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        rank: int = 32,
        reg: float = 20.0,
        alpha: float = 1.0,
        weighting: str = "uniform",
        init_scale: float = 0.1,
        seed: int = 0,
    ) -> None:
        for name, value in (("n_users", n_users), ("n_items", n_items), ("rank", rank)):
            check_int(value, name, minimum=1)
        check_int(seed, "seed", minimum=0)
        for name, value in (("reg", reg), ("alpha", alpha), ("init_scale", init_scale)):
            check_number(value, name)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting: expected 'uniform' or 'count', got {weighting!r}")
        self.n_users, self.n_items, self.rank = int(n_users), int(n_items), int(rank)
        self.reg, self.alpha, self.weighting = float(reg), float(alpha), weighting
        self.init_scale, self.seed = float(init_scale), int(seed)

        rng = np.random.default_rng(self.seed)
        scale = np.float32(self.init_scale)
        self._user_factors = tf.Variable(
            rng.standard_normal((self.n_users, self.rank), np.float32) * scale, name="U"
        )
        self._item_factors = tf.Variable(
            rng.standard_normal((self.n_items, self.rank), np.float32) * scale, name="V"
        )
        self.user_seen = np.zeros(self.n_users, dtype=bool)
        self.item_seen = np.zeros(self.n_items, dtype=bool)
        self.history_: pd.DataFrame | None = None

    # Model protocol ---------------------------------------------------------------------

    @property
    def user_factors(self) -> np.ndarray:
        """U, float32 ``(n_users, k)``."""
        return self._user_factors.numpy()

    @property
    def item_factors(self) -> np.ndarray:
        """V, float32 ``(n_items, k)``."""
        return self._item_factors.numpy()

    @property
    def user_bias(self) -> np.ndarray:
        """Zeros, float32 ``(n_users,)``: the model has no biases."""
        return np.zeros(self.n_users, dtype=np.float32)

    @property
    def item_bias(self) -> np.ndarray:
        """Zeros, float32 ``(n_items,)``: the model has no biases."""
        return np.zeros(self.n_items, dtype=np.float32)

    @property
    def global_bias(self) -> float:
        """0.0: the scores are uᵀv with no offset."""
        return 0.0

    use_bias = False

    # Training ---------------------------------------------------------------------------

    def fit(
        self,
        interactions: data.Ratings,
        epochs: int = 50,
        learning_rate: float = 0.1,
        optimizer: tf.keras.optimizers.Optimizer | None = None,
    ) -> pd.DataFrame:
        """Minimize J / |Ω| with full-batch gradient steps (Adam unless ``optimizer`` is given).

        Args:
            interactions: counts r_ui > 0 on the observed pairs (``values``); pairs with
                value 0 are the same as unobserved ones. ``data.interactions`` builds them.
            epochs: number of full-batch steps.
            learning_rate: Adam's step size, used when ``optimizer`` is None.
            optimizer: a fresh Keras optimizer to use instead.

        Returns:
            The history, one row per epoch: ``epoch`` (1-based), ``loss`` (J / |Ω| before the
            step) and ``seconds`` (wall time of the epoch). Also kept in ``history_``.
        """
        self._check_interactions(interactions)
        check_int(epochs, "epochs", minimum=1)
        check_number(learning_rate, "learning_rate")
        if optimizer is None:
            optimizer = tf.keras.optimizers.Adam(learning_rate=learning_rate)
        elif not isinstance(optimizer, tf.keras.optimizers.Optimizer):
            raise TypeError(
                f"optimizer: expected a Keras optimizer, got {type(optimizer).__name__}"
            )
        keep = interactions.values > 0
        users, items = interactions.users[keep], interactions.items[keep]
        self.user_seen = np.bincount(users, minlength=self.n_users) > 0
        self.item_seen = np.bincount(items, minlength=self.n_items) > 0
        tensors = self._tensors(users, items, interactions.values[keep])
        scale = tf.constant(1.0 / len(users), tf.float32)
        variables = [self._user_factors, self._item_factors]

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = _loss(*variables, *tensors, self.alpha, self.reg) * scale
            gradients = tape.gradient(loss, variables)
            # Dense gradients: Keras optimizers are slow on the sparse ones gather produces.
            optimizer.apply_gradients(
                zip(map(tf.convert_to_tensor, gradients), variables, strict=True)
            )
            return loss

        rows = []
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            loss = float(step())
            rows.append({"epoch": epoch, "loss": loss, "seconds": time.perf_counter() - start})
            logger.debug("epoch %d: loss %.5f", epoch, loss)
        self.history_ = pd.DataFrame(rows)
        return self.history_

    def loss(self, interactions: data.Ratings) -> float:
        """J, the sum-form loss over all n_users × n_items pairs, computed from Ω only."""
        self._check_interactions(interactions)
        keep = interactions.values > 0
        tensors = self._tensors(
            interactions.users[keep], interactions.items[keep], interactions.values[keep]
        )
        value = _loss(self._user_factors, self._item_factors, *tensors, self.alpha, self.reg)
        return float(value)

    def _tensors(self, users, items, counts):
        if self.weighting == "count":
            user_w = np.bincount(users, minlength=self.n_users)
            item_w = np.bincount(items, minlength=self.n_items)
        else:
            user_w, item_w = np.ones(self.n_users), np.ones(self.n_items)
        return (
            tf.constant(users, tf.int32),
            tf.constant(items, tf.int32),
            tf.constant(counts, tf.float32),
            tf.constant(user_w, tf.float32),
            tf.constant(item_w, tf.float32),
        )

    # Using the model --------------------------------------------------------------------

    #: Scores are preferences, not ratings; ``similarity`` reads this to pick the fold-in.
    implicit_prefs = True

    def fold_in(self, items, counts) -> tuple[np.ndarray, float]:
        """A new user's vector from their interactions, with V fixed, in closed form.

        The same computation as ``ALS(implicit_prefs=True).fold_in``: both call
        :func:`helpers.linalg.fold_in_implicit` with this model's λ, α and weighting.

        Returns:
            ``(user_factors, 0.0)``: float32 ``(k,)``, and no bias.
        """
        seen_factors = np.where(self.item_seen[:, None], self.item_factors, 0.0)
        vector = linalg.fold_in_implicit(
            seen_factors, items, counts, self.reg, self.alpha, weighting=self.weighting
        )
        return vector, 0.0

    def predict(self, users, items) -> np.ndarray:
        """Preference scores s_ui = u_uᵀ v_i; higher means more likely to interact.

        A user or item without training interactions has no factor term: its score is 0.

        Args:
            users: int ``(n,)``; items: int ``(n,)``.

        Returns:
            float32 ``(n,)``.
        """
        users = check_indices(users, self.n_users, "users")
        items = check_indices(items, self.n_items, "items")
        if users.shape != items.shape:
            raise ValueError(f"items: expected shape {users.shape} like users, got {items.shape}")
        scores = np.einsum("nk,nk->n", self.user_factors[users], self.item_factors[items])
        both = self.user_seen[users] & self.item_seen[items]
        return np.where(both, scores, 0.0).astype(np.float32)

    def _check_interactions(self, interactions) -> None:
        if not isinstance(interactions, data.Ratings):
            raise TypeError(
                f"interactions: expected data.Ratings, got {type(interactions).__name__}"
            )
        if len(interactions) == 0:
            raise ValueError("interactions: is empty; need at least one interaction")
        if (interactions.n_users, interactions.n_items) != (self.n_users, self.n_items):
            raise ValueError(
                f"interactions: shape ({interactions.n_users}, {interactions.n_items}) differs "
                f"from the model's ({self.n_users}, {self.n_items})"
            )
        check_indices(interactions.users, self.n_users, "interactions.users")
        check_indices(interactions.items, self.n_items, "interactions.items")
        values = np.asarray(interactions.values)
        if not np.isfinite(values).all():
            raise ValueError("interactions: values hold NaN or infinite entries")
        if (values < 0).any():
            raise ValueError(f"interactions: counts must be ≥ 0, got {values.min()}")


def _loss(user_f, item_f, users, items, counts, user_w, item_w, alpha, reg):
    """J via the Gramian identity; see the module docstring."""
    everything = tf.reduce_sum(
        tf.matmul(user_f, user_f, transpose_a=True) * tf.matmul(item_f, item_f, transpose_a=True)
    )
    scores = tf.reduce_sum(tf.gather(user_f, users) * tf.gather(item_f, items), axis=1)
    confidence = 1.0 + alpha * counts
    observed = tf.reduce_sum(confidence * (1.0 - scores) ** 2 - scores**2)
    penalty = tf.reduce_sum(user_w * tf.reduce_sum(user_f**2, axis=1))
    penalty += tf.reduce_sum(item_w * tf.reduce_sum(item_f**2, axis=1))
    return everything + observed + reg * penalty
