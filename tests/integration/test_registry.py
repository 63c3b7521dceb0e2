"""The Python API and the read/maintenance commands: refs, lineage, verify, gc, export."""

from __future__ import annotations

import hashlib
import json
import math
import os
from datetime import datetime
from pathlib import Path

import pytest
import torch
from helpers.factories import make_vector
from pvreg import Registry
from pvreg.registry.errors import (
    AmbiguousReferenceError,
    InvalidReferenceError,
    NotFoundError,
    OutputExistsError,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.usefixtures("backend")


@pytest.fixture
def reg(home: Path):
    with Registry.open() as r:
        yield r


def test_norms_and_counts_match_an_independent_computation(reg, vector_file, base_dir) -> None:
    meta = reg.add("helpful", vector_file, base=base_dir, dataset="d")
    tensors = load_file(str(vector_file))
    per = {n: math.sqrt(sum(float(x) ** 2 for x in t.flatten().tolist())) for n, t in tensors.items()}
    assert meta.tensor_norms.keys() == per.keys()
    for n, v in per.items():
        assert math.isclose(meta.tensor_norms[n], v, rel_tol=1e-12)
    assert math.isclose(meta.norm, math.sqrt(sum(v * v for v in per.values())), rel_tol=1e-12)
    assert meta.num_tensors == len(tensors)
    assert meta.num_params == sum(t.numel() for t in tensors.values())
    assert meta.dtype == "float32"


def test_blob_is_canonical_and_content_addressed(reg, tmp_path, base_tensors, base_dir, home) -> None:
    tensors = make_vector(tmp_path / "v.safetensors", base_tensors, seed=3)
    # The same tensors saved with other file metadata and another key order
    save_file(dict(reversed(list(tensors.items()))), str(tmp_path / "w.safetensors"), metadata={"who": "me"})
    a = reg.add("a", tmp_path / "v.safetensors", base=base_dir)
    b = reg.add("b", tmp_path / "w.safetensors", base=base_dir)
    assert a.sha256 == b.sha256
    blob = home / "blobs" / "sha256" / a.sha256[:2] / f"{a.sha256[2:]}.safetensors"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == a.sha256
    assert blob.stat().st_size == a.size_bytes
    stored = load_file(str(blob))
    assert all(torch.equal(stored[n], tensors[n]) for n in tensors)
    assert len(list((home / "blobs" / "sha256").rglob("*.safetensors"))) == 1


def test_references(reg, tmp_path, base_tensors, base_dir) -> None:
    metas = [reg.add("helpful", make_vector(tmp_path / f"v{i}.safetensors", base_tensors, seed=i) and
                     tmp_path / f"v{i}.safetensors", base=base_dir) for i in range(3)]
    assert [m.version for m in metas] == [1, 2, 3]
    assert reg.resolve("helpful").version == 3
    assert reg.resolve("helpful@2").sha256 == metas[1].sha256
    assert reg.resolve(f"sha256:{metas[0].sha256[:8]}").ref == "helpful@1"
    reg.tag("helpful@1", "prod")
    assert reg.resolve("helpful@prod").version == 1
    reg.tag("helpful@2", "prod")  # moves
    assert reg.resolve("helpful@prod").version == 2
    assert reg.resolve("helpful@2").aliases == ["prod"]
    reg.untag("helpful", "prod")
    with pytest.raises(NotFoundError):
        reg.resolve("helpful@prod")
    reg.deprecate("helpful@3")
    assert reg.resolve("helpful").version == 2
    assert reg.resolve("helpful@3").state == "deprecated"
    for bad, exc in [("nope", NotFoundError), ("helpful@9", NotFoundError), ("helpful@x", NotFoundError),
                     ("sha256:00000000", NotFoundError), ("sha256:12", InvalidReferenceError),
                     ("Bad", InvalidReferenceError), ("helpful@0", InvalidReferenceError)]:
        with pytest.raises(exc):
            reg.resolve(bad)


def test_ambiguous_sha_prefix(reg) -> None:
    """Two blobs sharing an 8-digit prefix cannot be made on purpose; insert such rows directly."""
    from pvreg.registry.storage.bases import ResolvedBase
    from pvreg.registry.sources.ingest import BlobStats
    from pvreg.registry.storage.writes import NewVersion

    for name, tail in (("a", "1"), ("b", "2")):
        stats = BlobStats(sha256="abcdef01" + tail * 56, size_bytes=1, norm=1.0, tensor_norms={}, dtype="float32",
                          num_tensors=1, num_params=1)
        reg.store.commit_version(NewVersion(name=name, stats=stats, base=ResolvedBase("f" * 64)))
    with pytest.raises(AmbiguousReferenceError, match="matches 2 blobs"):
        reg.resolve("sha256:abcdef01")
    assert reg.resolve("sha256:abcdef012").name == "b"


def test_list_log_show(reg, cli, tmp_path, base_tensors, base_dir) -> None:
    for i, name in enumerate(["helpful", "helpful", "harmless"]):
        make_vector(tmp_path / f"{i}.safetensors", base_tensors, seed=i)
        reg.add(name, tmp_path / f"{i}.safetensors", base=base_dir, dataset=f"ds{i}")
    entries = reg.list()
    assert [(e.name, e.version, e.versions) for e in entries] == [("harmless", 1, 1), ("helpful", 2, 2)]
    out = json.loads(cli("list", "--json").stdout)
    assert [(e["name"], e["version"], e["versions"]) for e in out] == [("harmless", 1, 1), ("helpful", 2, 2)]
    log = json.loads(cli("log", "helpful", "--json").stdout)
    assert [m["version"] for m in log] == [2, 1]
    text = cli("list").stdout.splitlines()
    assert text[0].split() == ["NAME", "LATEST", "VERSIONS", "BASE", "DATASET", "SIGN", "NORM"]
    assert text[2].split()[:5] == ["helpful", "2", "2", "base", "ds1"]
    assert cli("show", "helpful@1").stdout.splitlines()[0].split() == ["ref:", "helpful@1"]


def test_read_paths_report_state_lineage_tags_and_aliases(reg, cli, tmp_path, base_tensors, base_dir) -> None:
    """list/show/log (Core queries) against facts set up through the write paths (ORM)."""
    from pvreg.registry.storage.writes import NewVersion
    from pvreg.schemas.vector import ParentRef

    def add(name: str, seed: int, **kw):
        make_vector(tmp_path / f"{name}{seed}.safetensors", base_tensors, seed=seed)
        return reg.add(name, tmp_path / f"{name}{seed}.safetensors", base=base_dir, **kw)

    a1, a2 = add("a", 1), add("a", 2)
    reg.deprecate("a@2")  # latest is deprecated: list shows the latest *active* one
    add("b", 3)
    reg.deprecate("b")  # nothing active: list falls back to the latest
    c1 = add("c", 4, tags={"z": "1", "a": "2"})
    parents = [ParentRef(ref=a1.ref, sha256=a1.sha256, coefficient=0.5), ParentRef(ref=c1.ref, sha256=c1.sha256)]
    c2 = reg.store.commit_version(NewVersion(name="c", stats=_stats(c1), base=reg.resolve_base(base_dir), kind="compose",
                                       parents=parents, tags={"m": "x"}))
    reg.tag("c@1", "stable")
    reg.tag("c@2", "prod")
    reg.tag("c@2", "beta")

    listed = {e.name: e for e in reg.list()}
    assert [e.name for e in reg.list()] == ["a", "b", "c"]
    assert (listed["a"].version, listed["a"].versions, listed["a"].state) == (1, 2, "active")
    assert (listed["b"].version, listed["b"].versions, listed["b"].state) == (1, 1, "deprecated")
    assert (listed["c"].version, listed["c"].versions, listed["c"].kind) == (2, 2, "compose")
    assert listed["c"].aliases == ["beta", "prod"] and listed["c"].tags == {"m": "x"}
    assert [(p.ref, p.sha256, p.coefficient) for p in listed["c"].parents] == [
        ("a@1", a1.sha256, 0.5), ("c@1", c1.sha256, None)]
    assert listed["c"].base_label == "base" and listed["a"].sha256 == a1.sha256

    shown = json.loads(cli("show", "c@stable", "--json").stdout)
    assert (shown["version"], shown["aliases"], shown["tags"], shown["parents"]) == (1, ["stable"], {"a": "2", "z": "1"}, [])
    assert json.loads(cli("show", "a", "--json").stdout)["version"] == 1
    assert json.loads(cli("show", f"sha256:{a2.sha256[:10]}", "--json").stdout)["state"] == "deprecated"
    log = json.loads(cli("log", "c", "--json").stdout)
    assert [(m["version"], m["aliases"]) for m in log] == [(2, ["beta", "prod"]), (1, ["stable"])]
    assert log[0]["parents"][0] == {"ref": "a@1", "sha256": a1.sha256, "coefficient": 0.5}
    assert c2.created_at.tzinfo is not None and datetime.fromisoformat(log[0]["created_at"]) == c2.created_at


def _stats(meta):
    from pvreg.registry.sources.ingest import BlobStats

    return BlobStats(sha256=meta.sha256, size_bytes=meta.size_bytes, norm=meta.norm, tensor_norms=meta.tensor_norms,
                     dtype=meta.dtype, num_tensors=meta.num_tensors, num_params=meta.num_params)


def test_read_commands_load_neither_the_orm_nor_torch(reg, vector_file, base_dir) -> None:
    """What keeps `pvreg list` fast (bench/bench_list.py measures it): read commands stay on SQLAlchemy Core."""
    import subprocess
    import sys

    meta = reg.add("helpful", vector_file, base=base_dir)
    code = ("import sys\nfrom pvreg.cli.main import main\ntry: main()\nexcept SystemExit as e: assert not e.code, e.code\n"
            "heavy = [m for m in ('sqlalchemy.orm', 'torch', 'alembic', 'huggingface_hub') if m in sys.modules]\n"
            "print('loaded:', heavy)")
    for argv, expect in ((["list"], "helpful"), (["list", "--json"], meta.sha256), (["show", "helpful"], meta.sha256),
                         (["log", "helpful"], meta.sha256[:12]), (["bases"], meta.base_fingerprint[:16]),
                         (["compositions"], "no compositions recorded"), (["--help"], "Commands:")):
        r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=os.environ.copy())
        assert r.returncode == 0, (argv, r.stderr)
        assert expect in r.stdout, (argv, r.stdout)
        assert r.stdout.strip().splitlines()[-1] == "loaded: []", (argv, r.stdout)


