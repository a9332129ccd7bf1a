"""Each notebook runs alone: in a fresh kernel, in a folder where no other notebook has run.

nbval already starts a fresh kernel for every notebook, so one notebook can only lean on another
through files: a model, a table or a set of curves that one notebook writes and a later one reads.
Run in order in one folder, as ``pytest --nbval notebooks`` does, such a dependency goes unseen.

:func:`stage` gives every notebook a folder of its own, holding the files committed next to the
notebooks (never files that a run produced) and that one notebook. Two ways to use it:

- Free, with nbval: ``python tests/test_notebooks_standalone.py DEST`` stages the notebooks under
  DEST and prints their paths, so that ``pytest --nbval $(...)`` checks the stored outputs and
  proves that each notebook runs alone in the same single run.
- On its own: ``TF2MF_STANDALONE=1 pytest tests/test_notebooks_standalone.py`` runs every staged
  notebook with nbclient and fails on the first cell error. It costs one more run of every
  notebook, so ``make test`` leaves it to the nbval route above.

Both reuse the MovieLens cache that ``make data`` filled: the cache lives outside the repository
(``TF2MF_DATA_DIR``), so sharing it is no hidden dependency between notebooks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
RUN_ENV = "TF2MF_STANDALONE"


def committed_files(notebooks_dir: Path) -> list[Path] | None:
    """Files git tracks under ``notebooks_dir``, relative to it; None outside a git checkout."""
    result = subprocess.run(
        ["git", "ls-files", "-z", "--", "."],
        cwd=notebooks_dir,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        return None
    return [Path(name) for name in result.stdout.decode().split("\0") if name]


def stage(
    notebooks_dir: Path, destination: Path, committed: list[Path] | None = None
) -> list[Path]:
    """Copy each notebook into ``destination/<stem>/`` with the committed files beside it.

    Args:
        notebooks_dir: the folder holding the ``*.ipynb`` files.
        destination: an empty or missing folder to stage into.
        committed: paths relative to ``notebooks_dir`` that belong to the repository; defaults
            to what git tracks there, or to every file when it is not a git checkout.

    Returns:
        The staged notebooks, sorted by name; each is the only notebook in its folder.
    """
    notebooks_dir, destination = Path(notebooks_dir), Path(destination)
    if committed is None:
        committed = committed_files(notebooks_dir)
    if committed is None:
        committed = [path.relative_to(notebooks_dir) for path in notebooks_dir.rglob("*")]
    assets = [
        path
        for path in committed
        if path.suffix != ".ipynb"
        and ".ipynb_checkpoints" not in path.parts
        and (notebooks_dir / path).is_file()
    ]

    staged = []
    for notebook in sorted(notebooks_dir.glob("*.ipynb")):
        folder = destination / notebook.stem
        folder.mkdir(parents=True)
        for asset in assets:
            (folder / asset).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(notebooks_dir / asset, folder / asset)
        shutil.copy2(notebook, folder / notebook.name)
        staged.append(folder / notebook.name)
    return staged


# -- The staging itself ---------------------------------------------------------------------------


def _tiny_notebooks(folder: Path) -> None:
    (folder / "figures").mkdir(parents=True)
    for name in ("01_a.ipynb", "02_b.ipynb"):
        (folder / name).write_text("{}")
    (folder / "figures" / "diagram.svg").write_text("<svg/>")
    (folder / "model_from_01.keras").write_text("written by a run of 01")


def test_stage_gives_each_notebook_a_folder_of_its_own(tmp_path):
    _tiny_notebooks(tmp_path / "notebooks")
    committed = [Path("01_a.ipynb"), Path("02_b.ipynb"), Path("figures/diagram.svg")]

    staged = stage(tmp_path / "notebooks", tmp_path / "staged", committed)

    assert [path.relative_to(tmp_path / "staged") for path in staged] == [
        Path("01_a/01_a.ipynb"),
        Path("02_b/02_b.ipynb"),
    ]
    for notebook in staged:
        files = sorted(str(p.relative_to(notebook.parent)) for p in notebook.parent.rglob("*"))
        assert files == sorted([notebook.name, "figures", "figures/diagram.svg"])


def test_stage_without_git_keeps_every_file_but_the_other_notebooks(tmp_path):
    _tiny_notebooks(tmp_path / "notebooks")
    (tmp_path / "notebooks" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "notebooks" / ".ipynb_checkpoints" / "01_a-checkpoint.ipynb").write_text("{}")

    staged = stage(tmp_path / "notebooks", tmp_path / "staged", committed=None)

    folder = staged[0].parent
    assert sorted(p.name for p in folder.iterdir()) == [
        "01_a.ipynb",
        "figures",
        "model_from_01.keras",
    ]


# -- Running every notebook alone (costly: opt in) ------------------------------------------------


def run_alone(notebook_path: Path) -> None:
    """Execute a staged notebook in a fresh kernel whose working folder is the notebook's own.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell failed; the message names it.
    """
    import nbclient
    import nbformat

    notebook = nbformat.read(notebook_path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, resources={"metadata": {"path": str(notebook_path.parent)}}
    )
    client.execute()


def test_a_notebook_that_reads_another_ones_file_fails_alone(tmp_path):
    import nbclient
    import nbformat

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    cells = {
        "01_writes.ipynb": 'open("curves.csv", "w").write("epoch,rmse")',
        "02_reads.ipynb": 'print(open("curves.csv").read())',
    }
    for name, source in cells.items():
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
        nbformat.write(notebook, notebooks / name)

    first, second = stage(notebooks, tmp_path / "staged", committed=[])
    run_alone(first)
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="curves.csv"):
        run_alone(second)


@pytest.mark.skipif(
    os.environ.get(RUN_ENV) != "1",
    reason=f"costly: set {RUN_ENV}=1 to run every notebook alone once more; the module "
    "docstring shows the free route through nbval on staged copies",
)
@pytest.mark.parametrize("name", sorted(path.name for path in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_runs_alone_in_a_fresh_kernel(name, tmp_path):
    staged = {path.name: path for path in stage(NOTEBOOKS, tmp_path)}
    run_alone(staged[name])


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DESTINATION  (stages notebooks/, prints the paths)")
    target = Path(sys.argv[1]).resolve()
    if target.exists():
        if not target.is_relative_to(ROOT / "artifacts"):
            sys.exit(f"{target} exists; give a new folder or one under artifacts/")
        shutil.rmtree(target)
    print("\n".join(os.path.relpath(path) for path in stage(NOTEBOOKS, target)))
