"""ALS: exact half-steps, monotone loss, a dense NumPy reference, fold-in, errors, MovieLens.

The losses used to judge the model are written here from their definitions on dense tiny
matrices (every pair spelled out), independently of the sparse, bucketed code in helpers.als.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from helpers import data, linalg, metrics
from helpers.als import ALS

N_USERS, N_ITEMS, RANK = 14, 18, 4


def _tiny(seed: int = 0, implicit: bool = False) -> data.Ratings:
    """Ratings where some users and items have 1–2 ratings and others many (both solver forms).

    Item N_ITEMS − 1 and user N_USERS − 1 have no rating at all (never seen in training).
    """
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, N_ITEMS) ** 1.5  # a few popular items, a long tail
    pairs = set()
    for user in range(N_USERS - 1):
        n = 1 + (user * 5) % (N_ITEMS - 2)  # 1 to 16 ratings
        chosen = rng.choice(N_ITEMS - 1, size=n, replace=False, p=popularity / popularity.sum())
        pairs.update((user, int(item)) for item in chosen)
    users, items = np.array(sorted(pairs)).T
    if implicit:
        values = rng.integers(1, 6, size=len(users)).astype(np.float32)
    else:
        values = rng.integers(1, 11, size=len(users)).astype(np.float32) / 2
    return data.Ratings(users.astype(np.int32), items.astype(np.int32), values, N_USERS, N_ITEMS)


def _dense(ratings: data.Ratings) -> tuple[np.ndarray, np.ndarray]:
    matrix, mask = data.to_dense(ratings)
    return matrix.astype(np.float64), mask.astype(np.float64)


def _weights(ratings: data.Ratings, weighting: str) -> tuple[np.ndarray, np.ndarray]:
    _, mask = _dense(ratings)
    if weighting == "count":
        return mask.sum(axis=1), mask.sum(axis=0)
    return np.ones(N_USERS), np.ones(N_ITEMS)


def _explicit_loss(params, ratings, model) -> tf.Tensor:
    """J = Σ_Ω (r − μ − b_u − b_i − uᵀv)² + λ Σ w (‖·‖² + b²), over dense matrices."""
    user_f, item_f, user_b, item_b = params
    matrix, mask = _dense(ratings)
    user_w, item_w = _weights(ratings, model.weighting)
    mu = float(np.mean(ratings.values, dtype=np.float64)) if model.use_bias else 0.0
    predicted = (
        mu + user_b[:, None] + item_b[None, :] + tf.matmul(user_f, item_f, transpose_b=True)
    )
    fit = tf.reduce_sum(mask * (matrix - predicted) ** 2)
    penalty = tf.reduce_sum(user_w * (tf.reduce_sum(user_f**2, axis=1) + user_b**2))
    penalty += tf.reduce_sum(item_w * (tf.reduce_sum(item_f**2, axis=1) + item_b**2))
    return fit + model.reg * penalty


def _implicit_loss(params, ratings, model) -> tf.Tensor:
    """J = Σ over ALL pairs c (p − uᵀv)² + λ Σ w ‖·‖², with c = 1 + α r and p = [r > 0]."""
    user_f, item_f = params[:2]
    counts, mask = _dense(ratings)
    user_w, item_w = _weights(ratings, model.weighting)
    confidence = 1.0 + model.alpha * counts
    fit = tf.reduce_sum(confidence * (mask - tf.matmul(user_f, item_f, transpose_b=True)) ** 2)
    penalty = tf.reduce_sum(user_w * tf.reduce_sum(user_f**2, axis=1))
    penalty += tf.reduce_sum(item_w * tf.reduce_sum(item_f**2, axis=1))
    return fit + model.reg * penalty


def _params(model: ALS) -> list[tf.Variable]:
    arrays = (model.user_factors, model.item_factors, model.user_bias, model.item_bias)
    return [tf.Variable(np.asarray(a, dtype=np.float64)) for a in arrays]


def _loss_and_gradients(model: ALS, ratings: data.Ratings):
    params = _params(model)
    loss_fn = _implicit_loss if model.implicit_prefs else _explicit_loss
    with tf.GradientTape() as tape:
        loss = loss_fn(params, ratings, model)
    gradients = tape.gradient(loss, params)
    return float(loss), [np.zeros(1) if g is None else g.numpy() for g in gradients]


CASES = [
    pytest.param({"weighting": "count", "reg_param": 0.1}, False, id="explicit-count"),
    pytest.param({"weighting": "uniform", "reg_param": 0.5}, False, id="explicit-uniform"),
    pytest.param({"weighting": "uniform", "use_bias": False}, False, id="explicit-no-bias"),
    pytest.param({"weighting": "uniform", "reg_param": 0.5, "alpha": 2.0}, True, id="implicit"),
    pytest.param(
        {"weighting": "count", "reg_param": 0.1, "alpha": 2.0}, True, id="implicit-count"
    ),
]


def _fitted(options: dict, implicit: bool, max_iter: int = 1) -> tuple[ALS, data.Ratings]:
    ratings = _tiny(implicit=implicit)
    model = ALS(rank=RANK, max_iter=max_iter, implicit_prefs=implicit, seed=3, **options)
    return model.fit(ratings), ratings


@pytest.mark.parametrize(("options", "implicit"), CASES)
def test_each_half_step_zeroes_the_gradient_of_its_side(options, implicit):
    model, ratings = _fitted(options, implicit)
    # The tiny data must exercise both forms of the solve (dual for few ratings, primal).
    for side in ("user", "item"):
        dual, primal = model._plans[side]
        assert sum(len(b.ids) for b in dual) > 0 and sum(len(b.ids) for b in primal) > 0

    _, before = _loss_and_gradients(model, ratings)
    assert np.abs(before[0]).max() > 0.05  # U is stale after the item step: the test can fail
    for side, index in (("user", [0, 2]), ("item", [1, 3]), ("user", [0, 2])):
        model._half_step(side, compiled=False)
        _, gradients = _loss_and_gradients(model, ratings)
        for i in index if model.use_bias else index[:1]:
            assert np.abs(gradients[i]).max() < 2e-3, (side, i)


@pytest.mark.parametrize(("options", "implicit"), CASES)
def test_loss_never_increases_and_history_reports_it(options, implicit):
    model, ratings = _fitted(options, implicit, max_iter=6)
    losses = [_loss_and_gradients(model, ratings)[0]]
    for side in ("user", "item") * 3:
        model._half_step(side, compiled=False)
        losses.append(_loss_and_gradients(model, ratings)[0])
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses[:-1], losses[1:], strict=True))

    history = model.history_
    assert list(history.columns) == ["sweep", "loss", "train_rmse", "val_rmse", "seconds"]
    assert history["sweep"].tolist() == list(range(1, 7))
    assert np.all(np.diff(history["loss"]) <= 1e-6 * history["loss"].iloc[0])
    assert history["loss"].iloc[-1] == pytest.approx(losses[0], rel=1e-4)


def _dense_implicit_step(fixed: np.ndarray, counts: np.ndarray, alpha, reg, weights):
    """Solve each row's normal equations with the full confidence matrix, in float64."""
    solutions = []
    for row, weight in zip(counts, weights, strict=True):
        confidence = np.diag(1.0 + alpha * row)
        preference = (row > 0).astype(np.float64)
        lhs = fixed.T @ confidence @ fixed + reg * weight * np.eye(fixed.shape[1])
        solutions.append(np.linalg.solve(lhs, fixed.T @ confidence @ preference))
    return np.array(solutions)


