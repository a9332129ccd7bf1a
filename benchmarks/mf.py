"""Speed and accuracy of ``helpers.model.MatrixFactorization``, against Surprise's SVD.

Usage: ``.venv/bin/python benchmarks/mf.py`` (Surprise is a benchmark-only extra:
``.venv/bin/pip install -e '.[test,bench]'``). It prints one table and takes a few minutes.

Two parts, each measurement in its own Python process so that memory peaks do not mix:

* ``project split``: THE split of the series (ml-latest-small, ``random_split(seed=42)``,
  80,669 training ratings). Our model with its defaults, against Surprise's SVD with its
  defaults and with a tuned setting. ``fit_s`` is the wall time of ``fit``; for our model it is
  given for the first fit in a fresh process (which traces the TensorFlow graph once) and for
  any later fit in that process (a new model reuses the traced graph).
* ``scaling``: time per rating per epoch at rank 64 on synthetic ratings shaped like
  MovieLens 100K, 1M and 10M (943 × 1,682, 6,040 × 3,706 and 69,878 × 10,677), and the peak
  resident memory of the whole process (Python, TensorFlow, the data and the training).

The machines are shared and noisy: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RANK = 64
# Synthetic shapes: those of MovieLens 100K, 1M and 10M.
SHAPES = {100_000: (943, 1_682), 1_000_000: (6_040, 3_706), 10_000_000: (69_878, 10_677)}
# Epochs timed per size (the median epoch is reported); fewer at 10M, the machine is shared.
EPOCHS = {100_000: 20, 1_000_000: 10, 10_000_000: 4}
SURPRISE_EPOCHS = {100_000: 5, 1_000_000: 2}
# Surprise's SVD, tuned: the best of a 16-setting grid (n_factors 50/100, n_epochs 20/40,
# lr_all 0.005/0.01, reg_all 0.05/0.1) on a validation split carved out of the training
# ratings (random_split(train, 0.2, seed=0)); the test ratings played no part.
SURPRISE_TUNED = {"n_factors": 100, "n_epochs": 40, "lr_all": 0.01, "reg_all": 0.1}
NOTES = """\
rmse_ratio, fit_ratio: over ours (defaults, graph already traced). ns_ratio: time per rating
per epoch over ours at the same size. ns columns: the median and the fastest epoch after the
first. fit_s: median of 3 fits, except for a first fit. Surprise at 10M is not run: its
trainset (Python dicts) took 5 s and 0.4 GB to build at 1M, so about a minute and 4 GB at 10M.
The machine is shared: compare ratios within one run."""
COLUMNS = [
    "part",
    "method",
    "ratings",
    "rank",
    "test_rmse",
    "rmse_ratio",
    "fit_s",
    "fit_ratio",
    "ns_per_rating_epoch",
    "ns_fastest_epoch",
    "ns_ratio",
    "peak_rss_gb",
]


def main(sizes=(100_000, 1_000_000, 10_000_000), surprise_sizes=(100_000, 1_000_000)):
    """Run every measurement, print the table and return it as a DataFrame."""
    rows = _run_worker("split-ours") + _run_worker("split-surprise")
    for size in sizes:
        rows += _run_worker("scale-ours", size)
        if size in surprise_sizes:
            rows += _run_worker("scale-surprise", size)
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    _add_ratios(table)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, na_rep="", float_format=_format))
    print(NOTES)
    return table


def _format(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 10 else f"{value:,.0f}"


def _add_ratios(table: pd.DataFrame) -> None:
    """Each row over ours: RMSE and fit time on the split, time per rating at the same size."""
    split = table["part"] == "project split"
    ours = table.loc[split & (table["method"] == "ours, defaults")]
    if len(ours):
        table.loc[split, "rmse_ratio"] = table.loc[split, "test_rmse"] / ours["test_rmse"].iloc[0]
        table.loc[split, "fit_ratio"] = table.loc[split, "fit_s"] / ours["fit_s"].iloc[0]
    for _, rows in table[table["part"] == "scaling"].groupby("ratings"):
        ours = rows.loc[rows["method"].str.startswith("ours"), "ns_per_rating_epoch"]
        if len(ours):
            table.loc[rows.index, "ns_ratio"] = rows["ns_per_rating_epoch"] / ours.iloc[0]


def _run_worker(task: str, size: int = 0) -> list[dict]:
    """Run one measurement in a fresh Python process and return its rows."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", task, str(size)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-3000:])
        raise RuntimeError(f"benchmark worker {task} {size} failed")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB on Linux


# --------------------------------------------------------------------------------------------
# Workers (each runs in its own process)
# --------------------------------------------------------------------------------------------


def _project_split():
    from helpers import data

    project = data.project_split()
    return project.split, project.train, project.test


def _rmse(predicted, values) -> float:
    errors = np.asarray(predicted, np.float64) - np.asarray(values, np.float64)
    return float(np.sqrt(np.mean(errors**2)))


def _split_ours() -> list[dict]:
    from helpers.model import MatrixFactorization

    _, train, test = _project_split()
    rows = []
    for method, repeats in (("ours, defaults, first fit in process", 1), ("ours, defaults", 3)):
        seconds = []
        for _ in range(repeats):
            model = MatrixFactorization(train.n_users, train.n_items)
            start = time.perf_counter()
            model.fit(train)
            seconds.append(time.perf_counter() - start)
        rows.append(
            {
                "part": "project split",
                "method": method,
                "ratings": len(train),
                "rank": model.rank,
                "test_rmse": _rmse(model.predict(test.users, test.items), test.values),
                "fit_s": float(np.median(seconds)),
            }
        )
    return rows


