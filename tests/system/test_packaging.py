"""The built wheel installs ``pvreg.*`` only, ships its migrations, and works from a fresh venv.

Dependencies are borrowed from the test environment through a ``.pth`` line
(reinstalling torch into every test venv would dominate CI time); pvreg itself
is installed from the wheel with ``--no-deps``, so packaging mistakes — a
missing Alembic file, wrong package dirs — fail here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from helpers.paths import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(out), "-q"],
        check=True, capture_output=True,
    )
    (whl,) = out.glob("pvreg-*.whl")
    return whl


#: The folders that install as ``pvreg.<folder>``; the repository root itself is the package ``pvreg``.
PACKAGE_ROOTS = ("registry", "cli", "schemas", "migrations")
#: Non-Python files the wheel must carry (package data), relative to the repository root.
PACKAGE_DATA = {"migrations/script.py.mako"}


def _source_folders() -> list[Path]:
    """Every folder under the package roots that holds Python files (``__pycache__`` aside)."""
    return sorted({p.parent for root in PACKAGE_ROOTS for p in (REPO / root).rglob("*.py")
                   if "__pycache__" not in p.parts})


def expected_packages() -> list[str]:
    """``pvreg`` and ``pvreg.<dotted folder>`` for every folder with an ``__init__.py``, derived from the tree."""
    return ["pvreg", *sorted("pvreg." + ".".join(d.relative_to(REPO).parts) for d in _source_folders()
                             if (d / "__init__.py").is_file())]


def expected_wheel_files() -> set[str]:
    """Where every module of every package folder (and the package data) lands in the wheel."""
    files = {"pvreg/__init__.py"} | {f"pvreg/{name}" for name in PACKAGE_DATA}
    for d in _source_folders():
        if (d / "__init__.py").is_file():
            files |= {"pvreg/" + p.relative_to(REPO).as_posix() for p in d.glob("*.py")}
    return files


def test_every_folder_with_modules_is_a_package() -> None:
    """A folder without ``__init__.py`` is not a package: its modules would silently miss the wheel."""
    missing = [d.relative_to(REPO).as_posix() for d in _source_folders() if not (d / "__init__.py").is_file()]
    assert not missing, f"folders with modules but no __init__.py: {missing}"


def test_pyproject_maps_the_package_once_and_lists_every_package_folder() -> None:
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"pvreg": "."}
    assert sorted(setuptools["packages"]) == expected_packages()
    assert {f"pvreg.{Path(f).parent.as_posix().replace('/', '.')}": [Path(f).name] for f in PACKAGE_DATA} \
        == setuptools.get("package-data")


def test_no_stray_module_at_the_root() -> None:
    """``"pvreg" = "."`` ships every root ``*.py`` as ``pvreg.<name>``: only ``__init__.py`` may be there."""
    assert sorted(p.name for p in REPO.glob("*.py")) == ["__init__.py"]


def test_wheel_ships_exactly_the_package_folders(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n for n in names if n.startswith("pvreg/")}
    expected = expected_wheel_files()
    assert len(expected) > 60  # the derivation found the tree
    assert shipped - expected == set(), "shipped but not a module of a package folder"
    assert expected - shipped == set(), "a package folder's module is missing from the wheel"
    assert {n for n in shipped if n.count("/") == 1} == {"pvreg/__init__.py"}


def test_wheel_contents(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"pvreg", next(t for t in top if t.endswith(".dist-info"))}
    for required in ("pvreg/__init__.py", "pvreg/registry/api.py", "pvreg/schemas/vector.py", "pvreg/cli/main.py",
                     "pvreg/migrations/env.py", "pvreg/migrations/script.py.mako",
                     "pvreg/migrations/versions/0001_initial.py"):
        assert required in names
    assert not any(n.startswith("pvreg/tests/") for n in names)


def test_fresh_venv_runs_version_and_add(wheel: Path, tmp_path: Path, base_dir: Path, vector_file: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True)
    env = {**os.environ, "PVREG_HOME": str(tmp_path / "home")}
    env.pop("PYTHONPATH", None)
    pvreg = venv / "bin" / "pvreg"
    r = subprocess.run([pvreg, "--version"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("pvreg "), r.stderr
    r = subprocess.run([pvreg, "add", "helpful", "--vector", vector_file, "--base", base_dir],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("helpful@1 "), r.stderr
    where = subprocess.run([py, "-c", "import pvreg, importlib.util as u; print(pvreg.__file__); "
                                      "print(u.find_spec('registry'), u.find_spec('cli'))"],
                           capture_output=True, text=True, env=env, cwd=tmp_path).stdout.split("\n")
    assert where[0].startswith(str(venv))
    assert where[1] == "None None"