@pytest.mark.parametrize("weighting", ["uniform", "count"])
def test_implicit_half_steps_equal_a_dense_numpy_reference(weighting):
    options = {"weighting": weighting, "reg_param": 0.3, "alpha": 3.0}
    model, ratings = _fitted(options, implicit=True)
    counts, _ = _dense(ratings)
    user_w, item_w = _weights(ratings, weighting)
    # fit ended with the item half-step, from the final U.
    users = model.user_factors.astype(np.float64)
    expected = _dense_implicit_step(users, counts.T, 3.0, 0.3, item_w)
    np.testing.assert_allclose(model.item_factors, expected, atol=2e-5)

    model._half_step("user", compiled=False)
    expected = _dense_implicit_step(
        model.item_factors.astype(np.float64), counts, 3.0, 0.3, user_w
    )
    np.testing.assert_allclose(model.user_factors, expected, atol=2e-5)


@pytest.mark.parametrize("weighting", ["uniform", "count"])
def test_cg_with_many_steps_matches_the_exact_solution(weighting):
    options = {"weighting": weighting, "reg_param": 0.3, "alpha": 3.0, "implicit_prefs": True}
    ratings = _tiny(implicit=True)
    # k = 4 unknowns: CG reaches the exact solution in 4 steps; 12 leave only rounding.
    cg = ALS(rank=RANK, max_iter=3, seed=3, solver="cg", cg_steps=12, **options).fit(ratings)
    exact = ALS(rank=RANK, max_iter=3, seed=3, **options).fit(ratings)
    np.testing.assert_allclose(cg.user_factors, exact.user_factors, atol=1e-4)
    np.testing.assert_allclose(cg.item_factors, exact.item_factors, atol=1e-4)
    np.testing.assert_allclose(cg.history_["loss"], exact.history_["loss"], rtol=1e-5)

    counts, _ = _dense(ratings)
    user_w, _ = _weights(ratings, weighting)
    cg._half_step("user", compiled=False)
    expected = _dense_implicit_step(cg.item_factors.astype(np.float64), counts, 3.0, 0.3, user_w)
    np.testing.assert_allclose(cg.user_factors, expected, atol=2e-5)


