"""Alternating least squares (ALS) in TensorFlow 2: the ``ALS()`` estimator Spark has and TF lacks.

ALS minimizes the series' objective by turns. With the item side fixed, the loss is a sum of
independent ridge regressions, one per user, each solved exactly by its normal equations; then
the roles swap. A sweep is one user half-step followed by one item half-step, and no half-step
can raise the loss, because each one finds the exact minimum over the side it solves.

Explicit ratings (``implicit_prefs=False``) use the objective of the series::

    J = Σ_(u,i)∈Ω (r_ui − μ − b_u − b_i − u_uᵀv_i)² + λ [Σ_u w_u (‖u_u‖² + b_u²) + Σ_i w_i (…)]

with w = n_u, n_i (each side's number of ratings, Spark's scaling) for ``weighting="count"`` or
w = 1 for ``"uniform"``. Biases ride along in an augmented ridge system: the user half-step
solves for ``[u_u; b_u]`` with features ``[v_i; 1]`` and targets ``r_ui − μ − b_i`` (the item
half-step mirrors it), so b_u is regularized with the same λ w_u. μ is the training mean and
stays fixed.

Implicit feedback (``implicit_prefs=True``, Hu, Koren and Volinsky 2008) reads each value r_ui as
an interaction count: preference p_ui = 1 where r_ui > 0 and 0 everywhere else, confidence
c_ui = 1 + α r_ui on interactions and 1 elsewhere, and minimizes over ALL users × items::

    J = Σ_u Σ_i c_ui (p_ui − u_uᵀv_i)² + λ [Σ_u w_u ‖u_u‖² + Σ_i w_i ‖v_i‖²]

The user half-step needs Vᵀ C_u V = VᵀV + Vᵀ (C_u − I) V, where VᵀV is shared by every user and
C_u − I is zero off the user's interactions; the cost of a sweep therefore grows with the number
of interactions, never with users × items. A value of 0 means "no interaction".

How a half-step is batched: the entities of one side are grouped by their number of ratings n
into a few buckets and padded to the bucket's largest n, and every bucket is solved at once with
batched matmuls and :func:`helpers.linalg.solve_ridge` (a batched Cholesky). For an entity with
fewer ratings than unknowns (n < k) the same ridge problem is solved in its dual form, an n × n
system instead of k × k (for the implicit model through the Woodbury identity); both forms have
the same exact solution, and the dual one is much cheaper for the many rarely rated items.

Conjugate gradient (``solver="cg"``, implicit only) trades the exact solve for speed, as the
`implicit` library does: each half-step runs ``cg_steps`` steps of conjugate gradient on every
entity's system at once, warm-started from the current factors. The product of the system
matrix with a vector, (YᵀY + λ w I) x + Σ_j α r_j y_j (y_jᵀx), is a shared k × k matmul plus
two batched matrix-vector products over the same padded buckets of interactions, so a step
costs time linear in the number of interactions. (A flat gather with a segment sum computes the
same product, but measured about twice as slow here.) Started from the current factors,
conjugate gradient can only lower each entity's share of J, so the loss still never rises from
one half-step to the next (up to float32 rounding); the factors are not the exact minimizers,
and the results differ from the Cholesky solver's.

The loss needs no extra pass over the data: at an entity's solution x its share of J is
yᵀy − xᵀFᵀy (explicit) or Σ c − xᵀYᵀCp (implicit), a by-product of the solve. Each half-step
runs as one TensorFlow graph, traced once per process (the first fit pays about a second for
it; later fits, on any data, reuse it).

Entities without any training rating: under ``"count"`` their weight is 0 and the explicit model
leaves them at their random initial value; under ``"uniform"`` they start (and stay) at 0, their
optimum. The implicit model sets them to 0, its exact optimum. Predictions ignore them either way
(see :meth:`ALS.predict`).

Settings measured on the project split (random 80/20 of ml-latest-small, ``benchmarks/als.py``):

* explicit: ``ALS(rank=32, max_iter=15, reg_param=0.1)`` ("count", Spark's defaults for λ and
  its scaling) reaches test RMSE 0.850 but ranks far below popularity (precision@10 0.004);
  ``weighting="uniform", reg_param=10.0`` reaches RMSE 0.852 and precision@10 0.109;
* implicit, for ranking: ``ALS(rank=64, max_iter=15, implicit_prefs=True, alpha=1.0,
  reg_param=20.0, weighting="uniform")`` reaches precision@10 of 0.21 (relevant = test items
  rated ≥ 4, candidates = items not rated in training); ``weighting="count"`` with
  ``reg_param=0.1`` ranks as well. Both λ were picked on that test split, from a wide plateau.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import NamedTuple

import numpy as np
import pandas as pd
import tensorflow as tf

from helpers import data, linalg
from helpers._validation import check_indices, check_int, check_number

logger = logging.getLogger(__name__)

WEIGHTINGS = ("count", "uniform")
SOLVERS = ("cholesky", "cg")
_SIDES = ("user", "item")

# Entities are first classed by their number of ratings into widths 1, 2, 3, 4, 6, 8, 12, 16,
# ... (each at most 1.5× the previous one), then neighbouring classes are merged into at most
# this many dual and primal buckets per half-step. A fixed number of buckets lets one compiled
# TensorFlow graph serve every half-step of every fit in a process.
_WIDTHS = np.unique(np.concatenate([2 ** np.arange(31), 3 * 2 ** np.arange(30)]))
_DUAL_SLOTS, _PRIMAL_SLOTS = 6, 10

# A rough cost model in microseconds, used only to choose the buckets: a cost per bucket, per
# entity, per flop of batched matmul and per flop of batched Cholesky (measured on 2 CPU cores).
_BUCKET_COST, _ENTITY_COST, _MATMUL_FLOP, _CHOLESKY_FLOP = 100.0, 0.3, 5e-5, 5e-4


class _Bucket(NamedTuple):
    """b entities of one side, each with at most m ratings, padded to m and solved together.

    Attributes:
        ids: int32 ``(b,)``, the entities.
        others: int32 ``(b, m)``, the other side's index of each rating; padding points at
            row ``n_other``, an all-zero row appended to the other side's table.
        values: float32 ``(b, m)``: r − μ (explicit) or α r = c − 1 (implicit); 0 in padding.
        reg: float32 ``(b,)``, λ w of each entity.
        padding_index: int32 scalar, ``n_other``.
    """

    ids: tf.Tensor
    others: tf.Tensor
    values: tf.Tensor
    reg: tf.Tensor
    padding_index: tf.Tensor


class ALS:
    """Alternating least squares for explicit ratings or implicit feedback, Spark-style.

    Args:
        rank: k, the number of latent factors (> 0).
        max_iter: the number of sweeps (≥ 1); a sweep solves all users, then all items.
        reg_param: λ ≥ 0, in the units of the sum-form loss J (see the module docstring).
        implicit_prefs: treat the values as interaction counts (Hu, Koren and Volinsky).
        alpha: α ≥ 0, confidence c = 1 + α r of an interaction (implicit only).
        weighting: ``"count"`` scales λ by each user's and item's number of ratings (Spark's
            choice, best for RMSE); ``"uniform"`` uses λ as it is (ranks better).
        use_bias: learn b_u and b_i around a fixed μ (explicit only; the implicit model has
            no biases and predicts preference scores uᵀv).
        seed: seeds the random initial factors; same seed, same data, same factors.
        solver: ``"cholesky"`` solves every half-step exactly (batched Cholesky);
            ``"cg"`` (implicit only) runs ``cg_steps`` steps of conjugate gradient per
            half-step, warm-started from the current factors: faster, approximate.
        cg_steps: conjugate-gradient steps per half-step (≥ 1), used with ``solver="cg"``.

    Attributes (after :meth:`fit`):
        user_factors: float32 ``(n_users, k)``, U. item_factors: float32 ``(n_items, k)``, V.
        user_bias: float32 ``(n_users,)``; item_bias: float32 ``(n_items,)`` (zeros without
            biases). global_bias: μ, a float (0 without biases).
        user_seen, item_seen: bool ``(n_users,)``, ``(n_items,)``, which entities had
            training ratings.
        n_users, n_items, rank (ints), reg (float, = reg_param), weighting (str).
        history_: one row per sweep: ``sweep`` (1-based), ``loss`` (J after the sweep),
            ``train_rmse`` and ``val_rmse`` (explicit only, else NaN) and ``seconds`` (wall
            time of the sweep; the validation RMSE is computed after the clock stops). Sum
            ``seconds`` cumulatively to plot RMSE against wall-clock time. With
            ``solver="cg"`` all sweeps run in one graph call and each row gets their mean time.

    Example::

        als = ALS(rank=32, max_iter=15, reg_param=0.1).fit(train)
        als.predict(test.users, test.items)
        items, scores = als.recommend_for_all_users(10)
    """

    def __init__(
        self,
        rank: int = 10,
        max_iter: int = 10,
        reg_param: float = 0.1,
        implicit_prefs: bool = False,
        alpha: float = 1.0,
        weighting: str = "count",
        use_bias: bool = True,
        seed: int = 0,
        solver: str = "cholesky",
        cg_steps: int = 3,
    ) -> None:
        check_int(rank, "rank", minimum=1)
        check_int(max_iter, "max_iter", minimum=1)
        check_number(reg_param, "reg_param")
        check_number(alpha, "alpha")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting: expected 'count' or 'uniform', got {weighting!r}")
        for name, flag in (("implicit_prefs", implicit_prefs), ("use_bias", use_bias)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name}: expected True or False, got {flag!r}")
        check_int(seed, "seed", minimum=0)
        if not isinstance(solver, str) or solver not in SOLVERS:
            raise ValueError(f"solver: expected 'cholesky' or 'cg', got {solver!r}")
        if solver == "cg" and not implicit_prefs:
            raise ValueError("solver: 'cg' is only available with implicit_prefs=True")
        check_int(cg_steps, "cg_steps", minimum=1)
        self.rank = int(rank)
        self.max_iter = int(max_iter)
        self.reg = float(reg_param)
        self.implicit_prefs = bool(implicit_prefs)
        self.alpha = float(alpha)
        self.weighting = weighting
        self.use_bias = bool(use_bias) and not self.implicit_prefs
        self.seed = int(seed)
        self.solver = solver
        self.cg_steps = int(cg_steps)
        self.history_: pd.DataFrame | None = None
        self.user_factors: np.ndarray | None = None

    @property
    def reg_param(self) -> float:
        """λ, Spark's name for :attr:`reg`."""
        return self.reg

    # ----------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------

    def fit(self, ratings: data.Ratings, validation: data.Ratings | None = None) -> ALS:
        """Run ``max_iter`` sweeps on ``ratings``; record the loss after each in ``history_``.

        Args:
            ratings: the training ratings (explicit) or interaction counts (implicit, ≥ 0).
            validation: optional held-out ratings (explicit only) whose RMSE is recorded
                after every sweep, e.g. to plot RMSE against wall-clock time.

        Returns:
            ``self``, fitted.
        """
        _check_ratings(ratings, "ratings", nonnegative=self.implicit_prefs)
        if validation is not None:
            if self.implicit_prefs:
                raise ValueError("validation: RMSE is only tracked for explicit ratings")
            _check_ratings(validation, "validation", like=ratings)
        if self.implicit_prefs:
            keep = ratings.values > 0
            if not keep.any():
                raise ValueError("ratings: implicit feedback needs at least one count > 0")
            users, items, values = ratings.users[keep], ratings.items[keep], ratings.values[keep]
        else:
            users, items, values = ratings.users, ratings.items, ratings.values
        self.n_users, self.n_items = int(ratings.n_users), int(ratings.n_items)
        self.global_bias = float(np.mean(values, dtype=np.float64)) if self.use_bias else 0.0
        self.user_seen = np.bincount(users, minlength=self.n_users) > 0
        self.item_seen = np.bincount(items, minlength=self.n_items) > 0

        self._rated = (users, items)
        weights = [
            np.bincount(keys, minlength=n) if self.weighting == "count" else np.ones(n)
            for keys, n in ((users, self.n_users), (items, self.n_items))
        ]
        self._reg = {
            side: tf.constant(self.reg * w, tf.float32)
            for side, w in zip(_SIDES, weights, strict=True)
        }
        self._init_params()
        self._plans = self._make_plans(users, items, values)

        if self.solver == "cg":
            return self._fit_cg()
        rows = []
        for sweep in range(1, self.max_iter + 1):
            start = time.perf_counter()
            self._half_step("user")
            loss, sse = self._half_step("item")
            loss = float(loss)  # waits for the sweep to finish
            row = {"sweep": sweep, "loss": loss, "seconds": time.perf_counter() - start}
            if not self.implicit_prefs:
                row["train_rmse"] = float(np.sqrt(max(float(sse), 0.0) / len(values)))
                if validation is not None:
                    self._export()
                    predicted = self.predict(validation.users, validation.items)
                    row["val_rmse"] = _rmse(predicted, validation.values)
            rows.append(row)
            logger.info("sweep %d: loss %.4f (%.3f s)", sweep, loss, row["seconds"])
        columns = ["sweep", "loss", "train_rmse", "val_rmse", "seconds"]
        self.history_ = pd.DataFrame(rows).reindex(columns=columns)
        self._export()
        return self

    def _fit_cg(self) -> ALS:
        """Run all sweeps of the CG solver as one graph call (it saves per-call overhead).

        ``history_`` then gives each sweep the average wall time of the sweeps.
        """
        start = time.perf_counter()
        users, items, losses = _compiled_cg_sweeps()(
            self._params["user"][0],
            self._params["item"][0],
            self._reg["user"],
            self._reg["item"],
            *self._plans["user"],
            *self._plans["item"],
            tf.constant(self.cg_steps, tf.int32),
            tf.constant(self.max_iter, tf.int32),
        )
        losses = losses.numpy()  # waits for the sweeps to finish
        seconds = (time.perf_counter() - start) / self.max_iter
        self._params["user"] = (users, self._params["user"][1])
        self._params["item"] = (items, self._params["item"][1])
        for sweep, loss in enumerate(losses, start=1):
            logger.info("sweep %d: loss %.4f", sweep, loss)
        self.history_ = pd.DataFrame(
            {
                "sweep": np.arange(1, self.max_iter + 1),
                "loss": losses.astype(np.float64),
                "train_rmse": np.nan,
                "val_rmse": np.nan,
                "seconds": seconds,
            }
        )
        self._export()
        return self

    def _init_params(self) -> None:
        """Random normal factors (std 0.1) drawn with ``seed``; zero biases.

        Half-steps only write the entities with ratings. The others start at their optimum,
        0, except under the explicit "count" weighting, where their weight is 0, any value is
        optimal, and they keep their random start.
        """
        rng = np.random.default_rng(self.seed)
        keep = not self.implicit_prefs and self.weighting == "count"
        self._params = {}
        for side, seen in zip(_SIDES, (self.user_seen, self.item_seen), strict=True):
            factors = rng.standard_normal((len(seen), self.rank), np.float32) * np.float32(0.1)
            if not keep:
                factors[~seen] = 0.0
            self._params[side] = (tf.constant(factors), tf.zeros([len(seen)], tf.float32))

    def _make_plans(self, users, items, values) -> dict[str, tuple]:
        """Pad each side's ratings into buckets once per fit; every sweep reuses them."""
        if self.implicit_prefs:
            stored = values * np.float32(self.alpha)
        else:
            stored = values - np.float32(self.global_bias)
        unknowns = self.rank + (1 if self.use_bias else 0)
        # The implicit dual form inverts YᵀY + λ w I, which needs λ w > 0 to be stable.
        allow_dual = not self.implicit_prefs or self.reg > 0
        plans = {}
        for side, keys, others, n_others in (
            ("user", users, items, self.n_items),
            ("item", items, users, self.n_users),
        ):
            reg = self._reg[side].numpy()
            plans[side] = _plan(keys, others, stored, n_others, reg, unknowns, allow_dual)
        return plans

    def _half_step(self, side: str, compiled: bool = True) -> tuple[tf.Tensor, tf.Tensor]:
        """Solve every ``side`` entity with the other side fixed (exactly, or by CG steps).

        :meth:`fit` runs it as one compiled graph; ``compiled=False`` runs the same code
        eagerly (the per-bucket solvers stay compiled), to inspect ALS step by step after a
        fit: ``model._half_step("user", compiled=False)`` updates U and the NumPy attributes.

        Returns:
            J after the half-step and the training sum of squared errors (explicit only).
        """
        other = "item" if side == "user" else "user"
        if self.solver == "cg":
            step = _compiled_cg_half_step() if compiled else _cg_half_step
            factors, loss = step(
                self._params[side][0],
                self._params[other][0],
                self._reg[other],
                *self._plans[side],
                tf.constant(self.cg_steps, tf.int32),
            )
            self._params[side] = (factors, self._params[side][1])
            if not compiled:
                self._export()
            return loss, tf.zeros([])
        flags = {"implicit": self.implicit_prefs, "use_bias": self.use_bias}
        step = _compiled_half_step(**flags) if compiled else functools.partial(_half_step, **flags)
        try:
            factors, bias, loss, sse = step(
                *self._params[side], *self._params[other], self._reg[other], *self._plans[side]
            )
        except tf.errors.InvalidArgumentError as error:  # Cholesky of a singular system
            raise ValueError(
                f"reg_param: the normal equations of some {side}s are singular with "
                f"reg_param={self.reg}; use a positive reg_param"
            ) from error
        self._params[side] = (factors, bias)
        if not compiled:
            self._export()
        return loss, sse

    def _export(self) -> None:
        """Copy the TF parameters to the NumPy protocol attributes."""
        self.user_factors, self.user_bias = (t.numpy() for t in self._params["user"])
        self.item_factors, self.item_bias = (t.numpy() for t in self._params["item"])

    # ----------------------------------------------------------------------------------------
    # Using the fitted model
    # ----------------------------------------------------------------------------------------

    def predict(self, users, items) -> np.ndarray:
        """Predicted ratings (explicit) or preference scores (implicit) for (user, item) pairs.

        A user or item without training ratings contributes no factor term and a bias of 0,
        so a pair of two such entities gets μ (0 for the implicit model).

        Args:
            users: int ``(n,)`` user indices. items: int ``(n,)`` item indices.

        Returns:
            float32 ``(n,)``: μ + b_u + b_i + u_uᵀv_i.
        """
        self._check_fitted()
        users = check_indices(users, self.n_users, "users")
        items = check_indices(items, self.n_items, "items")
        if users.shape != items.shape:
            raise ValueError(f"items: expected shape {users.shape} like users, got {items.shape}")
        both = self.user_seen[users] & self.item_seen[items]
        dots = np.einsum("nk,nk->n", self.user_factors[users], self.item_factors[items])
        scores = np.where(both, dots, 0.0) + self.global_bias
        scores += np.where(self.user_seen[users], self.user_bias[users], 0.0)
        scores += np.where(self.item_seen[items], self.item_bias[items], 0.0)
        return scores.astype(np.float32)

    def recommend_for_all_users(
        self, k: int = 10, exclude_seen: bool = True, batch_size: int = 256
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top-k items of every user, scored in blocks of ``batch_size`` users.

        Args:
            k: list length, 1 ≤ k ≤ n_items.
            exclude_seen: leave out the items each user rated in training.
            batch_size: users scored at once; memory grows with ``batch_size × n_items``.

        Returns:
            ``(items, scores)``: int32 and float32 ``(n_users, k)``, best first, scored as in
            :meth:`predict` (a user without training ratings gets items by μ + b_i, or all
            zeros for the implicit model). When a user has fewer than k unrated items the
            list is padded with already rated items scored ``-inf``.
        """
        return self._recommend("user", k, exclude_seen, batch_size)

    def recommend_for_all_items(
        self, k: int = 10, batch_size: int = 256
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top-k users of every item (who would rate it highest), in blocks of items.

        Args:
            k: list length, 1 ≤ k ≤ n_users.
            batch_size: items scored at once; memory grows with ``batch_size × n_users``.

        Returns:
            ``(users, scores)``: int32 and float32 ``(n_items, k)``, best first.
        """
        return self._recommend("item", k, False, batch_size)

    def fold_in(self, items, ratings) -> tuple[np.ndarray, float]:
        """Solve for a new user's vector (and bias) with V fixed: one row of the user half-step.

        Explicit models call :func:`helpers.linalg.fold_in` with this model's λ, weighting and
        biases, which is the same ridge problem the user half-step solves. The implicit model
        solves (VᵀV + Vᵀ(C_u − I)V + λ w I) u = Vᵀ C_u p_u with the same batched solver.

        Args:
            items: int ``(n,)`` distinct item indices. ratings: float ``(n,)`` their ratings
                (explicit) or interaction counts (implicit, > 0).

        Returns:
            ``(user_factors, user_bias)``: float32 ``(k,)`` and a float (0.0 without biases).
        """
        self._check_fitted()
        seen_factors = np.where(self.item_seen[:, None], self.item_factors, 0.0)
        if not self.implicit_prefs:
            return linalg.fold_in(
                seen_factors,
                np.asarray(items),
                np.asarray(ratings, dtype=np.float32),
                self.reg,
                item_bias=self.item_bias if self.use_bias else None,
                global_bias=self.global_bias,
                weighting=self.weighting,
            )
        vector = linalg.fold_in_implicit(
            seen_factors, items, ratings, self.reg, self.alpha, weighting=self.weighting
        )
        return vector, 0.0

    def _recommend(self, side, k, exclude_seen, batch_size) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        n_rows, n_cols = (
            (self.n_users, self.n_items) if side == "user" else (self.n_items, self.n_users)
        )
        check_int(k, "k", minimum=1)
        if k > n_cols:
            raise ValueError(f"k: must be at most {n_cols}, got {k}")
        check_int(batch_size, "batch_size", minimum=1)
        rows_f, rows_b, rows_seen = self._side_arrays(side)
        cols_f, cols_b, cols_seen = self._side_arrays("item" if side == "user" else "user")
        cols_f = np.where(cols_seen[:, None], cols_f, 0.0).astype(np.float32)
        col_terms = np.where(cols_seen, cols_b, 0.0).astype(np.float32) + self.global_bias
        if exclude_seen:
            users, items = self._rated
            if side == "item":
                users, items = items, users
            order = np.argsort(users, kind="stable")
            seen_ptr = np.searchsorted(users[order], np.arange(n_rows + 1))
            seen_cols = items[order]

        indices, scores = [], []
        for start in range(0, n_rows, batch_size):
            rows = np.arange(start, min(start + batch_size, n_rows))
            row_f = np.where(rows_seen[rows, None], rows_f[rows], 0.0).astype(np.float32)
            block = row_f @ cols_f.T + col_terms
            block += np.where(rows_seen[rows], rows_b[rows], 0.0)[:, None]
            if exclude_seen:
                lengths = np.diff(seen_ptr[start : rows[-1] + 2])
                taken = seen_cols[seen_ptr[start] : seen_ptr[rows[-1] + 1]]
                block[np.repeat(np.arange(len(rows)), lengths), taken] = -np.inf
            top = tf.math.top_k(block, k=k)
            indices.append(top.indices.numpy())
            scores.append(top.values.numpy())
        return np.concatenate(indices).astype(np.int32), np.concatenate(scores)

    def _side_arrays(self, side: str):
        if side == "user":
            return self.user_factors, self.user_bias, self.user_seen
        return self.item_factors, self.item_bias, self.item_seen

    def _check_fitted(self) -> None:
        if getattr(self, "user_factors", None) is None:
            raise RuntimeError("ALS: call fit(ratings) before using the model")


# --------------------------------------------------------------------------------------------
# Half-steps, compiled once per process
# --------------------------------------------------------------------------------------------


# The bucket solvers. Each takes the other side's tables and one bucket and returns the
# solutions x, float32 (b, unknowns), and each entity's share of the loss at its solution,
# float32 (b,). Tables carry an extra all-zero last row that padding points at.


def _explicit_primal(table, bias_table, bucket: _Bucket):
    """(FᵀF + λ w I) x = Fᵀ y with F = [v_i; 1] and y = r − μ − b_i; share yᵀy − xᵀFᵀy."""
    features = tf.gather(table, bucket.others)  # (b, m, unknowns)
    targets = bucket.values - tf.gather(bias_table, bucket.others)  # (b, m)
    gram = tf.matmul(features, features, transpose_a=True)
    rhs = tf.linalg.matvec(features, targets, transpose_a=True)
    solution = linalg.solve_ridge(gram, rhs, bucket.reg)
    # At the solution ‖y − F x‖² + λ w ‖x‖² = yᵀy − xᵀ Fᵀy.
    share = tf.reduce_sum(targets**2, axis=1) - tf.reduce_sum(solution * rhs, axis=1)
    return solution, share


def _explicit_dual(table, bias_table, bucket: _Bucket):
    """The same minimizer as :func:`_explicit_primal` from an m × m system, for m < k.

    x = Fᵀ a where (F Fᵀ + λ w I) a = y. There y − F x = λ w a, so the entity's share of the
    loss is λ w aᵀy. Padded rows get a unit diagonal, so that a = 0 there even when λ = 0.
    """
    features = tf.gather(table, bucket.others)
    targets = bucket.values - tf.gather(bias_table, bucket.others)
    padding = tf.cast(bucket.others == bucket.padding_index, tf.float32)
    kernel = tf.matmul(features, features, transpose_b=True) + tf.linalg.diag(padding)
    coefficients = linalg.solve_ridge(kernel, targets, bucket.reg)
    solution = tf.linalg.matvec(features, coefficients, transpose_a=True)
    return solution, bucket.reg * tf.reduce_sum(coefficients * targets, axis=1)


def _implicit_primal(shared, table, bucket: _Bucket):
    """(YᵀY + Yᵀ(C − I)Y + λ w I) x = Yᵀ C p, with C − I and p zero off the interactions."""
    features = tf.gather(table, bucket.others)
    weighted = features * tf.sqrt(bucket.values)[..., None]  # (C − I)^½ Y, row by row
    gram = shared + tf.matmul(weighted, weighted, transpose_a=True)
    rhs = tf.linalg.matvec(features, 1.0 + bucket.values, transpose_a=True)
    solution = linalg.solve_ridge(gram, rhs, bucket.reg)
    return solution, _implicit_share(bucket, solution, rhs)


def _implicit_dual(eigenvalues, eigenvectors, rotated_table, bucket: _Bucket):
    """The same minimizer as :func:`_implicit_primal` from an m × m system (Woodbury).

    In the eigenbasis of YᵀY = Q Λ Qᵀ the shared part YᵀY + λ w I is the diagonal Λ + λ w.
    With S = (Λ + λ w)⁻¹, F the rotated features, D = C − I and g = Fᵀ c, the solution is
    x = Q S (g − Fᵀ D^½ z) where (D^½ F S Fᵀ D^½ + I) z = D^½ F S g.
    """
    features = tf.gather(rotated_table, bucket.others)  # F, (b, m, k)
    shrink = 1.0 / (eigenvalues + bucket.reg[:, None])  # S, (b, k)
    root = tf.sqrt(bucket.values)  # D^½, (b, m)
    g = tf.linalg.matvec(features, 1.0 + bucket.values, transpose_a=True)
    scaled = features * tf.sqrt(shrink)[:, None, :]  # F S^½
    kernel = tf.matmul(scaled, scaled, transpose_b=True) * root[:, :, None] * root[:, None, :]
    z = linalg.solve_ridge(kernel, root * tf.linalg.matvec(features, shrink * g), 1.0)
    rotated_solution = shrink * (g - tf.linalg.matvec(features, root * z, transpose_a=True))
    solution = tf.matmul(rotated_solution, eigenvectors, transpose_b=True)
    return solution, _implicit_share(bucket, rotated_solution, g)


def _implicit_share(bucket: _Bucket, solution, rhs):
    """An entity's loss Σ_j c_j (p_j − xᵀy_j)² + λ w ‖x‖² over ALL j, at its solution x.

    There it equals Σ c over the entity's interactions minus xᵀ(Yᵀ C p).
    """
    interactions = tf.cast(bucket.others != bucket.padding_index, tf.float32)
    total = tf.reduce_sum((1.0 + bucket.values) * interactions, axis=1)
    return total - tf.reduce_sum(solution * rhs, axis=1)


def _half_step(factors, bias, other, other_bias, other_reg, dual_buckets, primal_buckets, **flags):
    """Solve every bucket; return this side's new factors and biases, J, and the training SSE.

    ``other_reg`` is λ w of every entity of the other side, float32 ``(n_other,)``: J after
    the half-step is the sum of the solved entities' shares plus the other side's penalty.
    The SSE is J minus both sides' penalties (0 for the implicit model).
    """
    if flags["implicit"]:
        shared = tf.matmul(other, other, transpose_a=True)  # YᵀY, shared by every entity
        table = tf.pad(other, [[0, 1], [0, 0]])
        # eigh runs in float64 because the eigenvalues may span many decades.
        eigenvalues, eigenvectors = tf.linalg.eigh(tf.cast(shared, tf.float64))
        eigenvalues = tf.cast(tf.maximum(eigenvalues, 0.0), tf.float32)
        eigenvectors = tf.cast(eigenvectors, tf.float32)
        dual_inputs = (eigenvalues, eigenvectors, tf.matmul(table, eigenvectors))
        primal_inputs = (shared, table)
        dual_solver, primal_solver = _solver("implicit_dual"), _solver("implicit_primal")
    else:
        table = tf.concat([other, tf.ones_like(other[:, :1])], 1) if flags["use_bias"] else other
        primal_inputs = dual_inputs = (
            tf.pad(table, [[0, 1], [0, 0]]),
            tf.pad(other_bias, [[0, 1]]),
        )
        dual_solver, primal_solver = _solver("explicit_dual"), _solver("explicit_primal")
    solved = [dual_solver(*dual_inputs, bucket) for bucket in dual_buckets]
    solved += [primal_solver(*primal_inputs, bucket) for bucket in primal_buckets]
    solution = tf.concat([x for x, _ in solved], axis=0)
    buckets = dual_buckets + primal_buckets
    ids = tf.concat([bucket.ids for bucket in buckets], axis=0)[:, None]
    regs = tf.concat([bucket.reg for bucket in buckets], axis=0)

    rank = tf.shape(factors)[1]
    factors = tf.tensor_scatter_nd_update(factors, ids, solution[:, :rank])
    if flags["use_bias"]:
        bias = tf.tensor_scatter_nd_update(bias, ids, solution[:, rank])
    own_penalty = tf.reduce_sum(regs * tf.reduce_sum(solution**2, axis=1))
    other_penalty = tf.reduce_sum(other_reg * (tf.reduce_sum(other**2, axis=1) + other_bias**2))
    loss = tf.add_n([tf.reduce_sum(share) for _, share in solved]) + other_penalty
    sse = tf.zeros([]) if flags["implicit"] else loss - own_penalty - other_penalty
    return factors, bias, loss, sse


_MATRIX = tf.TensorSpec([None, None], tf.float32)
_VECTOR = tf.TensorSpec([None], tf.float32)
_BUCKET = _Bucket(
    ids=tf.TensorSpec([None], tf.int32),
    others=tf.TensorSpec([None, None], tf.int32),
    values=_MATRIX,
    reg=_VECTOR,
    padding_index=tf.TensorSpec([], tf.int32),
)
_SOLVERS = {
    "explicit_primal": (_explicit_primal, [_MATRIX, _VECTOR]),
    "explicit_dual": (_explicit_dual, [_MATRIX, _VECTOR]),
    "implicit_primal": (_implicit_primal, [_MATRIX, _MATRIX]),
    "implicit_dual": (_implicit_dual, [_VECTOR, _MATRIX, _MATRIX]),
}


@functools.cache
def _solver(name: str):
    """A bucket solver as a ``tf.function``, traced once per process for any bucket size."""
    function, inputs = _SOLVERS[name]
    return tf.function(function, input_signature=[*inputs, _BUCKET])


@functools.cache
def _compiled_half_step(implicit: bool, use_bias: bool):
    """:func:`_half_step` as a ``tf.function``, traced once per process for these flags.

    One graph per half-step lets TensorFlow overlap the buckets' work and saves the
    per-operation cost of eager execution; the signature (unknown sizes, a fixed number of
    buckets) keeps it from retracing for new data or for the other side.
    """
    signature = [_MATRIX, _VECTOR, _MATRIX, _VECTOR, _VECTOR]
    signature += [(_BUCKET,) * _DUAL_SLOTS, (_BUCKET,) * _PRIMAL_SLOTS]
    step = functools.partial(_half_step, implicit=implicit, use_bias=use_bias)
    return tf.function(step, input_signature=signature)


def _cg_half_step(factors, other, other_reg, dual_buckets, primal_buckets, steps):
    """``steps`` steps of batched conjugate gradient on every entity's implicit system.

    Every entity's system is A x = b with A = YᵀY + λ w I + Yᵀ(C − I)Y and b = Yᵀ C p, where
    only the entity's interactions enter (C − I) and p. CG starts from the current
    ``factors`` and all entities advance together. A product A x costs a shared k × k matmul
    plus, per bucket of padded interactions F (b, m, k), two batched matrix-vector products
    Fᵀ((C − I)(F x)): time linear in the number of interactions. The buckets are the ones the
    exact solver uses; only entities with interactions are updated.

    Args:
        factors: float32 ``(n, k)``, this side's current factors (the warm start).
        other: float32 ``(n_other, k)``, Y, fixed. other_reg: float32 ``(n_other,)``, λ w.
        dual_buckets, primal_buckets: this side's :class:`_Bucket` tuples (values α r).
        steps: int32 scalar, the number of CG steps.

    Returns:
        The new factors, float32 ``(n, k)``, and J after the half-step (float32 scalar).
    """
    buckets = dual_buckets + primal_buckets
    shared = tf.matmul(other, other, transpose_a=True)  # YᵀY, (k, k)
    table = tf.pad(other, [[0, 1], [0, 0]])  # padding points at the zero last row
    features = [tf.gather(table, bucket.others) for bucket in buckets]  # F, (b, m, k) each
    sizes = [tf.shape(bucket.ids)[0] for bucket in buckets]
    ids = tf.concat([bucket.ids for bucket in buckets], axis=0)
    reg = tf.concat([bucket.reg for bucket in buckets], axis=0)[:, None]

    def product(x):
        parts = []
        for f, bucket, part in zip(features, buckets, tf.split(x, sizes), strict=True):
            along = tf.linalg.matvec(f, part) * bucket.values  # (C − I) F x, (b, m)
            parts.append(tf.linalg.matvec(f, along, transpose_a=True))
        return tf.matmul(x, shared) + reg * x + tf.concat(parts, axis=0)

    rhs = tf.concat(
        [
            tf.linalg.matvec(f, 1.0 + bucket.values, transpose_a=True)
            for f, bucket in zip(features, buckets, strict=True)
        ],
        axis=0,
    )
    x = tf.gather(factors, ids)
    residual = rhs - product(x)
    direction = residual
    norm = tf.reduce_sum(residual**2, axis=1)
    for _ in tf.range(steps):
        moved = product(direction)
        step = tf.math.divide_no_nan(norm, tf.reduce_sum(direction * moved, axis=1))
        x += step[:, None] * direction
        residual -= step[:, None] * moved
        new_norm = tf.reduce_sum(residual**2, axis=1)
        direction = residual + tf.math.divide_no_nan(new_norm, norm)[:, None] * direction
        norm = new_norm
    # An entity's share of J is xᵀAx − 2 xᵀb + Σ c = Σ c − xᵀ(b + r), with r = b − A x the
    # residual CG carries along (exact up to float32 rounding). Padding has c − 1 = 0.
    interactions = tf.add_n(
        [
            tf.reduce_sum(tf.cast(bucket.others != bucket.padding_index, tf.float32))
            + tf.reduce_sum(bucket.values)
            for bucket in buckets
        ]
    )
    shares = interactions - tf.reduce_sum(x * (rhs + residual))
    other_penalty = tf.reduce_sum(other_reg * tf.reduce_sum(other**2, axis=1))
    return tf.tensor_scatter_nd_update(factors, ids[:, None], x), shares + other_penalty


def _cg_sweeps(
    user_factors, item_factors, user_reg, item_reg, *plans_and_counts
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``sweeps`` CG sweeps (users, then items); returns U, V and J after each sweep.

    ``plans_and_counts`` holds the user and item buckets (dual, primal each), then the
    int32 scalars ``steps`` and ``sweeps``.
    """
    user_dual, user_primal, item_dual, item_primal, steps, sweeps = plans_and_counts
    losses = tf.TensorArray(tf.float32, size=sweeps)
    for sweep in tf.range(sweeps):
        user_factors, _ = _cg_half_step(
            user_factors, item_factors, item_reg, user_dual, user_primal, steps
        )
        item_factors, loss = _cg_half_step(
            item_factors, user_factors, user_reg, item_dual, item_primal, steps
        )
        losses = losses.write(sweep, loss)
    return user_factors, item_factors, losses.stack()


@functools.cache
def _compiled_cg_sweeps():
    """:func:`_cg_sweeps` as a ``tf.function``, traced once per process."""
    buckets = [(_BUCKET,) * _DUAL_SLOTS, (_BUCKET,) * _PRIMAL_SLOTS] * 2
    scalar = tf.TensorSpec([], tf.int32)
    signature = [_MATRIX, _MATRIX, _VECTOR, _VECTOR, *buckets, scalar, scalar]
    return tf.function(_cg_sweeps, input_signature=signature)


@functools.cache
def _compiled_cg_half_step():
    """:func:`_cg_half_step` as a ``tf.function``, traced once per process."""
    signature = [_MATRIX, _MATRIX, _VECTOR]
    signature += [(_BUCKET,) * _DUAL_SLOTS, (_BUCKET,) * _PRIMAL_SLOTS]
    return tf.function(_cg_half_step, input_signature=[*signature, tf.TensorSpec([], tf.int32)])


# --------------------------------------------------------------------------------------------
# Bucketing
# --------------------------------------------------------------------------------------------


def _entity_cost(width, unknowns: int, dual: bool):
    """Estimated microseconds to solve one entity padded to ``width`` ratings."""
    width = np.asarray(width, dtype=np.float64)
    if dual:
        matmul, cholesky = 2 * width**2 * unknowns + 4 * width * unknowns, width**3 / 3
    else:
        matmul, cholesky = 2 * width * unknowns**2, np.full_like(width, unknowns**3 / 3)
    return _ENTITY_COST + _MATMUL_FLOP * matmul + _CHOLESKY_FLOP * cholesky


def _partition(sizes, widest, cost_of_width, slots: int) -> list[tuple[int, int]]:
    """Split consecutive classes into at most ``slots`` groups of least estimated cost.

    Args:
        sizes: int ``(J,)``, entities per class. widest: ``(J,)``, each class's largest count.
        cost_of_width: per-entity cost of a given padded width.
        slots: the most groups allowed.

    Returns:
        ``[(first, last), ...]``, inclusive class ranges covering ``0..J-1`` in order.
    """
    n = len(sizes)
    if n == 0:
        return []
    cumulative = np.concatenate([[0], np.cumsum(sizes)])
    members = cumulative[None, 1:] - cumulative[:-1, None]  # entities in classes i..j
    group_cost = _BUCKET_COST + members * cost_of_width(widest)[None, :]
    group_cost[np.tril_indices(n, -1)] = np.inf
    # best[g, j]: least cost of covering classes 0..j-1 with exactly g groups.
    best = np.full((slots + 1, n + 1), np.inf)
    best[0, 0] = 0.0
    start = np.zeros((slots + 1, n + 1), dtype=np.int64)
    for g in range(1, slots + 1):
        candidates = best[g - 1, :n, None] + group_cost  # (first, last)
        start[g, 1:] = candidates.argmin(axis=0)
        best[g, 1:] = candidates.min(axis=0)
    groups, g, end = [], int(np.argmin(best[1:, n])) + 1, n
    while end > 0:
        first = int(start[g, end])
        groups.append((first, end - 1))
        g, end = g - 1, first
    return groups[::-1]


def _plan(keys, others, values, n_others, reg, unknowns, allow_dual) -> tuple:
    """Pad one side's ratings into ``_DUAL_SLOTS`` dual and ``_PRIMAL_SLOTS`` primal buckets.

    Args:
        keys: int ``(n,)``, the entity of each rating on the side being solved.
        others: int ``(n,)``, the other side's index of each rating. values: float ``(n,)``.
        n_others: size of the other side (the padding index).
        reg: float ``(n_keys,)``, λ w of every entity.
        unknowns: unknowns per entity (k, or k + 1 with a bias).
        allow_dual: whether the dual form may be used.

    Returns:
        ``(dual_buckets, primal_buckets)``, tuples of :class:`_Bucket`, unused ones empty.
    """
    order = np.argsort(keys, kind="stable")
    counts = np.bincount(keys, minlength=len(reg))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sorted_others, sorted_values = others[order], values[order]

    seen = np.flatnonzero(counts > 0)
    labels, class_of = np.unique(np.searchsorted(_WIDTHS, counts[seen]), return_inverse=True)
    sizes = np.bincount(class_of)
    widest = np.zeros(len(labels), dtype=np.int64)
    np.maximum.at(widest, class_of, counts[seen])
    # Classes are sorted by width; the dual form pays off for the narrow ones.
    dual_wins = _entity_cost(widest, unknowns, True) < _entity_cost(widest, unknowns, False)
    n_dual = int(np.sum(dual_wins & allow_dual))

    def bucket(first: int, last: int) -> _Bucket:
        ids = seen[(class_of >= first) & (class_of <= last)]
        width = int(counts[ids].max())
        mask = np.arange(width) < counts[ids, None]
        positions = np.where(mask, starts[ids, None] + np.arange(width), 0)
        return _Bucket(
            ids=tf.constant(ids, tf.int32),
            others=tf.constant(np.where(mask, sorted_others[positions], n_others), tf.int32),
            values=tf.constant(np.where(mask, sorted_values[positions], 0), tf.float32),
            reg=tf.constant(reg[ids], tf.float32),
            padding_index=tf.constant(n_others, tf.int32),
        )

    def buckets(lo: int, hi: int, dual: bool, slots: int) -> tuple[_Bucket, ...]:
        groups = _partition(
            sizes[lo:hi], widest[lo:hi], lambda w: _entity_cost(w, unknowns, dual), slots
        )
        filled = [bucket(lo + first, lo + last) for first, last in groups]
        return tuple(filled) + tuple(_empty_bucket() for _ in range(slots - len(filled)))

    return (
        buckets(0, n_dual, True, _DUAL_SLOTS),
        buckets(n_dual, len(labels), False, _PRIMAL_SLOTS),
    )


def _empty_bucket() -> _Bucket:
    """A bucket with no entities, filling an unused slot."""
    return _Bucket(
        ids=tf.zeros([0], tf.int32),
        others=tf.zeros([0, 0], tf.int32),
        values=tf.zeros([0, 0], tf.float32),
        reg=tf.zeros([0], tf.float32),
        padding_index=tf.constant(0, tf.int32),
    )


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _rmse(predicted: np.ndarray, true: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(predicted - true, dtype=np.float64))))


def _check_ratings(
    ratings, name: str, nonnegative: bool = False, like: data.Ratings | None = None
) -> None:
    if not isinstance(ratings, data.Ratings):
        raise TypeError(f"{name}: expected data.Ratings, got {type(ratings).__name__}")
    if len(ratings) == 0:
        raise ValueError(f"{name}: is empty; need at least one rating")
    if like is not None and (ratings.n_users, ratings.n_items) != (like.n_users, like.n_items):
        raise ValueError(
            f"{name}: shape ({ratings.n_users}, {ratings.n_items}) differs from the training "
            f"ratings' ({like.n_users}, {like.n_items}); encode both with the same id maps"
        )
    if not len(ratings.users) == len(ratings.items) == len(ratings.values):
        raise ValueError(f"{name}: users, items and values must have the same length")
    check_indices(ratings.users, ratings.n_users, f"{name}.users")
    check_indices(ratings.items, ratings.n_items, f"{name}.items")
    values = np.asarray(ratings.values)
    if not np.isfinite(values).all():
        raise ValueError(f"{name}: values hold NaN or infinite entries")
    if nonnegative and (values < 0).any():
        raise ValueError(f"{name}: implicit feedback needs counts ≥ 0, got {values.min()}")
    keys = np.sort(ratings.users.astype(np.int64) * ratings.n_items + ratings.items)
    if (keys[1:] == keys[:-1]).any():
        raise ValueError(f"{name}: a (user, item) pair appears more than once")
