"""RMSE, ranking metrics and the popularity baseline against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import data, metrics


def _ratings(users, items, values, n_users, n_items) -> data.Ratings:
    return data.Ratings(
        users=np.asarray(users, dtype=np.int32),
        items=np.asarray(items, dtype=np.int32),
        values=np.asarray(values, dtype=np.float32),
        n_users=n_users,
        n_items=n_items,
    )


# Three users, top-3 lists. User 1 has no relevant item and must be left out of every mean.
RECOMMENDED = np.array([[5, 1, 7], [2, 3, 4], [0, 8, 6]])
RELEVANT = [{1, 7, 9, 4}, set(), [0]]


# --- RMSE --------------------------------------------------------------------------------------


def test_rmse_by_hand():
    # Errors 0, 0, 2: mean square 4/3.
    assert metrics.rmse([1.0, 2.0, 3.0], [1.0, 2.0, 5.0]) == pytest.approx(math.sqrt(4 / 3))
    assert metrics.rmse(np.float32([[3.5]]), [[3.5]]) == 0.0


def test_rmse_rejects_bad_input():
    with pytest.raises(ValueError, match="^predictions: shape"):
        metrics.rmse([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="^predictions: is empty"):
        metrics.rmse([], [])
    with pytest.raises(ValueError, match="^targets: has NaN"):
        metrics.rmse([1.0], [np.nan])


# --- ranking metrics ----------------------------------------------------------------------------


def test_precision_recall_ndcg_by_hand():
    # User 0: hits at positions 2 and 3, 4 relevant items.
    # User 2: hit at position 1, 1 relevant item.
    assert metrics.precision_at_k(RECOMMENDED, RELEVANT) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert metrics.recall_at_k(RECOMMENDED, RELEVANT) == pytest.approx((2 / 4 + 1 / 1) / 2)
    dcg_0 = 1 / math.log2(3) + 1 / math.log2(4)
    ideal_0 = 1 + 1 / math.log2(3) + 1 / math.log2(4)  # min(k=3, |R|=4) = 3 ideal hits
    expected = (dcg_0 / ideal_0 + 1.0) / 2
    assert metrics.ndcg_at_k(RECOMMENDED, RELEVANT) == pytest.approx(expected)
    assert metrics.ndcg_at_k(RECOMMENDED, RELEVANT) == pytest.approx(0.765361, abs=1e-6)


def test_shorter_k_scores_the_head_of_each_list():
    # k=1: user 0 misses (item 5), user 2 hits (item 0).
    assert metrics.precision_at_k(RECOMMENDED, RELEVANT, k=1) == pytest.approx(0.5)
    assert metrics.recall_at_k(RECOMMENDED, RELEVANT, k=1) == pytest.approx((0 + 1) / 2)
    assert metrics.ndcg_at_k(RECOMMENDED, RELEVANT, k=1) == pytest.approx(0.5)


def test_perfect_and_empty_lists():
    relevant = [np.array([3, 4]), np.array([0])]
    perfect = np.array([[4, 3, 9], [0, 1, 2]])
    assert metrics.ndcg_at_k(perfect, relevant) == pytest.approx(1.0)
    assert metrics.recall_at_k(perfect, relevant) == pytest.approx(1.0)
    assert metrics.precision_at_k(perfect, relevant) == pytest.approx((2 / 3 + 1 / 3) / 2)
    miss = np.array([[7, 8, 9], [5, 6, 7]])
    assert metrics.ndcg_at_k(miss, relevant) == 0.0
    assert metrics.precision_at_k(miss, relevant) == 0.0


def _reference(recommended, relevant, k):
    """A plain loop over users, written from the definitions."""
    rows = []
    for items, rel in zip(recommended, relevant, strict=True):
        rel = set(int(i) for i in rel)
        if not rel:
            continue
        hit = [int(i) in rel for i in items[:k]]
        dcg = sum(h / math.log2(j + 2) for j, h in enumerate(hit))
        ideal = sum(1 / math.log2(j + 2) for j in range(min(k, len(rel))))
        rows.append((sum(hit) / k, sum(hit) / len(rel), dcg / ideal))
    return np.mean(rows, axis=0)


def test_metrics_match_a_loop_reference_on_random_lists():
    rng = np.random.default_rng(3)
    n_users, n_items, width = 40, 30, 8
    recommended = np.stack([rng.permutation(n_items)[:width] for _ in range(n_users)])
    relevant = [
        rng.choice(n_items, size=rng.integers(0, 12), replace=False) for _ in range(n_users)
    ]
    for k in (1, 5, 8):
        report = metrics.ranking_report(recommended, relevant, k)
        assert list(report.index) == [f"precision@{k}", f"recall@{k}", f"ndcg@{k}"]
        np.testing.assert_allclose(report.to_numpy(), _reference(recommended, relevant, k))


def test_ranking_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="^k: recommended holds 3"):
        metrics.precision_at_k(RECOMMENDED, RELEVANT, k=4)
    with pytest.raises(ValueError, match="^k: must be a positive integer"):
        metrics.recall_at_k(RECOMMENDED, RELEVANT, k=0)
    with pytest.raises(ValueError, match="^recommended: row 1 repeats"):
        metrics.ndcg_at_k(np.array([[0, 1], [2, 2]]), [[0], [2]])
    with pytest.raises(ValueError, match="^recommended: expected shape"):
        metrics.ndcg_at_k(np.array([0, 1]), [[0]])
    with pytest.raises(TypeError, match="^recommended: expected integer"):
        metrics.ndcg_at_k(np.array([[0.0, 1.0]]), [[0]])
    with pytest.raises(ValueError, match="^relevant: expected one collection per row"):
        metrics.precision_at_k(RECOMMENDED, RELEVANT[:2])
    with pytest.raises(ValueError, match="^relevant: no user has a relevant item"):
        metrics.precision_at_k(RECOMMENDED, [[], [], []])


# --- relevant sets and popularity ---------------------------------------------------------------


def test_relevant_items_applies_the_threshold_per_user():
    test = _ratings(
        users=[0, 0, 0, 2, 2, 3],
        items=[4, 1, 2, 0, 3, 3],
        values=[5.0, 4.0, 3.5, 2.0, 4.5, 1.0],
        n_users=4,
        n_items=5,
    )
    relevant = metrics.relevant_items(test, min_rating=4.0)
    assert len(relevant) == 4
    assert [r.tolist() for r in relevant] == [[1, 4], [], [3], []]
    everything = metrics.relevant_items(test, min_rating=None)
    assert [r.tolist() for r in everything] == [[1, 2, 4], [], [0, 3], [3]]
    with pytest.raises(TypeError, match="^test: expected data.Ratings"):
        metrics.relevant_items([0, 1])


def test_popularity_counts_training_ratings_per_item():
    train = _ratings(
        users=[0, 1, 2, 0, 1],
        items=[2, 2, 2, 0, 0],
        values=[5.0, 1.0, 4.0, 3.0, 4.0],
        n_users=3,
        n_items=4,
    )
    scores = metrics.popularity_scores(train)
    assert scores.dtype == np.float32
    assert scores.tolist() == [2.0, 0.0, 3.0, 0.0]
    assert metrics.popularity_scores(train, min_rating=4.0).tolist() == [1.0, 0.0, 2.0, 0.0]
