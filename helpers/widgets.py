"""Interactive panels for the notebooks, drawn from results computed beforehand.

No panel trains a model in a callback: moving a control looks up what the notebook already
computed and redraws it (the recommender panel's heaviest step is one small ridge regression
per rating, a few milliseconds). Each panel marks its controls and outputs with a CSS class
(``widget.add_class("mf-...")``) so that the browser tests in ``tests/test_browser.py`` can find
and drive them the way a reader does.
"""

from __future__ import annotations

import base64
import io
import math
import numbers

import numpy as np
import pandas as pd

from helpers import data, plots

_SWEEP_COLUMNS = ("rank", "reg", "epoch", "train_rmse", "val_rmse")


def tuning_explorer(table: pd.DataFrame, reg: float | None = None, rank: int | None = None):
    """Sliders for λ and the rank that show the training and validation curves of one setting.

    The curves come from ``table``, e.g. ``tuning.sweep(...).table`` or several such tables
    concatenated. Moving a slider looks the setting up and redraws it (each drawing is kept, so
    a setting seen before comes back at once); nothing is trained. When the table holds only
    some λ at a rank, the λ slider offers those and moves to the nearest one on that rank.

    Args:
        table: one row per (rank, reg, epoch) with ``train_rmse`` and ``val_rmse``.
        reg: the λ shown first. Defaults to the λ with the lowest validation RMSE (at ``rank``
            when it is given).
        rank: the rank shown first, defaulting likewise.

    Returns:
        An ``ipywidgets.VBox``: a row with the λ slider (CSS class ``mf-lambda-slider``) and
        the rank slider (``mf-rank-slider``), then an ``ipywidgets.Output`` (``mf-curves``)
        that holds a caption naming the setting and a PNG of its curves. Grey lines show the
        validation curves of the other λ at the same rank, a dotted line the lowest validation
        RMSE in the whole table.

    Raises:
        TypeError, ValueError: ``table``, ``reg`` or ``rank`` is invalid; the message starts
            with the argument's name.
    """
    import ipywidgets

    curves = _check_sweep_table(table)
    regs_by_rank = {
        int(k): sorted(float(r) for r in group.unique())
        for k, group in curves.groupby("rank")["reg"]
    }
    reg, rank = _start(curves, reg, rank)
    reg_slider = ipywidgets.SelectionSlider(
        options=_reg_options(regs_by_rank[rank]), value=reg, description="λ"
    )
    reg_slider.add_class("mf-lambda-slider")
    rank_slider = ipywidgets.SelectionSlider(
        options=[(str(k), k) for k in regs_by_rank], value=rank, description="rank"
    )
    rank_slider.add_class("mf-rank-slider")
    output = ipywidgets.Output()
    output.add_class("mf-curves")
    drawn: dict[tuple[int, float], tuple[dict, ...]] = {}
    all_regs = sorted(curves["reg"].unique())

    def show(_change=None) -> None:
        with output:  # an error while drawing shows in the panel instead of vanishing
            key = (rank_slider.value, reg_slider.value)
            if key not in drawn:
                drawn[key] = _setting_outputs(curves, *key)
            output.outputs = drawn[key]

    def change_rank(change) -> None:
        # Offer the λ computed at the new rank, keeping the nearest to the current one.
        available = regs_by_rank[change["new"]]
        here = all_regs.index(reg_slider.value)
        nearest = min(available, key=lambda value: abs(all_regs.index(value) - here))
        reg_slider.unobserve(show, names="value")
        reg_slider.options = _reg_options(available)
        reg_slider.value = nearest
        reg_slider.observe(show, names="value")
        show()

    reg_slider.observe(show, names="value")
    rank_slider.observe(change_rank, names="value")
    show()
    return ipywidgets.VBox([ipywidgets.HBox([reg_slider, rank_slider]), output])


def _check_sweep_table(table) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table: expected the sweep's DataFrame, got {type(table).__name__}")
    missing = [column for column in _SWEEP_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"table: lacks column(s) {missing}; pass tuning.sweep(...).table")
    if table["val_rmse"].isna().all():
        raise ValueError("table: has no validation RMSE to show")
    if table.duplicated(["rank", "reg", "epoch"]).any():
        raise ValueError("table: repeats (rank, reg, epoch) rows; concatenate distinct sweeps")
    curves = table.astype({"rank": int, "reg": float}).sort_values(["rank", "reg", "epoch"])
    return curves.reset_index(drop=True)


