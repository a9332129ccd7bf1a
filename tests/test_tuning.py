"""The λ × epochs sweep, cross-validation and the sweep plots.

Stand-in models keep most tests independent of MatrixFactorization: a scripted model whose
validation curve is a known function of (λ, epoch), and a small NumPy ALS on planted
low-rank data. The real model is exercised at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from helpers import data, plots, tuning


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _planted(seed=0, n_users=60, n_items=50, rank=2, density=0.25, noise=0.5):
    """Ratings uᵀv + noise from a planted rank-2 matrix, split 80/20 into fit and validation."""
    rng = np.random.default_rng(seed)
    user_factors = rng.normal(size=(n_users, rank))
    item_factors = rng.normal(size=(n_items, rank))
    users, items = np.nonzero(rng.random((n_users, n_items)) < density)
    values = np.sum(user_factors[users] * item_factors[items], axis=1)
    values += noise * rng.normal(size=len(users))
    held_out = rng.random(len(users)) < 0.2

    def part(mask):
        return data.Ratings(
            users[mask].astype(np.int32),
            items[mask].astype(np.int32),
            values[mask].astype(np.float32),
            n_users,
            n_items,
        )

    return part(~held_out), part(held_out)


def _rmse(model, ratings):
    return float(
        np.sqrt(np.mean((model.predict(ratings.users, ratings.items) - ratings.values) ** 2))
    )


class NumpyALS:
    """Plain alternating least squares without biases; one epoch = one sweep."""

    def __init__(self, n_users, n_items, rank, reg, seed, init_scale=0.1):
        rng = np.random.default_rng(seed)
        self.user_factors = rng.normal(scale=init_scale, size=(n_users, rank))
        self.item_factors = rng.normal(scale=init_scale, size=(n_items, rank))
        self.reg = reg

    def _half_step(self, keys, others, values, own, other):
        for key in range(len(own)):
            rows = keys == key
            features = other[others[rows]]
            gram = features.T @ features + self.reg * np.eye(features.shape[1])
            own[key] = np.linalg.solve(gram, features.T @ values[rows])

    def fit(self, train, epochs, validation=None):
        rows = []
        for epoch in range(1, epochs + 1):
            self._half_step(
                train.users, train.items, train.values, self.user_factors, self.item_factors
            )
            self._half_step(
                train.items, train.users, train.values, self.item_factors, self.user_factors
            )
            val = _rmse(self, validation) if validation is not None else np.nan
            rows.append({"epoch": epoch, "train_rmse": _rmse(self, train), "val_rmse": val})
        return pd.DataFrame(rows)

    def predict(self, users, items):
        return np.sum(self.user_factors[users] * self.item_factors[items], axis=1).astype(
            np.float32
        )


class Scripted:
    """val_rmse = 0.8 + (log10 λ − 1)² + 0.01 (epoch − 3)² + 0.001 (rank − 16)²: best at
    λ = 10, epoch 3, rank 16. Records its calls."""

    calls: list = []

    def __init__(self, n_users, n_items, rank, reg, seed, **kwargs):
        self.rank, self.reg, self.seed, self.kwargs = rank, reg, seed, kwargs
        Scripted.calls.append(self)

    def fit(self, train, epochs, validation=None, **fit_kwargs):
        self.fit_kwargs = fit_kwargs
        epoch = np.arange(1, epochs + 1)
        shape = 0.8 + (np.log10(self.reg) - 1) ** 2 + 0.001 * (self.rank - 16) ** 2
        return pd.DataFrame(
            {
                "epoch": epoch,
                "loss": 1.0 / epoch,
                "train_rmse": 1.0 / epoch,
                "val_rmse": shape + 0.01 * (epoch - 3) ** 2,
            }
        )


TRAIN, VALIDATION = _planted()


# --- sweep: bookkeeping on a scripted curve -----------------------------------------------------


def test_sweep_table_is_tidy_and_best_is_the_scripted_optimum():
    Scripted.calls = []
    result = tuning.sweep(
        TRAIN,
        VALIDATION,
        regs=[0.1, 1, 10, 100],
        ranks=(8, 16),
        epochs=6,
        seed=7,
        model_factory=Scripted,
        model_kwargs={"weighting": "uniform"},
        batch_size=32,
    )
    table = result.table
    assert list(table.columns[:3]) == ["rank", "reg", "epoch"]
    assert len(table) == 2 * 4 * 6
    assert not table.duplicated(["rank", "reg", "epoch"]).any()
    assert result.best == tuning.Setting(rank=16, reg=10.0, epoch=3, val_rmse=pytest.approx(0.8))
    # One model per setting, all with the same seed and the extra arguments passed through.
    assert [(m.rank, m.reg) for m in Scripted.calls] == [
        (rank, reg) for rank in (8, 16) for reg in (0.1, 1, 10, 100)
    ]
    assert {m.seed for m in Scripted.calls} == {7}
    assert Scripted.calls[0].kwargs == {"weighting": "uniform"}
    assert Scripted.calls[0].fit_kwargs == {"batch_size": 32}

    minima = result.minima()
    assert len(minima) == 8 and set(minima["epoch"]) == {3}
    row = minima[(minima["rank"] == 8) & (minima["reg"] == 100)].iloc[0]
    assert row["val_rmse"] == pytest.approx(0.8 + 1 + 0.064)
    assert row["final_val_rmse"] == pytest.approx(0.8 + 1 + 0.064 + 0.09)


def test_sweep_rejects_bad_input():
    kwargs = {"model_factory": Scripted, "epochs": 2}
    with pytest.raises(ValueError, match="^regs: is empty"):
        tuning.sweep(TRAIN, VALIDATION, regs=[], **kwargs)
    with pytest.raises(ValueError, match="^regs: each λ must be finite and ≥ 0, got -1"):
        tuning.sweep(TRAIN, VALIDATION, regs=[1, -1], **kwargs)
    with pytest.raises(ValueError, match="^regs: each λ must be finite"):
        tuning.sweep(TRAIN, VALIDATION, regs=[np.nan], **kwargs)
    with pytest.raises(ValueError, match="^regs: has repeated values"):
        tuning.sweep(TRAIN, VALIDATION, regs=[1, 1.0], **kwargs)
    with pytest.raises(TypeError, match="^regs: expected a sequence"):
        tuning.sweep(TRAIN, VALIDATION, regs=0.1, **kwargs)
    with pytest.raises(ValueError, match="^ranks: must be a positive integer, got 0"):
        tuning.sweep(TRAIN, VALIDATION, regs=[1], ranks=(0,), model_factory=Scripted)
    with pytest.raises(ValueError, match="^epochs: must be a positive integer, got 0"):
        tuning.sweep(TRAIN, VALIDATION, regs=[1], epochs=0, model_factory=Scripted)
    with pytest.raises(TypeError, match="^validation: expected data.Ratings"):
        tuning.sweep(TRAIN, None, regs=[1], **kwargs)
    smaller = data.Ratings(VALIDATION.users, VALIDATION.items, VALIDATION.values, 60, 49)
    with pytest.raises(ValueError, match="^validation: has shape"):
        tuning.sweep(TRAIN, smaller, regs=[1], **kwargs)
    with pytest.raises(TypeError, match="^epochs: set by the tuning function"):
        tuning.cross_validate(TRAIN, {"rank": 2, "reg": 1, "epoch": 2}, epochs=3)


# --- sweep: the planted answer on a real learner ------------------------------------------------


def test_sweep_finds_the_interior_lambda_on_planted_data():
    # A rank-8 model on rank-2 data with ~10 ratings per user: λ = 0.01 overfits the noise,
    # λ = 100 shrinks every prediction to 0, and a middle λ is best.
    regs = [0.01, 0.1, 1, 10, 100]
    result = tuning.sweep(TRAIN, VALIDATION, regs, ranks=(8,), epochs=6, model_factory=NumpyALS)
    minima = result.minima().set_index("reg")["val_rmse"]
    assert result.best.reg in (0.1, 1, 10)
    assert result.best.val_rmse == minima.min()
    assert minima[0.01] > result.best.val_rmse + 0.3  # overfitting
    assert minima[100] > result.best.val_rmse + 0.3  # underfitting
    overfit = result.table[result.table["reg"] == 0.01].iloc[-1]
    assert overfit["train_rmse"] < 0.2 < overfit["val_rmse"] - 1  # fits noise, fails to transfer
    # Determinism: the same seed gives the same table, another seed other initial factors.
    again = tuning.sweep(TRAIN, VALIDATION, regs, ranks=(8,), epochs=6, model_factory=NumpyALS)
    pd.testing.assert_frame_equal(result.table, again.table)
    other = tuning.sweep(
        TRAIN, VALIDATION, regs, ranks=(8,), epochs=6, seed=1, model_factory=NumpyALS
    )
    assert not np.allclose(other.table["val_rmse"], result.table["val_rmse"])


# --- cross-validation ---------------------------------------------------------------------------


class MeanModel:
    """Predicts the mean of its training ratings; records what it saw."""

    seen: list = []

    def __init__(self, n_users, n_items, rank, reg, seed):
        self.args = (n_users, n_items, rank, reg, seed)

    def fit(self, train, epochs, **fit_kwargs):
        self.train, self.epochs, self.mean = train, epochs, float(np.mean(train.values))
        MeanModel.seen.append(self)
        return pd.DataFrame({"epoch": [epochs], "train_rmse": [0.0], "val_rmse": [np.nan]})

    def predict(self, users, items):
        self.asked = (np.asarray(users), np.asarray(items))
        return np.full(len(users), self.mean, np.float32)


def test_cross_validate_holds_out_each_rating_once():
    MeanModel.seen = []
    ratings = TRAIN  # 601 ratings: 5 folds of 120 or 121
    result = tuning.cross_validate(
        ratings, tuning.Setting(rank=4, reg=0.5, epoch=9), folds=5, model_factory=MeanModel
    )
    assert result.scores.index.tolist() == [1, 2, 3, 4, 5]
    keys = ratings.users.astype(np.int64) * 1000 + ratings.items
    lookup = dict(zip(keys.tolist(), ratings.values.tolist(), strict=True))
    held_out_all = []
    for model, score in zip(MeanModel.seen, result.scores, strict=True):
        assert model.args == (60, 50, 4, 0.5, 0) and model.epochs == 9
        held_out = model.asked[0].astype(np.int64) * 1000 + model.asked[1]
        trained = model.train.users.astype(np.int64) * 1000 + model.train.items
        assert len(held_out) in (120, 121)
        assert not set(held_out.tolist()) & set(trained.tolist())
        assert len(held_out) + len(trained) == len(ratings)
        truth = np.array([lookup[key] for key in held_out.tolist()])
        assert score == pytest.approx(np.sqrt(np.mean((truth - model.mean) ** 2)), rel=1e-5)
        held_out_all.extend(held_out.tolist())
    assert sorted(held_out_all) == sorted(keys.tolist())
    assert result.mean == pytest.approx(np.mean(result.scores))
    assert result.std == pytest.approx(np.std(result.scores, ddof=1))
    assert str(result).startswith(f"{result.mean:.4f} ± {result.std:.4f}")


def test_cross_validate_accepts_a_frame_and_a_mapping_and_is_seeded():
    frame = pd.DataFrame(
        {"user_id": TRAIN.users + 100, "item_id": TRAIN.items * 3, "rating": TRAIN.values}
    )
    setting = {"rank": 2, "reg": 1.0, "epoch": 3}
    first = tuning.cross_validate(frame, setting, folds=3, seed=4, model_factory=MeanModel)
    second = tuning.cross_validate(TRAIN, setting, folds=3, seed=4, model_factory=MeanModel)
    third = tuning.cross_validate(TRAIN, setting, folds=3, seed=5, model_factory=MeanModel)
    pd.testing.assert_series_equal(first.scores, second.scores)
    assert not np.allclose(first.scores, third.scores)
    with pytest.raises(ValueError, match="^folds: must lie in"):
        tuning.cross_validate(TRAIN, setting, folds=1, model_factory=MeanModel)
    with pytest.raises(ValueError, match="^setting: lacks"):
        tuning.cross_validate(TRAIN, {"rank": 2}, model_factory=MeanModel)
    with pytest.raises(TypeError, match="^ratings: expected data.Ratings or a DataFrame"):
        tuning.cross_validate([1, 2], setting, model_factory=MeanModel)


# --- plots of a sweep ---------------------------------------------------------------------------


def _scripted_table():
    return tuning.sweep(
        TRAIN, VALIDATION, regs=[10, 0.1, 1], epochs=5, model_factory=Scripted
    ).table


def test_heatmap_shows_the_table_with_lambda_ascending():
    table = _scripted_table()
    ax = plots.plot_sweep_heatmap(table)
    image = ax.get_images()[0]
    expected = table.pivot(index="reg", columns="epoch", values="val_rmse").sort_index()
    np.testing.assert_allclose(image.get_array(), expected.to_numpy())
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.1", "1", "10"]
    assert ax.get_xlabel() == "epoch" and "λ" in ax.get_ylabel()
    # The colour scale tops out at the largest last-epoch value: λ = 0.1 at epoch 5,
    # 0.8 + (−2)² + 0.001 (32 − 16)² + 0.01 (5 − 3)².
    assert image.norm.vmax == pytest.approx(0.8 + 4 + 0.256 + 0.04)
    assert "RMSE" in ax.figure.axes[1].get_ylabel()  # the colorbar


def test_curves_draw_one_line_per_lambda_and_need_a_rank_when_several():
    table = _scripted_table()
    ax = plots.plot_sweep_curves(table)
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["λ = 0.1", "λ = 1", "λ = 10"]
    assert "RMSE (stars)" in ax.get_ylabel()
    two_ranks = pd.concat([table, table.assign(rank=64)])
    with pytest.raises(ValueError, match=r"^rank: the table holds ranks \[32, 64\]"):
        plots.plot_sweep_heatmap(two_ranks)
    plots.plot_sweep_curves(two_ranks, rank=64)
    with pytest.raises(ValueError, match="^rank: 8 is not in the table"):
        plots.plot_sweep_curves(two_ranks, rank=8)


def test_history_plot_compares_runs():
    curves = Scripted(1, 1, 16, 10, 0).fit(None, epochs=4)
    ax = plots.plot_history({"λ = 10": curves, "λ = 1": curves.assign(val_rmse=2.0)})
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == [
        "λ = 10: training",
        "λ = 10: validation",
        "λ = 1: training",
        "λ = 1: validation",
    ]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "RMSE (stars)"
    fig_size = tuple(ax.figure.get_size_inches())
    assert fig_size == (8.0, 4.0)
    with pytest.raises(ValueError, match="^metrics:"):
        plots.plot_history(curves, metrics="auc")


def test_importing_plots_changes_no_matplotlib_setting():
    code = (
        "import matplotlib as m; before = dict(m.rcParams); backend = m.get_backend(); "
        "import helpers.plots; assert dict(m.rcParams) == before; "
        "assert m.get_backend() == backend"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(__file__) + "/..")


# --- the real MatrixFactorization ---------------------------------------------------------------


def test_sweep_with_matrix_factorization_finds_the_interior_lambda_deterministically():
    regs = [0.01, 1, 100]
    kwargs = {"ranks": (8,), "epochs": 100, "seed": 3, "model_kwargs": {"use_bias": False}}
    first = tuning.sweep(TRAIN, VALIDATION, regs, **kwargs)
    minima = first.minima().set_index("reg")["val_rmse"]
    assert first.best.reg == 1.0
    assert minima[0.01] > first.best.val_rmse + 0.1  # overfits
    assert minima[100] > first.best.val_rmse + 0.3  # underfits
    assert set(first.table.columns) >= {"loss", "train_rmse", "val_rmse", "seconds"}
    second = tuning.sweep(TRAIN, VALIDATION, regs, **kwargs)
    pd.testing.assert_frame_equal(
        first.table.drop(columns="seconds"), second.table.drop(columns="seconds")
    )


def test_sweep_passes_early_stopping_and_cross_validates_the_best():
    result = tuning.sweep(
        TRAIN,
        VALIDATION,
        [1, 100],
        ranks=(8,),
        epochs=100,
        model_kwargs={"use_bias": False},
        early_stopping_patience=5,
    )
    rows = result.table.groupby("reg").size()
    assert rows[100] < 100  # the flat, underfitting curve stops early
    assert result.best.reg == 1.0
    scores = tuning.cross_validate(
        TRAIN, result.best, folds=3, model_kwargs={"use_bias": False}
    ).scores
    assert len(scores) == 3 and scores.between(0.5, 1.2).all()
    worse = tuning.cross_validate(
        TRAIN, {"rank": 8, "reg": 100, "epoch": 20}, folds=3, model_kwargs={"use_bias": False}
    )
    assert worse.mean > scores.mean() + 0.2
