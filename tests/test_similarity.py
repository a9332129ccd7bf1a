"""Similar items, recommendation with exclusion, fold-in of a new user, explanations, PCA.

Most tests use a stand-in with known factors (the model protocol of AGENT_SPEC.md), so they
check this module alone; the last ones run the real MatrixFactorization.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np
import pytest

from helpers import data, similarity


@dataclass
class StandIn:
    """Known factors behind the model protocol; ``predict`` written from the definition."""

    user_factors: np.ndarray
    item_factors: np.ndarray
    user_bias: np.ndarray
    item_bias: np.ndarray
    global_bias: float
    reg: float = 1.0
    weighting: str = "uniform"
    use_bias: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_factors)

    @property
    def n_items(self) -> int:
        return len(self.item_factors)

    @property
    def rank(self) -> int:
        return self.user_factors.shape[1]

    def predict(self, users, items) -> np.ndarray:
        users, items = np.asarray(users), np.asarray(items)
        dot = np.sum(self.user_factors[users] * self.item_factors[items], axis=1)
        bias = self.global_bias + self.user_bias[users] + self.item_bias[items]
        return (dot + bias).astype(np.float32)


def _stand_in(n_users=30, n_items=50, rank=4, seed=0, **kwargs) -> StandIn:
    rng = np.random.default_rng(seed)
    return StandIn(
        user_factors=rng.normal(size=(n_users, rank)).astype(np.float32),
        item_factors=rng.normal(size=(n_items, rank)).astype(np.float32),
        user_bias=rng.normal(scale=0.3, size=n_users).astype(np.float32),
        item_bias=rng.normal(scale=0.3, size=n_items).astype(np.float32),
        global_bias=3.5,
        **kwargs,
    )


def _seen(n_users, n_items, per_user, seed=1) -> data.Ratings:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    return data.Ratings(
        users=users.astype(np.int32),
        items=items.astype(np.int32),
        values=np.full(len(users), 4.0, np.float32),
        n_users=n_users,
        n_items=n_items,
    )


# --- most_similar -------------------------------------------------------------------------------

VECTORS = np.array([[1, 0], [10, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)


def test_cosine_ignores_length_and_dot_rewards_it():
    # Query [1, 1]: items 0, 1, 2 are all at 45° (cosine 1/√2, ties to the lower index);
    # by dot product the long vector [10, 0] wins with 10.
    indices, scores = similarity.most_similar(VECTORS, 3, k=3, metric="cosine")
    assert indices.tolist() == [0, 1, 2]
    np.testing.assert_allclose(scores, [2**-0.5] * 3, rtol=1e-6)
    indices, scores = similarity.most_similar(VECTORS, 3, k=3, metric="dot")
    assert indices.tolist() == [1, 0, 2]
    np.testing.assert_allclose(scores, [10.0, 1.0, 1.0])


def test_zero_vector_has_cosine_zero_and_query_can_be_kept():
    indices, scores = similarity.most_similar(VECTORS, 0, k=5, exclude_query=False)
    assert indices.tolist() == [0, 1, 3, 2, 4]
    np.testing.assert_allclose(scores, [1.0, 1.0, 2**-0.5, 0.0, 0.0], rtol=1e-6, atol=1e-7)


def test_candidates_limit_the_neighbours():
    # Without item 1 (the long vector) and the zero vector, query [1, 1] by dot: items 0, 2.
    allowed = np.array([True, False, True, True, False])
    indices, scores = similarity.most_similar(VECTORS, 3, k=2, metric="dot", candidates=allowed)
    assert indices.tolist() == [0, 2] and scores.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="^k: asked for 3 but there are only 2 candidate rows"):
        similarity.most_similar(VECTORS, 3, k=3, candidates=allowed)
    # A query outside the candidates keeps all of them: item 4 may see items 0, 2 and 3.
    assert similarity.most_similar(VECTORS, 4, k=3, candidates=allowed)[0].tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match="^candidates: expected a bool mask"):
        similarity.most_similar(VECTORS, 3, k=1, candidates=[0, 2])


def test_most_similar_matches_brute_force_across_batches():
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(200, 6)).astype(np.float32)
    queries = np.array([0, 17, 199, 42, 17])
    indices, scores = similarity.most_similar(vectors, queries, k=7, batch_size=2)
    assert indices.shape == scores.shape == (5, 7)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for row, query in enumerate(queries):
        cosine = unit @ unit[query]
        cosine[query] = -np.inf
        expected = np.argsort(-cosine, kind="stable")[:7]
        assert indices[row].tolist() == expected.tolist()
        np.testing.assert_allclose(scores[row], cosine[expected], rtol=1e-5)
        assert query not in indices[row]


def test_most_similar_rejects_bad_input():
    with pytest.raises(ValueError, match="^k: asked for 5 but there are only 4"):
        similarity.most_similar(VECTORS, 0, k=5)
    with pytest.raises(ValueError, match="^k: must be a positive integer"):
        similarity.most_similar(VECTORS, 0, k=0)
    with pytest.raises(ValueError, match="^metric: expected 'cosine' or 'dot'"):
        similarity.most_similar(VECTORS, 0, metric="euclid")
    with pytest.raises(ValueError, match="^query: unknown index 5"):
        similarity.most_similar(VECTORS, [1, 5], k=2)
    with pytest.raises(ValueError, match="^query: unknown index -1"):
        similarity.most_similar(VECTORS, -1, k=2)
    with pytest.raises(TypeError, match="^query: expected integer"):
        similarity.most_similar(VECTORS, 1.0, k=2)
    with pytest.raises(ValueError, match="^vectors: has NaN"):
        similarity.most_similar(np.array([[np.nan, 1.0], [1.0, 1.0]]), 0, k=1)


# --- recommend ----------------------------------------------------------------------------------


def test_recommend_ranks_by_the_model_score_without_seen_items():
    model = _stand_in()
    exclude = _seen(model.n_users, model.n_items, per_user=20)
    users = np.arange(model.n_users)
    indices, scores = similarity.recommend(model, users, k=10, exclude=exclude, batch_size=7)
    assert indices.shape == scores.shape == (30, 10)

    full = (
        model.global_bias
        + model.user_bias[:, None]
        + model.item_bias[None, :]
        + model.user_factors @ model.item_factors.T
    )
    full[exclude.users, exclude.items] = -np.inf
    for user in users:
        expected = np.argsort(-full[user], kind="stable")[:10]
        assert indices[user].tolist() == expected.tolist()
        np.testing.assert_allclose(scores[user], model.predict([user] * 10, expected), rtol=1e-5)
    seen = set(zip(exclude.users.tolist(), exclude.items.tolist(), strict=True))
    assert not any((u, i) in seen for u in users for i in indices[u])


def test_excluded_items_never_appear_even_when_they_score_best():
    model = _stand_in(n_users=3, n_items=6)
    model.item_bias[:] = [100, 90, 0, 0, 0, 80]  # items 0, 1, 5 dominate every user's scores
    exclude = data.Ratings(
        users=np.int32([0, 0, 1, 2, 2, 2]),
        items=np.int32([0, 1, 0, 1, 5, 0]),
        values=np.ones(6, np.float32),
        n_users=3,
        n_items=6,
    )
    indices, _ = similarity.recommend(model, [0, 1, 2], k=3, exclude=exclude)
    assert indices[0, 0] == 5 and not {0, 1} & set(indices[0].tolist())
    assert indices[1, :2].tolist() == [1, 5] and 0 not in indices[1]
    assert not {0, 1, 5} & set(indices[2].tolist())
    # User 2 has exactly 3 items left: k=3 is allowed, k=4 is not.
    assert sorted(similarity.recommend(model, 2, k=3, exclude=exclude)[0].tolist()) == [2, 3, 4]
    with pytest.raises(ValueError, match="^k: user 2 has only 3 items left"):
        similarity.recommend(model, [0, 2], k=4, exclude=exclude)


def test_recommend_with_item_scores_gives_a_popularity_baseline():
    popularity = np.float32([5, 0, 9, 7, 1])
    exclude = data.Ratings(np.int32([0]), np.int32([2]), np.float32([3.0]), 2, 5)
    indices, scores = similarity.recommend(popularity, [0, 1], k=2, exclude=exclude)
    assert indices.tolist() == [[3, 0], [2, 3]]
    assert scores.tolist() == [[7.0, 5.0], [9.0, 7.0]]


def test_recommend_rejects_bad_input():
    model = _stand_in(n_users=4, n_items=5)
    with pytest.raises(ValueError, match="^k: asked for 6 but there are only 5 items"):
        similarity.recommend(model, [0], k=6)
    with pytest.raises(ValueError, match="^k: must be a positive integer"):
        similarity.recommend(model, [0], k=-1)
    with pytest.raises(ValueError, match="^users: unknown index 4"):
        similarity.recommend(model, [0, 4], k=2)
    with pytest.raises(ValueError, match="^exclude: has shape"):
        similarity.recommend(model, [0], k=2, exclude=_seen(4, 6, per_user=1))
    with pytest.raises(TypeError, match="^model: object lacks"):
        similarity.recommend(object(), [0], k=2)
    with pytest.raises(ValueError, match="^batch_size: must be a positive integer"):
        similarity.recommend(model, [0], k=2, batch_size=0)


# --- a new user: fold-in, recommendations, explanations -----------------------------------------


def _loss_gradient(model, items, ratings, vector, bias, reg, use_bias):
    """∂/∂(u, b_u) of Σ_j (r_j − μ − b_j − b_u − uᵀv_j)² + λ w (‖u‖² + b_u²), in float64."""
    v = model.item_factors[items].astype(np.float64)
    weight = len(items) if model.weighting == "count" else 1
    if use_bias:
        prediction = model.global_bias + model.item_bias[items] + bias + v @ vector
    else:
        prediction = v @ vector
    error = np.asarray(ratings, np.float64) - prediction
    gradient_u = -2 * v.T @ error + 2 * reg * weight * vector
    gradient_b = -2 * error.sum() + 2 * reg * weight * bias if use_bias else 0.0
    return gradient_u, gradient_b, v.T @ error


@pytest.mark.parametrize(
    "weighting, use_bias, reg",
    [("uniform", True, 1.5), ("count", True, 0.3), ("uniform", False, 0.8)],
)
def test_fold_in_solves_the_users_regularized_loss(weighting, use_bias, reg):
    model = _stand_in(n_items=40, rank=5, weighting=weighting, use_bias=use_bias, reg=reg)
    if not use_bias:
        model.user_bias[:], model.item_bias[:], model.global_bias = 0, 0, 0.0
    items = np.array([3, 11, 12, 30, 7, 25, 0])
    ratings = np.array([5.0, 4.0, 1.0, 3.5, 2.0, 4.5, 3.0])
    vector, bias = similarity.fold_in_user(model, items, ratings)
    assert vector.shape == (5,)
    if not use_bias:
        assert bias == 0.0
    grad_u, grad_b, scale = _loss_gradient(model, items, ratings, vector, bias, reg, use_bias)
    # Zero up to float32 round-off, relative to the size of the data term.
    assert np.abs(grad_u).max() < 1e-4 * max(1.0, np.abs(scale).max())
    assert abs(grad_b) < 1e-4 * max(1.0, np.abs(ratings).sum())


def test_recommend_for_new_user_scores_with_the_folded_in_vector():
    model = _stand_in(n_items=40, rank=5, reg=2.0)
    items, ratings = np.array([4, 9, 21]), np.array([5.0, 1.0, 4.0])
    vector, bias = similarity.fold_in_user(model, items, ratings)
    indices, scores = similarity.recommend_for_new_user(model, items, ratings, k=37)
    assert indices.shape == scores.shape == (37,)
    assert not set(items.tolist()) & set(indices.tolist())
    predicted = model.global_bias + bias + model.item_bias + model.item_factors @ vector
    np.testing.assert_allclose(scores, predicted[indices], rtol=1e-5)
    assert np.all(np.diff(scores) <= 0)
    with pytest.raises(ValueError, match="^k: asked for 38 but there are only 37"):
        similarity.recommend_for_new_user(model, items, ratings, k=38)
    with pytest.raises(ValueError, match="^items: unknown index 40"):
        similarity.recommend_for_new_user(model, [4, 40], [5.0, 1.0], k=3)
    # A different λ changes the vector: the argument is passed through.
    other, _ = similarity.fold_in_user(model, items, ratings, reg=50.0)
    assert np.linalg.norm(other) < np.linalg.norm(vector)


def test_explain_by_hand():
    # Rank 1, no biases, λ = 1: A = 1² + 2² + 1 = 6, u = (1·2 + 2·4) / 6 = 5/3.
    # For item 2 (v = 0.5): weight_j = 0.5 · v_j / 6, contribution = r_j · weight_j.
    model = StandIn(
        user_factors=np.zeros((1, 1), np.float32),
        item_factors=np.float32([[1.0], [2.0], [0.5]]),
        user_bias=np.zeros(1, np.float32),
        item_bias=np.zeros(3, np.float32),
        global_bias=0.0,
        reg=1.0,
        use_bias=False,
    )
    table = similarity.explain(model, [0, 1], [2.0, 4.0], item=2, top=None)
    assert table["item"].tolist() == [1, 0]
    np.testing.assert_allclose(table["weight"], [1 / 6, 1 / 12], rtol=1e-6)
    np.testing.assert_allclose(table["contribution"], [4 / 6, 2 / 12], rtol=1e-6)
    assert table["contribution"].sum() == pytest.approx(5 / 3 * 0.5, rel=1e-6)


@pytest.mark.parametrize("weighting", ["uniform", "count"])
def test_explain_contributions_add_up_to_the_users_part_of_the_score(weighting):
    model = _stand_in(n_items=40, rank=5, reg=0.7, weighting=weighting)
    items = np.array([3, 11, 12, 30, 7, 25])
    ratings = np.array([5.0, 4.0, 1.0, 3.5, 2.0, 4.5])
    vector, bias = similarity.fold_in_user(model, items, ratings)
    table = similarity.explain(model, items, ratings, item=17, top=None)
    assert sorted(table["item"].tolist()) == sorted(items.tolist())
    assert np.all(np.diff(table["contribution"]) <= 0)
    expected = bias + model.item_factors[17] @ vector
    assert table["contribution"].sum() == pytest.approx(expected, abs=1e-4)
    centred = ratings - model.global_bias - model.item_bias[items]
    by_item = table.set_index("item").loc[items, "centred_rating"].to_numpy()
    np.testing.assert_allclose(by_item, centred, rtol=1e-5)
    top = similarity.explain(model, items, ratings, item=17, top=2)
    assert top["item"].tolist() == table["item"].tolist()[:2]
    with pytest.raises(ValueError, match="^item: unknown index 40"):
        similarity.explain(model, items, ratings, item=40)
    with pytest.raises(ValueError, match="^top: must be a positive integer"):
        similarity.explain(model, items, ratings, item=1, top=0)


# --- PCA ----------------------------------------------------------------------------------------


def test_pca_matches_numpy_svd_and_fixes_signs():
    rng = np.random.default_rng(7)
    # Variance mostly along two planted directions, then small noise.
    latent = rng.normal(size=(300, 2)) * [5.0, 2.0]
    basis = np.linalg.qr(rng.normal(size=(6, 6)))[0][:, :2]
    vectors = (latent @ basis.T + 0.1 * rng.normal(size=(300, 6)) + 3.0).astype(np.float32)
    coords, explained = similarity.pca_2d(vectors)
    assert coords.shape == (300, 2) and coords.dtype == np.float32

    centred = vectors.astype(np.float64) - vectors.mean(axis=0)
    _, singular, rows = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(explained, singular[:2] ** 2 / np.sum(singular**2), rtol=1e-5)
    for column in range(2):
        loading = rows[column] * np.sign(rows[column][np.argmax(np.abs(rows[column]))])
        np.testing.assert_allclose(coords[:, column], centred @ loading, rtol=1e-4, atol=1e-4)
    assert explained[0] > explained[1] > 0 and explained.sum() > 0.99
    with pytest.raises(ValueError, match="^vectors: need at least 2 rows and 2 columns"):
        similarity.pca_2d(np.ones((5, 1)))


def test_item_map_colours_the_common_groups_and_labels_points():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from helpers import plots

    coords = np.arange(20, dtype=float).reshape(10, 2)
    groups = ["Drama"] * 4 + ["Comedy"] * 3 + ["War", "Western", "Horror"]
    titles = [f"movie {i}" for i in range(10)]
    ax = plots.plot_item_map(
        coords, groups, titles, annotate=[0, 9], explained=[0.25, 0.125], max_groups=3
    )
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["Drama", "Comedy", "other"]
    assert [text.get_text() for text in ax.texts] == ["movie 0", "movie 9"]
    assert ax.get_xlabel() == "principal component 1 (25.0% of variance)"
    assert ax.get_ylabel() == "principal component 2 (12.5% of variance)"
    with pytest.raises(ValueError, match="^coords: expected shape"):
        plots.plot_item_map(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="^labels: needed"):
        plots.plot_item_map(coords, annotate=[1])
    plt.close("all")


def test_entities_unseen_in_training_score_like_predict():
    # Item 2 and user 1 were never trained: their stale factors and biases must not count.
    model = StandIn(
        user_factors=np.float32([[1.0, 0.0], [9.0, 9.0]]),
        item_factors=np.float32([[1.0, 0.0], [0.0, 1.0], [50.0, 50.0]]),
        user_bias=np.float32([0.5, 7.0]),
        item_bias=np.float32([0.1, 0.2, 9.0]),
        global_bias=3.0,
    )
    model.user_seen, model.item_seen = np.array([True, False]), np.array([True, True, False])
    _, scores = similarity.recommend(model, [0, 1], k=3)
    # User 0: items 0, 1, 2 score 3 + 0.5 + (1.1, 0.2, 0) -> 4.6, 3.7, 3.5.
    # User 1 (cold): only μ + b_i -> 3.2, 3.1, 3.0.
    np.testing.assert_allclose(scores, [[4.6, 3.7, 3.5], [3.2, 3.1, 3.0]], rtol=1e-6)
    indices, _ = similarity.recommend_for_new_user(model, [0], [5.0], k=2)
    assert indices[-1] == 2  # the cold item gets no factor term, so it cannot win


# --- the real MatrixFactorization ---------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    """A small biased model with "count" weighting, so never-seen entities keep random
    factors; user 29 and items 45..49 have no training rating."""
    from helpers.model import MatrixFactorization

    rng = np.random.default_rng(11)
    users, items = np.nonzero(rng.random((29, 45)) < 0.3)
    values = np.clip(np.round(3.5 + rng.normal(size=len(users))), 1, 5)
    train = data.Ratings(
        users.astype(np.int32), items.astype(np.int32), values.astype(np.float32), 30, 50
    )
    model = MatrixFactorization(30, 50, rank=4, reg=0.5, weighting="count", seed=0)
    model.fit(train, epochs=30)
    return model, train


def test_recommend_agrees_with_predict_of_the_real_model(trained):
    model, train = trained
    users = np.arange(30)
    indices, scores = similarity.recommend(model, users, k=20, exclude=train, batch_size=8)
    flat_users = np.repeat(users, 20)
    np.testing.assert_allclose(
        scores.ravel(), model.predict(flat_users, indices.ravel()), rtol=1e-5, atol=1e-5
    )
    seen = set(zip(train.users.tolist(), train.items.tolist(), strict=True))
    assert not any((u, i) in seen for u, i in zip(flat_users, indices.ravel(), strict=True))


def test_fold_in_with_the_real_model_zeroes_the_users_gradient(trained):
    model, _ = trained
    items, ratings = np.array([0, 5, 9, 17, 33]), np.array([4.0, 2.0, 5.0, 3.0, 1.0])
    vector, bias = similarity.fold_in_user(model, items, ratings)
    grad_u, grad_b, scale = _loss_gradient(model, items, ratings, vector, bias, model.reg, True)
    assert np.abs(grad_u).max() < 1e-4 * max(1.0, np.abs(scale).max())
    assert abs(grad_b) < 1e-4 * ratings.sum()
    indices, scores = similarity.recommend_for_new_user(model, items, ratings, k=45)
    assert not set(items.tolist()) & set(indices.tolist())
    seen = model.item_seen
    expected = (
        model.global_bias
        + bias
        + np.where(seen, model.item_bias + model.item_factors @ vector, 0.0)
    )
    np.testing.assert_allclose(scores, expected[indices], rtol=1e-5)
    assert seen[12]
    table = similarity.explain(model, items, ratings, item=12, top=None)
    expected_part = bias + model.item_factors[12] @ vector
    assert table["contribution"].sum() == pytest.approx(expected_part, abs=1e-4)
