"""``pvreg train`` killed with SIGKILL while it trains: no version, and a work directory ``gc`` collects.

The real CLI runs in a subprocess on a tiny Llama (400 steps per run: seconds, far more than the polling
needs). It is killed (``kill -9``) at two moments read off the registry directory, not guessed from timings:

- while θ+ trains: the staged ``.pvreg-tmp-*`` work directory in the registry home exists and its pending marker
  names it, and the trainer's scratch directory has appeared inside it;
- while θ− trains: θ+ is complete (``positive/`` was renamed into place) and θ−'s scratch exists.

Afterwards the name has no version, the registry verifies clean, the work directory is still there (so the
test shows gc has something to do), one ``pvreg gc`` removes it and its marker, and a second finds nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.models import make_tiny_llama, write_jsonl, yes_no_pairs
from pvreg.registry.files import TEMP_PREFIX

pytest.importorskip("trl")

ENTRY = "from pvreg.cli.main import main; main()"


def _pvreg(home: Path, *argv: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PVREG_HOME": str(home)}
    env.pop("PVREG_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-c", ENTRY, *map(str, argv)], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _work_dirs(home: Path) -> list[Path]:
    return sorted(p for p in home.iterdir() if p.name.startswith(TEMP_PREFIX) and p.is_dir())


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"pvreg train ended (rc {proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train-crash")
    return make_tiny_llama(root / "base"), write_jsonl(root / "pairs.jsonl", yes_no_pairs(32, seed=1))


@pytest.mark.parametrize("moment", ["positive-run", "negative-run"])
def test_sigkill_during_training_leaves_no_version_and_gc_collects_the_work_dir(
    tmp_path: Path, inputs: tuple[Path, Path], moment: str
) -> None:
    base, data = inputs
    home = tmp_path / "reg"
    assert _pvreg(home, "db", "init").returncode == 0
    env = {**os.environ, "PVREG_HOME": str(home)}
    env.pop("PVREG_DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", ENTRY, "train", "yes", "--base", base, "--data", data, "--method", "full",
         "--steps", "400", "--batch-size", "2", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        _wait_for(lambda: bool(_work_dirs(home)), proc, "the staged work directory")
        work = _work_dirs(home)[0]
        if moment == "positive-run":
            _wait_for(lambda: (work / ".trainer-positive").exists(), proc, "θ+'s trainer")
        else:
            _wait_for(lambda: (work / "positive").is_dir() and (work / ".trainer-negative").exists(), proc,
                      "θ− training (θ+ complete)")
        proc.send_signal(signal.SIGKILL)  # the run seen in progress has hundreds of steps to go
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    markers = sorted((home / "pending").glob("*.json"))
    assert [json.loads(m.read_text())["path"] for m in markers] == [str(work)]  # the marker names the work dir
    assert work.is_dir()  # the kill left it: gc's job

    listed = _pvreg(home, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    assert _pvreg(home, "log", "yes").returncode == 2  # no version of the name at all
    verified = _pvreg(home, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr

    gc = _pvreg(home, "gc", "--json")
    assert gc.returncode == 0, gc.stderr
    assert str(work) in json.loads(gc.stdout)["removed_temp"]
    assert not work.exists() and _work_dirs(home) == []
    assert list((home / "pending").glob("*.json")) == []
    again = _pvreg(home, "gc", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["removed_temp"] == []
    assert _pvreg(home, "verify").returncode == 0
