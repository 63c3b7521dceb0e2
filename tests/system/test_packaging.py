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
