"""``MatrixFactorization``: biased matrix factorization trained with ``tf.GradientTape``.

The model predicts a rating as

    r̂_ui = μ + b_u + b_i + u_uᵀ v_i

(μ = b_u = b_i = 0 with ``use_bias=False``) and minimizes J/|Ω|, the series' objective

    J = Σ_{(u,i)∈Ω} (r_ui − r̂_ui)² + λ [ Σ_u w_u (‖u_u‖² + b_u²) + Σ_i w_i (‖v_i‖² + b_i²) ]

with w = 1 (``weighting="uniform"``) or w = the entity's number of training ratings
(``weighting="count"``). μ is the mean training rating; it is fixed, not trained.

Why it is fast (each choice was measured on a shared 2-core machine; ``benchmarks/mf.py``
reproduces the totals). Every step still differentiates the loss with ``tf.GradientTape``.

* The L2 term is computed once on the parameter tables, weighted by w, instead of on every
  gathered row: the same objective, without a (ratings × k) tensor. Each table row holds an
  entity's factors and its bias, [u_u, b_u], so ‖u_u‖² + b_u² is one squared row norm.
* The sampled dot products over Ω are computed chunk by chunk, so the gathered rows stay in
  the CPU cache, and their gradient is written by hand (``tf.custom_gradient``) as two
  sparse-times-dense products, E V and Eᵀ U, where E holds the upstream gradient on Ω.
  TensorFlow's own gradient of ``tf.gather`` would scatter a (ratings × k) tensor instead.
  The biases ride along as extra columns: [U, b_u, 1] · [V, 1, b_i] = uᵀv + b_u + b_i.
* The default optimizer is Adam written into the training graph (the same update as
  ``keras.optimizers.Adam``), so an epoch is one graph call with no per-variable Python
  work; any Keras optimizer works too, through ``apply_gradients``.
* A full batch is differentiated in slices of about a million ratings and the gradients are
  summed, so temporaries stay small and each slice's rows stay in cache: at 10M ratings this
  was about 1.4× faster than one pass, and the whole process peaked under 1.6 GB.
* The graphs take every tensor as an argument with open shapes, so they are traced once per
  Python process, whatever the model's shape, the data size or the batch size.

Users or items never seen in training (no rating in the data of the last ``fit``) get the
fallback of the series: their factor term contributes 0 and their bias is 0, so a wholly
cold pair is predicted as μ. ``user_seen`` and ``item_seen`` say which entities had ratings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from helpers import data

logger = logging.getLogger(__name__)

__all__ = ["MatrixFactorization"]

_WEIGHTINGS = ("uniform", "count")

# Ratings per chunk of the forward pass: 8192 × 64 float32 rows is 2 MiB per gathered table,
# small enough to stay in cache (about 5× faster than one unchunked pass over 1M ratings).
_CHUNK = 8192
# Ratings per slice of the gradient: a full batch is differentiated slice by slice, so that
# the temporaries stay small and the rows each slice touches stay in cache. At 10M ratings,
# 2**20 beat 2**18 (about 1.6× faster) and no slicing at all (about 1.4× faster).
_SLICE = 1 << 20
# The default optimizer: see "Defaults" in the class docstring.
_DEFAULT_LEARNING_RATE = 0.1
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPSILON = 1e-7
_FORMAT = "tf2mf.MatrixFactorization/1"
_ARRAYS = ("user_factors", "item_factors", "user_bias", "item_bias", "user_seen", "item_seen")


class MatrixFactorization(tf.Module):
    """Matrix factorization with biases, trained by gradient descent on the observed ratings.

    Args:
        n_users: number of users (rows of M); user ids are ``0..n_users-1``.
        n_items: number of items (columns of M).
        rank: k, the length of each user's and item's vector.
        reg: λ ≥ 0, in the units of the sum-form loss J (the same λ as ``ALS`` and
            ``linalg.fold_in``).
        use_bias: learn μ, b_u and b_i; without them r̂_ui = u_uᵀ v_i.
        weighting: ``"uniform"`` (w = 1) or ``"count"`` (w = number of training ratings).
        init_scale: standard deviation of the normal initial factors (biases start at 0).
        seed: seeds the initial factors and the mini-batch shuffles.

    Attributes (NumPy copies, float32 unless stated):
        user_factors ``(n_users, rank)``, item_factors ``(n_items, rank)``, user_bias
        ``(n_users,)``, item_bias ``(n_items,)``, global_bias (float μ), user_seen and
        item_seen (bool, which entities had training ratings). Factors of never-seen entities
        are returned as stored (their initial values under ``"count"``); ``predict`` ignores
        them through the seen masks.

    Defaults: rank 32, λ = 12 with uniform weighting, and (in ``fit``) 30 full-batch epochs of
    Adam with learning rate 0.1. They were chosen on a validation split carved out of the
    project's training ratings (λ in 8-20, learning rates 0.08-0.12, 15-60 epochs). On the
    project split (``random_split(seed=42)``) they give a test RMSE of 0.852 in about 1 s of
    fitting on 2 CPU cores. ``"uniform"`` is the default because it ranks far better at the
    same RMSE: precision@10 0.113 against 0.003 for ``"count"`` (λ = 0.12, test RMSE 0.852),
    which shrinks rarely rated items less and so puts them at the top of the lists.

    Example:
        >>> model = MatrixFactorization(train.n_users, train.n_items)
        >>> history = model.fit(train, validation=test, progress=True)
        >>> model.predict(test.users, test.items)
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        rank: int = 32,
        reg: float = 12.0,
        use_bias: bool = True,
        weighting: str = "uniform",
        init_scale: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(name="matrix_factorization")
        self.n_users = _check_int(n_users, "n_users", minimum=1)
        self.n_items = _check_int(n_items, "n_items", minimum=1)
        self.rank = _check_int(rank, "rank", minimum=1)
        self.reg = _check_real(reg, "reg", minimum=0.0, strict=False)
        self.use_bias = _check_bool(use_bias, "use_bias")
        if weighting not in _WEIGHTINGS:
            raise ValueError(f"weighting: expected 'uniform' or 'count', got {weighting!r}")
        self.weighting = weighting
        self.init_scale = _check_real(init_scale, "init_scale", minimum=0.0, strict=True)
        self.seed = _check_int(seed, "seed", minimum=0)

        rng = np.random.default_rng(self.seed)
        # Each row holds an entity's factors and then its bias: [u_u, b_u] and [v_i, b_i]. The
        # L2 term is then the weighted squared norm of each row, and one update serves both.
        self._user_table = tf.Variable(
            _initial_table(rng, self.n_users, self.rank, self.init_scale), name="user_table"
        )
        self._item_table = tf.Variable(
            _initial_table(rng, self.n_items, self.rank, self.init_scale), name="item_table"
        )
        self._global_bias = tf.Variable(0.0, trainable=False, name="global_bias")
        self._user_seen = tf.Variable(tf.zeros(self.n_users), trainable=False, name="user_seen")
        self._item_seen = tf.Variable(tf.zeros(self.n_items), trainable=False, name="item_seen")
        self._shuffle_rng = np.random.default_rng([self.seed, 1])
        self._keras_functions: dict = {}

    # ----------------------------------------------------------------------------------------
    # The protocol: parameters as NumPy arrays
    # ----------------------------------------------------------------------------------------

    @property
    def user_factors(self) -> np.ndarray:
        """U, float32 ``(n_users, rank)``."""
        return self._user_table.numpy()[:, : self.rank]

    @property
    def item_factors(self) -> np.ndarray:
        """V, float32 ``(n_items, rank)``."""
        return self._item_table.numpy()[:, : self.rank]

    @property
    def user_bias(self) -> np.ndarray:
        """b_u, float32 ``(n_users,)`` (zeros without biases)."""
        return self._user_table.numpy()[:, self.rank]

    @property
    def item_bias(self) -> np.ndarray:
        """b_i, float32 ``(n_items,)`` (zeros without biases)."""
        return self._item_table.numpy()[:, self.rank]

    @property
    def global_bias(self) -> float:
        """μ, the mean training rating (0 without biases or before ``fit``)."""
        return float(self._global_bias.numpy())

    @property
    def user_seen(self) -> np.ndarray:
        """bool ``(n_users,)``: users with at least one rating in the last ``fit``."""
        return self._user_seen.numpy() > 0

    @property
    def item_seen(self) -> np.ndarray:
        """bool ``(n_items,)``: items with at least one rating in the last ``fit``."""
        return self._item_seen.numpy() > 0

    def __repr__(self) -> str:
        return (
            f"MatrixFactorization(n_users={self.n_users}, n_items={self.n_items}, "
            f"rank={self.rank}, reg={self.reg}, use_bias={self.use_bias}, "
            f"weighting={self.weighting!r}, init_scale={self.init_scale}, seed={self.seed})"
        )

    # ----------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------

    def fit(
        self,
        train: data.Ratings,
        epochs: int = 30,
        batch_size: int | None = None,
        optimizer: keras.optimizers.Optimizer | str | None = None,
        validation: data.Ratings | None = None,
        early_stopping_patience: int | None = None,
        progress: bool = False,
    ) -> pd.DataFrame:
        """Train on ``train`` and return the per-epoch history.

        Training continues from the current parameters (build a new model to start over);
        μ, the seen masks and the L2 weights are set from ``train``, and the default Adam
        starts with fresh moment estimates.

        Args:
            train: the training ratings; ``n_users`` and ``n_items`` must match the model.
            epochs: the number of passes over ``train`` (at least 1).
            batch_size: ``None`` for full-batch gradient descent (one step per epoch), or the
                number of ratings per step; the ratings are reshuffled every epoch with a
                generator seeded by ``seed``.
            optimizer: ``None`` for Adam with learning rate 0.1 written into the training
                graph (the fast default); a Keras optimizer instance; or a Keras optimizer
                name (``"adam"``, ``"sgd"``, ``"adagrad"``, ...) with Keras' default settings,
                e.g. a learning rate of 0.001 for Adam. An instance keeps its state between
                ``fit`` calls and belongs to one model.
            validation: ratings to compute ``val_rmse`` on after every epoch, with the same
                cold-start fallback as ``predict``.
            early_stopping_patience: stop once ``val_rmse`` has not improved for this many
                epochs, and restore the parameters of the best epoch. Needs ``validation``.
                The history keeps every epoch that ran.
            progress: show a ``tqdm.auto`` progress bar, one tick per epoch, with the latest
                loss and RMSEs.

        Returns:
            A DataFrame with one row per epoch: ``epoch`` (1-based), ``loss`` (J/|Ω| averaged
            over the epoch's steps, each measured before its update, as Keras reports it),
            ``train_rmse`` (the data term of the same steps), ``val_rmse`` (NaN without
            validation) and ``seconds`` (wall time of the epoch, validation included).

        Raises:
            TypeError, ValueError: an argument is invalid; the message starts with its name.
        """
        users, items, values = self._check_ratings(train, "train")
        epochs = _check_int(epochs, "epochs", minimum=1)
        if batch_size is not None:
            batch_size = _check_int(batch_size, "batch_size", minimum=1)
        optimizer = _resolve_optimizer(optimizer)
        if validation is not None:
            validation = self._check_ratings(validation, "validation")
        if early_stopping_patience is not None:
            early_stopping_patience = _check_int(
                early_stopping_patience, "early_stopping_patience", minimum=1
            )
            if validation is None:
                raise ValueError("early_stopping_patience: needs validation data to watch")
        progress = _check_bool(progress, "progress")

        ratings, setup = self._prepare(users, items, values)
        if optimizer is None:
            trainer = _BuiltinAdam(self._parameters(), setup)
        else:
            trainer = self._keras_trainer(optimizer, setup)
        rows = self._train_loop(
            trainer, ratings, epochs, batch_size, validation, early_stopping_patience, progress
        )
        return pd.DataFrame(rows, columns=["epoch", "loss", "train_rmse", "val_rmse", "seconds"])

    def _prepare(self, users, items, values) -> tuple[dict, tuple]:
        """Sort the ratings by (user, item); set μ and the seen masks; build the L2 setup."""
        # The sparse gradient is built in compressed-row form, which needs row-major order.
        if not _sorted_by_user_and_item(users, items):
            order = np.argsort(users.astype(np.int64) * self.n_items + items, kind="stable")
            users, items, values = users[order], items[order], values[order]
        user_counts = np.bincount(users, minlength=self.n_users).astype(np.float32)
        item_counts = np.bincount(items, minlength=self.n_items).astype(np.float32)
        mean = float(np.mean(values, dtype=np.float64)) if self.use_bias else 0.0
        self._global_bias.assign(mean)
        self._user_seen.assign((user_counts > 0).astype(np.float32))
        self._item_seen.assign((item_counts > 0).astype(np.float32))
        if self.weighting == "uniform":
            user_counts, item_counts = np.ones_like(user_counts), np.ones_like(item_counts)
        setup = (
            tf.constant(user_counts),  # w_u
            tf.constant(item_counts),  # w_i
            tf.constant(self.reg / len(values), tf.float32),  # λ / |Ω|
            tf.constant(mean, tf.float32),  # μ
            tf.constant(1.0 if self.use_bias else 0.0),  # biases on or off
            tf.constant(_SLICE),  # ratings per slice of the gradient
        )
        ratings = {"users": users, "items": items, "values": values, "slice_size": _SLICE}
        return ratings, setup

    def _train_loop(self, trainer, ratings, epochs, batch_size, validation, patience, progress):
        """Run the epochs; record the history; handle validation and early stopping."""
        n = len(ratings["values"])
        full_batch = batch_size is None or batch_size >= n
        step_size = tf.constant(n if full_batch else batch_size, tf.int32)
        slice_size = int(ratings["slice_size"])
        in_order = _batch_tensors(ratings, np.arange(n), n, slice_size) if full_batch else None
        best_rmse, best_epoch, best_state = math.inf, 0, None
        rows = []
        bar = _progress_bar(epochs, progress)
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            if full_batch:
                batches = in_order
            else:
                batches = self._shuffled(ratings, batch_size, slice_size)
            loss, squared_error = trainer.run_epoch(batches, step_size)
            loss, train_rmse = float(loss), math.sqrt(float(squared_error) / n)
            val_rmse = math.nan if validation is None else self._rmse(*validation)
            rows.append((epoch, loss, train_rmse, val_rmse, time.perf_counter() - start))
            if bar is not None:
                bar.set_postfix(_postfix(loss, train_rmse, val_rmse), refresh=False)
                bar.update(1)
            if not math.isfinite(loss):
                logger.warning("fit: the loss became %s at epoch %d; stopping", loss, epoch)
                break
            if patience is not None:
                if val_rmse < best_rmse:
                    best_rmse, best_epoch, best_state = val_rmse, epoch, self._snapshot()
                elif epoch - best_epoch >= patience:
                    logger.info("fit: early stop at epoch %d, best epoch %d", epoch, best_epoch)
                    break
        if bar is not None:
            bar.close()
        if best_state is not None:
            self._restore(best_state)
        return rows

    def _shuffled(self, ratings, batch_size, slice_size) -> _Batch:
        """A fresh permutation of the ratings whose every batch is sorted by (user, item)."""
        n = len(ratings["values"])
        order = self._shuffle_rng.permutation(n)
        n_full = n // batch_size * batch_size
        # The ratings are stored sorted by (user, item), so sorting positions sorts a batch.
        order[:n_full] = np.sort(order[:n_full].reshape(-1, batch_size), axis=1).ravel()
        order[n_full:] = np.sort(order[n_full:])
        return _batch_tensors(ratings, order, batch_size, slice_size)

    def _snapshot(self) -> list[np.ndarray]:
        return [np.array(variable.numpy(), copy=True) for variable in self._parameters()]

    def _restore(self, state) -> None:
        for variable, value in zip(self._parameters(), state, strict=True):
            variable.assign(value)

    def _parameters(self) -> tuple[tf.Variable, tf.Variable]:
        """[U, b_u] and [V, b_i] (the bias columns stay 0 without ``use_bias``)."""
        return (self._user_table, self._item_table)

    def _keras_trainer(self, optimizer, setup) -> _KerasTrainer:
        """A trainer for a Keras optimizer; its graph is traced once per optimizer."""
        key = id(optimizer)
        if key not in self._keras_functions:
            optimizer.build(list(self._parameters()))
            epoch_function = _keras_epoch(self._parameters(), optimizer)
            # Keeping the optimizer referenced keeps its id from being reused.
            self._keras_functions[key] = (optimizer, epoch_function)
        return _KerasTrainer(self._keras_functions[key][1], setup)

    # ----------------------------------------------------------------------------------------
    # Prediction
    # ----------------------------------------------------------------------------------------

    def predict(self, users, items) -> np.ndarray:
        """Predicted ratings r̂_ui for pairs of user and item indices.

        A user or item with no rating in the training data of the last ``fit`` contributes
        no factor term and a bias of 0, so a pair of two such entities is predicted as μ.

        Args:
            users: int array-like of user indices, any shape.
            items: int array-like of item indices, the same shape as ``users``.

        Returns:
            float32 array of the same shape as ``users``.
        """
        users = _check_indices(users, "users", self.n_users)
        items = _check_indices(items, "items", self.n_items)
        if users.shape != items.shape:
            raise ValueError(
                f"items: expected the shape of users {users.shape}, got {items.shape}"
            )
        if users.size == 0:
            return np.zeros(users.shape, dtype=np.float32)
        predicted = _predict_graph(
            tuple(variable.value() for variable in self._parameters()),
            self._user_seen.value(),
            self._item_seen.value(),
            self._global_bias.value(),
            tf.constant(1.0 if self.use_bias else 0.0),
            tf.constant(users.ravel()),
            tf.constant(items.ravel()),
        )
        return predicted.numpy().reshape(users.shape)

    def _rmse(self, users, items, values) -> float:
        """RMSE of ``predict`` on the given ratings (float64 accumulation)."""
        errors = self.predict(users, items).astype(np.float64) - values
        return float(np.sqrt(np.mean(np.square(errors))))

    # ----------------------------------------------------------------------------------------
    # Saving and loading (no pickle)
    # ----------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to ``path`` (an ``.npz`` file) and return the path.

        The file holds the parameters, the seen masks and a JSON configuration with a SHA-256
        of both; nothing is pickled. It is written to a temporary file in the same folder
        and renamed into place, so an interrupted save never leaves a partial file. The
        optimizer's state is not saved.
        """
        path = _check_path(path, "path")
        arrays = {
            "user_factors": self.user_factors,
            "item_factors": self.item_factors,
            "user_bias": self.user_bias,
            "item_bias": self.item_bias,
            "user_seen": self.user_seen,
            "item_seen": self.item_seen,
        }
        config = {
            "format": _FORMAT,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "rank": self.rank,
            "reg": self.reg,
            "use_bias": self.use_bias,
            "weighting": self.weighting,
            "init_scale": self.init_scale,
            "seed": self.seed,
            "global_bias": self.global_bias,
        }
        config["sha256"] = _digest(arrays, config)
        encoded = np.frombuffer(json.dumps(config, sort_keys=True).encode("utf-8"), np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".save-", delete=False) as tmp:
            try:
                np.savez(tmp, config=encoded, **arrays)
            except BaseException:
                tmp.close()
                os.unlink(tmp.name)
                raise
        os.replace(tmp.name, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> MatrixFactorization:
        """Read a model written by :meth:`save`; predictions are bitwise equal to the saved one.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is not a saved model, is corrupt, or its arrays do not match
                their stored checksum or shapes.
        """
        path = _check_path(path, "path")
        if not path.is_file():
            raise FileNotFoundError(f"path: no such file: {path}")
        try:
            with np.load(path, allow_pickle=False) as archive:
                stored = {name: archive[name] for name in archive.files}
            config = json.loads(stored.pop("config").tobytes().decode("utf-8"))
        except (zipfile.BadZipFile, KeyError, OSError, EOFError, ValueError) as error:
            raise ValueError(
                f"path: {path} is not a readable saved MatrixFactorization "
                f"({type(error).__name__}: {error})"
            ) from error
        _check_saved(path, config, stored)
        model = cls(
            config["n_users"],
            config["n_items"],
            rank=config["rank"],
            reg=config["reg"],
            use_bias=config["use_bias"],
            weighting=config["weighting"],
            init_scale=config["init_scale"],
            seed=config["seed"],
        )
        model._user_table.assign(
            np.concatenate([stored["user_factors"], stored["user_bias"][:, None]], axis=1)
        )
        model._item_table.assign(
            np.concatenate([stored["item_factors"], stored["item_bias"][:, None]], axis=1)
        )
        model._user_seen.assign(stored["user_seen"].astype(np.float32))
        model._item_seen.assign(stored["item_seen"].astype(np.float32))
        model._global_bias.assign(config["global_bias"])
        return model

    # ----------------------------------------------------------------------------------------
    # Argument checks
    # ----------------------------------------------------------------------------------------

    def _check_ratings(self, ratings, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Check a ``data.Ratings`` against the model; return (users, items, values) arrays."""
        if not isinstance(ratings, data.Ratings):
            raise TypeError(
                f"{name}: expected helpers.data.Ratings (see data.encode), "
                f"got {type(ratings).__name__}"
            )
        if (ratings.n_users, ratings.n_items) != (self.n_users, self.n_items):
            raise ValueError(
                f"{name}: has n_users={ratings.n_users}, n_items={ratings.n_items}; the model "
                f"has n_users={self.n_users}, n_items={self.n_items}"
            )
        users = _check_indices(ratings.users, f"{name}.users", self.n_users)
        items = _check_indices(ratings.items, f"{name}.items", self.n_items)
        values = np.asarray(ratings.values)
        if not np.issubdtype(values.dtype, np.floating) and not np.issubdtype(
            values.dtype, np.integer
        ):
            raise TypeError(f"{name}.values: expected numbers, got dtype {values.dtype}")
        if users.ndim != 1 or users.shape != items.shape or users.shape != values.shape:
            raise ValueError(
                f"{name}: users, items and values must be 1-D of one length, got shapes "
                f"{users.shape}, {items.shape}, {values.shape}"
            )
        if len(values) == 0:
            raise ValueError(f"{name}: is empty; need at least one rating")
        values = values.astype(np.float32, copy=False)
        if not np.isfinite(values).all():
            raise ValueError(f"{name}.values: has NaN or infinite ratings")
        return users, items, values