def _start(curves: pd.DataFrame, reg, rank) -> tuple[float, int]:
    """The first setting: the given reg and rank, the rest chosen by lowest validation RMSE."""
    rows = curves
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
            raise TypeError(f"rank: expected an integer, got {rank!r}")
        rows = rows[rows["rank"] == rank]
        if rows.empty:
            raise ValueError(f"rank: {rank} is not in the table (ranks {_listed(curves['rank'])})")
    if reg is not None:
        if isinstance(reg, bool) or not isinstance(reg, numbers.Real):
            raise TypeError(f"reg: expected a number, got {reg!r}")
        matches = rows[(rows["reg"] - reg).abs() <= 1e-9 * max(1.0, abs(reg))]
        if matches.empty:
            raise ValueError(f"reg: {reg:g} is not in the table (λ {_listed(rows['reg'])})")
        rows = matches
    best = rows.loc[rows["val_rmse"].idxmin()]
    return float(best["reg"]), int(best["rank"])


def _listed(values: pd.Series) -> str:
    return ", ".join(f"{value:g}" for value in sorted(values.unique()))


def _reg_options(regs: list[float]) -> list[tuple[str, float]]:
    return [(f"{reg:g}", reg) for reg in regs]


def _setting_outputs(curves: pd.DataFrame, rank: int, reg: float) -> tuple[dict, ...]:
    """The Output's content for one setting: a caption and a PNG of its curves."""
    same_rank = curves[curves["rank"] == rank]
    curve = same_rank[same_rank["reg"] == reg]
    lowest = curve.loc[curve["val_rmse"].idxmin()]
    caption = (
        f"λ = {reg:g}, rank {rank}: validation RMSE {lowest['val_rmse']:.4f} at its lowest "
        f"(epoch {int(lowest['epoch'])}), {curve['val_rmse'].iloc[-1]:.4f} after epoch "
        f"{int(curve['epoch'].iloc[-1])}; training RMSE {lowest['train_rmse']:.4f} at epoch "
        f"{int(lowest['epoch'])}\n"
    )
    png = base64.b64encode(_curves_png(curves, same_rank, curve, reg, rank)).decode("ascii")
    return (
        {"output_type": "stream", "name": "stdout", "text": caption},
        {
            "output_type": "display_data",
            "data": {"image/png": png, "text/plain": f"<curves for λ = {reg:g}, rank {rank}>"},
            "metadata": {},
        },
    )


