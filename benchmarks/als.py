"""ALS benchmark: explicit and implicit ALS against the `implicit` library, side by side.

Run with ``.venv/bin/python benchmarks/als.py`` (or ``make bench``). Needs the benchmark extras
(``pip install -e '.[test,bench]'``) for the `implicit` library.

On THE project split (random 80/20 of ml-latest-small, seed 42) it measures:

* explicit ALS, rank 32, 15 sweeps: test RMSE (target ≤ 0.858) and fit time (target ≤ 1.5 s);
* implicit ALS, rank 64, 15 sweeps: precision@10 (target ≥ 0.17) and fit time against the
  `implicit` library's CPU ALS (64 factors, 15 iterations, same confidence 1 + α r and λ),
  target at most 2× its time, with the exact (Cholesky) solver and with 3 conjugate-gradient
  steps per half-step (``solver="cg"``, as the library does);
* the GradientTape-trained ``ImplicitMatrixFactorization`` and the popularity baseline.

Ranking protocol: relevant = the user's test items rated ≥ 4; candidates = the items the user
did not rate in training. The machine is shared and noisy: every fit time is the median of
``REPEATS`` fits taken in turns (so load hits every method alike), after one warm-up fit that
also pays TensorFlow's one-off tracing (its time is shown as ``first fit s``).
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse  # noqa: E402
from implicit.cpu.als import AlternatingLeastSquares  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from helpers import data, metrics, similarity  # noqa: E402
from helpers.als import ALS  # noqa: E402
from helpers.implicit_model import ImplicitMatrixFactorization  # noqa: E402

REPEATS = 3
EXPLICIT = {"rank": 32, "max_iter": 15, "reg_param": 0.1, "weighting": "count"}
IMPLICIT = {"rank": 64, "max_iter": 15, "reg_param": 20.0, "alpha": 1.0, "weighting": "uniform"}
GRADIENT = {"rank": 32, "reg": 20.0, "alpha": 1.0, "epochs": 50, "learning_rate": 0.1}


def _split():
    project = data.project_split()
    return project.train, project.test, project.interactions


def _precision(scorer, train: data.Ratings, relevant) -> float:
    """precision@10 of a model (or item-score array), leaving out each user's training items."""
    users = np.arange(train.n_users)
    top, _ = similarity.recommend(scorer, users, k=10, exclude=train)
    return metrics.precision_at_k(top, relevant, k=10)


class _LibraryModel:
    """The `implicit` library's ALS fit, exposing U and V for ranking with our code."""

    def __init__(self, interactions: data.Ratings, use_cg: bool = True):
        alpha, reg = IMPLICIT["alpha"], IMPLICIT["reg_param"]
        # The library reads the matrix values as confidences c (its alpha scales them), so
        # passing 1 + α r with its alpha = 1 gives the same c = 1 + α r and the same loss.
        confidence = (1.0 + alpha * interactions.values).astype(np.float32)
        self.matrix = scipy.sparse.csr_matrix(
            (confidence, (interactions.users, interactions.items)),
            shape=(interactions.n_users, interactions.n_items),
        )
        self.options = {
            "factors": IMPLICIT["rank"],
            "iterations": IMPLICIT["max_iter"],
            "regularization": reg,
            "alpha": 1.0,
            "use_cg": use_cg,
        }

    def fit(self):
        model = AlternatingLeastSquares(random_state=0, **self.options)
        # The library asks for a single-threaded BLAS; its own loops use every core.
        with threadpool_limits(1, "blas"):
            model.fit(self.matrix, show_progress=False)
        self.user_factors, self.item_factors = model.user_factors, model.item_factors
        return self


def _as_protocol(user_factors, item_factors):
    """Wrap bare factors in the model protocol for ``similarity.recommend``."""
    n_users, n_items = len(user_factors), len(item_factors)
    return type(
        "Factors",
        (),
        {
            "user_factors": np.asarray(user_factors, np.float32),
            "item_factors": np.asarray(item_factors, np.float32),
            "user_bias": np.zeros(n_users, np.float32),
            "item_bias": np.zeros(n_items, np.float32),
            "global_bias": 0.0,
            "use_bias": False,
            "reg": IMPLICIT["reg_param"],
            "weighting": "uniform",
        },
    )()