# --------------------------------------------------------------------------------------------
# The sampled dot products and their sparse gradient
# --------------------------------------------------------------------------------------------


def _sampled_dot(user_table, item_table, users, items) -> tf.Tensor:
    """``user_table[users[j]] · item_table[items[j]]`` for every j, float32 ``(n,)``.

    Runs chunk by chunk (``_CHUNK`` pairs at a time), so the gathered rows stay in the cache
    instead of filling two (n × k) tensors.
    """
    n = tf.size(users)
    n_chunks = (n + _CHUNK - 1) // _CHUNK

    def one_chunk(chunk, dots):
        start = chunk * _CHUNK
        user_rows = tf.gather(user_table, users[start : start + _CHUNK])
        item_rows = tf.gather(item_table, items[start : start + _CHUNK])
        return chunk + 1, dots.write(chunk, tf.reduce_sum(user_rows * item_rows, axis=1))

    dots = tf.TensorArray(tf.float32, size=n_chunks, infer_shape=False, element_shape=[None])
    _, dots = tf.while_loop(lambda chunk, _: chunk < n_chunks, one_chunk, (0, dots))
    return dots.concat()


def _sampled_dot_with_sparse_gradient(user_table, item_table, batch):
    """:func:`_sampled_dot` over a batch, with its gradient as two sparse-dense products.

    With E the (n_users × n_items) sparse matrix holding the upstream gradient g_j at
    (users[j], items[j]), the gradients are E · item_table and Eᵀ · user_table. Both sparse
    matrices are built in compressed-row form, which needs row-major order: the batch is
    sorted by (user, item), and ``batch.by_item`` orders it by (item, user). (Building Eᵀ
    this way rather than multiplying with ``transpose_a=True`` keeps the result bitwise
    reproducible; the transposed product is not.)
    """
    n_users, n_items = tf.shape(user_table, tf.int64)[0], tf.shape(item_table, tf.int64)[0]
    pairs = tf.cast(tf.stack([batch.users, batch.items], axis=1), tf.int64)
    pairs_by_item = tf.gather(pairs[:, ::-1], batch.by_item)

    @tf.custom_gradient
    def sampled_dot(user_table, item_table):
        def gradient(upstream):
            by_user = tf.raw_ops.SparseTensorToCSRSparseMatrix(
                indices=pairs, values=upstream, dense_shape=tf.stack([n_users, n_items])
            )
            by_item = tf.raw_ops.SparseTensorToCSRSparseMatrix(
                indices=pairs_by_item,
                values=tf.gather(upstream, batch.by_item),
                dense_shape=tf.stack([n_items, n_users]),
            )
            user_gradient = tf.raw_ops.SparseMatrixMatMul(a=by_user, b=item_table)
            item_gradient = tf.raw_ops.SparseMatrixMatMul(a=by_item, b=user_table)
            return user_gradient, item_gradient

        return _sampled_dot(user_table, item_table, batch.users, batch.items), gradient

    return sampled_dot(user_table, item_table)


