"""Base-model fingerprints: invariant to layout, sensitive to every byte, cached."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers.factories import llama_shapes, random_tensors, save_checkpoint
from pvreg import Registry
from pvreg.registry.tensors import fingerprint as fp_module
from safetensors.torch import save_file


def independent_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """The documented definition, computed without pvreg."""
    codes = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest = hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest()
        shape = "x".join(map(str, t.shape))
        h.update(f"{name}\t{codes[t.dtype]}\t{shape}\t{digest}\n".encode())
    return h.hexdigest()


@pytest.fixture
def tensors() -> dict[str, torch.Tensor]:
    return random_tensors(llama_shapes(), seed=7, dtype=torch.bfloat16)


def test_layout_invariance(tmp_path: Path, tensors, cli) -> None:
    expected = independent_fingerprint(tensors)
    one = save_checkpoint(tmp_path / "one", tensors)
    three = save_checkpoint(tmp_path / "three", tensors, shards=3, metadata={"other": "metadata"})
    no_index = tmp_path / "no-index"
    shutil.copytree(three, no_index)
    (no_index / "model.safetensors.index.json").unlink()
    single = tmp_path / "single.safetensors"
    save_file(dict(reversed(list(tensors.items()))), str(single))
    binfile = tmp_path / "pytorch_model.bin"
    torch.save(tensors, binfile)
    for path in (one, three, no_index, single, binfile):
        r = cli("fingerprint", path)
        assert r.exit_code == 0, r.stderr
        assert r.stdout.strip() == expected, path


def test_any_byte_changes_it(tmp_path: Path, tensors) -> None:
    base = independent_fingerprint(tensors)
    changed = dict(tensors)
    t = changed["model.norm.weight"].clone()
    t.view(torch.int16)[3] ^= 1
    changed["model.norm.weight"] = t
    save_checkpoint(tmp_path / "a", tensors)
    save_checkpoint(tmp_path / "b", changed)
    with Registry.open() as reg:
        assert reg.fingerprint(tmp_path / "a") == base
        assert reg.fingerprint(tmp_path / "b") == independent_fingerprint(changed) != base


def test_second_use_is_served_from_the_cache(tmp_path: Path, tensors, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "m", tensors, shards=2)
    with Registry.open() as reg:
        first = reg.fingerprint(path)

        def no_hashing(view):
            raise AssertionError("tensor bytes were hashed again")

        monkeypatch.setattr(fp_module, "_hash", no_hashing)
        assert reg.fingerprint(path) == first
        # touching a shard invalidates its cache entry
        shard = sorted(path.glob("*.safetensors"))[0]
        st = shard.stat()
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        with pytest.raises(AssertionError, match="hashed again"):
            reg.fingerprint(path)


def test_damaged_cache_entry_is_recomputed(tmp_path: Path, tensors, home: Path) -> None:
    path = save_checkpoint(tmp_path / "m", tensors)
    with Registry.open() as reg:
        first = reg.fingerprint(path)
        for entry in (home / "cache" / "fingerprints").glob("*.json"):
            data = json.loads(entry.read_text())
            data["entries"][0][3] = "0" * 64
            entry.write_text("{not json" if data else "")
        assert reg.fingerprint(path) == first


def test_bin_pickle_with_code_is_refused(tmp_path: Path, cli) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.bin"
    torch.save({"w": torch.zeros(2), "x": Payload()}, bad)
    r = cli("fingerprint", bad)
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and "refused" in r.stderr
    assert not marker.exists()
