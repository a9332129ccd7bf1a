"""The series as a reader meets it: JupyterLab in headless Chromium.

nbval proves that cells run and that outputs match, but it cannot see a widget that fails to
render or a slider that does nothing. These tests open the notebooks in a real JupyterLab, run
all cells, check that every widget rendered and nothing failed, then move each interactive panel
the way a reader would and check that what it shows changes.

How a notebook's panel is driven is written down once, in a driver per notebook (``DRIVERS``).
A driver finds controls by CSS class: the notebook (or ``helpers.widgets``) marks each control
and each output with ``widget.add_class("mf-...")``. The classes the drivers below expect:

- 04 (tuning λ against epochs): ``mf-lambda-slider`` and ``mf-rank-slider`` (sliders) and
  ``mf-curves`` (an ``ipywidgets.Output`` showing the curves as a matplotlib image, and a
  caption line that names each slider's current value as a number, e.g. "λ = 0.1, rank 32").
- 05 (recommending): ``mf-search`` (a ``Text`` or ``Combobox``), ``mf-search-results`` (the
  matching titles), ``mf-rate-button`` (one or more buttons; the driver clicks the first) and
  ``mf-recommendations`` (the recommendation list).

The servers run on a temporary copy of ``notebooks/``, so the repository's files never change.
Screenshots go to ``artifacts/screenshots/`` (ignored by git). The browser tests need Debian's
Chromium at ``/usr/bin/chromium``; ``make browser`` installs it when run as root.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import browser_support
import nbformat
import pytest
from browser_support import (
    WIDGET_MIME,
    LabServer,
    NotebookSession,
    chromium,
    chromium_missing_reason,
    copy_notebooks,
    has_controls,
    move_slider,
    part,
    read_notebook,
    shown,
    type_text,
    uses_widgets,
    wait_for_change,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
NOTEBOOK_01 = "01_building_the_rating_matrix.ipynb"


def widget_notebooks() -> list[str]:
    return sorted(
        path.name for path in NOTEBOOKS.glob("*.ipynb") if uses_widgets(read_notebook(path))
    )


# -- Drivers: how a reader uses each interactive panel --------------------------------------------


def drive_tuning_panel(session: NotebookSession) -> None:
    """04: moving the λ slider, then the rank slider, redraws the curves for the new value."""
    page = session.page
    curves = part(page, "mf-curves")
    for name in ("mf-lambda-slider", "mf-rank-slider"):
        before = shown(curves)
        _, value = move_slider(page, part(page, name), 1)
        text, images = wait_for_change(session, curves, before)
        assert _mentions(text, value), (
            f"after moving {name} to {value}, the caption reads {text!r}"
        )
        assert images and images != before[1], f"moving {name} did not redraw the curves"


def _mentions(text: str, readout: str) -> bool:
    """Whether ``text`` contains the number a slider's readout shows (1.00 matches 1)."""
    number = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
    wanted = float(number.search(readout).group())
    return any(math.isclose(float(n), wanted, rel_tol=1e-3) for n in number.findall(text))


def drive_recommender_panel(session: NotebookSession) -> None:
    """05: searching finds a movie, rating it changes the recommendations."""
    page = session.page
    results = part(page, "mf-search-results")
    before = shown(results)
    type_text(part(page, "mf-search"), "Toy Story")
    text, _ = wait_for_change(session, results, before)
    assert "Toy Story" in text, f"searching for 'Toy Story' shows {text!r}"

    recommendations = part(page, "mf-recommendations")
    before = shown(recommendations)
    page.locator(".mf-rate-button").first.click()
    wait_for_change(session, recommendations, before)


def drive_demo_panels(session: NotebookSession) -> None:
    """The throwaway notebook below: a slider with a plot, a search box with a rate button."""
    page = session.page
    plot = part(page, "mf-demo-plot")
    before = shown(plot)
    _, value = move_slider(page, part(page, "mf-demo-slider"), 2)
    text, images = wait_for_change(session, plot, before)
    assert f"value: {value}" in text and images and images != before[1]

    matches = part(page, "mf-demo-matches")
    before = shown(matches)
    type_text(part(page, "mf-demo-search"), "toy")
    text, _ = wait_for_change(session, matches, before)
    assert "Toy Story (1995)" in text and "Heat (1995)" not in text

    rated = part(page, "mf-demo-rated")
    before = shown(rated)
    part(page, "mf-demo-rate").click()
    text, _ = wait_for_change(session, rated, before)
    assert "Toy Story (1995): 5" in text