# --------------------------------------------------------------------------------------------
# The training graph. Every function is traced once per process, for any data size, batch
# size and model shape: all shapes are left open in the input signatures.
# --------------------------------------------------------------------------------------------

_INDEX = tf.TensorSpec([None], tf.int32)
_VECTOR = tf.TensorSpec([None], tf.float32)
_MATRIX = tf.TensorSpec([None, None], tf.float32)
_SCALAR = tf.TensorSpec([], tf.float32)
_COUNT = tf.TensorSpec([], tf.int32)
_PARAMETERS = (_MATRIX, _MATRIX)  # [U, b_u], [V, b_i]


class _Batch(NamedTuple):
    """Ratings as the training graph takes them: steps of ``step_size``, cut into slices.

    Within each step, ``users``, ``items`` and ``values`` are sorted by (user, item). Within
    each slice (at most ``slice_size`` ratings of a step), ``by_item`` lists the positions,
    counted from the slice's start, sorted by (item, user).
    """

    users: tf.Tensor  # int32 (n,)
    items: tf.Tensor  # int32 (n,)
    values: tf.Tensor  # float32 (n,)
    by_item: tf.Tensor  # int32 (n,), positions within the slice


_BATCH = _Batch(_INDEX, _INDEX, _VECTOR, _INDEX)
# w_u, w_i, λ/|Ω|, μ, biases on (1) or off (0), ratings per slice
_SETUP = (_VECTOR, _VECTOR, _SCALAR, _SCALAR, _SCALAR, _COUNT)


