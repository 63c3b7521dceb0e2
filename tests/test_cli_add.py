"""`pvreg add` through the CLI: the happy path and every bad input it must refuse cleanly."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.usefixtures("backend")


def assert_one_line_error(result, exit_code: int, *needles: str) -> None:
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


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


# --- bad input: one line, exit 2, registry unchanged --------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _header_file(path: Path, header: dict, data: bytes = b"") -> Path:
    body = json.dumps(header).encode()
    return _write(path, struct.pack("<Q", len(body)) + body + data)


def bad_cases(tmp: Path, base: dict[str, torch.Tensor], base_dir: Path):
    name = "model.layers.0.mlp.up_proj.weight"
    shape = tuple(base[name].shape)
    good = tmp / "good.safetensors"
    save_file({name: torch.zeros(shape) + 0.1}, str(good))
    raw = good.read_bytes()
    cases = {
        "shape mismatch": (("add", "v", "--vector", tmp / "s.safetensors", "--base", base_dir),
                           [name, str(list(shape)), str([shape[0], shape[1] + 1])],
                           lambda: save_file({name: torch.zeros(shape[0], shape[1] + 1)}, str(tmp / "s.safetensors"))),
        "missing tensor": (("add", "v", "--vector", tmp / "m.safetensors", "--base", base_dir),
                           ["'model.nope.weight'", "does not exist in"],
                           lambda: save_file({"model.nope.weight": torch.zeros(2)}, str(tmp / "m.safetensors"))),
        "integer dtype": (("add", "v", "--vector", tmp / "i.safetensors", "--base", base_dir),
                          ["int32", "floating point"],
                          lambda: save_file({name: torch.zeros(shape, dtype=torch.int32)}, str(tmp / "i.safetensors"))),
        "nan": (("add", "v", "--vector", tmp / "n.safetensors", "--base", base_dir), ["NaN or Inf", name],
                lambda: save_file({name: torch.full(shape, float("nan"))}, str(tmp / "n.safetensors"))),
        "inf": (("add", "v", "--vector", tmp / "f.safetensors", "--base", base_dir), ["NaN or Inf"],
                lambda: save_file({name: torch.full(shape, float("inf"))}, str(tmp / "f.safetensors"))),
        "truncated": (("add", "v", "--vector", tmp / "t.safetensors", "--base", base_dir), ["not a valid safetensors"],
                      lambda: _write(tmp / "t.safetensors", raw[:-7])),
        "empty file": (("add", "v", "--vector", tmp / "e.safetensors", "--base", base_dir), ["shorter than"],
                       lambda: _write(tmp / "e.safetensors", b"")),
        "header not json": (("add", "v", "--vector", tmp / "j.safetensors", "--base", base_dir), ["not JSON"],
                            lambda: _write(tmp / "j.safetensors", struct.pack("<Q", 4) + b"{{{{")),
        "header too long": (("add", "v", "--vector", tmp / "h.safetensors", "--base", base_dir), ["runs past the end"],
                            lambda: _write(tmp / "h.safetensors", struct.pack("<Q", 10_000) + b"{}")),
        "offsets outside data": (("add", "v", "--vector", tmp / "o.safetensors", "--base", base_dir), ["data"],
                                 lambda: _header_file(tmp / "o.safetensors",
                                                      {name: {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                                                      b"\0" * 4)),
        "empty directory": (("add", "v", "--vector", tmp / "empty", "--base", base_dir), ["no .safetensors or .bin"],
                            lambda: (tmp / "empty").mkdir()),
        "vector missing": (("add", "v", "--vector", tmp / "absent.safetensors", "--base", base_dir),
                           ["absent.safetensors"], lambda: None),
        "base missing": (("add", "v", "--vector", good, "--base", tmp / "no-such-base"), ["no-such-base"],
                         lambda: None),
        "invalid name": (("add", "Bad/Name", "--vector", good, "--base", base_dir), ["invalid name"], lambda: None),
        "name too long": (("add", "a" * 65, "--vector", good, "--base", base_dir), ["65 characters"], lambda: None),
        "bad sign": (("add", "v", "--vector", good, "--base", base_dir, "--sign", "2"), ["sign"], lambda: None),
        "bad tag": (("add", "v", "--vector", good, "--base", base_dir, "--tag", "novalue"), ["tag"], lambda: None),
    }
    return cases


CASES = ["shape mismatch", "missing tensor", "integer dtype", "nan", "inf", "truncated", "empty file",
         "header not json", "header too long", "offsets outside data", "empty directory", "vector missing",
         "base missing", "invalid name", "name too long", "bad sign", "bad tag"]


@pytest.mark.parametrize("case", CASES)
def test_add_refuses_bad_input_and_leaves_registry_unchanged(case, cli, tmp_path, base_dir, base_tensors,
                                                             vector_file, snapshot) -> None:
    assert cli("add", "existing", "--vector", vector_file, "--base", base_dir).exit_code == 0
    bad = tmp_path / "bad"
    bad.mkdir()
    args, needles, make = bad_cases(bad, base_tensors, base_dir)[case]
    make()
    before = snapshot()
    r = cli(*args)
    assert_one_line_error(r, 2, *needles)
    assert snapshot() == before


def test_debug_shows_traceback(cli, tmp_path, base_dir) -> None:
    r = cli("--debug", "add", "v", "--vector", tmp_path / "nope.safetensors", "--base", base_dir)
    assert r.exit_code == 2
    assert "Traceback" in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error: ")