def _split_surprise() -> list[dict]:
    from surprise import SVD, Dataset, Reader

    split, _, _ = _project_split()
    columns = ["user_id", "item_id", "rating"]
    reader = Reader(rating_scale=(0.5, 5.0))
    trainset = Dataset.load_from_df(split.train[columns], reader).build_full_trainset()
    pairs = list(zip(split.test.user_id, split.test.item_id, strict=True))
    rows = []
    for method, settings in (
        ("Surprise SVD, defaults", {}),
        ("Surprise SVD, tuned", SURPRISE_TUNED),
    ):
        seconds = []
        for _ in range(3):
            algorithm = SVD(random_state=0, **settings)
            start = time.perf_counter()
            algorithm.fit(trainset)
            seconds.append(time.perf_counter() - start)
        predicted = [algorithm.predict(user, item).est for user, item in pairs]
        rows.append(
            {
                "part": "project split",
                "method": method,
                "ratings": len(split.train),
                "rank": algorithm.n_factors,
                "test_rmse": _rmse(predicted, split.test.rating),
                "fit_s": float(np.median(seconds)),
            }
        )
    return rows


def _synthetic(size: int, seed: int = 0):
    """``size`` distinct (user, item) cells with ratings from a planted rank-8 model + noise."""
    n_users, n_items = SHAPES[size]
    rng = np.random.default_rng(seed)
    cells = np.sort(rng.integers(0, n_users * n_items, int(size * 1.1), dtype=np.int64))
    cells = cells[np.r_[True, cells[1:] != cells[:-1]]]  # distinct cells (np.unique is slower)
    cells = rng.permutation(cells)[:size]  # in random order, as real ratings come
    users, items = (cells // n_items).astype(np.int32), (cells % n_items).astype(np.int32)
    del cells
    user_factors = rng.normal(0, 0.5, (n_users, 8)).astype(np.float32)
    item_factors = rng.normal(0, 0.5, (n_items, 8)).astype(np.float32)
    values = np.empty(size, np.float32)
    for start in range(0, size, 1_000_000):  # in slices, to keep the (n × 8) rows small
        part = slice(start, start + 1_000_000)
        dots = np.sum(user_factors[users[part]] * item_factors[items[part]], axis=1)
        values[part] = np.clip(3.5 + dots + rng.normal(0, 0.5, len(dots)), 0.5, 5.0)
    return users, items, values, n_users, n_items


def _scale_ours(size: int) -> list[dict]:
    from helpers import data
    from helpers.model import MatrixFactorization

    users, items, values, n_users, n_items = _synthetic(size)
    ratings = data.Ratings(users, items, values, n_users, n_items)
    # Trace the training graph on a few ratings first, so the timed epochs exclude tracing.
    warm = data.Ratings(users[:100], items[:100], values[:100], n_users, n_items)
    MatrixFactorization(n_users, n_items, rank=RANK).fit(warm, epochs=1)

    model = MatrixFactorization(n_users, n_items, rank=RANK)
    start = time.perf_counter()
    history = model.fit(ratings, epochs=EPOCHS[size])
    seconds = time.perf_counter() - start
    later = history["seconds"].iloc[1:]  # the first epoch also touches fresh memory
    return [
        {
            "part": "scaling",
            "method": f"ours, full batch ({EPOCHS[size]} epochs)",
            "ratings": size,
            "rank": RANK,
            "fit_s": seconds,
            "ns_per_rating_epoch": float(later.median()) / size * 1e9,
            "ns_fastest_epoch": float(later.min()) / size * 1e9,
            "peak_rss_gb": _peak_rss_gb(),
        }
    ]


def _scale_surprise(size: int) -> list[dict]:
    from surprise import SVD, Dataset, Reader

    users, items, values, _, _ = _synthetic(size)
    frame = pd.DataFrame({"user": users, "item": items, "rating": values})
    reader = Reader(rating_scale=(0.5, 5.0))
    trainset = Dataset.load_from_df(frame, reader).build_full_trainset()
    del frame
    epochs = SURPRISE_EPOCHS[size]
    algorithm = SVD(n_factors=RANK, n_epochs=epochs, random_state=0)
    start = time.perf_counter()
    algorithm.fit(trainset)
    seconds = time.perf_counter() - start
    return [
        {
            "part": "scaling",
            "method": f"Surprise SVD ({epochs} epochs)",
            "ratings": size,
            "rank": RANK,
            "fit_s": seconds,
            "ns_per_rating_epoch": seconds / epochs / size * 1e9,
            "peak_rss_gb": _peak_rss_gb(),
        }
    ]


_WORKERS = {
    "split-ours": lambda size: _split_ours(),
    "split-surprise": lambda size: _split_surprise(),
    "scale-ours": _scale_ours,
    "scale-surprise": _scale_surprise,
}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("TASK", "SIZE"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        sys.path.insert(0, str(ROOT))
        task, size = arguments.worker
        print(json.dumps(_WORKERS[task](int(size))))
    else:
        main()
