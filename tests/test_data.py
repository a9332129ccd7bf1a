"""Loading MovieLens, id maps, the rating matrix M, the implicit view and the splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import data


@pytest.fixture(scope="module")
def movielens():
    return data.load_movielens()


def _frame(rows, columns=("user_id", "item_id", "rating", "timestamp")) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns))


@pytest.fixture
def small():
    # 4 users, 5 items, 16 ratings with distinct timestamps.
    rows = [
        (u, i, float(1 + (u + i) % 5), 100 * u + i)
        for u in range(4)
        for i in range(5)
        if (u * 7 + i) % 5 != 0
    ]
    return _frame(rows)


# --- the real dataset --------------------------------------------------------------------------


def test_movielens_has_the_published_counts(movielens):
    ratings, movies = movielens
    assert len(ratings) == 100_836
    assert ratings["user_id"].nunique() == 610
    assert len(movies) == 9_742
    assert ratings["rating"].between(0.5, 5.0).all()
    assert set(np.unique(ratings["rating"] * 2)) <= set(range(1, 11))
    assert ratings["item_id"].isin(movies["item_id"]).all()
    assert list(ratings.columns) == ["user_id", "item_id", "rating", "timestamp"]


def test_movielens_sparse_matrix_keeps_only_observed_entries(movielens):
    ratings, _ = movielens
    users, items = data.IdMap.fit(ratings["user_id"]), data.IdMap.fit(ratings["item_id"])
    matrix = data.to_sparse_tensor(data.encode(ratings, users, items))
    assert tuple(matrix.dense_shape.numpy()) == (610, 9_724)
    assert matrix.values.shape[0] == 100_836
    first = ratings.iloc[0]
    row = users.to_index([first["user_id"]])[0]
    column = items.to_index([first["item_id"]])[0]
    hit = np.flatnonzero(
        (matrix.indices[:, 0].numpy() == row) & (matrix.indices[:, 1].numpy() == column)
    )
    assert matrix.values.numpy()[hit].tolist() == [first["rating"]]


# --- id maps, M, dense with mask ---------------------------------------------------------------


def test_id_map_round_trip_and_unknown_ids():
    ids = data.IdMap.fit([50, 7, 7, 1000])
    assert len(ids) == 3
    assert ids.to_index([7, 50, 1000]).tolist() == [0, 1, 2]
    assert ids.to_raw([2, 0]).tolist() == [1000, 7]
    with pytest.raises(ValueError, match=r"user_id.*unknown id.*\[8\]"):
        ids.to_index([7, 8], name="user_id")
    with pytest.raises(ValueError, match="indices"):
        ids.to_raw([3])


def test_dense_matrix_and_mask_match_the_toy_example():
    frame = _frame([(0, 0, 1.0, 0), (1, 2, 3.1, 0), (2, 1, 5.0, 0)])
    encoded = data.encode(frame, data.IdMap.fit([0, 1, 2]), data.IdMap.fit([0, 1, 2]))
    dense, mask = data.to_dense(encoded)
    np.testing.assert_allclose(dense, [[1, 0, 0], [0, 0, 3.1], [0, 5, 0]], rtol=1e-6)
    assert mask.sum() == 3 and mask[1, 2] and not mask[1, 1]


def test_dense_matrix_refuses_a_large_matrix():
    encoded = data.Ratings(
        np.zeros(1, np.int32), np.zeros(1, np.int32), np.ones(1, np.float32), 5000, 5000
    )
    with pytest.raises(ValueError, match="max_cells"):
        data.to_dense(encoded)


def test_interactions_count_repeat_purchases():
    log = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [5, 5, 6, 5], "day": [1, 2, 3, 4]})
    view = data.interactions(log)
    assert view.to_dict("list") == {
        "user_id": [1, 1, 2],
        "item_id": [5, 6, 5],
        "count": [2.0, 1.0, 1.0],
    }


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "error", "pattern"),
    [
        (_frame([(0, 0, np.nan, 1)]), ValueError, "NaN or infinite"),
        (_frame([(0, 0, np.inf, 1)]), ValueError, "NaN or infinite"),
        (_frame([(-1, 0, 3.0, 1)]), ValueError, "negative ids"),
        (_frame([(0.5, 0, 3.0, 1)]), TypeError, "integer ids"),
        (_frame([]), ValueError, "is empty"),
        (_frame([(0, 0, 3.0)], ("user_id", "item_id", "score")), ValueError, "missing column"),
        (_frame([(0, 0, 3.0, 1), (0, 0, 4.0, 2)]), ValueError, "repeat a .user_id, item_id."),
    ],
)
def test_bad_ratings_raise_clear_errors(frame, error, pattern):
    with pytest.raises(error, match=rf"^ratings: .*{pattern}"):
        data.validate_ratings(frame)


def test_validate_rejects_non_frames():
    with pytest.raises(TypeError, match="ratings: expected a pandas DataFrame"):
        data.validate_ratings([(0, 0, 3.0)])


def test_duplicates_resolved_by_documented_rules():
    frame = _frame([(0, 0, 2.0, 5), (0, 0, 4.0, 1), (1, 0, 3.0, 2)])
    latest = data.validate_ratings(frame, duplicates="last")
    assert latest.sort_values("user_id")["rating"].tolist() == [2.0, 3.0]
    mean = data.validate_ratings(frame, duplicates="mean")
    assert mean.sort_values("user_id")["rating"].tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="duplicates"):
        data.validate_ratings(frame, duplicates="first")


# --- splits ------------------------------------------------------------------------------------

SPLITS = [data.random_split, data.per_user_split, data.temporal_split]


@pytest.mark.parametrize("split_fn", SPLITS)
def test_splits_are_disjoint_complete_and_deterministic(split_fn, movielens):
    ratings, _ = movielens
    first = split_fn(ratings, test_fraction=0.2, seed=3)
    again = split_fn(ratings, test_fraction=0.2, seed=3)
    pairs = [set(zip(part.user_id, part.item_id, strict=True)) for part in first]
    assert not pairs[0] & pairs[1]
    assert len(first.train) + len(first.test) == len(ratings)
    assert abs(len(first.test) / len(ratings) - 0.2) < 0.01
    assert first.test.index.equals(again.test.index)


@pytest.mark.parametrize("split_fn", [data.random_split, data.per_user_split])
def test_random_splits_change_with_the_seed(split_fn, small):
    assert not split_fn(small, 0.5, seed=0).test.index.equals(
        split_fn(small, 0.5, seed=1).test.index
    )


def test_cold_start_rows_are_counted(small):
    frame = pd.concat([small, _frame([(9, 0, 4.0, 10_000), (0, 99, 4.0, 10_001)])])
    split = data.temporal_split(frame.reset_index(drop=True), test_fraction=2 / len(frame))
    assert len(split.test) == 2
    assert (split.cold_user_rows, split.cold_item_rows) == (1, 1)


def test_per_user_split_keeps_every_user_in_train(movielens):
    ratings, _ = movielens
    split = data.per_user_split(ratings, test_fraction=0.5, seed=0, min_train=2)
    assert split.cold_user_rows == 0
    assert split.train.groupby("user_id").size().min() >= 2


def test_temporal_split_puts_the_latest_ratings_in_test(small):
    split = data.temporal_split(small, test_fraction=0.25)
    assert split.train["timestamp"].max() < split.test["timestamp"].min()


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, "0.2"])
@pytest.mark.parametrize("split_fn", SPLITS)
def test_split_fraction_outside_open_interval(split_fn, fraction, small):
    with pytest.raises(ValueError, match="^test_fraction: "):
        split_fn(small, test_fraction=fraction)


def test_empty_id_map_and_take():
    with pytest.raises(ValueError, match="raw_ids: this IdMap holds no ids"):
        data.IdMap.fit([]).to_index([1])
    encoded = data.Ratings(
        np.array([0, 1, 2], np.int32), np.array([2, 1, 0], np.int32), np.ones(3, np.float32), 3, 3
    )
    part = encoded.take(np.array([True, False, True]))
    assert part.users.tolist() == [0, 2] and part.items.tolist() == [2, 0]
    assert (part.n_users, part.n_items) == (3, 3)


def test_project_split_is_the_seed_42_split_encoded(movielens):
    ratings, _ = movielens
    project = data.project_split()
    expected = data.random_split(ratings, test_fraction=0.2, seed=42)
    assert project.split.test.index.equals(expected.test.index)
    assert (len(project.train), len(project.test)) == (len(expected.train), len(expected.test))
    assert (project.train.n_users, project.train.n_items) == (610, 9_724)
    # Each training rating is one interaction, so every count is 1.
    assert len(project.interactions) == len(project.train)
    assert set(project.interactions.values.tolist()) == {1.0}
