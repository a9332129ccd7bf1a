"""ImplicitMatrixFactorization: the Gramian loss against a dense one, ranking, errors."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import data, linalg, metrics, similarity
from helpers.als import ALS
from helpers.implicit_model import ImplicitMatrixFactorization


def _interactions(seed: int = 0, n_users: int = 9, n_items: int = 11) -> data.Ratings:
    """Random counts 1–4 on about a third of the pairs; the last user and item have none."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users - 1, n_items - 1)) < 0.35
    users, items = np.nonzero(mask)
    counts = rng.integers(1, 5, size=len(users)).astype(np.float32)
    return data.Ratings(users.astype(np.int32), items.astype(np.int32), counts, n_users, n_items)


def _dense_loss(model: ImplicitMatrixFactorization, interactions: data.Ratings) -> float:
    """J summed pair by pair over ALL users × items, in float64."""
    user_f = model.user_factors.astype(np.float64)
    item_f = model.item_factors.astype(np.float64)
    counts = np.zeros((model.n_users, model.n_items))
    counts[interactions.users, interactions.items] = interactions.values
    total = 0.0
    for u in range(model.n_users):
        for i in range(model.n_items):
            preference = 1.0 if counts[u, i] > 0 else 0.0
            confidence = 1.0 + model.alpha * counts[u, i]
            total += confidence * (preference - user_f[u] @ item_f[i]) ** 2
    if model.weighting == "count":
        user_w, item_w = (counts > 0).sum(axis=1), (counts > 0).sum(axis=0)
    else:
        user_w, item_w = np.ones(model.n_users), np.ones(model.n_items)
    penalty = user_w @ (user_f**2).sum(axis=1) + item_w @ (item_f**2).sum(axis=1)
    return total + model.reg * penalty


@pytest.mark.parametrize("weighting", ["uniform", "count"])
def test_gramian_loss_equals_the_dense_loss(weighting):
    interactions = _interactions()
    model = ImplicitMatrixFactorization(
        interactions.n_users,
        interactions.n_items,
        rank=3,
        reg=0.7,
        alpha=2.5,
        weighting=weighting,
        init_scale=0.8,
        seed=1,
    )
    assert model.loss(interactions) == pytest.approx(_dense_loss(model, interactions), rel=1e-5)
    model.fit(interactions, epochs=5)  # a second, trained point
    assert model.loss(interactions) == pytest.approx(_dense_loss(model, interactions), rel=1e-5)


def test_fit_reaches_the_loss_that_implicit_als_reaches():
    interactions = _interactions(seed=3)
    options = {"reg": 0.5, "alpha": 2.0, "weighting": "uniform"}
    als = ALS(
        rank=3, max_iter=100, implicit_prefs=True, reg_param=0.5, alpha=2.0, weighting="uniform"
    ).fit(interactions)
    model = ImplicitMatrixFactorization(
        interactions.n_users, interactions.n_items, rank=3, seed=0, **options
    )
    history = model.fit(interactions, epochs=600, learning_rate=0.05)
    assert list(history.columns) == ["epoch", "loss", "seconds"]
    assert history["loss"].iloc[-1] < history["loss"].iloc[0] / 2
    best = als.history_["loss"].iloc[-1]
    assert model.loss(interactions) == pytest.approx(best, rel=0.01)
    assert model.loss(interactions) >= best * (1 - 1e-4)  # ALS's optimum is not beaten


def _planted(seed: int = 0):
    """Three taste groups of users, each interacting with its own block of items.

    Items 0–2 are liked by everyone (the most popular); every user's train set has them and 6
    of their group's 15 items; the test set holds 6 of the other 9, so a model that finds the
    groups reaches precision@3 ≈ 6/9.
    """
    rng = np.random.default_rng(seed)
    n_users, n_groups, block = 60, 3, 15
    n_items = 3 + n_groups * block
    train, test = [], []
    for user in range(n_users):
        group = user % n_groups
        own = 3 + group * block + rng.permutation(block)
        train += [(user, item) for item in [0, 1, 2, *own[:6]]]
        test += [(user, item) for item in own[6:12]]
    # Unequal group sizes in train make popularity prefer one group's items.
    train += [(user, 3 + j) for user in range(0, n_users, 3) for j in range(6, 10)]

    def ratings(pairs):
        users, items = np.array(sorted(set(pairs))).T
        ones = np.ones(len(users), np.float32)
        return data.Ratings(users.astype(np.int32), items.astype(np.int32), ones, n_users, n_items)

    return ratings(train), ratings(test)


def test_beats_popularity_on_planted_groups():
    train, test = _planted()
    relevant = metrics.relevant_items(test, min_rating=None)
    users = np.arange(train.n_users)
    model = ImplicitMatrixFactorization(train.n_users, train.n_items, rank=4, reg=1.0, seed=0)
    model.fit(train, epochs=150)
    top, _ = similarity.recommend(model, users, k=3, exclude=train)
    popular, _ = similarity.recommend(metrics.popularity_scores(train), users, k=3, exclude=train)
    model_precision = metrics.precision_at_k(top, relevant)
    popularity_precision = metrics.precision_at_k(popular, relevant)
    assert popularity_precision < 0.5
    assert model_precision > popularity_precision + 0.3