def _timed(fit):
    """Fit once; return the model, wall seconds and CPU seconds (all threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    model = fit()
    return model, time.perf_counter() - start, time.process_time() - cpu


def main() -> pd.DataFrame:
    """Fit every method, print the table, and return it."""
    train, test, interactions = _split()
    relevant = metrics.relevant_items(test, min_rating=4.0)
    library = _LibraryModel(interactions)
    fits = {
        "explicit ALS": lambda: ALS(**EXPLICIT).fit(train),
        "implicit ALS": lambda: ALS(implicit_prefs=True, **IMPLICIT).fit(interactions),
        "implicit ALS CG": lambda: ALS(
            implicit_prefs=True, solver="cg", cg_steps=3, **IMPLICIT
        ).fit(interactions),
        "implicit library": library.fit,
        "GradientTape": lambda: _fit_gradient(interactions),
    }
    first, walls, cpus, models = {}, {name: [] for name in fits}, {name: [] for name in fits}, {}
    for name, fit in fits.items():
        models[name], first[name], _ = _timed(fit)
    for _ in range(REPEATS):
        for name, fit in fits.items():
            models[name], wall, cpu = _timed(fit)
            walls[name].append(wall)
            cpus[name].append(cpu)
    # The library's exact (Cholesky) solver, like ours, for context: one fit, it is slow.
    _, wall, cpu = _timed(_LibraryModel(interactions, use_cg=False).fit)
    walls["exact library"], cpus["exact library"] = [wall], [cpu]
    first["exact library"] = np.nan
    fit_s = {name: float(np.median(values)) for name, values in walls.items()}
    cpu_s = {name: float(np.median(values)) for name, values in cpus.items()}

    explicit = models["explicit ALS"]
    rmse = metrics.rmse(explicit.predict(test.users, test.items), test.values)
    library_model = models["implicit library"]
    rows = [
        (
            "explicit ALS, rank 32, 15 sweeps",
            rmse,
            _precision(explicit, train, relevant),
            "explicit ALS",
            "RMSE ≤ 0.858, fit ≤ 1.5 s",
        ),
        (
            "implicit ALS, rank 64, 15 sweeps",
            np.nan,
            _precision(models["implicit ALS"], train, relevant),
            "implicit ALS",
            "p@10 ≥ 0.17, fit ≤ 2× library",
        ),
        (
            "implicit ALS, rank 64, 15 sweeps, CG 3 steps",
            np.nan,
            _precision(models["implicit ALS CG"], train, relevant),
            "implicit ALS CG",
            "p@10 ≥ 0.17, fit ≤ 2× library",
        ),
        (
            "`implicit` library ALS (CG), 64 factors, 15 its",
            np.nan,
            _precision(
                _as_protocol(library_model.user_factors, library_model.item_factors),
                train,
                relevant,
            ),
            "implicit library",
            "reference",
        ),
        (
            "`implicit` library ALS, exact Cholesky solver",
            np.nan,
            np.nan,
            "exact library",
            "context: one fit",
        ),
        (
            "ImplicitMatrixFactorization (GradientTape)",
            np.nan,
            _precision(models["GradientTape"], train, relevant),
            "GradientTape",
            "p@10 > popularity",
        ),
    ]
    table = pd.DataFrame(
        [
            {
                "method": label,
                "test RMSE": r,
                "precision@10": p,
                "fit s": fit_s[key],
                "fit cpu s": cpu_s[key],
                "first fit s": first[key],
                "target": target,
            }
            for label, r, p, key, target in rows
        ]
    )
    popularity = _precision(metrics.popularity_scores(train), train, relevant)
    table.loc[len(table)] = ["popularity", np.nan, popularity, np.nan, np.nan, np.nan, "≈ 0.12"]
    with pd.option_context("display.width", 160, "display.max_columns", 10):
        print(table.round(4).to_string(index=False))
    for name in ("implicit ALS", "implicit ALS CG"):
        ratio = fit_s[name] / fit_s["implicit library"]
        cpu_ratio = cpu_s[name] / cpu_s["implicit library"]
        print(
            f"{name} / implicit library fit time: {ratio:.2f} wall, {cpu_ratio:.2f} CPU "
            "(target ≤ 2)"
        )
    print(
        f"fit s, fit cpu s: medians of {REPEATS} fits taken in turns, after a first fit that "
        "also pays TensorFlow's one-off tracing (first fit s)"
    )
    return table


def _fit_gradient(interactions: data.Ratings) -> ImplicitMatrixFactorization:
    options = dict(GRADIENT)
    epochs, learning_rate = options.pop("epochs"), options.pop("learning_rate")
    model = ImplicitMatrixFactorization(interactions.n_users, interactions.n_items, **options)
    model.fit(interactions, epochs=epochs, learning_rate=learning_rate)
    return model


if __name__ == "__main__":
    main()
