"""MovieLens data: download and verify, id maps, the rating matrix M, implicit view, splits.

Data flow used throughout the series::

    load_movielens()          -> ratings (user_id, item_id, rating, timestamp), movies
    IdMap.fit(ratings)        -> contiguous indices 0..n-1 for users and items, and back
    encode(ratings, ...)      -> Ratings (int32 user and item indices, float32 ratings)
    to_sparse_tensor(...)     -> M as a tf.SparseTensor holding only observed entries

The dataset is downloaded once from GroupLens with pooch, verified against its published
SHA-256 and cached in :func:`data_dir` (``~/.cache/tf2-matrix-factorization`` by default; set
the environment variable ``TF2MF_DATA_DIR`` to move it). Run ``python -m helpers.data fetch``
to fill the cache, or ``python -m helpers.data seed PATH`` to copy a zip you already have.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pooch

if TYPE_CHECKING:  # TensorFlow is imported only by the functions that need it
    import tensorflow as tf

logger = logging.getLogger(__name__)

MOVIELENS_URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
MOVIELENS_SHA256 = "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"
MOVIELENS_MD5 = "31a303aabbc519bd33d025e44d6c2570"
ZIP_NAME = "ml-latest-small.zip"
DATA_DIR_ENV = "TF2MF_DATA_DIR"

RATING_COLUMNS = ("user_id", "item_id", "rating")


class DataUnavailableError(OSError):
    """The dataset is neither in the cache nor downloadable."""


class ChecksumError(ValueError):
    """A downloaded or seeded file does not match its published checksum."""


# --------------------------------------------------------------------------------------------
# Download, verify, cache
# --------------------------------------------------------------------------------------------


def data_dir() -> Path:
    """Return the cache folder: ``$TF2MF_DATA_DIR`` if set, else the user's cache folder."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(pooch.os_cache("tf2-matrix-factorization"))


def _sha256(path: Path) -> str:
    return pooch.file_hash(str(path), alg="sha256")


def seed_cache(zip_path: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """Copy an official ``ml-latest-small.zip`` into the cache after checking its SHA-256.

    The copy is written to a temporary file in the cache and renamed into place, so an
    interrupted copy never leaves a partial zip behind.

    Raises:
        FileNotFoundError: ``zip_path`` does not exist.
        ChecksumError: ``zip_path`` is not the official zip.
    """
    source = Path(zip_path)
    if not source.is_file():
        raise FileNotFoundError(f"zip_path: no such file: {source}")
    digest = _sha256(source)
    if digest != MOVIELENS_SHA256:
        raise ChecksumError(
            f"zip_path: {source} has SHA-256 {digest}, expected {MOVIELENS_SHA256} "
            "(the official ml-latest-small.zip)"
        )
    folder = Path(cache) if cache is not None else data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / ZIP_NAME
    if target.is_file() and _sha256(target) == MOVIELENS_SHA256:
        return target
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".seed-", delete=False) as tmp:
        with source.open("rb") as src:
            shutil.copyfileobj(src, tmp)
    os.replace(tmp.name, target)
    return target


def fetch_movielens(
    cache: str | os.PathLike | None = None,
    url: str = MOVIELENS_URL,
    sha256: str = MOVIELENS_SHA256,
) -> Path:
    """Make sure the verified zip is in the cache and extracted; return the extracted folder.

    pooch downloads into a temporary file and moves it into the cache only when its SHA-256
    matches, so a tampered or truncated download leaves nothing behind. Extraction also goes
    through a temporary folder that is renamed into place.

    Args:
        cache: folder to cache into; defaults to :func:`data_dir`.
        url: where to download from (tests point this at a local server).
        sha256: the expected SHA-256 of the zip.

    Returns:
        The folder holding ``ratings.csv`` and ``movies.csv``.

    Raises:
        ChecksumError: the download did not match ``sha256``; nothing was cached.
        DataUnavailableError: the zip is not cached and could not be downloaded.
    """
    folder = Path(cache) if cache is not None else data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    extracted = folder / "ml-latest-small"
    if (extracted / "ratings.csv").is_file() and (extracted / "movies.csv").is_file():
        return extracted

    zip_path = _retrieve(folder, url, sha256)
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".extract-"))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(staging)
        shutil.rmtree(extracted, ignore_errors=True)
        os.replace(staging / "ml-latest-small", extracted)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return extracted