def _curves_png(curves, same_rank, curve, reg: float, rank: int) -> bytes:
    """Training and validation curves of one setting, with the other λ in grey behind them."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=plots.FIGSIZE, layout="constrained")
    ax = figure.subplots()
    others = same_rank[same_rank["reg"] != reg]
    for number, (_, other) in enumerate(others.groupby("reg")):
        label = "validation, other λ at this rank" if number == 0 else None
        ax.plot(other["epoch"], other["val_rmse"], color="0.8", linewidth=1, label=label)
    plots.plot_history(curve, ax=ax, title=f"λ = {reg:g}, rank {rank}")
    overall = curves["val_rmse"].min()
    if math.isfinite(overall):
        ax.axhline(overall, color="k", linestyle=":", linewidth=1, label="lowest in the table")
    # Beside the axes, so that it never hides a curve.
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Recommender panel: search, rate, and see recommendations for a new user
# --------------------------------------------------------------------------------------------

_STARS = tuple(half / 2 for half in range(10, 0, -1))  # 5.0, 4.5, ..., 0.5


def recommender_panel(
    model,
    movies: pd.DataFrame,
    item_map: data.IdMap,
    *,
    train: data.Ratings | None = None,
    k: int = 10,
    reg: float | None = None,
    max_results: int = 8,
):
    """Search for movies, rate them, and see what the model recommends to you, a new user.

    Each rating folds you into the model anew (``similarity.recommend_for_new_user``: one
    ridge regression with V fixed, a few milliseconds); the model itself never changes. The
    movies you rated never appear in the recommendations.

    Args:
        model: an object with the model protocol of the series, e.g. ``MatrixFactorization``.
        movies: the MovieLens movies frame: ``item_id``, ``title`` and optionally ``genres``.
        item_map: the item ``IdMap`` the model was trained with; every item needs a title.
        train: the training ratings. When given, search results come most rated first and
            show their number of ratings; otherwise they come in title order.
        k: how many recommendations to show (fewer when fewer movies are left unrated).
        reg: λ for the fold-in; defaults to ``model.reg``. A new user has only a few
            ratings, so a smaller λ than the model's lets them count for more.
        max_results: the most search results to offer.

    Returns:
        An ``ipywidgets.VBox``. Its parts carry CSS classes: the search box ``mf-search`` (a
        ``Text``; a title matches when it contains every word typed, in any case), the
        matching titles ``mf-search-results`` (``RadioButtons``, the first one selected) and
        a line ``mf-search-status`` saying how many match or what to do next, the
        rating ``mf-rating`` (a ``Dropdown``, 5 stars by default), ``mf-rate-button`` (rates
        the selected title), ``mf-clear-button`` (forgets your ratings), your ratings
        ``mf-rated`` and the recommendations ``mf-recommendations`` (``HTML`` tables), and
        ``mf-messages`` (an ``Output`` that shows the error of a callback that failed).

    Raises:
        TypeError, ValueError: an argument is invalid; the message starts with its name.
    """
    n_items = _check_recommender_model(model)
    catalogue = _catalogue(movies, item_map, train, n_items)
    for name, value in (("k", k), ("max_results", max_results)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    if reg is not None and (
        isinstance(reg, bool) or not isinstance(reg, numbers.Real) or not reg > 0
    ):
        raise ValueError(f"reg: must be a positive number or None, got {reg!r}")
    return _RecommenderPanel(model, catalogue, int(k), reg, int(max_results)).widget


class _RecommenderPanel:
    """The state behind :func:`recommender_panel`: the catalogue, your ratings, the widgets."""

    def __init__(self, model, catalogue: pd.DataFrame, k: int, reg, max_results: int) -> None:
        import ipywidgets

        self.model, self.catalogue, self.k, self.reg = model, catalogue, k, reg
        self.max_results = max_results
        self.counted = bool(catalogue["n_ratings"].any())
        self.rated: dict[int, float] = {}  # item index → stars, in the order you rated them

        self.search = ipywidgets.Text(
            description="Search", placeholder="words of a title, e.g. toy story"
        )
        self.results = ipywidgets.RadioButtons(options=[], layout={"width": "auto"})
        self.status = ipywidgets.HTML("Type a few letters of a title.")
        self.stars = ipywidgets.Dropdown(
            options=[(f"{stars:g} ★", stars) for stars in _STARS],
            value=5.0,
            description="Rating",
            layout={"width": "12em"},
        )
        self.rate = ipywidgets.Button(description="Rate", button_style="primary")
        self.clear = ipywidgets.Button(description="Start over")
        self.your_ratings = ipywidgets.HTML()
        self.recommendations = ipywidgets.HTML()
        self.messages = ipywidgets.Output()
        for widget, name in (
            (self.search, "mf-search"),
            (self.results, "mf-search-results"),
            (self.status, "mf-search-status"),
            (self.stars, "mf-rating"),
            (self.rate, "mf-rate-button"),
            (self.clear, "mf-clear-button"),
            (self.your_ratings, "mf-rated"),
            (self.recommendations, "mf-recommendations"),
            (self.messages, "mf-messages"),
        ):
            widget.add_class(name)

        self.search.observe(self._find, names="value")
        self.rate.on_click(self._rate)
        self.clear.on_click(self._clear)
        self._refresh()
        self.widget = ipywidgets.VBox(
            [
                ipywidgets.HBox([self.search, self.stars, self.rate, self.clear]),
                self.status,
                self.results,
                ipywidgets.HBox([self.your_ratings, self.recommendations]),
                self.messages,
            ]
        )

    def _find(self, change) -> None:
        with self.messages:  # an error shows in the panel instead of vanishing
            found, total = _matching(self.catalogue, change["new"], self.max_results)
            labels = [
                f"{title} · {count} ratings" if self.counted else title
                for title, count in zip(found["title"], found["n_ratings"], strict=True)
            ]
            self.results.options = list(zip(labels, found.index.tolist(), strict=True))
            self.results.value = int(found.index[0]) if total else None
            self.status.value = (
                f"{total} titles match; showing {len(found)}."
                if total > len(found)
                else f"{total} title{'s' * (total != 1)} match."
            )

    def _rate(self, _button=None) -> None:
        with self.messages:
            if self.results.value is None:
                self.status.value = "Search for a movie first, then rate it."
                return
            self.rated[int(self.results.value)] = float(self.stars.value)
            self._refresh()

    def _clear(self, _button=None) -> None:
        with self.messages:
            self.rated.clear()
            self._refresh()

    def _refresh(self) -> None:
        """Redraw your ratings and fold you in again for the recommendations."""
        from helpers import similarity  # imports TensorFlow, which only this panel needs

        titles = self.catalogue["title"]
        if not self.rated:
            self.your_ratings.value = "<b>Your ratings</b><br>none yet"
            self.recommendations.value = (
                "<b>Recommended for you</b><br>Rate a movie to see recommendations."
            )
            return
        items = np.fromiter(self.rated, dtype=np.int64, count=len(self.rated))
        stars = np.fromiter(self.rated.values(), dtype=np.float32, count=len(self.rated))
        yours = pd.DataFrame({"title": titles.loc[items].to_numpy(), "stars": stars})
        self.your_ratings.value = "<b>Your ratings</b>" + yours.to_html(index=False)
        k = min(self.k, len(self.catalogue) - len(items))
        top, scores = similarity.recommend_for_new_user(self.model, items, stars, k, self.reg)
        shown = self.catalogue.loc[top, ["title", "genres"]].assign(predicted=scores.round(2))
        shown.insert(0, "#", np.arange(1, len(top) + 1))
        self.recommendations.value = "<b>Recommended for you</b>" + shown.to_html(index=False)


def _check_recommender_model(model) -> int:
    """The number of items of a model with the protocol's item factors."""
    factors = getattr(model, "item_factors", None)
    if factors is None or np.ndim(factors) != 2:
        raise TypeError(
            f"model: expected an object with the model protocol (item_factors, ...), "
            f"got {type(model).__name__}"
        )
    return int(np.shape(factors)[0])


