"""The built wheel, installed into a fresh virtual environment outside the checkout, runs.

``python -m build`` makes the sdist and then the wheel from the sdist (so a
file missing from either fails here); the wheel goes into a new venv in a
temporary folder, and the commands run from there with the checkout out of
reach: ``xferd --version``, ``xferd demo``, ``xferd replay --example``.
Installing pulls the dependencies through pip (its cache makes repeats
quick).  One build, one venv for the whole module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
VERSION = PROJECT["version"]

pytestmark = pytest.mark.timeout(900)


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    # A clean environment: nothing may point back into the checkout.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = _run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)], ROOT, 300
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (found,) = dist.glob("xferd-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system packages) with the wheel and its dependencies; its bin folder."""
    home = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(home)
    pip = _run(
        [
            str(home / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(wheel),
        ],
        home,
        600,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    return home / "bin"


def test_the_wheel_holds_every_run_time_file_and_nothing_else(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    # Every file of the shipped packages, data included (console static files, bundled
    # scenarios, pictures): whatever lands under engine/ or adapters/ must ride along.
    wanted = {
        path.relative_to(ROOT).as_posix()
        for top in ("engine", "adapters")
        for path in (ROOT / top).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")
    }
    assert wanted - names == set()
    assert {name.split("/")[0] for name in names} == {"engine", "adapters", f"xferd-{VERSION}.dist-info"}
    assert any(name.startswith("adapters/replay/examples/") and name.endswith(".jsonl") for name in names)
    assert {"adapters/service/console/index.html", "adapters/service/console/static/app.js"} <= names
    metadata = zipfile.ZipFile(wheel).read(f"xferd-{VERSION}.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata
    assert f"xferd-{VERSION}.dist-info/licenses/LICENSE" in names


def test_the_sdist_carries_the_license_changelog_and_deploy_files(dist: Path) -> None:
    (sdist,) = dist.glob("xferd-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml"} <= names
    assert {"deploy/xferd.service", "deploy/Containerfile", "deploy/xferd.toml"} <= names


def test_installed_version_is_the_project_version(installed: Path, tmp_path: Path) -> None:
    result = _run([str(installed / "xferd"), "--version"], tmp_path, 60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"xferd {VERSION}"


def test_installed_package_is_imported_from_the_venv(installed: Path, tmp_path: Path) -> None:
    result = _run(
        [str(installed / "python"), "-c", "import adapters, engine; print(adapters.__file__)"], tmp_path, 60
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(installed.parent)


def test_installed_demo_completes_a_transfer(installed: Path, tmp_path: Path) -> None:
    result = _run([str(installed / "xferd"), "demo"], tmp_path, 120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "completed (reason: policy)" in result.stdout


def test_installed_replay_runs_a_bundled_scenario(installed: Path, tmp_path: Path) -> None:
    result = _run(
        [str(installed / "xferd"), "replay", "--timeline", "--example", "target-busy-fallback-answers"],
        tmp_path,
        120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASS target-busy-fallback-answers" in result.stdout
    assert result.stdout.rstrip().endswith("1 passed, 0 failed")
    assert "consulting → completed (policy)" in result.stdout


def test_installed_package_finds_the_console_files(installed: Path, tmp_path: Path) -> None:
    script = (
        "from adapters.service.console_static import CONSOLE_DIR as d; "
        "print((d / 'index.html').is_file(), (d / 'static' / 'app.js').is_file(), d)"
    )
    result = _run([str(installed / "python"), "-c", script], tmp_path, 60)
    assert result.returncode == 0, result.stderr
    found, app, where = result.stdout.split(maxsplit=2)
    assert (found, app) == ("True", "True")
    assert Path(where.strip()).is_relative_to(installed.parent)
