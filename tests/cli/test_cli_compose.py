"""``pvreg compose`` / ``pvreg compositions`` on the command line: errors, output, lineage, gc."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers.factories import make_base, make_vector
from pvreg.registry.files import TEMP_PREFIX


@pytest.fixture
def setup(cli, tmp_path: Path, base_dir: Path, base_tensors):
    names = sorted(base_tensors)
    make_vector(tmp_path / "h.safetensors", base_tensors, seed=1, names=names[:6])
    make_vector(tmp_path / "s.safetensors", base_tensors, seed=2, names=names[4:10])
    assert cli("add", "helpful", "--vector", tmp_path / "h.safetensors", "--base", base_dir,
               "--dataset", "PKU:helpful").exit_code == 0
    assert cli("add", "harmless", "--vector", tmp_path / "s.safetensors", "--base", base_dir).exit_code == 0
    return base_dir


def assert_clean_failure(result, out: Path, before, after, *needles: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert before == after


def test_compose_cli_json_and_summary(cli, setup: Path, tmp_path: Path) -> None:
    r = cli("compose", "helpful:1", "harmless:-0.5", "--base", setup, "--out", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["output_kind"] == "model" and len(data["output_fingerprint"]) == 64
    assert [t["ref"] for t in data["spec"]["terms"]] == ["helpful@1", "harmless@1"]
    r = cli("compose", "helpful", "--base", setup, "--out", tmp_path / "out2", "--quiet")
    assert r.exit_code == 0 and "helpful@1:1" in r.stdout and "composition #2" in r.stdout
    fp = cli("fingerprint", tmp_path / "out2").stdout.strip()
    assert fp in r.stdout


def test_compositions_json(cli, setup: Path, tmp_path: Path) -> None:
    assert cli("compositions").stdout.strip() == "no compositions recorded"
    cli("compose", "helpful", "--base", setup, "--out", tmp_path / "o1")
    cli("compose", "helpful:0.5", "harmless", "--vector-only", "--out", tmp_path / "v.safetensors")
    r = cli("compositions", "--json")
    rows = json.loads(r.stdout)
    assert [(x["id"], x["output_kind"], x["method"]) for x in rows] == [(1, "model", "linear"), (2, "vector", "linear")]
    assert rows[1]["output_path"] == str((tmp_path / "v.safetensors").resolve())
    assert rows[1]["spec"]["terms"][0] == {"ref": "helpful@1", "coefficient": 0.5,
                                           "sha256": rows[0]["spec"]["terms"][0]["sha256"]}
    text = cli("compositions").stdout
    assert "helpful@1:0.5 harmless@1:1" in text


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_spec_file(cli, setup: Path, tmp_path: Path, suffix: str) -> None:
    spec = {"terms": [{"ref": "helpful", "coefficient": 0.5}, "harmless:2"], "method": "ties", "density": 0.5}
    p = tmp_path / f"spec{suffix}"
    p.write_text(json.dumps(spec))
    r = cli("compose", "--spec", p, "--base", setup, "--out", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["spec"]["method"] == "ties"
    # the recorded spec is itself a valid spec file, and replays to the same bytes
    recorded = tmp_path / "recorded.json"
    recorded.write_text(json.dumps(json.loads(r.stdout)["spec"]))
    r2 = cli("compose", "--spec", recorded, "--base", setup, "--out", tmp_path / "again", "--json")
    assert json.loads(r2.stdout)["output_fingerprint"] == json.loads(r.stdout)["output_fingerprint"]


def test_tokens_and_spec_file_are_exclusive(cli, setup: Path, tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("terms: [helpful]\n")
    r = cli("compose", "helpful", "--spec", p, "--out", tmp_path / "o")
    assert r.exit_code == 2 and r.stderr.startswith("error: ")


def test_existing_out_refused_and_force(cli, setup: Path, tmp_path: Path, snapshot) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    before = snapshot()
    r = cli("compose", "helpful", "--base", setup, "--out", out)
    assert r.exit_code == 2 and "already exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (out / "keep.txt").exists() and snapshot() == before
    r = cli("compose", "helpful", "--base", setup, "--out", out, "--force")
    assert r.exit_code == 0 and not (out / "keep.txt").exists() and (out / "README.md").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_validation_errors_are_one_line_and_change_nothing(cli, setup: Path, tmp_path: Path, snapshot,
                                                           base_tensors) -> None:
    out = tmp_path / "out"
    other = tmp_path / "other"
    make_base(other, seed=5)
    sha = json.loads(cli("show", "helpful", "--json").stdout)["sha256"]
    cases = [
        (["helpful", "--base", other], ["base mismatch", "helpful -> helpful@1"]),
        (["helpful", "helpful@1"], ["duplicate vector"]),
        (["helpful", f"sha256:{sha[:12]}:2"], ["duplicate vector", "both resolve to helpful@1"]),
        (["helpful", "twin:0.5"], ["duplicate vector", "same sha256"]),
        (["helpful:nan"], ["'helpful:nan'"]),
        (["helpful:1e400"], ["'helpful:1e400'"]),
        (["helpful:abc"], ["'helpful:abc'"]),
        (["nosuch:1", "helpful"], ["unknown reference 'nosuch'"]),
        (["helpful", "--method", "ties"], ["requires a density"]),
        (["helpful", "--dtype", "int8"], ["invalid dtype"]),
        (["helpful", "--register", "x"], ["--vector-only"]),
        (["helpful", "--shard-size", "lots"], ["shard size"]),
        (["helpful", "--accumulate", "float16"], ["accumulate"]),
    ]
    for i, (args, needles) in enumerate(cases):
        if i == 3:
            assert cli("add", "twin", "--vector", tmp_path / "h.safetensors", "--base", setup).exit_code == 0
        before = snapshot()
        r = cli("compose", *args, "--out", out)
        assert_clean_failure(r, out, before, snapshot(), *needles)


def test_missing_tensor_shape_mismatch_and_mixed_bases(cli, tmp_path: Path, snapshot, base_dir: Path,
                                                       base_tensors) -> None:
    import torch
    from safetensors.torch import save_file

    # Register against the bare fingerprint first, so add cannot check tensors against the base.
    fp = cli("fingerprint", base_dir).stdout.strip()
    save_file({"not.in.base": torch.ones(3)}, str(tmp_path / "missing.safetensors"))
    save_file({"model.norm.weight": torch.ones(5)}, str(tmp_path / "shape.safetensors"))
    assert cli("add", "missing", "--vector", tmp_path / "missing.safetensors", "--base", fp).exit_code == 0
    assert cli("add", "shape", "--vector", tmp_path / "shape.safetensors", "--base", fp).exit_code == 0
    other = tmp_path / "other"
    other_t = make_base(other, seed=5)
    make_vector(tmp_path / "o.safetensors", other_t, seed=3)
    assert cli("add", "otherbase", "--vector", tmp_path / "o.safetensors", "--base", other).exit_code == 0
    out = tmp_path / "out"

    before = snapshot()
    r = cli("compose", "missing", "--base", base_dir, "--out", out)
    assert_clean_failure(r, out, before, snapshot(), "'not.in.base' does not exist in the base")
    r = cli("compose", "shape", "--base", base_dir, "--out", out)
    assert_clean_failure(r, out, before, snapshot(), "has shape [5] but the base has [16]")
    # Several problems at once, in one line.
    r = cli("compose", "missing", "shape:2", "otherbase", "ghost", "missing@1:-1", "--base", base_dir, "--out", out)
    assert_clean_failure(r, out, before, snapshot(), "different bases", "unknown reference 'ghost'",
                         "duplicate vector")
    assert r.stderr.count(";") >= 2
    # No --base and no local copy of the base known.
    r = cli("compose", "missing", "--out", out)
    assert_clean_failure(r, out, before, snapshot(), "no local path")


def test_register_lineage_in_log_and_show(cli, setup: Path, tmp_path: Path) -> None:
    r = cli("compose", "helpful:0.5", "harmless:-1", "--vector-only", "--register", "balanced",
            "--out", tmp_path / "b.safetensors")
    assert r.exit_code == 0, r.stderr
    assert "registered balanced@1" in r.stdout
    log = cli("log", "balanced").stdout
    assert "compose" in log and "helpful@1:0.5,harmless@1:-1" in log
    meta = json.loads(cli("show", "balanced", "--json").stdout)
    assert meta["kind"] == "compose"
    assert [(p["ref"], p["coefficient"]) for p in meta["parents"]] == [("helpful@1", 0.5), ("harmless@1", -1.0)]
    # registering without an output file also works
    r = cli("compose", "helpful", "--vector-only", "--register", "balanced")
    assert r.exit_code == 0 and "balanced@2" in r.stdout


def test_killed_composition_is_cleaned_by_gc(cli, setup: Path, tmp_path: Path, home: Path) -> None:
    pending = home / "pending"
    pending.mkdir(parents=True, exist_ok=True)
    dead_tmp = tmp_path / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    dead_tmp.mkdir()
    (dead_tmp / "model-00001-of-00002.safetensors").write_bytes(b"partial")
    dead_marker = pending / f"{uuid.uuid4().hex}.json"
    dead_marker.write_text(json.dumps({"path": str(dead_tmp)}))
    # A live one: its marker is locked by a running compose.
    live_tmp = tmp_path / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    live_tmp.mkdir()
    live_marker = pending / f"{uuid.uuid4().hex}.json"
    live_marker.write_text(json.dumps({"path": str(live_tmp)}))
    fd = os.open(live_marker, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = cli("gc")
    finally:
        os.close(fd)
    assert r.exit_code == 0, r.stderr
    assert not dead_tmp.exists() and not dead_marker.exists()
    assert live_tmp.exists() and live_marker.exists()


def test_gc_recovers_an_interrupted_force_swap(cli, setup: Path, tmp_path: Path, home: Path) -> None:
    """Killed between moving the old --out aside and moving the new one in: gc restores the old."""
    pending = home / "pending"
    pending.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "merged"
    aside = tmp_path / f"{TEMP_PREFIX}{uuid.uuid4().hex}-old"
    aside.mkdir()
    (aside / "config.json").write_text("{}")
    new_tmp = tmp_path / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    new_tmp.mkdir()
    (pending / f"{uuid.uuid4().hex}.json").write_text(
        json.dumps({"path": str(new_tmp), "aside": str(aside), "out": str(out)}))
    assert cli("gc").exit_code == 0
    assert (out / "config.json").read_text() == "{}"
    assert not aside.exists() and not new_tmp.exists()
    # Killed after the new output was in place: the old copy is dropped, the new one kept.
    aside.mkdir()
    (pending / f"{uuid.uuid4().hex}.json").write_text(
        json.dumps({"path": str(new_tmp), "aside": str(aside), "out": str(out)}))
    assert cli("gc").exit_code == 0
    assert out.exists() and not aside.exists()
    assert list(pending.iterdir()) == []


def test_cli_import_does_not_load_torch() -> None:
    code = "import sys; import pvreg.cli.main, pvreg.cli.compose; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
