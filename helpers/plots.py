"""Figures for the series: training curves, λ sweeps and the 2-D item map.

Every function draws on ``ax`` when given one, otherwise on a new figure of a sensible size,
and returns the Axes (``ax.figure`` is the Figure). Nothing here calls ``plt.show()`` or
changes matplotlib's global settings; in a notebook the figure appears when the cell ends.
End the cell with ``plt.show()`` or assign the result (``ax = plots.plot_history(...)``) so
that the Axes' text form is not printed as well. A trailing ``;`` does not hide it under nbval,
which runs cells without IPython's history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

FIGSIZE = (8, 4)
MAP_FIGSIZE = (8, 6)

_METRIC_NAMES = {
    "train_rmse": "training",
    "val_rmse": "validation",
    "loss": "loss",
    "seconds": "seconds per epoch",
}
_STYLES = {"train_rmse": "-", "val_rmse": "--", "loss": ":"}


def plot_history(
    histories: pd.DataFrame | Mapping[str, pd.DataFrame],
    metrics: str | Sequence[str] = ("train_rmse", "val_rmse"),
    ax=None,
    title: str | None = None,
    mark_best: bool = True,
):
    """Training and validation curves of one or several runs against the epoch.

    Args:
        histories: a history frame from ``fit`` (one row per epoch, with ``epoch`` or
            ``sweep`` for ALS), or a mapping label → history to compare runs.
        metrics: column(s) to draw; each run keeps one colour, each metric one line style
            (training solid, validation dashed).
        ax: Axes to draw on; a new (8, 4) figure when None.
        title: the Axes title.
        mark_best: put a dot on the lowest ``val_rmse`` of each run.

    Returns:
        The Axes.
    """
    runs = {"": histories} if isinstance(histories, pd.DataFrame) else dict(histories)
    if not runs:
        raise ValueError("histories: is empty")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    ax = _axes(ax, FIGSIZE)
    x_label = "epoch"
    for number, (label, history) in enumerate(runs.items()):
        if not isinstance(history, pd.DataFrame):
            raise TypeError(f"histories: expected DataFrames, got {type(history).__name__}")
        missing = [m for m in metrics if m not in history.columns]
        if missing:
            raise ValueError(f"metrics: {missing} not in the history of {label or 'the run'}")
        x_column = next((c for c in ("epoch", "sweep") if c in history.columns), None)
        x = history[x_column] if x_column else np.arange(1, len(history) + 1)
        x_label = "ALS sweep" if x_column == "sweep" else "epoch"
        color = f"C{number % 10}"
        for metric in metrics:
            name = _METRIC_NAMES.get(metric, metric)
            ax.plot(
                x,
                history[metric],
                linestyle=_STYLES.get(metric, "-."),
                color=color,
                label=f"{label}: {name}" if label else name,
            )
        if mark_best and "val_rmse" in metrics and history["val_rmse"].notna().any():
            best = history["val_rmse"].idxmin()
            ax.plot(
                np.asarray(x)[history.index.get_loc(best)],
                history["val_rmse"][best],
                "o",
                color=color,
                markersize=5,
            )
    ax.set_xlabel(x_label)
    ax.set_ylabel(_y_label(metrics))
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return ax


def plot_sweep_heatmap(
    table: pd.DataFrame,
    rank: int | None = None,
    value: str = "val_rmse",
    ax=None,
    vmax: float | None = None,
):
    """Heatmap of validation RMSE over (λ, epoch), with the lowest cell of each λ marked.

    Args:
        table: ``sweep(...).table``.
        rank: which rank to show; needed only when the table holds several.
        value: the column to colour by.
        ax: Axes to draw on; a new (8, 4) figure when None.
        vmax: top of the colour scale. Defaults to the largest last-epoch value, so the first
            epochs (far above every later value) saturate the scale instead of flattening it.

    Returns:
        The Axes (its colorbar sits beside it).
    """
    curves = _one_rank(table, rank, value)
    grid = curves.pivot(index="reg", columns="epoch", values=value).sort_index()
    values = np.ma.masked_invalid(grid.to_numpy(dtype=float))
    epochs, regs = grid.columns.to_numpy(), grid.index.to_numpy()
    if vmax is None:
        last = curves.groupby("reg")[value].last()
        vmax = float(last.max()) if last.max() > values.min() else float(values.max())
    ax = _axes(ax, FIGSIZE)
    image = ax.imshow(
        values,
        aspect="auto",
        origin="lower",
        cmap="viridis",
        vmax=vmax,
        extent=(epochs[0] - 0.5, epochs[-1] + 0.5, -0.5, len(regs) - 0.5),
        interpolation="nearest",
    )
    lowest = np.ma.argmin(values, axis=1)
    ax.plot(
        epochs[lowest],
        np.arange(len(regs)),
        "o",
        color="w",
        markeredgecolor="k",
        markersize=5,
        label="lowest per λ",
    )
    best_row = int(np.ma.argmin(values.min(axis=1)))
    ax.plot(
        epochs[lowest[best_row]],
        best_row,
        "w*",
        markersize=14,
        markeredgecolor="k",
        label="best overall",
    )
    ax.set_yticks(np.arange(len(regs)), [f"{reg:g}" for reg in regs])
    ax.set_xlabel("epoch")
    ax.set_ylabel("λ (regularization)")
    colorbar = ax.figure.colorbar(image, ax=ax, extend="max")
    colorbar.set_label(f"{_METRIC_NAMES.get(value, value)} RMSE (stars)")
    ax.legend(loc="upper right", fontsize="small", framealpha=0.8)
    return ax


def plot_sweep_curves(
    table: pd.DataFrame,
    rank: int | None = None,
    value: str = "val_rmse",
    ax=None,
    mark_minimum: bool = True,
    ylim: tuple[float, float] | None = None,
):
    """One validation curve per λ against the epoch, with a dot where each bottoms out.

    Args:
        table: ``sweep(...).table``.
        rank: which rank to show; needed only when the table holds several.
        value: the column to draw.
        ax: Axes to draw on; a new (8, 4) figure when None.
        mark_minimum: dot the lowest point of each curve.
        ylim: y range; by default the upper limit is the largest last-epoch value plus a
            margin, so the first epochs do not squash the interesting part.

    Returns:
        The Axes.
    """
    curves = _one_rank(table, rank, value)
    regs = sorted(curves["reg"].unique())
    ax = _axes(ax, FIGSIZE)
    colors = _colormap("viridis")(np.linspace(0.0, 0.9, len(regs)))
    for reg, color in zip(regs, colors, strict=True):
        curve = curves[curves["reg"] == reg]
        ax.plot(curve["epoch"], curve[value], color=color, label=f"λ = {reg:g}")
        if mark_minimum and curve[value].notna().any():
            lowest = curve.loc[curve[value].idxmin()]
            ax.plot(lowest["epoch"], lowest[value], "o", color=color, markersize=5)
    if ylim is None:
        low = curves[value].min()
        high = curves.groupby("reg")[value].last().max()
        if high > low:
            ylim = (low - 0.05 * (high - low), high + 0.25 * (high - low))
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{_METRIC_NAMES.get(value, value)} RMSE (stars)")
    ax.legend(title="regularization", fontsize="small", ncols=2)
    return ax


def plot_item_map(
    coords,
    groups: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    annotate: Sequence[int] = (),
    explained: Sequence[float] | None = None,
    group_name: str = "genre",
    max_groups: int = 8,
    ax=None,
):
    """Scatter plot of 2-D item coordinates (e.g. from ``similarity.pca_2d``).

    Args:
        coords: float ``(n, 2)``.
        groups: n category names (e.g. each movie's first genre) to colour by; the
            ``max_groups − 1`` most common keep a colour, the rest are drawn grey as "other".
        labels: n strings (e.g. titles) for the points in ``annotate``.
        annotate: indices of the points to label.
        explained: the two explained-variance fractions, shown in the axis labels.
        group_name: the legend's title.
        max_groups: the most colours to use.
        ax: Axes to draw on; a new (8, 6) figure when None.

    Returns:
        The Axes.
    """
    coords = np.asarray(coords, dtype=float)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords: expected shape (n, 2), got {coords.shape}")
    if groups is not None and len(groups) != len(coords):
        raise ValueError(f"groups: expected {len(coords)} names, got {len(groups)}")
    annotate = np.asarray(annotate, dtype=int)
    if annotate.size and labels is None:
        raise ValueError("labels: needed to annotate points")
    if annotate.size and (annotate.min() < 0 or annotate.max() >= len(coords)):
        raise ValueError(f"annotate: indices must lie in [0, {len(coords)})")
    ax = _axes(ax, MAP_FIGSIZE)

    if groups is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=8, alpha=0.5, color="C0")
    else:
        names = pd.Series(list(groups), dtype="object")
        common = names.value_counts().index[: max(max_groups - 1, 1)].tolist()
        names = names.where(names.isin(common), "other")
        # "other" first, so that the coloured groups are drawn on top of it.
        other = (names == "other").to_numpy()
        grey = ax.scatter(*coords[other].T, s=8, alpha=0.6, color="lightgrey", label="other")
        handles = [
            ax.scatter(
                *coords[(names == name).to_numpy()].T,
                s=8,
                alpha=0.6,
                label=name,
                color=f"C{number % 10}",
            )
            for number, name in enumerate(common)
        ]
        handles += [grey] if other.any() else []
        ax.legend(handles=handles, title=group_name, fontsize="small", markerscale=2)
    for index in annotate:
        ax.annotate(
            str(labels[index]),
            coords[index],
            xytext=(4, 4),
            textcoords="offset points",
            fontsize="small",
        )
        ax.plot(*coords[index], "k.", markersize=6)

    for axis, number in ((ax.set_xlabel, 0), (ax.set_ylabel, 1)):
        share = f" ({explained[number]:.1%} of variance)" if explained is not None else ""
        axis(f"principal component {number + 1}{share}")
    return ax


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _axes(ax, figsize):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def _one_rank(table: pd.DataFrame, rank: int | None, value: str) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table: expected the sweep's DataFrame, got {type(table).__name__}")
    missing = [c for c in ("rank", "reg", "epoch", value) if c not in table.columns]
    if missing:
        raise ValueError(f"table: lacks column(s) {missing}; pass sweep(...).table")
    ranks = sorted(int(rank) for rank in table["rank"].unique())
    if rank is None:
        if len(ranks) > 1:
            raise ValueError(f"rank: the table holds ranks {ranks}; choose one")
        rank = ranks[0]
    if rank not in ranks:
        raise ValueError(f"rank: {rank} is not in the table (ranks {ranks})")
    return table[table["rank"] == rank]


def _y_label(metrics: list[str]) -> str:
    if all(metric.endswith("rmse") for metric in metrics):
        return "RMSE (stars)"
    if metrics == ["loss"]:
        return "loss (stars², per rating)"
    return ", ".join(metrics)