def test_same_seed_same_factors_and_cold_entities_score_zero():
    interactions = _interactions()
    first, second, third = (
        ImplicitMatrixFactorization(interactions.n_users, interactions.n_items, rank=3, seed=s)
        for s in (5, 5, 6)
    )
    for model in (first, second, third):
        model.fit(interactions, epochs=10)
    np.testing.assert_array_equal(first.user_factors, second.user_factors)
    np.testing.assert_array_equal(first.item_factors, second.item_factors)
    assert not np.allclose(first.item_factors, third.item_factors)

    last_user, last_item = interactions.n_users - 1, interactions.n_items - 1
    scores = first.predict(np.array([last_user, 0, 0]), np.array([0, last_item, 1]))
    assert scores.dtype == np.float32
    assert scores[0] == 0.0 and scores[1] == 0.0
    assert scores[2] == pytest.approx(first.user_factors[0] @ first.item_factors[1], rel=1e-6)
    assert not first.user_bias.any() and not first.item_bias.any() and first.global_bias == 0


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"rank": 0}, ValueError, "^rank: must be a positive integer, got 0"),
        ({"n_users": 0}, ValueError, "^n_users:"),
        ({"reg": -1.0}, ValueError, "^reg: must be a finite number ≥ 0"),
        ({"alpha": -0.5}, ValueError, "^alpha: must be a finite number ≥ 0"),
        ({"alpha": float("inf")}, ValueError, "^alpha:"),
        ({"weighting": "spark"}, ValueError, "^weighting: expected"),
        ({"seed": 1.5}, TypeError, "^seed: must be an integer"),
    ],
)
def test_bad_parameters_name_the_argument(options, error, message):
    with pytest.raises(error, match=message):
        ImplicitMatrixFactorization(**{"n_users": 3, "n_items": 4, **options})


def test_bad_data_gets_clear_errors():
    interactions = _interactions()
    model = ImplicitMatrixFactorization(interactions.n_users, interactions.n_items, rank=2)
    negative = data.Ratings(
        interactions.users,
        interactions.items,
        -interactions.values,
        interactions.n_users,
        interactions.n_items,
    )
    nan = data.Ratings(
        interactions.users,
        interactions.items,
        np.full(len(interactions), np.nan, np.float32),
        interactions.n_users,
        interactions.n_items,
    )
    other_shape = data.Ratings(
        interactions.users,
        interactions.items,
        interactions.values,
        interactions.n_users + 1,
        interactions.n_items,
    )
    empty = data.Ratings(
        np.array([], np.int32),
        np.array([], np.int32),
        np.array([], np.float32),
        interactions.n_users,
        interactions.n_items,
    )
    for value, error, message in [
        ("counts", TypeError, "^interactions: expected data.Ratings"),
        (empty, ValueError, "^interactions: is empty"),
        (negative, ValueError, "^interactions: counts must be ≥ 0"),
        (nan, ValueError, "^interactions: values hold NaN"),
        (other_shape, ValueError, "^interactions: shape"),
    ]:
        with pytest.raises(error, match=message):
            model.fit(value)
    with pytest.raises(ValueError, match="^epochs: must be a positive integer"):
        model.fit(interactions, epochs=0)
    with pytest.raises(TypeError, match="^optimizer: expected a Keras optimizer"):
        model.fit(interactions, optimizer="adam")
    with pytest.raises(ValueError, match="^items: indices must lie in"):
        model.predict(np.array([0]), np.array([interactions.n_items]))


def test_movielens_beats_popularity():
    project = data.project_split()
    train, test, interactions = project.train, project.test, project.interactions
    model = ImplicitMatrixFactorization(train.n_users, train.n_items, seed=0)
    model.fit(interactions)
    relevant = metrics.relevant_items(test, min_rating=4.0)
    users = np.arange(train.n_users)
    top, _ = similarity.recommend(model, users, k=10, exclude=train)
    popular, _ = similarity.recommend(metrics.popularity_scores(train), users, k=10, exclude=train)
    precision = metrics.precision_at_k(top, relevant)
    assert precision >= 0.15
    assert precision > metrics.precision_at_k(popular, relevant) + 0.03


def test_fold_in_zeroes_the_gradient_of_the_users_implicit_loss():
    rng = np.random.default_rng(5)
    item_factors = rng.normal(size=(7, 3)).astype(np.float64)
    items, counts = np.array([1, 4, 6]), np.array([2.0, 1.0, 3.0])
    reg, alpha = 0.7, 2.0
    vector = linalg.fold_in_implicit(item_factors, items, counts, reg, alpha)
    # Dense reference: preference and confidence over every item, written out in NumPy.
    preference = np.zeros(7)
    preference[items] = 1.0
    confidence = np.ones(7)
    confidence[items] += alpha * counts
    residual = preference - item_factors @ vector
    gradient = -2 * item_factors.T @ (confidence * residual) + 2 * reg * vector
    np.testing.assert_allclose(gradient, 0.0, atol=1e-4)
    with pytest.raises(ValueError, match="^counts: "):
        linalg.fold_in_implicit(item_factors, items, -counts, reg, alpha)