def _augment(parameters, bias_on) -> tuple[tf.Tensor, tf.Tensor]:
    """[U, b_u, s] and [V, s, b_i] with s = 1 (biases on) or 0 (off).

    One dot product of these rows gives u_uᵀv_i + s (b_u + b_i); with s = 0 the bias columns
    get no gradient, so they stay at 0.
    """
    user_table, item_table = parameters
    rank = tf.shape(item_table)[1] - 1
    user_switch = tf.fill([tf.shape(user_table)[0], 1], bias_on)
    item_switch = tf.fill([tf.shape(item_table)[0], 1], bias_on)
    user_rows = tf.concat([user_table, user_switch], axis=1)
    item_rows = tf.concat([item_table[:, :rank], item_switch, item_table[:, rank:]], axis=1)
    return user_rows, item_rows


def _loss_and_gradients(parameters, batch, start, end, setup):
    """J/|Ω| estimated on the ratings ``[start, end)`` of ``batch``, and its gradient.

    The data term is averaged over those ratings; the L2 term is computed once on the tables,
    weighted by w and scaled by λ/|Ω|, so the full training set gives exactly J/|Ω|. The data
    term is differentiated one slice of at most ``slice_size`` ratings at a time and summed,
    so memory and cache use do not grow with the number of ratings.

    Returns:
        ``(loss, squared, gradients)``: the estimate of J/|Ω|, the sum of squared errors and
        the gradient with respect to each table in ``parameters``.
    """
    user_weight, item_weight, scale, mean, bias_on, slice_size = setup
    count = tf.cast(end - start, tf.float32)
    with tf.GradientTape() as outer:
        outer.watch(parameters)
        user_rows, item_rows = _augment(parameters, bias_on)
        # ‖u_u‖² + b_u² is the squared norm of the table row [u_u, b_u].
        l2 = tf.reduce_sum(user_weight * tf.reduce_sum(tf.square(parameters[0]), axis=1))
        l2 += tf.reduce_sum(item_weight * tf.reduce_sum(tf.square(parameters[1]), axis=1))

    def one_slice(slice_start, squared, user_gradient, item_gradient):
        slice_end = tf.minimum(slice_start + slice_size, end)
        part = _Batch(*(column[slice_start:slice_end] for column in batch))
        with tf.GradientTape() as tape:
            tape.watch([user_rows, item_rows])
            dots = _sampled_dot_with_sparse_gradient(user_rows, item_rows, part)
            part_squared = tf.reduce_sum(tf.square(part.values - mean - dots))
            part_mean = part_squared / count  # this slice's share of the mean squared error
        user_part, item_part = tape.gradient(part_mean, [user_rows, item_rows])
        return (
            slice_end,
            squared + part_squared,
            user_gradient + user_part,
            item_gradient + item_part,
        )

    _, squared, user_gradient, item_gradient = tf.while_loop(
        lambda slice_start, *_: slice_start < end,
        one_slice,
        (start, tf.constant(0.0), tf.zeros_like(user_rows), tf.zeros_like(item_rows)),
        parallel_iterations=1,
    )
    # Chain rule through the augmented rows, and the L2 term weighted by λ/|Ω|.
    gradients = outer.gradient(
        [user_rows, item_rows, l2],
        parameters,
        output_gradients=[user_gradient, item_gradient, scale],
    )
    return squared / count + scale * l2, squared, tuple(gradients)