def _catalogue(movies, item_map, train, n_items: int) -> pd.DataFrame:
    """Title, genres and training count of every item index, in search order."""
    if not isinstance(movies, pd.DataFrame) or not {"item_id", "title"} <= set(movies.columns):
        raise ValueError("movies: expected a DataFrame with columns 'item_id' and 'title'")
    if not isinstance(item_map, data.IdMap):
        raise TypeError(f"item_map: expected data.IdMap, got {type(item_map).__name__}")
    if len(item_map) != n_items:
        raise ValueError(f"item_map: maps {len(item_map)} items, the model has {n_items}")
    raw = item_map.to_raw(np.arange(n_items))
    found = movies.drop_duplicates("item_id").set_index("item_id").reindex(raw)
    if found["title"].isna().any():
        missing = raw[found["title"].isna().to_numpy()][:5].tolist()
        raise ValueError(f"movies: has no title for item_id(s) {missing}")
    counts = np.zeros(n_items, dtype=np.int64)
    if train is not None:
        if not isinstance(train, data.Ratings):
            raise TypeError(f"train: expected data.Ratings or None, got {type(train).__name__}")
        if train.n_items != n_items:
            raise ValueError(f"train: has {train.n_items} items, the model {n_items}")
        counts = np.bincount(train.items, minlength=n_items)
    genres = found["genres"].fillna("").to_numpy() if "genres" in found.columns else ""
    catalogue = pd.DataFrame(
        {"title": found["title"].astype(str).to_numpy(), "genres": genres, "n_ratings": counts}
    )
    catalogue["key"] = catalogue["title"].str.lower()
    order = np.lexsort((catalogue["key"].to_numpy(), -counts))
    return catalogue.iloc[order]


def _matching(catalogue: pd.DataFrame, query: str, limit: int) -> tuple[pd.DataFrame, int]:
    """The first ``limit`` titles holding every word of ``query``, and how many match."""
    words = str(query).lower().split()
    if not words:
        return catalogue.iloc[:0], 0
    keep = np.ones(len(catalogue), dtype=bool)
    for word in words:
        keep &= catalogue["key"].str.contains(word, regex=False).to_numpy()
    found = catalogue[keep]
    return found.head(limit), len(found)