# Keyed by the notebook's number, so that a notebook can be renamed without losing its driver.
DRIVERS: dict[str, Callable[[NotebookSession], None]] = {
    "04_": drive_tuning_panel,
    "05_": drive_recommender_panel,
}


def driver_for(name: str) -> Callable[[NotebookSession], None] | None:
    return next((drive for prefix, drive in DRIVERS.items() if name.startswith(prefix)), None)


# -- Throwaway notebooks that prove the machinery -------------------------------------------------

_DEMO_CELLS = [
    "import ipywidgets as widgets\nimport matplotlib.pyplot as plt\n"
    "from IPython.display import display",
    """\
slider = widgets.IntSlider(value=3, min=0, max=10, description="value")
slider.add_class("mf-demo-slider")
plot = widgets.Output()
plot.add_class("mf-demo-plot")


def redraw(change=None):
    with plot:
        plot.clear_output(wait=True)
        print(f"value: {slider.value}")
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.bar([0], [slider.value])
        ax.set_ylim(0, 10)
        plt.show()


slider.observe(redraw, names="value")
redraw()
display(widgets.VBox([slider, plot]))""",
    """\
titles = ["Toy Story (1995)", "Jumanji (1995)", "Heat (1995)", "Toy Story 2 (1999)"]
search = widgets.Text(description="Movie")
search.add_class("mf-demo-search")
matches = widgets.HTML("type a title")
matches.add_class("mf-demo-matches")
rate = widgets.Button(description="Rate 5")
rate.add_class("mf-demo-rate")
rated = widgets.HTML("nothing rated yet")
rated.add_class("mf-demo-rated")


def find(change=None):
    found = [title for title in titles if search.value.lower() in title.lower()]
    matches.value = "<br>".join(found) or "no match"


def rate_first(button):
    found = [title for title in titles if search.value.lower() in title.lower()]
    rated.value = f"{found[0]}: 5"


search.observe(find, names="value")
rate.on_click(rate_first)
display(widgets.VBox([widgets.HBox([search, rate]), matches, rated]))""",
]

# Each cell breaks in one way the checks must notice.
_BROKEN_CELLS = [
    """\
import ipywidgets as widgets
from IPython.display import display

slider = widgets.IntSlider(value=1)
slider.add_class("mf-broken-slider")
slider.observe(lambda change: 1 / 0, names="value")
display(slider)""",
    """\
missing = {"model_id": "0" * 32, "version_major": 2, "version_minor": 0}
display({"application/vnd.jupyter.widget-view+json": missing}, raw=True)""",
    """\
import traceback

try:
    {}["missing key"]
except KeyError:
    traceback.print_exc()""",
    'raise RuntimeError("this cell fails")',
    'print("never reached")',
]


def _write_notebook(path: Path, sources: list[str]) -> str:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path.name


# -- Fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """One JupyterLab server and one Chromium for all browser tests of this module."""
    reason = chromium_missing_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("lab-root")
    copy_notebooks(NOTEBOOKS, root / "notebooks")
    _write_notebook(root / "checks" / "browser_demo.ipynb", _DEMO_CELLS)
    _write_notebook(root / "checks" / "browser_broken.ipynb", _BROKEN_CELLS)
    work = tmp_path_factory.mktemp("lab-work")
    with LabServer(root, work) as server, chromium(work / "chromium-profile") as context:
        yield SimpleNamespace(server=server, context=context)


@contextlib.contextmanager
def opened(lab: SimpleNamespace, relative_path: str) -> Iterator[NotebookSession]:
    """Open a notebook in a new page; on failure, keep a screenshot of what the page showed."""
    session = NotebookSession(lab.context, lab.server, relative_path)
    try:
        session.open()
        yield session
    except BaseException:
        with contextlib.suppress(Exception):
            session.screenshot(SCREENSHOTS / f"FAILED_{Path(relative_path).stem}.png")
        raise
    finally:
        session.close()


def _run_fresh(session: NotebookSession) -> None:
    """Clear the stored outputs, then run every cell, so that all outputs are new."""
    session.clear_outputs()
    session.run_all()


# -- Browser tests --------------------------------------------------------------------------------


@pytest.mark.browser
def test_demo_panels_render_and_respond_to_a_reader(lab):
    with opened(lab, "checks/browser_demo.ipynb") as session:
        _run_fresh(session)
        assert session.problems() == []
        assert session.widget_outputs() == (2, 2, 0)

        drive_demo_panels(session)
        assert session.problems() == []
        part(session.page, "mf-demo-slider")
        session.screenshot(SCREENSHOTS / "browser_demo.png")