def _over_batches(step, state, n, step_size):
    """Run ``step(state, start, end) -> (state, loss, squared)`` over consecutive batches.

    Returns the final state, the mean loss over the steps and the summed squared errors.
    """
    n_steps = (n + step_size - 1) // step_size

    def body(index, state, total_loss, total_squared):
        start = index * step_size
        state, loss, squared = step(state, start, tf.minimum(start + step_size, n))
        return index + 1, state, total_loss + loss, total_squared + squared

    _, state, total_loss, total_squared = tf.while_loop(
        lambda index, *_: index < n_steps,
        body,
        (tf.constant(0), state, tf.constant(0.0), tf.constant(0.0)),
        parallel_iterations=1,
    )
    return state, total_loss / tf.cast(n_steps, tf.float32), total_squared


@tf.function(
    input_signature=[
        (_PARAMETERS, _PARAMETERS, _PARAMETERS, _SCALAR),
        _BATCH,
        _COUNT,
        _SETUP,
        _SCALAR,
    ],
    autograph=False,
)
def _adam_epoch(state, batch, step_size, setup, learning_rate):
    """One epoch of Adam (Kingma and Ba, 2015) on the state (parameters, m, v, step)."""
    beta_1, beta_2 = _ADAM_BETAS

    def adam_step(state, start, end):
        parameters, means, squares, count = state
        loss, squared, gradients = _loss_and_gradients(parameters, batch, start, end, setup)
        count += 1.0
        rate = learning_rate * tf.sqrt(1.0 - beta_2**count) / (1.0 - beta_1**count)
        means = tuple(
            beta_1 * m + (1.0 - beta_1) * g for m, g in zip(means, gradients, strict=True)
        )
        squares = tuple(
            beta_2 * v + (1.0 - beta_2) * g * g for v, g in zip(squares, gradients, strict=True)
        )
        parameters = tuple(
            p - rate * m / (tf.sqrt(v) + _ADAM_EPSILON)
            for p, m, v in zip(parameters, means, squares, strict=True)
        )
        return (parameters, means, squares, count), loss, squared

    return _over_batches(adam_step, state, tf.size(batch.values), step_size)


