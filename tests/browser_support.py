"""Run notebooks in JupyterLab inside headless Chromium, the way a reader does.

Used by ``tests/test_browser.py``. Three pieces:

- :class:`LabServer` starts ``jupyter lab`` on 127.0.0.1 with a token, quiet settings and its own
  settings and workspace folders, and stops it again by its process id.
- :func:`chromium` opens Debian's ``/usr/bin/chromium`` through Playwright (never a browser that
  Playwright downloads itself).
- :class:`NotebookSession` opens one notebook in a page, runs all cells from the Run menu, waits
  until the kernel is idle and reports what a reader would see as broken.

The functions at the end (:func:`part`, :func:`shown`, :func:`move_slider`, ...) are the verbs
that the per-notebook drivers in ``tests/test_browser.py`` are written in. A driver finds the
controls of a panel by the CSS class the notebook gave them with ``widget.add_class("mf-...")``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
# A machine without internet: no background traffic, no GPU, no sandbox (CI runs as root).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 1000}

# JupyterLab user settings, one file per plugin: no news or update pop-ups, no autosave (the
# served notebooks are copies anyway), and every cell kept in the page so that all outputs can
# be inspected without scrolling.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
_WIDGET_SOURCE = re.compile(
    r"^\s*(import ipywidgets|from ipywidgets\b|from helpers import .*\bwidgets\b"
    r"|from helpers\.widgets\b|import helpers\.widgets\b)",
    re.MULTILINE,
)
_CONTROL_SOURCE = re.compile(
    r"\b(\w*Slider|Text|Textarea|Combobox|Button|ToggleButtons|Dropdown|interact\w*)\s*\("
    r"|from helpers import .*\bwidgets\b|helpers\.widgets\b"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

PROBLEM_TEXTS = ("Error displaying widget", "Loading widget", "Failed to load model class")


# -- What a notebook contains -------------------------------------------------------------------


def _code_sources(notebook: dict[str, Any]) -> Iterator[str]:
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            source = cell.get("source", "")
            yield source if isinstance(source, str) else "".join(source)


def uses_widgets(notebook: dict[str, Any]) -> bool:
    """Whether a notebook (parsed JSON) imports ipywidgets or shows a widget output."""
    if "widgets" in notebook.get("metadata", {}):
        return True
    if any(_WIDGET_SOURCE.search(source) for source in _code_sources(notebook)):
        return True
    return any(
        WIDGET_MIME in output.get("data", {})
        for cell in notebook.get("cells", [])
        for output in cell.get("outputs", [])
    )


def has_controls(notebook: dict[str, Any]) -> bool:
    """Whether a widget notebook builds controls a reader moves (sliders, text boxes, buttons).

    A notebook whose only widgets are progress bars has none; one that does needs a driver.
    """
    return uses_widgets(notebook) and any(
        _CONTROL_SOURCE.search(source) for source in _code_sources(notebook)
    )


def read_notebook(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# -- Chromium and the server --------------------------------------------------------------------


def chromium_missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return (
            f"{CHROMIUM} is missing: `make browser` installs Debian's chromium with apt-get "
            "when run as root; otherwise run `sudo apt-get install chromium`"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: run `make` to install the [test] extra"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LabServer:
    """A ``jupyter lab`` process serving ``root_dir``; use it as a context manager.

    Settings, workspaces and runtime files live in ``work_dir`` so that neither the reader's own
    JupyterLab settings nor an earlier run change what the browser sees.
    """

    def __init__(self, root_dir: Path, work_dir: Path) -> None:
        self.root_dir = Path(root_dir)
        self.work_dir = Path(work_dir)
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.work_dir / "jupyter-lab.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _environment(self) -> dict[str, str]:
        settings = self.work_dir / "lab-settings"
        for plugin, values in LAB_SETTINGS.items():
            path = settings / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values), encoding="utf-8")
        env = dict(os.environ)
        env.update(
            JUPYTERLAB_SETTINGS_DIR=str(settings),
            JUPYTERLAB_WORKSPACES_DIR=str(self.work_dir / "lab-workspaces"),
            JUPYTER_RUNTIME_DIR=str(self.work_dir / "runtime"),
            JUPYTER_CONFIG_DIR=str(self.work_dir / "config"),
        )
        return env

    def start(self, timeout: float = 90.0) -> None:
        command = [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            # Lets the test ask the page whether the kernel is idle.
            "--LabApp.expose_app_in_browser=True",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.root_dir,
                env=self._environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited early:\n{self.log_tail()}")
            try:
                self.api("GET", "status")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"jupyter lab did not answer in {timeout:.0f} s:\n{self.log_tail()}")

    def api(self, method: str, path: str) -> Any:
        request = urllib.request.Request(
            f"{self.base_url}/api/{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def url(self, relative_path: str) -> str:
        """Address of a file in JupyterLab; ``reset`` drops any remembered layout."""
        return f"{self.base_url}/lab/tree/{relative_path}?reset&token={self.token}"

    def shutdown_kernels(self) -> None:
        for session in self.api("GET", "sessions"):
            self.api("DELETE", f"sessions/{session['id']}")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Shut the kernels down, then stop the server this object started, by its pid."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(OSError, urllib.error.URLError):
            self.shutdown_kernels()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> LabServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def chromium(user_data_dir: Path) -> Iterator[Any]:
    """Yield a Playwright browser context of Debian's Chromium with a fresh profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )
        try:
            yield context
        finally:
            context.close()