@pytest.mark.browser
def test_checks_report_what_a_reader_would_see_broken(lab):
    with opened(lab, "checks/browser_broken.ipynb") as session:
        _run_fresh(session)
        move_slider(session.page, part(session.page, "mf-broken-slider"), 1)
        session.wait_for_kernel_error("ZeroDivisionError")
        problems = "\n".join(session.problems())

    assert "cell 3 printed a traceback" in problems and "KeyError" in problems
    assert "cell 4 shows an error output" in problems
    assert "cell 5 did not run" in problems
    assert "RuntimeError: this cell fails" in problems
    assert "ZeroDivisionError" in problems  # raised in the slider's callback
    assert "'Error displaying widget'" in problems
    assert "only 1 of 2 widget outputs rendered" in problems


@pytest.mark.browser
@pytest.mark.parametrize("name", widget_notebooks())
def test_widget_notebook_renders_and_responds_to_a_reader(lab, name):
    with opened(lab, f"notebooks/{name}") as session:
        _run_fresh(session)
        assert session.problems() == []
        expected, rendered, _ = session.widget_outputs()
        assert rendered == expected > 0

        drive = driver_for(name)
        if drive is not None:
            drive(session)
            assert session.problems() == []
        session.screenshot(SCREENSHOTS / f"{Path(name).stem}.png")


@pytest.mark.browser
def test_notebook_01_plots_render_as_images(lab):
    path = NOTEBOOKS / NOTEBOOK_01
    if not path.exists():
        pytest.skip(f"{NOTEBOOK_01} is not written yet")
    stored = sum(
        "image/png" in output.get("data", {})
        for cell in read_notebook(path)["cells"]
        for output in cell.get("outputs", [])
    )
    assert stored > 0, f"{NOTEBOOK_01} has no plots in its stored outputs"

    with opened(lab, f"notebooks/{NOTEBOOK_01}") as session:
        # As opened, from the stored outputs: what a reader sees before running anything.
        session.page.wait_for_function(
            f"() => document.querySelectorAll('.jp-OutputArea-output img').length >= {stored}"
        )
        assert _drawn_pngs(session) == stored

        _run_fresh(session)
        assert session.problems() == []
        assert _drawn_pngs(session) == stored
        session.page.locator(".jp-OutputArea-output img").first.scroll_into_view_if_needed()
        session.screenshot(SCREENSHOTS / f"{Path(NOTEBOOK_01).stem}.png")


def _drawn_pngs(session: NotebookSession) -> int:
    """The number of PNG images in output areas; fails if one of them did not decode."""
    session.page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-OutputArea-output img')]"
        ".every(img => img.complete)"
    )
    images = session.images()
    assert all(image["png"] and image["width"] > 0 for image in images), images
    return len(images)


# -- Without a browser ----------------------------------------------------------------------------


def test_every_notebook_with_controls_has_a_driver():
    missing = [
        name
        for name in widget_notebooks()
        if has_controls(read_notebook(NOTEBOOKS / name)) and driver_for(name) is None
    ]
    assert not missing, f"add a driver to DRIVERS in tests/test_browser.py for {missing}"


def test_a_caption_mentions_a_readout_as_a_number():
    assert _mentions("λ = 1, rank = 32", "1.00")
    assert _mentions("lambda 0.001 (best epoch 14)", "1.00e-3")
    assert not _mentions("λ = 0.1, rank = 32", "1.00")


def test_a_missing_chromium_is_named_in_the_skip_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(browser_support, "CHROMIUM", tmp_path / "no-chromium")
    reason = browser_support.chromium_missing_reason()
    assert reason is not None and str(tmp_path / "no-chromium") in reason


def _notebook(sources: list[str], outputs: list[dict] | None = None) -> dict:
    cells = [{"cell_type": "code", "source": source, "outputs": []} for source in sources]
    if outputs:
        cells[-1]["outputs"] = outputs
    return {"cells": cells, "metadata": {}}


def test_widget_and_control_detection():
    plain = _notebook(["import numpy as np", "# ipywidgets are not used here"])
    assert not uses_widgets(plain)

    progress = _notebook(["from tqdm.auto import tqdm"], [{"data": {WIDGET_MIME: {}}}])
    assert uses_widgets(progress) and not has_controls(progress)

    slider = _notebook(["import ipywidgets as widgets", "s = widgets.FloatLogSlider()"])
    assert uses_widgets(slider) and has_controls(slider)

    panel = _notebook(["from helpers import data, widgets", "widgets.tuning_panel(curves)"])
    assert uses_widgets(panel) and has_controls(panel)
