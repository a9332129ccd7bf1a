"""The three places that pin versions agree, and Binder accepts the configuration."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for requirement in requirements:
        name, separator, version = requirement.partition("==")
        assert separator, f"{requirement!r} is not pinned with =="
        pins[name.strip().lower()] = version.strip()
    return pins


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _conda(path: Path) -> tuple[dict[str, str], list[str]]:
    spec = yaml.safe_load(path.read_text())
    conda = [entry for entry in spec["dependencies"] if isinstance(entry, str)]
    pip = next(entry["pip"] for entry in spec["dependencies"] if isinstance(entry, dict))
    return _pins(pip), conda


def test_every_pyproject_dependency_is_pinned_exactly():
    project = _pyproject()
    _pins(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        _pins(extra)


@pytest.mark.parametrize("path", ["environment.yml", "binder/environment.yml"])
def test_conda_files_name_the_same_pins_as_pyproject(path):
    project = _pyproject()
    runtime = _pins(project["dependencies"])
    everything = runtime | _pins(project["optional-dependencies"]["test"])
    pip, conda = _conda(ROOT / path)

    missing = sorted(set(runtime) - set(pip))
    assert not missing, f"{path} lacks runtime dependencies {missing}"
    drift = {
        name: (pip[name], everything.get(name))
        for name in pip
        if pip[name] != everything.get(name)
    }
    assert not drift, f"{path} pins differ from pyproject.toml: {drift}"
    python = project["requires-python"]
    assert "python=3.11" in conda and ">=3.11,<3.12" == python


def test_binder_and_root_environments_are_the_same():
    assert _conda(ROOT / "environment.yml") == _conda(ROOT / "binder/environment.yml")


def test_post_build_installs_helpers_and_fills_the_cache():
    post_build = (ROOT / "binder/postBuild").read_text()
    assert "pip install" in post_build and "-e ." in post_build
    assert "python -m helpers.data fetch" in post_build


def test_repo2docker_accepts_the_configuration():
    repo2docker = Path(sys.executable).with_name("repo2docker")
    if not repo2docker.exists():
        repo2docker = Path(shutil.which("repo2docker") or "repo2docker")
    result = subprocess.run(
        [str(repo2docker), "--no-build", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dockerfile = result.stdout
    assert dockerfile.startswith("FROM ") or "\nFROM " in dockerfile
    assert "binder/environment.yml" in dockerfile
    assert "./binder/postBuild" in dockerfile