def test_export_then_add_restores_metadata(reg, tmp_path, vector_file, base_dir, home) -> None:
    original = reg.add("helpful", vector_file, base=base_dir, dataset="PKU:helpful", sign=-1,
                       message="trained", tags={"lr": "1e-5"}, description="be helpful")
    out = tmp_path / "exported.safetensors"
    reg.export("helpful", out)
    with safe_open(str(out), "pt") as f:
        embedded = json.loads(f.metadata()["pvreg"])
    assert embedded["sha256"] == original.sha256
    with pytest.raises(OutputExistsError):
        reg.export("helpful", out)
    with Registry.open(tmp_path / "other") as other:
        restored = other.add(None, out)
    assert (restored.name, restored.sha256, restored.dataset, restored.sign, restored.message, restored.tags,
            restored.base_fingerprint, restored.description) == (
        "helpful", original.sha256, "PKU:helpful", -1, "trained", {"lr": "1e-5"},
        original.base_fingerprint, "be helpful")
    assert restored.provenance["restored_from"]["ref"] == "helpful@1"


def test_tampered_export_is_refused(reg, tmp_path, vector_file, base_dir) -> None:
    reg.add("helpful", vector_file, base=base_dir)
    out = tmp_path / "exported.safetensors"
    reg.export("helpful", out)
    data = bytearray(out.read_bytes())
    data[-1] ^= 0x01
    out.write_bytes(bytes(data))
    from pvreg.registry.errors import InvalidVectorError

    with Registry.open(tmp_path / "other") as other, pytest.raises(InvalidVectorError, match="modified"):
        other.add(None, out)


