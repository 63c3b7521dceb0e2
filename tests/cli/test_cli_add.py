"""`pvreg add` through the CLI: the happy path (bad inputs: tests/system/test_bad_inputs.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.usefixtures("backend")


def test_add_prints_ref_sha_and_norm(cli, vector_file: Path, base_dir: Path) -> None:
    r = cli("add", "helpful", "--vector", vector_file, "--base", base_dir, "--dataset", "PKU-SafeRLHF:helpful",
            "--tag", "run=7", "--message", "first")
    assert r.exit_code == 0, r.stderr
    tensors = load_file(str(vector_file))
    expected_norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors.values()))
    name, sha, norm = r.stdout.split()
    assert name == "helpful@1"
    assert sha.startswith("sha256:") and len(sha) == len("sha256:") + 12
    assert norm == f"norm={expected_norm:.4g}"
    r2 = cli("add", "helpful", "--vector", vector_file, "--base", base_dir)
    assert r2.stdout.startswith("helpful@2 ")


def test_add_json_is_vector_meta(cli, vector_file: Path, base_dir: Path) -> None:
    r = cli("add", "helpful", "--vector", vector_file, "--base", base_dir, "--sign", "-1", "--json")
    meta = json.loads(r.stdout)
    for key in ("name", "version", "sha256", "size_bytes", "base_fingerprint", "dataset", "sign", "norm",
                "tensor_norms", "dtype", "num_tensors", "num_params", "kind", "provenance", "parents",
                "message", "tags", "aliases", "created_at", "state"):
        assert key in meta
    assert meta["sign"] == -1 and meta["kind"] == "file" and meta["state"] == "active"
    assert meta["num_tensors"] == len(load_file(str(vector_file)))


def test_add_by_base_fingerprint(cli, vector_file: Path, base_dir: Path) -> None:
    fp = cli("fingerprint", base_dir).stdout.strip()
    assert cli("add", "a", "--vector", vector_file, "--base", base_dir).exit_code == 0
    r = cli("add", "b", "--vector", vector_file, "--base", fp[:12])
    assert r.exit_code == 0, r.stderr
    assert json.loads(cli("show", "b", "--json").stdout)["base_fingerprint"] == fp


# Bad inputs for add (malformed files, dtypes, NaN/Inf, names, paths, options) live in the data-driven
# catalogue tests/system/test_bad_inputs.py.


def test_debug_shows_traceback(cli, tmp_path, base_dir) -> None:
    r = cli("--debug", "add", "v", "--vector", tmp_path / "nope.safetensors", "--base", base_dir)
    assert r.exit_code == 2
    assert "Traceback" in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error: ")