class _BuiltinAdam:
    """Adam in the training graph; keeps its moments as tensors between epochs."""

    def __init__(self, variables, setup) -> None:
        self._variables = variables
        self._setup = setup
        parameters = tuple(variable.value() for variable in variables)
        zeros = tuple(tf.zeros_like(parameter) for parameter in parameters)
        self._state = (parameters, zeros, zeros, tf.constant(0.0))

    def run_epoch(self, batch, step_size) -> tuple[tf.Tensor, tf.Tensor]:
        self._state, loss, squared = _adam_epoch(
            self._state, batch, step_size, self._setup, tf.constant(_DEFAULT_LEARNING_RATE)
        )
        for variable, value in zip(self._variables, self._state[0], strict=True):
            variable.assign(value)
        return loss, squared


class _KerasTrainer:
    """Training with a Keras optimizer, which updates the model's variables in place."""

    def __init__(self, epoch_function, setup) -> None:
        self._epoch_function = epoch_function
        self._setup = setup

    def run_epoch(self, batch, step_size) -> tuple[tf.Tensor, tf.Tensor]:
        return self._epoch_function(batch, step_size, self._setup)


def _keras_epoch(parameters, optimizer):
    """The epoch graph for a Keras optimizer, traced once per optimizer instance."""

    @tf.function(input_signature=[_BATCH, _COUNT, _SETUP], autograph=False)
    def run_epoch(batch, step_size, setup):
        def keras_step(state, start, end):
            loss, squared, gradients = _loss_and_gradients(parameters, batch, start, end, setup)
            optimizer.apply_gradients(zip(gradients, parameters, strict=True))
            return state, loss, squared

        n = tf.size(batch.values)
        _, loss, squared = _over_batches(keras_step, tf.constant(0), n, step_size)
        return loss, squared

    return run_epoch