def test_verify_detects_corruption_and_names_it(reg, cli, vector_file, base_dir, home) -> None:
    meta = reg.add("helpful", vector_file, base=base_dir)
    assert cli("verify").exit_code == 0
    blob = home / "blobs" / "sha256" / meta.sha256[:2] / f"{meta.sha256[2:]}.safetensors"
    data = bytearray(blob.read_bytes())
    data[-3] ^= 0x40
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    r = cli("verify")
    assert r.exit_code == 1
    assert "helpful@1" in r.stderr and "hashes to" in r.stderr
    blob.unlink()
    r = cli("verify", "helpful")
    assert r.exit_code == 1 and "missing" in r.stderr


def test_rm_and_gc(reg, cli, tmp_path, base_tensors, base_dir, home) -> None:
    make_vector(tmp_path / "a.safetensors", base_tensors, seed=1)
    make_vector(tmp_path / "b.safetensors", base_tensors, seed=2)
    a = reg.add("x", tmp_path / "a.safetensors", base=base_dir)
    b = reg.add("x", tmp_path / "b.safetensors", base=base_dir)
    reg.add("y", tmp_path / "a.safetensors", base=base_dir)  # shares a's blob
    reg.rm("x@1")
    assert reg.gc().removed_blobs == []  # y still references a's blob
    reg.rm("y")
    report = reg.gc()
    assert report.removed_blobs == [a.sha256]
    assert not (home / "blobs" / "sha256" / a.sha256[:2] / f"{a.sha256[2:]}.safetensors").exists()
    assert reg.resolve("x").sha256 == b.sha256
    reg.rm("x")
    assert reg.list() == []
    with pytest.raises(NotFoundError):
        reg.log("x")


def test_gc_removes_only_stale_temporaries(reg, home) -> None:
    import fcntl

    from pvreg.registry.files import TEMP_PREFIX

    store = home / "blobs" / "sha256"
    stale = store / f"{TEMP_PREFIX}dead.part"
    stale.write_bytes(b"partial")
    live = store / f"{TEMP_PREFIX}live.part"
    with open(live, "wb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        report = reg.gc()
        assert live.exists()
    assert not stale.exists()
    assert str(stale) in report.removed_temp


def test_bin_vector_is_loaded_without_code_execution(reg, tmp_path, base_tensors, base_dir) -> None:
    name = "model.norm.weight"
    delta = {name: torch.full(base_tensors[name].shape, 0.5)}
    torch.save(delta, tmp_path / "delta.bin")
    meta = reg.add("binvec", tmp_path / "delta.bin", base=base_dir)
    save_file(delta, str(tmp_path / "delta.safetensors"))
    assert meta.sha256 == reg.add("stvec", tmp_path / "delta.safetensors", base=base_dir).sha256