def _retrieve(folder: Path, url: str, sha256: str) -> Path:
    """Download ``url`` into ``folder`` with pooch unless a verified copy is already there."""
    target = folder / ZIP_NAME
    if target.is_file() and _sha256(target) == sha256:
        return target
    try:
        path = pooch.retrieve(
            url,
            known_hash=f"sha256:{sha256}",
            fname=ZIP_NAME,
            path=folder,
            progressbar=False,
        )
    except ValueError as error:  # pooch's hash mismatch; its temporary file is already gone
        raise ChecksumError(
            f"the download from {url} failed verification and was discarded: {error}"
        ) from error
    except Exception as error:  # network errors come from requests, urllib3 or the OS
        raise DataUnavailableError(
            f"could not download MovieLens from {url} ({type(error).__name__}: {error}). "
            f"Offline? Put the official {ZIP_NAME} (SHA-256 {sha256}) at {target} by hand, "
            f"or run `python -m helpers.data seed PATH/TO/{ZIP_NAME}`, then try again."
        ) from error
    return Path(path)


def load_movielens(
    cache: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load MovieLens ``ml-latest-small``, downloading and verifying it on first use.

    Returns:
        ``(ratings, movies)``: ratings has columns ``user_id`` (int64), ``item_id`` (int64),
        ``rating`` (float32, 0.5 to 5 in half stars) and ``timestamp`` (int64, Unix seconds);
        movies has ``item_id``, ``title`` and ``genres`` (``|``-separated).
    """
    folder = fetch_movielens(cache)
    ratings = pd.read_csv(
        folder / "ratings.csv",
        dtype={"userId": "int64", "movieId": "int64", "rating": "float32", "timestamp": "int64"},
    ).rename(columns={"userId": "user_id", "movieId": "item_id"})
    movies = pd.read_csv(folder / "movies.csv", dtype={"movieId": "int64"}).rename(
        columns={"movieId": "item_id"}
    )
    return ratings, movies


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def validate_ratings(
    ratings: pd.DataFrame,
    name: str = "ratings",
    duplicates: str = "error",
    value_column: str = "rating",
) -> pd.DataFrame:
    """Check a ratings frame and return it (or a de-duplicated copy).

    Args:
        ratings: frame with ``user_id``, ``item_id`` and ``value_column``.
        name: the argument's name, used in error messages.
        duplicates: what to do with repeated (user_id, item_id) pairs: ``"error"`` raises,
            ``"last"`` keeps the latest by ``timestamp`` (or the last row when there is no
            timestamp column), ``"mean"`` averages the values.
        value_column: the column that holds the values.

    Raises:
        TypeError: ``ratings`` is not a DataFrame, or ids are not integers.
        ValueError: missing columns, empty frame, negative ids, NaN or infinite values, or
            duplicate pairs with ``duplicates="error"``.
    """
    _check_frame(ratings, name, value_column)
    return _resolve_duplicates(ratings, name, duplicates, value_column)


def _check_frame(ratings: pd.DataFrame, name: str, value_column: str) -> None:
    """Check columns, emptiness, id types and signs, and finiteness of the values."""
    if not isinstance(ratings, pd.DataFrame):
        raise TypeError(f"{name}: expected a pandas DataFrame, got {type(ratings).__name__}")
    required = ("user_id", "item_id", value_column)
    missing = [column for column in required if column not in ratings.columns]
    if missing:
        raise ValueError(
            f"{name}: missing column(s) {missing}; expected {list(required)}, "
            f"got {list(ratings.columns)}"
        )
    if len(ratings) == 0:
        raise ValueError(f"{name}: is empty; need at least one rating")
    for column in ("user_id", "item_id"):
        values = ratings[column]
        if not pd.api.types.is_integer_dtype(values):
            if pd.api.types.is_float_dtype(values) and np.all(np.mod(values, 1) == 0):
                pass  # 3.0 is an integer id stored as a float
            else:
                raise TypeError(
                    f"{name}: column {column!r} must hold integer ids, got dtype {values.dtype}"
                )
        if (values < 0).any():
            raise ValueError(f"{name}: column {column!r} has negative ids, e.g. {values.min()}")
    values = ratings[value_column]
    if not pd.api.types.is_numeric_dtype(values):
        raise TypeError(f"{name}: column {value_column!r} must be numeric, got {values.dtype}")
    if not np.isfinite(values.to_numpy(dtype=np.float64)).all():
        raise ValueError(f"{name}: column {value_column!r} has NaN or infinite values")


def _resolve_duplicates(
    ratings: pd.DataFrame, name: str, duplicates: str, value_column: str
) -> pd.DataFrame:
    if duplicates not in ("error", "last", "mean"):
        raise ValueError(f"duplicates: expected 'error', 'last' or 'mean', got {duplicates!r}")
    repeated = ratings.duplicated(["user_id", "item_id"], keep=False)
    if not repeated.any():
        return ratings
    if duplicates == "error":
        first = ratings.loc[repeated, ["user_id", "item_id"]].iloc[0].tolist()
        raise ValueError(
            f"{name}: {int(repeated.sum())} rows repeat a (user_id, item_id) pair, e.g. "
            f"{tuple(first)}; pass duplicates='last' or 'mean' to resolve them"
        )
    if duplicates == "mean":
        return ratings.groupby(["user_id", "item_id"], as_index=False, sort=False).mean()
    order = ratings.sort_values("timestamp", kind="stable") if "timestamp" in ratings else ratings
    return order.drop_duplicates(["user_id", "item_id"], keep="last").sort_index()


# --------------------------------------------------------------------------------------------
# Ids, encoded ratings and the rating matrix M
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdMap:
    """A bijection between raw ids (any non-negative integers) and indices ``0..n-1``.

    Attributes:
        ids: the raw ids, sorted; ``ids[i]`` is the raw id of index ``i``.
    """

    ids: np.ndarray

    @classmethod
    def fit(cls, raw_ids) -> IdMap:
        """Build the map from every distinct id in ``raw_ids``."""
        return cls(np.unique(np.asarray(raw_ids, dtype=np.int64)))

    def __len__(self) -> int:
        return len(self.ids)

    def to_index(self, raw_ids, name: str = "raw_ids") -> np.ndarray:
        """Map raw ids to int32 indices; raise ``ValueError`` naming unknown ids."""
        raw = np.asarray(raw_ids, dtype=np.int64)
        if len(self.ids) == 0:
            raise ValueError(f"{name}: this IdMap holds no ids, so no id can be mapped")
        position = np.searchsorted(self.ids, raw)
        position = np.minimum(position, len(self.ids) - 1)
        unknown = self.ids[position] != raw
        if np.any(unknown):
            examples = np.unique(raw[unknown])[:5].tolist()
            raise ValueError(f"{name}: {int(unknown.sum())} unknown id(s), e.g. {examples}")
        return position.astype(np.int32)

    def to_raw(self, indices, name: str = "indices") -> np.ndarray:
        """Map indices back to raw ids; raise ``ValueError`` for indices out of range."""
        index = np.asarray(indices)
        if index.size and (index.min() < 0 or index.max() >= len(self.ids)):
            raise ValueError(
                f"{name}: indices must lie in [0, {len(self.ids)}), "
                f"got values from {index.min()} to {index.max()}"
            )
        return self.ids[index]


@dataclass(frozen=True)
class Ratings:
    """Ratings encoded for the models: parallel arrays over the observed entries Ω.

    Attributes:
        users: int32 user indices, shape ``(n,)``.
        items: int32 item indices, shape ``(n,)``.
        values: float32 ratings (or interaction counts), shape ``(n,)``.
        n_users, n_items: the shape of M.
    """

    users: np.ndarray
    items: np.ndarray
    values: np.ndarray
    n_users: int
    n_items: int

    def __len__(self) -> int:
        return len(self.values)

    def take(self, rows) -> Ratings:
        """The ratings at positions ``rows`` (an index array or boolean mask), same M shape."""
        return Ratings(
            users=self.users[rows],
            items=self.items[rows],
            values=self.values[rows],
            n_users=self.n_users,
            n_items=self.n_items,
        )


def encode(
    ratings: pd.DataFrame,
    user_map: IdMap,
    item_map: IdMap,
    value_column: str = "rating",
    name: str = "ratings",
) -> Ratings:
    """Validate ``ratings`` and map its raw ids to indices with ``user_map`` and ``item_map``."""
    ratings = validate_ratings(ratings, name=name, value_column=value_column)
    return Ratings(
        users=user_map.to_index(ratings["user_id"], name=f"{name}['user_id']"),
        items=item_map.to_index(ratings["item_id"], name=f"{name}['item_id']"),
        values=ratings[value_column].to_numpy(dtype=np.float32),
        n_users=len(user_map),
        n_items=len(item_map),
    )


def to_sparse_tensor(ratings: Ratings) -> tf.SparseTensor:
    """M as a ``tf.SparseTensor`` of shape ``(n_users, n_items)`` holding only observed entries.

    Memory grows with the number of ratings, never with users × items.
    """
    import tensorflow as tf

    indices = np.stack([ratings.users, ratings.items], axis=1).astype(np.int64)
    matrix = tf.SparseTensor(indices, ratings.values, [ratings.n_users, ratings.n_items])
    return tf.sparse.reorder(matrix)


def to_dense(ratings: Ratings, max_cells: int = 10_000_000) -> tuple[np.ndarray, np.ndarray]:
    """M as a dense float32 array with zeros for missing entries, and its boolean mask.

    For toy examples and small slices only: memory grows with users × items, so this refuses
    matrices with more than ``max_cells`` entries.
    """
    cells = ratings.n_users * ratings.n_items
    if cells > max_cells:
        raise ValueError(
            f"ratings: a dense {ratings.n_users}×{ratings.n_items} matrix has {cells:,} cells, "
            f"more than max_cells={max_cells:,}; use to_sparse_tensor or take a slice"
        )
    dense = np.zeros((ratings.n_users, ratings.n_items), dtype=np.float32)
    mask = np.zeros((ratings.n_users, ratings.n_items), dtype=bool)
    dense[ratings.users, ratings.items] = ratings.values
    mask[ratings.users, ratings.items] = True
    return dense, mask


def interactions(log: pd.DataFrame, name: str = "log") -> pd.DataFrame:
    """Turn an interaction log (one row per purchase, view or rating) into the implicit view.

    Args:
        log: frame with ``user_id`` and ``item_id``; other columns are ignored. A row is one
            interaction; repeated (user, item) rows are counted, not rejected.

    Returns:
        One row per (user_id, item_id) with ``count``, the number of interactions (float32),
        sorted by user and item. Confidence in the Hu, Koren and Volinsky sense is then
        ``1 + alpha * count``.
    """
    if isinstance(log, pd.DataFrame) and "count" in log.columns:
        raise ValueError(f"{name}: already has a 'count' column; pass the raw log, one row each")
    counted = log.assign(count=1.0)
    _check_frame(counted, name, "count")
    grouped = counted.groupby(["user_id", "item_id"], as_index=False)["count"].sum()
    return grouped.astype({"count": "float32"})


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """A train/test split and its cold-start counts.

    Attributes:
        train, test: row subsets of the input frame (original index kept).
        cold_user_rows: test rows whose user has no rating in ``train``.
        cold_item_rows: test rows whose item has no rating in ``train``.
    """

    train: pd.DataFrame
    test: pd.DataFrame
    cold_user_rows: int
    cold_item_rows: int

    def __iter__(self):
        return iter((self.train, self.test))


def _check_fraction(test_fraction: float) -> float:
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: must lie strictly between 0 and 1, got {test_fraction}")
    return float(test_fraction)


def _make_split(ratings: pd.DataFrame, test_mask: np.ndarray) -> Split:
    train, test = ratings[~test_mask], ratings[test_mask]
    return Split(
        train=train,
        test=test,
        cold_user_rows=int((~test["user_id"].isin(train["user_id"])).sum()),
        cold_item_rows=int((~test["item_id"].isin(train["item_id"])).sum()),
    )


def random_split(ratings: pd.DataFrame, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Put a uniformly random ``test_fraction`` of the rows in test (exactly rounded)."""
    ratings = validate_ratings(ratings)
    fraction = _check_fraction(test_fraction)
    n_test = int(round(fraction * len(ratings)))
    chosen = np.random.default_rng(seed).permutation(len(ratings))[:n_test]
    mask = np.zeros(len(ratings), dtype=bool)
    mask[chosen] = True
    return _make_split(ratings, mask)


def per_user_split(
    ratings: pd.DataFrame, test_fraction: float = 0.2, seed: int = 0, min_train: int = 1
) -> Split:
    """Hold out ``test_fraction`` of each user's ratings, keeping at least ``min_train`` each.

    Users with ``min_train`` ratings or fewer stay wholly in train, so no test user is cold.
    """
    ratings = validate_ratings(ratings)
    fraction = _check_fraction(test_fraction)
    if min_train < 1:
        raise ValueError(f"min_train: must be at least 1, got {min_train}")
    rng = np.random.default_rng(seed)
    random_key = rng.random(len(ratings))
    users = ratings["user_id"].to_numpy()
    order = np.lexsort((random_key, users))
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    counts = np.diff(np.r_[starts, len(users)])
    rank_in_user = np.arange(len(users)) - np.repeat(starts, counts)
    n_test = np.minimum(np.round(fraction * counts).astype(int), np.maximum(counts - min_train, 0))
    mask = np.zeros(len(ratings), dtype=bool)
    mask[order] = rank_in_user < np.repeat(n_test, counts)
    return _make_split(ratings, mask)


def temporal_split(ratings: pd.DataFrame, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Put the latest ``test_fraction`` of ratings (by ``timestamp``) in test.

    Ties in timestamp are broken by a random key drawn with ``seed``, so the split is
    deterministic for a given seed.
    """
    ratings = validate_ratings(ratings)
    fraction = _check_fraction(test_fraction)
    if "timestamp" not in ratings.columns:
        raise ValueError("ratings: temporal_split needs a 'timestamp' column")
    tie_break = np.random.default_rng(seed).random(len(ratings))
    order = np.lexsort((tie_break, ratings["timestamp"].to_numpy()))
    n_test = int(round(fraction * len(ratings)))
    mask = np.zeros(len(ratings), dtype=bool)
    mask[order[len(ratings) - n_test :]] = True
    return _make_split(ratings, mask)


@dataclass(frozen=True)
class ProjectSplit:
    """The series' MovieLens split, encoded for the models.

    Attributes:
        split: the raw :class:`Split` (frames with raw ids).
        user_map, item_map: id maps fit on all ratings, so every user and item has an index.
        train, test: the encoded ratings.
        interactions: the training ratings as an implicit view (``count`` per pair).
    """

    split: Split
    user_map: IdMap
    item_map: IdMap
    train: Ratings
    test: Ratings
    interactions: Ratings


def project_split(seed: int = 42, cache: str | os.PathLike | None = None) -> ProjectSplit:
    """Load MovieLens and build the series' random 80/20 split (``seed=42``), encoded.

    Notebooks build it step by step; tests and benchmarks call this to use the same split.
    """
    ratings, _ = load_movielens(cache)
    user_map, item_map = IdMap.fit(ratings["user_id"]), IdMap.fit(ratings["item_id"])
    split = random_split(ratings, test_fraction=0.2, seed=seed)
    return ProjectSplit(
        split=split,
        user_map=user_map,
        item_map=item_map,
        train=encode(split.train, user_map, item_map),
        test=encode(split.test, user_map, item_map),
        interactions=encode(interactions(split.train), user_map, item_map, value_column="count"),
    )


# --------------------------------------------------------------------------------------------
# Command line: python -m helpers.data fetch | seed PATH
# --------------------------------------------------------------------------------------------


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m helpers.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="download, verify and extract MovieLens into the cache")
    seed = commands.add_parser("seed", help="copy an official zip into the cache, verified")
    seed.add_argument("zip_path")
    args = parser.parse_args(argv)
    if args.command == "seed":
        seed_cache(args.zip_path)
    folder = fetch_movielens()
    print(f"MovieLens ml-latest-small is ready in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
