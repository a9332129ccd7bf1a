"""``widgets.tuning_explorer``: sliders that redraw sweep curves from the table, never training.

The sweep tables come from ``tuning.sweep`` run with a scripted model whose validation curve is
a known function of (rank, λ, epoch), so every number the panel shows is known by hand, and the
script counts how often a model is built or fitted.
"""

from __future__ import annotations

import base64

import ipywidgets
import numpy as np
import pandas as pd
import pytest

from helpers import data, tuning, widgets

# The scripted validation curve: 1 + rank/1000 + OFFSET[λ] + 0.01 (epoch − LOWEST_EPOCH[λ])².
LOWEST_EPOCH = {0.1: 2, 1.0: 4, 10.0: 6}
OFFSET = {0.1: 0.03, 1.0: 0.0, 10.0: 0.02}
EPOCHS = 6


def _scripted_factory(calls: dict):
    class ScriptedModel:
        def __init__(self, n_users, n_items, rank, reg, seed):
            calls["built"] += 1
            self.rank, self.reg = rank, reg

        def fit(self, train, epochs, validation):
            calls["fitted"] += 1
            epoch = np.arange(1, epochs + 1)
            val = (
                1
                + self.rank / 1000
                + OFFSET[self.reg]
                + 0.01 * (epoch - LOWEST_EPOCH[self.reg]) ** 2
            )
            return pd.DataFrame({"epoch": epoch, "train_rmse": 0.5 + 0.0 * epoch, "val_rmse": val})

    return ScriptedModel


def _ratings() -> data.Ratings:
    return data.Ratings(
        np.array([0, 1], np.int32), np.array([0, 1], np.int32), np.ones(2, np.float32), 2, 2
    )


def _sweep(calls: dict, regs=(0.1, 1.0, 10.0), ranks=(4, 8)) -> pd.DataFrame:
    result = tuning.sweep(
        _ratings(),
        _ratings(),
        regs=list(regs),
        ranks=list(ranks),
        epochs=EPOCHS,
        model_factory=_scripted_factory(calls),
    )
    return result.table


def _parts(panel: ipywidgets.Widget) -> dict[str, ipywidgets.Widget]:
    """The panel's widgets by their mf-* CSS class."""
    found, stack = {}, [panel]
    while stack:
        widget = stack.pop()
        found.update({name: widget for name in widget._dom_classes if name.startswith("mf-")})
        stack.extend(getattr(widget, "children", ()))
    return found


def _shown(output: ipywidgets.Output) -> tuple[str, bytes]:
    """The caption text and the PNG bytes the output holds."""
    caption = "".join(item["text"] for item in output.outputs if item["output_type"] == "stream")
    images = [item["data"]["image/png"] for item in output.outputs if "data" in item]
    assert len(images) == 1
    png = base64.b64decode(images[0])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return caption, png


def test_panel_starts_at_the_best_setting_with_marked_controls():
    calls = {"built": 0, "fitted": 0}
    panel = widgets.tuning_explorer(_sweep(calls))
    parts = _parts(panel)

    assert set(parts) == {"mf-lambda-slider", "mf-rank-slider", "mf-curves"}
    assert isinstance(parts["mf-curves"], ipywidgets.Output)
    assert parts["mf-lambda-slider"].options == (("0.1", 0.1), ("1", 1.0), ("10", 10.0))
    assert [value for _, value in parts["mf-rank-slider"].options] == [4, 8]
    # Lowest of all: rank 4, λ = 1 at epoch 4, 1 + 4/1000 + 0 + 0 = 1.004.
    assert (parts["mf-lambda-slider"].value, parts["mf-rank-slider"].value) == (1.0, 4)
    caption, _ = _shown(parts["mf-curves"])
    assert caption.startswith("λ = 1, rank 4: validation RMSE 1.0040 at its lowest (epoch 4)")