@tf.function(
    input_signature=[_PARAMETERS, _VECTOR, _VECTOR, _SCALAR, _SCALAR, _INDEX, _INDEX],
    autograph=False,
)
def _predict_graph(parameters, user_seen, item_seen, mean, bias_on, users, items):
    """μ + masked biases and factor terms: never-seen users and items contribute 0."""
    user_table, item_table = parameters
    masked = (user_table * user_seen[:, None], item_table * item_seen[:, None])
    user_rows, item_rows = _augment(masked, bias_on)
    return mean + _sampled_dot(user_rows, item_rows, users, items)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _initial_table(rng, rows: int, rank: int, scale: float) -> np.ndarray:
    """Normal factors with standard deviation ``scale``, and a zero bias column."""
    table = np.zeros((rows, rank + 1), dtype=np.float32)
    table[:, :rank] = rng.normal(0.0, scale, (rows, rank))
    return table


def _batch_tensors(
    ratings: dict, order: np.ndarray, step_size: int, slice_size: int = _SLICE
) -> _Batch:
    """The ratings taken in ``order``, as the training graph's batch columns.

    Each step (a run of ``step_size`` positions of ``order``) must already be sorted by
    (user, item). The graph differentiates each step in slices of at most ``slice_size``
    ratings, so ``by_item`` lists positions within each slice.
    """
    users, items = ratings["users"][order], ratings["items"][order]
    by_item = np.empty(len(order), dtype=np.int32)
    for step_start in range(0, len(order), step_size):
        step_end = min(step_start + step_size, len(order))
        for start in range(step_start, step_end, slice_size):
            end = min(start + slice_size, step_end)
            # A stable sort by item keeps the (sorted) user order within each item.
            by_item[start:end] = np.argsort(items[start:end], kind="stable")
    return _Batch(
        users=tf.constant(users),
        items=tf.constant(items),
        values=tf.constant(ratings["values"][order]),
        by_item=tf.constant(by_item),
    )