def test_cg_with_few_steps_never_increases_the_loss():
    # rank 8 with 3 CG steps per half-step: far from the exact solve, checked below.
    options = {"weighting": "uniform", "reg_param": 0.5, "alpha": 2.0, "implicit_prefs": True}
    ratings = _tiny(seed=1, implicit=True)
    model = ALS(rank=8, max_iter=1, seed=3, solver="cg", cg_steps=3, **options).fit(ratings)
    exact = ALS(rank=8, max_iter=1, seed=3, **options).fit(ratings)
    assert np.abs(model.item_factors - exact.item_factors).max() > 1e-3  # the test can fail

    losses = [_loss_and_gradients(model, ratings)[0]]
    assert model.history_["loss"].iloc[-1] == pytest.approx(losses[0], rel=1e-4)
    for side in ("user", "item") * 8:
        model._half_step(side, compiled=False)
        losses.append(_loss_and_gradients(model, ratings)[0])
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses[:-1], losses[1:], strict=True))
    # After 9 sweeps the loss is within 1 % of the exact solver's after 9 sweeps.
    exact = ALS(rank=8, max_iter=9, seed=3, **options).fit(ratings)
    assert losses[-1] <= exact.history_["loss"].iloc[-1] * 1.01


def test_zero_counts_are_the_same_as_missing_pairs():
    ratings = _tiny(implicit=True)
    extra = data.Ratings(
        np.r_[ratings.users, N_USERS - 1].astype(np.int32),
        np.r_[ratings.items, 0].astype(np.int32),
        np.r_[ratings.values, 0].astype(np.float32),
        N_USERS,
        N_ITEMS,
    )
    one = ALS(rank=RANK, implicit_prefs=True, seed=1).fit(ratings)
    two = ALS(rank=RANK, implicit_prefs=True, seed=1).fit(extra)
    np.testing.assert_allclose(one.item_factors, two.item_factors, atol=1e-6)
    assert not two.user_seen[N_USERS - 1]


def test_same_seed_same_factors_and_another_seed_differs():
    ratings = _tiny()
    first = ALS(rank=RANK, max_iter=3, seed=7).fit(ratings)
    second = ALS(rank=RANK, max_iter=3, seed=7).fit(ratings)
    third = ALS(rank=RANK, max_iter=3, seed=8).fit(ratings)
    np.testing.assert_array_equal(first.user_factors, second.user_factors)
    np.testing.assert_array_equal(first.item_factors, second.item_factors)
    np.testing.assert_array_equal(first.item_bias, second.item_bias)
    assert not np.allclose(first.user_factors, third.user_factors)