def test_moving_the_sliders_redraws_from_the_table_without_training():
    calls = {"built": 0, "fitted": 0}
    panel = widgets.tuning_explorer(_sweep(calls))
    assert calls == {"built": 6, "fitted": 6}  # the sweep itself: 2 ranks × 3 λ
    parts = _parts(panel)
    reg_slider, rank_slider, output = (
        parts[name] for name in ("mf-lambda-slider", "mf-rank-slider", "mf-curves")
    )
    first = _shown(output)

    reg_slider.value = 10.0
    caption, png = _shown(output)
    # λ = 10 at rank 4: lowest at epoch 6, 1.004 + 0.02 = 1.024; after epoch 6 as well.
    assert caption.startswith("λ = 10, rank 4: validation RMSE 1.0240 at its lowest (epoch 6)")
    assert "1.0240 after epoch 6" in caption
    assert png != first[1]

    rank_slider.value = 8
    caption, png_rank = _shown(output)
    assert caption.startswith("λ = 10, rank 8: validation RMSE 1.0280 at its lowest (epoch 6)")
    assert png_rank != png

    reg_slider.value = 0.1
    caption, _ = _shown(output)
    # λ = 0.1 at rank 8: lowest at epoch 2, 1.008 + 0.03; after epoch 6: + 0.01 · 4² = 1.198.
    assert caption.startswith("λ = 0.1, rank 8: validation RMSE 1.0380 at its lowest (epoch 2)")
    assert "1.1980 after epoch 6" in caption

    assert calls == {"built": 6, "fitted": 6}  # nothing was trained by the sliders


def test_a_setting_seen_before_comes_back_unchanged():
    panel = widgets.tuning_explorer(_sweep({"built": 0, "fitted": 0}))
    parts = _parts(panel)
    reg_slider, output = parts["mf-lambda-slider"], parts["mf-curves"]
    before = _shown(output)
    reg_slider.value = 0.1
    assert _shown(output) != before
    reg_slider.value = 1.0
    assert _shown(output) == before


def test_lambda_slider_offers_what_each_rank_has_and_keeps_the_nearest():
    calls = {"built": 0, "fitted": 0}
    table = pd.concat(
        [_sweep(calls, ranks=(4,)), _sweep(calls, regs=(1.0, 10.0), ranks=(8,))],
        ignore_index=True,
    )
    panel = widgets.tuning_explorer(table, reg=0.1, rank=4)
    parts = _parts(panel)
    reg_slider, rank_slider, output = (
        parts[name] for name in ("mf-lambda-slider", "mf-rank-slider", "mf-curves")
    )

    rank_slider.value = 8
    assert [value for _, value in reg_slider.options] == [1.0, 10.0]
    assert reg_slider.value == 1.0  # the nearest of 1 and 10 to 0.1 on the grid
    assert _shown(output)[0].startswith("λ = 1, rank 8:")

    reg_slider.value = 10.0
    rank_slider.value = 4
    assert [value for _, value in reg_slider.options] == [0.1, 1.0, 10.0]
    assert reg_slider.value == 10.0
    assert _shown(output)[0].startswith("λ = 10, rank 4:")


def test_start_setting_can_be_given():
    panel = widgets.tuning_explorer(_sweep({"built": 0, "fitted": 0}), reg=10, rank=8)
    parts = _parts(panel)
    assert (parts["mf-lambda-slider"].value, parts["mf-rank-slider"].value) == (10.0, 8)


def test_bad_input_names_the_argument():
    table = _sweep({"built": 0, "fitted": 0})
    with pytest.raises(TypeError, match="^table:"):
        widgets.tuning_explorer(table.to_dict())
    with pytest.raises(ValueError, match="^table:.*val_rmse"):
        widgets.tuning_explorer(table.drop(columns="val_rmse"))
    with pytest.raises(ValueError, match="^table:.*repeats"):
        widgets.tuning_explorer(pd.concat([table, table]))
    with pytest.raises(ValueError, match="^reg: 3 is not in the table"):
        widgets.tuning_explorer(table, reg=3)
    with pytest.raises(ValueError, match="^rank: 16 is not in the table"):
        widgets.tuning_explorer(table, rank=16)
    with pytest.raises(TypeError, match="^rank:"):
        widgets.tuning_explorer(table, rank="8")