def _sorted_by_user_and_item(users: np.ndarray, items: np.ndarray) -> bool:
    """Whether the pairs are in strictly increasing (user, item) order."""
    user_steps = np.diff(users)
    return bool(np.all(user_steps >= 0) and np.all(np.diff(items)[user_steps == 0] > 0))


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: must be an integer ≥ {minimum}, got {value!r}")
    if value < minimum:
        qualifier = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
        raise ValueError(f"{name}: must be {qualifier}, got {value}")
    return int(value)


def _check_real(value, name: str, minimum: float, strict: bool) -> float:
    relation = ">" if strict else "≥"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: must be a number {relation} {minimum}, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise ValueError(f"{name}: must be a finite number {relation} {minimum}, got {value}")
    return value


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: must be True or False, got {value!r}")
    return bool(value)


def _check_indices(values, name: str, size: int) -> np.ndarray:
    """Integer indices in ``[0, size)`` as an int32 array."""
    array = np.asarray(values)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise TypeError(f"{name}: expected integer indices, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= size):
        raise ValueError(
            f"{name}: indices must lie in [0, {size}), got values from {array.min()} "
            f"to {array.max()}"
        )
    return array.astype(np.int32, copy=False)


def _check_path(path, name: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _resolve_optimizer(optimizer):
    """``None`` (built-in Adam), a Keras optimizer instance, or a Keras optimizer name."""
    if optimizer is None or isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer
    if isinstance(optimizer, str):
        try:
            return keras.optimizers.get(optimizer)
        except ValueError as error:
            raise ValueError(
                f"optimizer: unknown optimizer name {optimizer!r}; use e.g. 'adam', 'sgd', "
                "'adagrad', 'rmsprop' or a keras.optimizers.Optimizer instance"
            ) from error
    raise TypeError(
        f"optimizer: expected None, a name or a keras.optimizers.Optimizer, "
        f"got {type(optimizer).__name__}"
    )


def _progress_bar(epochs: int, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=epochs, desc="fit", unit="epoch")


def _postfix(loss: float, train_rmse: float, val_rmse: float) -> dict:
    postfix = {"loss": f"{loss:.4f}", "train_rmse": f"{train_rmse:.4f}"}
    if not math.isnan(val_rmse):
        postfix["val_rmse"] = f"{val_rmse:.4f}"
    return postfix


def _digest(arrays: dict, config: dict) -> str:
    """SHA-256 over the configuration (bar the digest) and every array's dtype, shape, bytes."""
    digest = hashlib.sha256()
    settings = {key: value for key, value in config.items() if key != "sha256"}
    digest.update(json.dumps(settings, sort_keys=True).encode("utf-8"))
    for name in _ARRAYS:
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"|{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _check_saved(path: Path, config: dict, stored: dict) -> None:
    """Check a loaded file's format, array names, checksum and shapes."""
    if not isinstance(config, dict) or config.get("format") != _FORMAT:
        raise ValueError(f"path: {path} is not a saved MatrixFactorization (format {_FORMAT})")
    missing = sorted(set(_ARRAYS) - set(stored))
    if missing:
        raise ValueError(f"path: {path} lacks the arrays {missing}")
    if _digest(stored, config) != config.get("sha256"):
        raise ValueError(
            f"path: {path} is corrupt: its arrays or settings do not match the stored SHA-256"
        )
    try:
        n_users, n_items, rank = (int(config[key]) for key in ("n_users", "n_items", "rank"))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"path: {path} has an incomplete configuration ({error})") from error
    expected = {
        "user_factors": ((n_users, rank), np.float32),
        "item_factors": ((n_items, rank), np.float32),
        "user_bias": ((n_users,), np.float32),
        "item_bias": ((n_items,), np.float32),
        "user_seen": ((n_users,), np.bool_),
        "item_seen": ((n_items,), np.bool_),
    }
    for name, (shape, dtype) in expected.items():
        if stored[name].shape != shape or stored[name].dtype != dtype:
            raise ValueError(
                f"path: {path}: array {name} has shape {stored[name].shape} and dtype "
                f"{stored[name].dtype}, expected {shape} and {np.dtype(dtype)}"
            )
