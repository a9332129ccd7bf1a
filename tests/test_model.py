"""Tests for helpers.model.MatrixFactorization on tiny hand-made and planted problems."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from helpers import data  # noqa: E402
from helpers import model as model_module  # noqa: E402
from helpers.model import MatrixFactorization  # noqa: E402

# --------------------------------------------------------------------------------------------
# Fixtures: a tiny hand-made matrix and a planted low-rank one
# --------------------------------------------------------------------------------------------

# 4 users × 5 items; user 3 and item 4 have no ratings (cold).
TINY_USERS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 0], dtype=np.int32)
TINY_ITEMS = np.array([0, 1, 3, 1, 2, 0, 2, 3, 2], dtype=np.int32)
TINY_VALUES = np.array([5, 3, 1, 4, 2, 1, 5, 4, 2.5], dtype=np.float32)


@pytest.fixture
def tiny() -> data.Ratings:
    return data.Ratings(TINY_USERS, TINY_ITEMS, TINY_VALUES, n_users=4, n_items=5)


def planted(n_users=120, n_items=90, rank=3, observed=0.5, noise=0.1, seed=0):
    """μ + b_u + b_i + U Vᵀ + N(0, noise²) on a random subset of cells; (train, held out)."""
    rng = np.random.default_rng(seed)
    user_factors = rng.normal(0, 1 / np.sqrt(rank), (n_users, rank))
    item_factors = rng.normal(0, 1, (n_items, rank))
    user_bias, item_bias = rng.normal(0, 0.3, n_users), rng.normal(0, 0.3, n_items)
    cells = np.flatnonzero(rng.random(n_users * n_items) < observed)
    users, items = cells // n_items, cells % n_items
    clean = (
        3.5
        + user_bias[users]
        + item_bias[items]
        + np.sum(user_factors[users] * item_factors[items], axis=1)
    )
    values = (clean + rng.normal(0, noise, len(cells))).astype(np.float32)
    held_out = rng.random(len(cells)) < 0.1

    def subset(mask):
        return data.Ratings(
            users[mask].astype(np.int32),
            items[mask].astype(np.int32),
            values[mask],
            n_users,
            n_items,
        )

    return subset(~held_out), subset(held_out)


def hand_objective_and_gradients(parameters, ratings, reg, weighting, mean):
    """J/|Ω| and its gradient w.r.t. (U, V, b_u, b_i), derived by hand, in float64.

    With e_ui = r_ui − μ − b_u − b_i − u_uᵀv_i and n = |Ω|:
        ∂(J/n)/∂u_u = (2/n) (−Σ_{i∈Ω_u} e_ui v_i + λ w_u u_u),
        ∂(J/n)/∂b_u = (2/n) (−Σ_{i∈Ω_u} e_ui + λ w_u b_u), and the same for items.
    """
    user_factors, item_factors, user_bias, item_bias = (p.astype(np.float64) for p in parameters)
    users, items, values = ratings.users, ratings.items, ratings.values.astype(np.float64)
    n = len(values)
    residual = values - (
        mean
        + user_bias[users]
        + item_bias[items]
        + np.sum(user_factors[users] * item_factors[items], axis=1)
    )
    if weighting == "count":
        user_weight = np.bincount(users, minlength=ratings.n_users).astype(np.float64)
        item_weight = np.bincount(items, minlength=ratings.n_items).astype(np.float64)
    else:
        user_weight, item_weight = np.ones(ratings.n_users), np.ones(ratings.n_items)
    penalty = np.sum(user_weight * (np.sum(user_factors**2, axis=1) + user_bias**2)) + np.sum(
        item_weight * (np.sum(item_factors**2, axis=1) + item_bias**2)
    )
    objective = (np.sum(residual**2) + reg * penalty) / n

    grad_user = np.zeros_like(user_factors)
    np.add.at(grad_user, users, -residual[:, None] * item_factors[items])
    grad_item = np.zeros_like(item_factors)
    np.add.at(grad_item, items, -residual[:, None] * user_factors[users])
    grad_user_bias = -np.bincount(users, weights=residual, minlength=ratings.n_users)
    grad_item_bias = -np.bincount(items, weights=residual, minlength=ratings.n_items)
    gradients = (
        2 / n * (grad_user + reg * user_weight[:, None] * user_factors),
        2 / n * (grad_item + reg * item_weight[:, None] * item_factors),
        2 / n * (grad_user_bias + reg * user_weight * user_bias),
        2 / n * (grad_item_bias + reg * item_weight * item_bias),
    )
    return objective, gradients


def first_third(ratings: data.Ratings) -> data.Ratings:
    keep = slice(0, len(ratings) // 3)
    return data.Ratings(
        ratings.users[keep],
        ratings.items[keep],
        ratings.values[keep],
        ratings.n_users,
        ratings.n_items,
    )


def _state(model):
    return [model.user_factors, model.item_factors, model.user_bias, model.item_bias]


def numpy_predict(model, users, items):
    """The documented prediction rule, from the NumPy attributes and the seen masks."""
    seen_u, seen_i = model.user_seen[users], model.item_seen[items]
    factor_term = np.sum(model.user_factors[users] * model.item_factors[items], axis=-1)
    return (
        model.global_bias
        + np.where(seen_u, model.user_bias[users], 0.0)
        + np.where(seen_i, model.item_bias[items], 0.0)
        + np.where(seen_u & seen_i, factor_term, 0.0)
    )


# --------------------------------------------------------------------------------------------
# The objective and its gradient
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighting", ["uniform", "count"])
@pytest.mark.parametrize("slice_size", [1 << 20, 4])
def test_tape_gradient_equals_hand_gradient(tiny, weighting, slice_size):
    rng = np.random.default_rng(1)
    parameters = (
        rng.normal(0, 0.5, (4, 3)).astype(np.float32),
        rng.normal(0, 0.5, (5, 3)).astype(np.float32),
        rng.normal(0, 0.5, 4).astype(np.float32),
        rng.normal(0, 0.5, 5).astype(np.float32),
    )
    reg, mean = 0.7, float(np.mean(TINY_VALUES))
    counts = weighting == "count"
    setup = (
        tf.constant(np.bincount(TINY_USERS, minlength=4) if counts else np.ones(4), tf.float32),
        tf.constant(np.bincount(TINY_ITEMS, minlength=5) if counts else np.ones(5), tf.float32),
        tf.constant(reg / len(TINY_VALUES)),
        tf.constant(mean),
        tf.constant(1.0),
        tf.constant(slice_size),  # 4: the gradient is summed over three slices
    )
    order = np.lexsort((TINY_ITEMS, TINY_USERS))  # the sparse gradient needs (user, item) order
    columns = {"users": TINY_USERS, "items": TINY_ITEMS, "values": TINY_VALUES}
    batch = model_module._batch_tensors(columns, order, len(order), slice_size)
    # The model stores [U, b_u] and [V, b_i] as one table per side.
    user_table = np.concatenate([parameters[0], parameters[2][:, None]], axis=1)
    item_table = np.concatenate([parameters[1], parameters[3][:, None]], axis=1)
    tables = (tf.constant(user_table), tf.constant(item_table))
    # The function differentiates the loss with tf.GradientTape.
    loss, _, gradients = model_module._loss_and_gradients(tables, batch, 0, len(order), setup)
    user_gradient, item_gradient = (g.numpy() for g in gradients)
    autodiff = (
        user_gradient[:, :3],
        item_gradient[:, :3],
        user_gradient[:, 3],
        item_gradient[:, 3],
    )

    expected_loss, expected = hand_objective_and_gradients(parameters, tiny, reg, weighting, mean)
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-6)
    for got, want in zip(autodiff, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weighting", ["uniform", "count"])
def test_one_sgd_step_moves_along_the_hand_gradient(tiny, weighting):
    model = MatrixFactorization(4, 5, rank=3, reg=0.5, weighting=weighting, seed=3)
    before = (model.user_factors, model.item_factors, model.user_bias, model.item_bias)
    history = model.fit(tiny, epochs=1, optimizer=keras.optimizers.SGD(learning_rate=0.1))
    after = (model.user_factors, model.item_factors, model.user_bias, model.item_bias)

    mean = float(np.mean(TINY_VALUES, dtype=np.float64))
    objective, gradients = hand_objective_and_gradients(before, tiny, 0.5, weighting, mean)
    assert history["loss"].iloc[0] == pytest.approx(objective, rel=1e-6)
    for old, new, gradient in zip(before, after, gradients, strict=True):
        np.testing.assert_allclose(old - new, 0.1 * gradient, atol=1e-6)


def test_slicing_the_gradient_does_not_change_the_fit(monkeypatch):
    train, _ = planted()
    whole = MatrixFactorization(train.n_users, train.n_items, rank=3, seed=0)
    whole.fit(train, epochs=3)
    monkeypatch.setattr(model_module, "_SLICE", 1000)  # about 5 slices per full batch
    sliced = MatrixFactorization(train.n_users, train.n_items, rank=3, seed=0)
    sliced.fit(train, epochs=3)
    for a, b in zip(_state(whole), _state(sliced), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_the_default_optimizer_is_adam_with_learning_rate_0_1():
    train, _ = planted()
    builtin = MatrixFactorization(train.n_users, train.n_items, rank=3, seed=0)
    builtin.fit(train, epochs=5)
    reference = MatrixFactorization(train.n_users, train.n_items, rank=3, seed=0)
    reference.fit(train, epochs=5, optimizer=keras.optimizers.Adam(0.1, epsilon=1e-7))
    for a, b in zip(_state(builtin), _state(reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_full_batch_loss_decreases_with_a_small_learning_rate():
    train, _ = planted()
    model = MatrixFactorization(train.n_users, train.n_items, rank=3, reg=1.0, seed=0)
    history = model.fit(train, epochs=25, optimizer=keras.optimizers.SGD(learning_rate=2.0))
    assert np.all(np.diff(history["loss"]) < 0)
    assert history["loss"].iloc[-1] < 0.9 * history["loss"].iloc[0]


# --------------------------------------------------------------------------------------------
# Training behaviour
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 500])
def test_same_seed_gives_identical_fits(batch_size):
    train, test = planted()
    fits = []
    for seed in (7, 7, 8):
        model = MatrixFactorization(train.n_users, train.n_items, rank=4, seed=seed)
        history = model.fit(train, epochs=4, batch_size=batch_size, validation=test)
        fits.append((model, history))
    (first, h1), (second, h2), (other, _) = fits
    for a, b in zip(_state(first), _state(second), strict=True):
        assert np.array_equal(a, b)
    pd.testing.assert_frame_equal(h1.drop(columns="seconds"), h2.drop(columns="seconds"))
    assert not np.array_equal(first.user_factors, other.user_factors)


def test_planted_low_rank_matrix_is_recovered_to_the_noise_level():
    train, held_out = planted(noise=0.1)
    model = MatrixFactorization(train.n_users, train.n_items, rank=3, reg=0.5, seed=0)
    history = model.fit(train, epochs=300)
    errors = model.predict(held_out.users, held_out.items) - held_out.values
    held_out_rmse = float(np.sqrt(np.mean(errors**2)))
    assert held_out_rmse < 0.13  # the noise alone gives 0.1
    assert np.std(held_out.values) > 0.8  # so the model explains nearly all the signal
    assert history["train_rmse"].iloc[-1] > 0.07  # and does not fit the noise


def test_mini_batches_train_and_a_batch_larger_than_the_data_is_full_batch():
    train, test = planted()
    model = MatrixFactorization(train.n_users, train.n_items, rank=3, seed=0)
    history = model.fit(train, epochs=10, batch_size=256, validation=test)
    assert history["val_rmse"].iloc[-1] < 0.75 * history["val_rmse"].iloc[0]

    full = MatrixFactorization(train.n_users, train.n_items, rank=3, seed=0)
    huge = MatrixFactorization(train.n_users, train.n_items, rank=3, seed=0)
    full.fit(train, epochs=3)
    huge.fit(train, epochs=3, batch_size=10 * len(train))
    assert np.array_equal(full.item_factors, huge.item_factors)


@pytest.mark.parametrize("optimizer", ["adagrad", "sgd", keras.optimizers.RMSprop(0.01)])
def test_keras_optimizers_by_name_or_instance_reduce_the_loss(optimizer):
    train, _ = planted()
    model = MatrixFactorization(train.n_users, train.n_items, rank=3, seed=0)
    history = model.fit(train, epochs=5, batch_size=1000, optimizer=optimizer)
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]


def test_no_retracing_across_epochs_batch_sizes_data_and_models():
    train, test = planted()
    small, _ = planted(n_users=30, n_items=20, seed=1)
    for rank, use_bias in [(3, True), (5, False)]:
        model = MatrixFactorization(train.n_users, train.n_items, rank=rank, use_bias=use_bias)
        for batch_size in (None, 100, 333):
            model.fit(train, epochs=2, batch_size=batch_size, validation=test)
    other = MatrixFactorization(30, 20, rank=2)
    other.fit(small, epochs=3)
    other.predict([0, 1, 2], [0, 0, 1])
    # One trace per process, whatever the model shape, data size or batch size.
    assert model_module._adam_epoch.experimental_get_tracing_count() == 1
    assert model_module._predict_graph.experimental_get_tracing_count() == 1

    optimizer = keras.optimizers.Adam(0.01)
    model = MatrixFactorization(train.n_users, train.n_items, rank=3)
    for batch_size in (None, 100, 333):
        model.fit(train, epochs=2, batch_size=batch_size, optimizer=optimizer)
    model.fit(first_third(train), epochs=2, optimizer=optimizer)
    ((_, keras_epoch),) = model._keras_functions.values()
    assert keras_epoch.experimental_get_tracing_count() == 1


def test_early_stopping_stops_and_restores_the_best_epoch():
    train, held_out = planted(n_users=60, n_items=50, rank=2, observed=0.3, noise=0.5)
    model = MatrixFactorization(train.n_users, train.n_items, rank=40, reg=0.0, seed=0)
    history = model.fit(train, epochs=300, validation=held_out, early_stopping_patience=5)
    best = int(history["val_rmse"].idxmin())
    assert len(history) == best + 1 + 5 < 300  # it stopped 5 epochs after the best one
    errors = model.predict(held_out.users, held_out.items) - held_out.values
    restored_rmse = np.sqrt(np.mean(errors.astype(np.float64) ** 2))
    assert restored_rmse == pytest.approx(history["val_rmse"].min(), rel=1e-7)


def test_history_columns_and_progress_bar(tiny, capsys):
    model = MatrixFactorization(4, 5, rank=2)
    history = model.fit(tiny, epochs=3, validation=tiny, progress=True)
    assert list(history.columns) == ["epoch", "loss", "train_rmse", "val_rmse", "seconds"]
    assert history["epoch"].tolist() == [1, 2, 3]
    assert (history["seconds"] > 0).all()
    assert "3/3" in capsys.readouterr().err
    assert model.fit(tiny, epochs=1)["val_rmse"].isna().all()


# --------------------------------------------------------------------------------------------
# Prediction, cold start, biases
# --------------------------------------------------------------------------------------------


def test_cold_users_and_items_get_the_documented_fallback(tiny):
    model = MatrixFactorization(4, 5, rank=2, weighting="count", seed=0)
    start = model.user_factors[3].copy()
    model.fit(tiny, epochs=5)
    # Under "count" a cold entity's factors stay at their random start: only the mask hides them.
    assert np.abs(start).sum() > 0 and np.array_equal(model.user_factors[3], start)
    assert model.user_seen.tolist() == [True, True, True, False]
    assert model.item_seen.tolist() == [True, True, True, True, False]
    mean = float(np.mean(TINY_VALUES, dtype=np.float64))
    assert model.global_bias == pytest.approx(mean)
    assert model.predict([3], [4])[0] == np.float32(model.global_bias)  # both cold: μ
    assert model.predict([0], [4])[0] == pytest.approx(model.global_bias + model.user_bias[0])
    assert model.predict([3], [1])[0] == pytest.approx(model.global_bias + model.item_bias[1])
    users, items = np.meshgrid(np.arange(4), np.arange(5), indexing="ij")
    predicted = model.predict(users, items)
    assert predicted.shape == (4, 5) and predicted.dtype == np.float32
    np.testing.assert_allclose(predicted, numpy_predict(model, users, items), atol=1e-5)


def test_without_biases_the_prediction_is_the_dot_product(tiny):
    model = MatrixFactorization(4, 5, rank=2, use_bias=False, seed=0)
    model.fit(tiny, epochs=5)
    assert model.global_bias == 0.0
    assert not model.user_bias.any() and not model.item_bias.any()
    expected = np.sum(model.user_factors[TINY_USERS] * model.item_factors[TINY_ITEMS], axis=1)
    np.testing.assert_allclose(model.predict(TINY_USERS, TINY_ITEMS), expected, atol=1e-6)


def test_an_unfitted_model_predicts_zero_and_empty_input_gives_empty_output():
    model = MatrixFactorization(3, 3)
    assert model.predict([0, 2], [1, 2]).tolist() == [0.0, 0.0]
    assert model.predict([], []).shape == (0,)


# --------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------


def test_save_load_round_trip_is_exact(tmp_path, tiny):
    model = MatrixFactorization(4, 5, rank=3, reg=0.25, weighting="count", seed=5)
    model.fit(tiny, epochs=4)
    path = model.save(tmp_path / "nested" / "model.npz")
    loaded = MatrixFactorization.load(path)
    users, items = np.meshgrid(np.arange(4), np.arange(5), indexing="ij")
    assert model.predict(users, items).tobytes() == loaded.predict(users, items).tobytes()
    for a, b in zip(_state(model), _state(loaded), strict=True):
        assert a.tobytes() == b.tobytes()
    assert repr(loaded) == repr(model)
    assert loaded.global_bias == model.global_bias
    assert [p.name for p in tmp_path.joinpath("nested").iterdir()] == ["model.npz"]  # no temp


def test_load_rejects_corrupt_or_tampered_files(tmp_path, tiny):
    model = MatrixFactorization(4, 5, rank=3, seed=5)
    model.fit(tiny, epochs=2)
    path = model.save(tmp_path / "model.npz")

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="^path: .*not a readable saved"):
        MatrixFactorization.load(truncated)

    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["item_bias"] = arrays["item_bias"] + np.float32(1.0)
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **arrays)
    with pytest.raises(ValueError, match="^path: .*SHA-256"):
        MatrixFactorization.load(tampered)

    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    config = json.loads(arrays["config"].tobytes())
    config["reg"] = 99.0  # a changed setting, with the arrays intact
    arrays["config"] = np.frombuffer(json.dumps(config).encode(), np.uint8)
    edited = tmp_path / "edited.npz"
    np.savez(edited, **arrays)
    with pytest.raises(ValueError, match="^path: .*SHA-256"):
        MatrixFactorization.load(edited)

    not_a_model = tmp_path / "other.npz"
    np.savez(not_a_model, weights=np.zeros(3))
    with pytest.raises(ValueError, match="^path: "):
        MatrixFactorization.load(not_a_model)
    with pytest.raises(FileNotFoundError, match="^path: "):
        MatrixFactorization.load(tmp_path / "missing.npz")


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"rank": 0}, ValueError, "rank"),
        ({"rank": -2}, ValueError, "rank"),
        ({"rank": 2.5}, TypeError, "rank"),
        ({"rank": "8"}, TypeError, "rank"),
        ({"reg": -1.0}, ValueError, "reg"),
        ({"reg": float("nan")}, ValueError, "reg"),
        ({"reg": "high"}, TypeError, "reg"),
        ({"init_scale": 0.0}, ValueError, "init_scale"),
        ({"init_scale": -0.1}, ValueError, "init_scale"),
        ({"weighting": "counts"}, ValueError, "weighting"),
        ({"use_bias": "yes"}, TypeError, "use_bias"),
        ({"n_users": 0}, ValueError, "n_users"),
        ({"n_items": 3.0}, TypeError, "n_items"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_bad_constructor_arguments_name_the_argument(kwargs, error, name):
    arguments = {"n_users": 4, "n_items": 5, **kwargs}
    with pytest.raises(error, match=f"^{name}: "):
        MatrixFactorization(**arguments)


def _ratings(users=TINY_USERS, items=TINY_ITEMS, values=TINY_VALUES, n_users=4, n_items=5):
    return data.Ratings(np.asarray(users), np.asarray(items), np.asarray(values), n_users, n_items)


@pytest.mark.parametrize(
    ("train", "kwargs", "error", "name"),
    [
        (pd.DataFrame({"user_id": [0], "item_id": [0], "rating": [3.0]}), {}, TypeError, "train"),
        (_ratings(users=TINY_USERS + 2), {}, ValueError, "train.users"),
        (_ratings(items=-TINY_ITEMS - 1), {}, ValueError, "train.items"),
        (
            _ratings(values=np.where(TINY_VALUES > 4, np.nan, TINY_VALUES)),
            {},
            ValueError,
            "train.values",
        ),
        (_ratings(users=[], items=[], values=[]), {}, ValueError, "train"),
        (_ratings(users=TINY_USERS.astype(float)), {}, TypeError, "train.users"),
        (_ratings(values=TINY_VALUES.astype(str)), {}, TypeError, "train.values"),
        (_ratings(n_users=7), {}, ValueError, "train"),
        (_ratings(), {"epochs": 0}, ValueError, "epochs"),
        (_ratings(), {"epochs": 2.0}, TypeError, "epochs"),
        (_ratings(), {"batch_size": 0}, ValueError, "batch_size"),
        (_ratings(), {"batch_size": "64"}, TypeError, "batch_size"),
        (_ratings(), {"optimizer": "adamm"}, ValueError, "optimizer"),
        (_ratings(), {"optimizer": 0.01}, TypeError, "optimizer"),
        (_ratings(), {"validation": _ratings(n_items=6)}, ValueError, "validation"),
        (_ratings(), {"early_stopping_patience": 3}, ValueError, "early_stopping_patience"),
        (
            _ratings(),
            {"validation": _ratings(), "early_stopping_patience": 0},
            ValueError,
            "early_stopping_patience",
        ),
        (_ratings(), {"progress": "yes"}, TypeError, "progress"),
    ],
)
def test_bad_fit_arguments_name_the_argument(train, kwargs, error, name):
    model = MatrixFactorization(4, 5, rank=2)
    with pytest.raises(error, match=f"^{name}: "):
        model.fit(train, **kwargs)


@pytest.mark.parametrize(
    ("users", "items", "error", "name"),
    [
        ([0, 4], [0, 1], ValueError, "users"),
        ([0, 1], [0, 5], ValueError, "items"),
        ([0, 1], [0], ValueError, "items"),
        ([0.0, 1.0], [0, 1], TypeError, "users"),
        (["a"], [0], TypeError, "users"),
    ],
)
def test_bad_predict_arguments_name_the_argument(users, items, error, name):
    with pytest.raises(error, match=f"^{name}: "):
        MatrixFactorization(4, 5).predict(users, items)


def test_bad_paths_name_the_argument():
    with pytest.raises(TypeError, match="^path: "):
        MatrixFactorization(4, 5).save(3)
    with pytest.raises(TypeError, match="^path: "):
        MatrixFactorization.load(None)