# -- One notebook in one page -------------------------------------------------------------------

# JavaScript run in the page. ``window.jupyterapp`` exists because of expose_app_in_browser.
_KERNEL_READY = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session
        && panel.sessionContext.session.kernel;
    return Boolean(kernel && kernel.connectionStatus === 'connected'
        && kernel.status === 'idle' && panel.content && panel.content.widgets.length > 0);
}"""
_SETTLED = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    if (!kernel || kernel.status !== 'idle') return false;
    const prompts = [...panel.node.querySelectorAll('.jp-InputPrompt')];
    return !prompts.some(prompt => prompt.textContent.includes('*'));
}"""
_CLEARED = """() => {
    const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        if (cell.type === 'code' && (cell.executionCount !== null || cell.outputs.length > 0)) {
            return false;
        }
    }
    return true;
}"""
_STARTED = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const prompts = [...panel.node.querySelectorAll('.jp-InputPrompt')];
    return prompts.some(prompt => /[*0-9]/.test(prompt.textContent));
}"""
_CELLS = """() => {
    const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
    const found = [];
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        const outputs = [];
        if (cell.type === 'code') {
            for (let j = 0; j < cell.outputs.length; j++) {
                const output = cell.outputs.get(j);
                const stderr = output.type === 'stream'
                    ? output.data['application/vnd.jupyter.stderr'] || '' : '';
                outputs.push({type: output.type, mimes: Object.keys(output.data),
                              stderr: String(stderr)});
            }
        }
        found.push({type: cell.type, source: cell.sharedModel.getSource(),
                    count: cell.type === 'code' ? cell.executionCount : null, outputs});
    }
    return found;
}"""
_RENDERED_WIDGETS = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const tops = panel.node.querySelectorAll(
        '.jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output');
    const isWidget = node => node.classList.contains('jupyter-widgets')
        || node.querySelector('.jupyter-widgets') !== null;
    const failed = node => node.textContent.includes('Error displaying widget');
    return {rendered: [...tops].filter(node => isWidget(node) && !failed(node)).length,
            failed: [...tops].filter(failed).length};
}"""
_IMAGES = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    return [...panel.node.querySelectorAll('.jp-OutputArea-output img')].map(img => ({
        png: img.src.startsWith('data:image/png'), width: img.naturalWidth}));
}"""


def _ws_messages(payload: str | bytes) -> Iterator[tuple[str, dict, dict]]:
    """Decode one kernel websocket frame into (channel, header, content)."""
    if isinstance(payload, str):
        with contextlib.suppress(ValueError):
            message = json.loads(payload)
            yield message.get("channel", ""), message.get("header", {}), message.get("content", {})
        return
    # v1.kernel.websocket.jupyter.org: a count n, n offsets, then channel, header, parent
    # header, metadata, content and buffers at those offsets.
    try:
        (count,) = struct.unpack_from("<Q", payload, 0)
        offsets = list(struct.unpack_from(f"<{count}Q", payload, 8)) + [len(payload)]
        parts = [payload[offsets[i] : offsets[i + 1]] for i in range(count)]
        yield parts[0].decode(), json.loads(parts[1]), json.loads(parts[4])
    except (struct.error, IndexError, ValueError):
        return


class NotebookSession:
    """One notebook opened in a fresh page, with every kernel error it produces recorded."""

    def __init__(self, context: Any, server: LabServer, relative_path: str) -> None:
        self.server = server
        self.relative_path = relative_path
        self.kernel_errors: list[str] = []
        self.page = context.new_page()
        self.page.set_default_timeout(30_000)
        self.page.on("websocket", self._listen)

    def _listen(self, websocket: Any) -> None:
        if "/api/kernels/" in websocket.url:
            websocket.on("framereceived", self._record)

    def _record(self, payload: str | bytes) -> None:
        for channel, header, content in _ws_messages(payload):
            if channel == "iopub" and header.get("msg_type") == "error":
                traceback = _ANSI.sub("", "\n".join(content.get("traceback", [])))
                self.kernel_errors.append(
                    f"{content.get('ename')}: {content.get('evalue')}\n{traceback[-1500:]}"
                )

    def open(self, timeout_ms: float = 90_000) -> None:
        """Load the notebook and wait until its kernel is connected and idle."""
        self.page.goto(self.server.url(self.relative_path))
        self.page.wait_for_function(_KERNEL_READY, timeout=timeout_ms)
        # Hide the file browser so screenshots show the notebook (Ctrl+B toggles the sidebar).
        self.page.keyboard.press("Control+b")

    def clear_outputs(self) -> None:
        """Clear every output and execution count, so that what a run shows is all new."""
        self.page.evaluate(
            "() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')"
        )
        self.page.wait_for_function(_CLEARED)

    def run_all(self, timeout_s: float = 120.0) -> None:
        """Run → Run All Cells from the menu bar, then wait until the kernel has settled."""
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        # The first cell must have started before "idle" means "finished".
        self.page.wait_for_function(_STARTED)
        self.wait_until_idle(timeout_s)

    def wait_for_kernel_error(self, text: str, timeout_s: float = 30.0) -> None:
        """Wait until the kernel has reported an error containing ``text``."""
        deadline = time.monotonic() + timeout_s
        while not any(text in error for error in self.kernel_errors):
            assert time.monotonic() < deadline, f"the kernel reported no error with {text!r}"
            self.page.wait_for_timeout(100)

    def wait_until_idle(self, timeout_s: float = 60.0) -> None:
        """Wait until the kernel is idle and no cell is queued, twice 0.3 s apart."""
        deadline = time.monotonic() + timeout_s
        while True:
            left_ms = max(1.0, (deadline - time.monotonic()) * 1000)
            self.page.wait_for_function(_SETTLED, timeout=left_ms, polling=100)
            self.page.wait_for_timeout(300)
            if self.page.evaluate(_SETTLED):
                return

    def cells(self) -> list[dict[str, Any]]:
        return self.page.evaluate(_CELLS)

    def widget_outputs(self) -> tuple[int, int, int]:
        """Widget outputs in the notebook's model; those the page rendered; those it failed."""
        expected = sum(
            WIDGET_MIME in output["mimes"] for cell in self.cells() for output in cell["outputs"]
        )
        counts = self.page.evaluate(_RENDERED_WIDGETS)
        return expected, counts["rendered"], counts["failed"]

    def images(self) -> list[dict[str, Any]]:
        """The ``img`` elements in output areas: whether each is a PNG, and its pixel width."""
        return self.page.evaluate(_IMAGES)

    def problems(self, widget_wait_s: float = 20.0) -> list[str]:
        """Everything a reader would see as broken; empty when the notebook ran cleanly.

        Cells that did not run, error outputs, errors the kernel reported (including those raised
        inside widget callbacks), and widgets that failed to render or are still loading.
        """
        deadline = time.monotonic() + widget_wait_s
        while True:
            expected, rendered, failed = self.widget_outputs()
            text = self.page.locator(".jp-NotebookPanel").first.inner_text()
            settled = rendered + failed >= expected and "Loading widget" not in text
            if settled or time.monotonic() > deadline:
                break
            self.page.wait_for_timeout(250)

        found = []
        for index, cell in enumerate(self.cells(), start=1):
            if cell["type"] != "code":
                continue
            if cell["source"].strip() and cell["count"] is None:
                found.append(f"cell {index} did not run")
            for output in cell["outputs"]:
                if output["type"] == "error":
                    found.append(f"cell {index} shows an error output")
                if "Traceback" in output["stderr"]:
                    found.append(f"cell {index} printed a traceback: {output['stderr'][-500:]}")
        found += [f"kernel reported {error}" for error in self.kernel_errors]
        found += [f"page shows {phrase!r}" for phrase in PROBLEM_TEXTS if phrase in text]
        if rendered < expected:
            found.append(f"only {rendered} of {expected} widget outputs rendered")
        return found

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
        return path

    def close(self) -> None:
        """Close the page (discarding unsaved changes) and shut its kernel down."""
        self.page.close(run_before_unload=False)
        with contextlib.suppress(OSError, urllib.error.URLError):
            self.server.shutdown_kernels()