@pytest.mark.parametrize(("options", "implicit"), CASES)
def test_fold_in_is_the_user_half_step_for_that_user(options, implicit):
    model, ratings = _fitted(options, implicit, max_iter=2)
    model._half_step("user", compiled=False)  # now U is the exact user half-step for the current V
    for user in (0, 5, N_USERS - 2):
        rated = ratings.users == user
        vector, bias = model.fold_in(ratings.items[rated], ratings.values[rated])
        np.testing.assert_allclose(vector, model.user_factors[user], atol=2e-5)
        assert bias == pytest.approx(float(model.user_bias[user]), abs=2e-5)


def test_explicit_fold_in_calls_the_shared_linalg_fold_in():
    model, ratings = _fitted({"weighting": "count"}, implicit=False, max_iter=2)
    items, values = np.array([1, 4, 9]), np.array([4.0, 2.5, 5.0], np.float32)
    expected = linalg.fold_in(
        model.item_factors,
        items,
        values,
        model.reg,
        item_bias=model.item_bias,
        global_bias=model.global_bias,
        weighting="count",
    )
    vector, bias = model.fold_in(items, values)
    np.testing.assert_array_equal(vector, expected[0])
    assert bias == expected[1]


def test_predict_uses_biases_and_ignores_unseen_entities():
    model, ratings = _fitted({"weighting": "count"}, implicit=False, max_iter=2)
    cold_user, cold_item = N_USERS - 1, N_ITEMS - 1
    assert not model.user_seen[cold_user] and not model.item_seen[cold_item]
    mu = float(np.mean(ratings.values))
    assert model.global_bias == pytest.approx(mu)
    got = model.predict(np.array([0, 0, cold_user]), np.array([2, cold_item, cold_item]))
    u, v = model.user_factors, model.item_factors
    expected_0 = mu + model.user_bias[0] + model.item_bias[2] + u[0] @ v[2]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [expected_0, mu + model.user_bias[0], mu], rtol=1e-6)


def test_recommendations_match_brute_force_and_skip_seen_items():
    model, ratings = _fitted({"weighting": "uniform"}, implicit=False, max_iter=3)
    scores = np.array(
        [model.predict(np.full(N_ITEMS, u), np.arange(N_ITEMS)) for u in range(N_USERS)]
    )
    seen = _dense(ratings)[1] > 0
    items, top = model.recommend_for_all_users(3, batch_size=4)
    assert items.shape == (N_USERS, 3) and items.dtype == np.int32
    # A user with fewer than 3 unrated items gets -inf-scored padding, never a rated item.
    assert not (seen[np.arange(N_USERS)[:, None], items] & np.isfinite(top)).any()
    assert np.isinf(top).any()
    masked = np.where(seen, -np.inf, scores)
    np.testing.assert_allclose(top, -np.sort(-masked, axis=1)[:, :3], rtol=1e-5)

    users, top = model.recommend_for_all_items(2, batch_size=5)
    assert users.shape == (N_ITEMS, 2)
    np.testing.assert_allclose(top, -np.sort(-scores.T, axis=1)[:, :2], rtol=1e-5)


def test_validation_rmse_is_recorded_per_sweep():
    ratings = _tiny()
    model = ALS(rank=RANK, max_iter=3).fit(ratings, validation=ratings)
    train_rmse = metrics.rmse(model.predict(ratings.users, ratings.items), ratings.values)
    assert model.history_["val_rmse"].iloc[-1] == pytest.approx(train_rmse, rel=1e-5)
    assert model.history_["train_rmse"].iloc[-1] == pytest.approx(train_rmse, rel=1e-4)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"rank": 0}, ValueError, "^rank: must be a positive integer, got 0"),
        ({"rank": 2.5}, TypeError, "^rank: must be an integer"),
        ({"max_iter": 0}, ValueError, "^max_iter: must be a positive integer"),
        ({"reg_param": -0.1}, ValueError, "^reg_param: must be a finite number ≥ 0"),
        ({"reg_param": float("nan")}, ValueError, "^reg_param:"),
        ({"alpha": -1.0}, ValueError, "^alpha: must be a finite number ≥ 0"),
        ({"weighting": "spark"}, ValueError, "^weighting: expected 'count' or 'uniform'"),
        ({"implicit_prefs": "yes"}, TypeError, "^implicit_prefs:"),
        ({"seed": -1}, ValueError, "^seed:"),
        ({"solver": "lu"}, ValueError, "^solver: expected 'cholesky' or 'cg', got 'lu'"),
        ({"solver": None}, ValueError, "^solver: expected 'cholesky' or 'cg'"),
        ({"solver": "cg"}, ValueError, "^solver: 'cg' is only available with implicit_prefs"),
        (
            {"implicit_prefs": True, "solver": "cg", "cg_steps": 0},
            ValueError,
            "^cg_steps: must be a positive integer, got 0",
        ),
        ({"cg_steps": 2.5}, TypeError, "^cg_steps: must be an integer"),
    ],
)
def test_bad_parameters_name_the_argument(options, error, message):
    with pytest.raises(error, match=message):
        ALS(**options)


