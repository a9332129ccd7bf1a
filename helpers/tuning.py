"""Tuning λ, the number of epochs and the rank: a sweep with per-epoch validation, and k-fold CV.

One training run per (rank, λ) records the validation RMSE after every epoch, so the epochs
axis of the search costs nothing extra::

    result = tuning.sweep(fit_part, validation, regs=[1, 3, 10, 30, 100, 300], epochs=60)
    result.table      # one row per (rank, reg, epoch): train_rmse, val_rmse, ...
    result.best       # Setting(rank=32, reg=30.0, epoch=41, val_rmse=0.87...)
    result.minima()   # where each (rank, reg) curve bottoms out
    tuning.cross_validate(train, result.best, folds=5)   # 0.8712 ± 0.0043

Every model in a sweep starts from the same seed, so two settings differ only in their
hyperparameters, never in their random initial factors.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from helpers import data, metrics

logger = logging.getLogger(__name__)

TABLE_KEYS = ("rank", "reg", "epoch")


@dataclass(frozen=True)
class Setting:
    """One point of the search: rank k, λ and the number of epochs, with its validation RMSE."""

    rank: int
    reg: float
    epoch: int
    val_rmse: float = math.nan


@dataclass(frozen=True)
class SweepResult:
    """What :func:`sweep` returns.

    Attributes:
        table: one row per (rank, reg, epoch) with the history's columns (``train_rmse``,
            ``val_rmse`` and, when the model reports them, ``loss`` and ``seconds``).
        best: the setting with the lowest validation RMSE (ties go to the earlier rank in
            ``ranks``, then the earlier λ in ``regs``, then the earlier epoch).
    """

    table: pd.DataFrame
    best: Setting

    def minima(self) -> pd.DataFrame:
        """Where each (rank, reg) curve bottoms out: one row per (rank, reg) with the epoch,
        ``val_rmse`` and ``train_rmse`` at the lowest validation RMSE, and the RMSE at the
        last epoch (``final_val_rmse``)."""
        rows = []
        for (rank, reg), curve in self.table.groupby(["rank", "reg"], sort=False):
            lowest = curve.loc[curve["val_rmse"].idxmin()]
            rows.append(
                {
                    "rank": rank,
                    "reg": reg,
                    "epoch": int(lowest["epoch"]),
                    "val_rmse": lowest["val_rmse"],
                    "train_rmse": lowest["train_rmse"],
                    "final_val_rmse": curve["val_rmse"].iloc[-1],
                }
            )
        return pd.DataFrame(rows)


@dataclass(frozen=True)
class CrossValidation:
    """What :func:`cross_validate` returns: the RMSE of each fold and their mean ± std.

    ``std`` is the sample standard deviation (ddof=1) of the per-fold RMSEs.
    """

    scores: pd.Series
    mean: float
    std: float

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f} (RMSE over {len(self.scores)} folds)"


def sweep(
    train: data.Ratings,
    validation: data.Ratings,
    regs: Sequence[float],
    ranks: Sequence[int] = (32,),
    epochs: int = 50,
    seed: int = 0,
    *,
    model_factory: Callable | None = None,
    model_kwargs: Mapping | None = None,
    progress: bool = False,
    **fit_kwargs,
) -> SweepResult:
    """Train one model per (rank, λ) on ``train``, recording validation RMSE after every epoch.

    Args:
        train: the ratings to fit.
        validation: held-out ratings, scored after every epoch (never the test split).
        regs: λ values to try, each finite and ≥ 0 (a log scale suits them).
        ranks: ranks k to try.
        epochs: epochs per run. Early stopping (``early_stopping_patience`` in
            ``fit_kwargs``) may end a run sooner; its table then has fewer rows.
        seed: seeds every model's initial factors (the same seed for all settings).
        model_factory: builds a model as ``model_factory(n_users=, n_items=, rank=, reg=,
            seed=, **model_kwargs)``; the model's ``fit(train, epochs=, validation=,
            **fit_kwargs)`` returns a history with ``epoch``, ``train_rmse`` and ``val_rmse``.
            Defaults to :class:`helpers.model.MatrixFactorization`.
        model_kwargs: more constructor arguments, e.g. ``{"weighting": "uniform"}``.
        progress: show a tqdm progress bar over the settings.
        **fit_kwargs: passed to ``fit``, e.g. ``optimizer`` or ``batch_size``.

    Returns:
        A :class:`SweepResult`.
    """
    _check_pair(train, validation)
    regs = _check_regs(regs)
    ranks = _check_ranks(ranks)
    _check_positive_int(epochs, "epochs")
    factory, model_kwargs = _factory(model_factory, model_kwargs, fit_kwargs)

    settings = [(rank, reg) for rank in ranks for reg in regs]
    if progress:
        from tqdm.auto import tqdm

        settings = tqdm(settings, desc="sweep", unit="setting")
    curves = []
    for rank, reg in settings:
        model = factory(
            n_users=train.n_users,
            n_items=train.n_items,
            rank=rank,
            reg=reg,
            seed=seed,
            **model_kwargs,
        )
        history = model.fit(train, epochs=epochs, validation=validation, **fit_kwargs)
        curve = _as_table(history, "model.fit")
        curves.append(curve.assign(rank=rank, reg=reg))
        logger.info("rank %d, reg %g: best val_rmse %.4f", rank, reg, curve["val_rmse"].min())

    table = pd.concat(curves, ignore_index=True)
    ordered = list(TABLE_KEYS) + [c for c in table.columns if c not in TABLE_KEYS]
    table = table[ordered]
    if table["val_rmse"].isna().all():
        raise ValueError("validation: the models reported no val_rmse; nothing to compare")
    best = table.loc[table["val_rmse"].idxmin()]
    return SweepResult(
        table=table,
        best=Setting(
            rank=int(best["rank"]),
            reg=float(best["reg"]),
            epoch=int(best["epoch"]),
            val_rmse=float(best["val_rmse"]),
        ),
    )


def cross_validate(
    ratings: data.Ratings | pd.DataFrame,
    setting: Setting | Mapping,
    folds: int = 5,
    seed: int = 0,
    *,
    model_factory: Callable | None = None,
    model_kwargs: Mapping | None = None,
    **fit_kwargs,
) -> CrossValidation:
    """k-fold cross-validation of one setting: train on k − 1 folds, RMSE on the held-out one.

    The rows are shuffled with ``seed`` and cut into ``folds`` parts of (nearly) equal size.
    Each fold's model trains for ``setting.epoch`` epochs without validation and starts from
    the same ``seed``.

    Args:
        ratings: encoded ratings, or a frame with ``user_id``, ``item_id`` and ``rating``
            (encoded here with id maps fit on the frame).
        setting: a :class:`Setting` (e.g. ``sweep(...).best``) or a mapping with ``rank``,
            ``reg`` and ``epoch``.
        folds: number of folds, at least 2.
        seed: seeds the shuffle and every model.
        model_factory, model_kwargs, **fit_kwargs: as in :func:`sweep`.

    Returns:
        A :class:`CrossValidation` (``print`` it for "mean ± std").
    """
    ratings = _as_ratings(ratings)
    setting = _as_setting(setting)
    _check_positive_int(folds, "folds")
    if folds < 2 or folds > len(ratings):
        raise ValueError(f"folds: must lie in [2, {len(ratings)}] (the ratings), got {folds}")
    factory, model_kwargs = _factory(model_factory, model_kwargs, fit_kwargs)

    shuffled = np.random.default_rng(seed).permutation(len(ratings))
    scores = []
    for held_out in np.array_split(shuffled, folds):
        keep = np.ones(len(ratings), dtype=bool)
        keep[held_out] = False
        model = factory(
            n_users=ratings.n_users,
            n_items=ratings.n_items,
            rank=setting.rank,
            reg=setting.reg,
            seed=seed,
            **model_kwargs,
        )
        model.fit(_subset(ratings, keep), epochs=setting.epoch, **fit_kwargs)
        predicted = model.predict(ratings.users[held_out], ratings.items[held_out])
        scores.append(metrics.rmse(predicted, ratings.values[held_out]))
        logger.info("fold %d of %d: rmse %.4f", len(scores), folds, scores[-1])
    series = pd.Series(scores, index=pd.RangeIndex(1, folds + 1, name="fold"), name="rmse")
    return CrossValidation(series, float(np.mean(scores)), float(np.std(scores, ddof=1)))


# --------------------------------------------------------------------------------------------
# Checks and small helpers
# --------------------------------------------------------------------------------------------


def _factory(model_factory, model_kwargs, fit_kwargs) -> tuple[Callable, dict]:
    for name in ("epochs", "validation"):
        if name in fit_kwargs:
            raise TypeError(f"{name}: set by the tuning function; do not pass it in fit_kwargs")
    if model_factory is None:
        from helpers.model import MatrixFactorization

        model_factory = MatrixFactorization
    if not callable(model_factory):
        raise TypeError(f"model_factory: expected a callable, got {type(model_factory)}")
    model_kwargs = dict(model_kwargs or {})
    clash = {"n_users", "n_items", "rank", "reg", "seed"} & set(model_kwargs)
    if clash:
        raise TypeError(f"model_kwargs: {sorted(clash)} are set by the tuning function")
    return model_factory, model_kwargs


def _as_table(history, name: str) -> pd.DataFrame:
    if not isinstance(history, pd.DataFrame):
        raise TypeError(f"{name}: expected a history DataFrame, got {type(history).__name__}")
    missing = [c for c in ("epoch", "train_rmse", "val_rmse") if c not in history.columns]
    if missing:
        raise ValueError(f"{name}: the history lacks column(s) {missing}")
    return history.reset_index(drop=True)


def _check_pair(train, validation) -> None:
    for name, value in (("train", train), ("validation", validation)):
        if not isinstance(value, data.Ratings):
            raise TypeError(f"{name}: expected data.Ratings, got {type(value).__name__}")
        if len(value) == 0:
            raise ValueError(f"{name}: is empty")
    if (train.n_users, train.n_items) != (validation.n_users, validation.n_items):
        raise ValueError(
            f"validation: has shape ({validation.n_users}, {validation.n_items}), train "
            f"({train.n_users}, {train.n_items}); encode both with the same id maps"
        )


def _check_regs(regs) -> list[float]:
    if isinstance(regs, (str, bytes)) or not isinstance(regs, (Sequence, np.ndarray)):
        raise TypeError(f"regs: expected a sequence of numbers, got {type(regs).__name__}")
    if len(regs) == 0:
        raise ValueError("regs: is empty; give at least one λ")
    values = []
    for reg in regs:
        if isinstance(reg, bool) or not isinstance(reg, (int, float, np.integer, np.floating)):
            raise TypeError(f"regs: expected numbers, got {reg!r}")
        if not math.isfinite(reg) or reg < 0:
            raise ValueError(f"regs: each λ must be finite and ≥ 0, got {reg}")
        values.append(float(reg))
    if len(set(values)) != len(values):
        raise ValueError(f"regs: has repeated values {values}")
    return values


def _check_ranks(ranks) -> list[int]:
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, (Sequence, np.ndarray)):
        raise TypeError(f"ranks: expected a sequence of integers, got {type(ranks).__name__}")
    if len(ranks) == 0:
        raise ValueError("ranks: is empty; give at least one rank")
    for rank in ranks:
        _check_positive_int(rank, "ranks")
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"ranks: has repeated values {list(ranks)}")
    return [int(rank) for rank in ranks]


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")


def _as_setting(setting) -> Setting:
    if isinstance(setting, Setting):
        return setting
    if isinstance(setting, Mapping):
        missing = [key for key in TABLE_KEYS if key not in setting]
        if missing:
            raise ValueError(f"setting: lacks {missing}; expected rank, reg and epoch")
        setting = Setting(int(setting["rank"]), float(setting["reg"]), int(setting["epoch"]))
        _check_positive_int(setting.rank, "setting")
        _check_positive_int(setting.epoch, "setting")
        return setting
    raise TypeError(f"setting: expected a Setting or a mapping, got {type(setting).__name__}")


def _as_ratings(ratings) -> data.Ratings:
    if isinstance(ratings, data.Ratings):
        if len(ratings) == 0:
            raise ValueError("ratings: is empty")
        return ratings
    if isinstance(ratings, pd.DataFrame):
        frame = data.validate_ratings(ratings)
        users, items = data.IdMap.fit(frame["user_id"]), data.IdMap.fit(frame["item_id"])
        return data.encode(frame, users, items)
    raise TypeError(f"ratings: expected data.Ratings or a DataFrame, got {type(ratings).__name__}")


def _subset(ratings: data.Ratings, keep: np.ndarray) -> data.Ratings:
    return data.Ratings(
        users=ratings.users[keep],
        items=ratings.items[keep],
        values=ratings.values[keep],
        n_users=ratings.n_users,
        n_items=ratings.n_items,
    )