# -- Verbs for drivers --------------------------------------------------------------------------


def part(page: Any, css_class: str) -> Any:
    """The one visible element a notebook marked with ``widget.add_class(css_class)``."""
    locator = page.locator(f".{css_class}")
    count = locator.count()
    assert count == 1, (
        f"expected exactly one element with class {css_class!r}, found {count}; "
        "mark the widget with widget.add_class(...) (see tests/test_browser.py)"
    )
    locator.scroll_into_view_if_needed()
    return locator


def shown(locator: Any) -> tuple[str, tuple[str, ...]]:
    """What an output shows: its text, and a digest of each image in it."""
    text = locator.inner_text()
    sources = locator.locator("img").evaluate_all("images => images.map(img => img.src)")
    digests = tuple(hashlib.sha256(src.encode()).hexdigest()[:16] for src in sources)
    return text, digests


def wait_for_change(
    session: NotebookSession, locator: Any, before: tuple, timeout_s: float = 30.0
) -> tuple[str, tuple[str, ...]]:
    """Wait until ``shown(locator)`` differs from ``before`` and the kernel is idle again."""
    deadline = time.monotonic() + timeout_s
    while shown(locator) == before:
        assert time.monotonic() < deadline, (
            f"the output did not change within {timeout_s:.0f} s; it still shows "
            f"{before[0][:300]!r}"
        )
        session.page.wait_for_timeout(200)
    session.wait_until_idle(timeout_s)
    after = shown(locator)
    assert after != before, "the output changed, then went back to what it showed before"
    return after


def slider_value(locator: Any) -> str:
    """The value a slider shows next to it (its readout)."""
    return locator.locator(".widget-readout").inner_text().strip()


def move_slider(page: Any, locator: Any, steps: int) -> tuple[str, str]:
    """Move a slider ``steps`` notches with the arrow keys; return (before, after) readouts.

    When the slider cannot move further right it moves left instead.
    """
    before = slider_value(locator)
    handle = locator.locator(".noUi-handle")
    handle.focus()
    for _ in range(steps):
        page.keyboard.press("ArrowRight")
    if slider_value(locator) == before:
        for _ in range(steps):
            page.keyboard.press("ArrowLeft")
    after = slider_value(locator)
    assert after != before, f"the slider stayed at {before} after the arrow keys"
    return before, after


def type_text(locator: Any, text: str) -> None:
    """Type into a Text or Combobox widget as a reader does, then press Enter."""
    field = locator.locator("input, textarea").first
    field.click()
    field.fill("")
    field.press_sequentially(text, delay=20)
    field.press("Enter")


def copy_notebooks(source: Path, destination: Path) -> Path:
    """Copy a notebooks folder without checkpoints, so that nothing writes into the repo."""
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    return destination