def _with(ratings: data.Ratings, **changes) -> data.Ratings:
    fields = {name: getattr(ratings, name) for name in ratings.__dataclass_fields__}
    return data.Ratings(**{**fields, **changes})


def test_bad_data_gets_clear_errors():
    ratings = _tiny()
    empty = np.array([], np.int32)
    bad = [
        ("not ratings", TypeError, "^ratings: expected data.Ratings"),
        (
            _with(ratings, users=empty, items=empty, values=np.array([], np.float32)),
            ValueError,
            "^ratings: is empty",
        ),
        (
            _with(ratings, values=np.where(ratings.values > 4, np.nan, ratings.values)),
            ValueError,
            "^ratings: values hold NaN",
        ),
        (_with(ratings, items=ratings.items + N_ITEMS), ValueError, r"^ratings.items: indices"),
        (
            _with(
                ratings,
                users=np.r_[ratings.users[:-1], ratings.users[0]].astype(np.int32),
                items=np.r_[ratings.items[:-1], ratings.items[0]].astype(np.int32),
            ),
            ValueError,
            "^ratings: a .user, item. pair appears more than once",
        ),
    ]
    for value, error, message in bad:
        with pytest.raises(error, match=message):
            ALS(rank=RANK).fit(value)
    with pytest.raises(ValueError, match="^ratings: implicit feedback needs counts ≥ 0"):
        ALS(rank=RANK, implicit_prefs=True).fit(_with(ratings, values=ratings.values - 3))
    with pytest.raises(ValueError, match="^validation: shape"):
        ALS(rank=RANK).fit(ratings, validation=_with(ratings, n_items=N_ITEMS + 1))
    with pytest.raises(RuntimeError, match="fit"):
        ALS(rank=RANK).predict(np.array([0]), np.array([0]))
    model = ALS(rank=RANK).fit(ratings)
    with pytest.raises(ValueError, match="^k: must be at most"):
        model.recommend_for_all_users(N_ITEMS + 1)
    with pytest.raises(ValueError, match="^users: indices must lie in"):
        model.predict(np.array([N_USERS]), np.array([0]))


# --- MovieLens: the targets of the issue on THE project split --------------------------------


@pytest.fixture(scope="module")
def movielens():
    project = data.project_split()
    return project.train, project.test, project.interactions


def test_movielens_explicit_rmse_target(movielens):
    train, test, _ = movielens
    model = ALS(rank=32, max_iter=15, reg_param=0.1).fit(train)
    assert metrics.rmse(model.predict(test.users, test.items), test.values) <= 0.858


def test_movielens_implicit_precision_target(movielens):
    train, test, interactions = movielens
    model = ALS(
        rank=64, max_iter=15, reg_param=20.0, alpha=1.0, implicit_prefs=True, weighting="uniform"
    ).fit(interactions)
    top, _ = model.recommend_for_all_users(10, exclude_seen=True)
    relevant = metrics.relevant_items(test, min_rating=4.0)
    assert metrics.precision_at_k(top, relevant, k=10) >= 0.17


def test_movielens_implicit_precision_target_with_cg(movielens):
    train, test, interactions = movielens
    model = ALS(
        rank=64,
        max_iter=15,
        reg_param=20.0,
        alpha=1.0,
        implicit_prefs=True,
        weighting="uniform",
        solver="cg",
        cg_steps=3,
    ).fit(interactions)
    top, _ = model.recommend_for_all_users(10, exclude_seen=True)
    relevant = metrics.relevant_items(test, min_rating=4.0)
    assert metrics.precision_at_k(top, relevant, k=10) >= 0.17
