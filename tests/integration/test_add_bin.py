"""``pvreg add`` of PyTorch ``.bin`` vectors and checkpoints stores what ``torch.load`` reads, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import pytest
import torch
from helpers.factories import make_vector
from helpers.tensors import assert_same, rezip
from safetensors.torch import load_file

# --- end to end: pvreg add of .bin files, compared with torch.load ----------------------------------------------------


def _vector_bin(path: Path, base_tensors: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    tmp = path.parent / f"{kind}-work"
    tmp.mkdir()
    tensors = make_vector(tmp / "v.safetensors", base_tensors, seed=5, names=sorted(base_tensors)[:6])
    torch.save(tensors, tmp / "src.bin")
    if kind == "stored":
        made = tmp / "src.bin"
    elif kind == "deflated":
        made = rezip(tmp / "src.bin", tmp / "x.bin", lambda i: zipfile.ZIP_DEFLATED)
    elif kind == "mixed":
        made = rezip(tmp / "src.bin", tmp / "x.bin", lambda i: zipfile.ZIP_DEFLATED if i.filename.endswith("/data/1") else zipfile.ZIP_STORED)
    else:
        torch.save(tensors, tmp / "x.bin", _use_new_zipfile_serialization=False)
        made = tmp / "x.bin"
    made.rename(path)
    return tensors


@pytest.mark.parametrize("kind", ["stored", "deflated", "mixed", "legacy"])
def test_add_bin_vector_stores_what_torch_load_reads(tmp_path: Path, cli, backend, base_dir, base_tensors, kind: str) -> None:
    from pvreg import Registry

    path = tmp_path / "vec.bin"
    _vector_bin(path, base_tensors, kind)
    expected = torch.load(path, map_location="cpu", weights_only=True)
    r = cli("add", "v", "--vector", path, "--base", base_dir)
    assert r.exit_code == 0, r.stderr
    with Registry.open() as reg:
        meta = reg.resolve("v")
        stored = load_file(str(reg.blob_path("v")))
    assert sorted(stored) == sorted(expected)
    for name, t in expected.items():
        assert_same(stored[name], t)
    norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in expected.values()))
    assert meta.norm == pytest.approx(norm, rel=1e-12)
    v = cli("verify")
    assert v.exit_code == 0, v.stderr


def test_add_finetuned_from_deflated_bin_checkpoint(tmp_path: Path, cli, base_dir, base_tensors) -> None:
    """θft − θbase where θft is a re-zipped (DEFLATE) pytorch_model.bin: values must be torch.load's."""
    from pvreg import Registry

    g = torch.Generator().manual_seed(9)
    ft = {n: t + 0.01 * torch.randn(t.shape, generator=g) for n, t in base_tensors.items()}
    work = tmp_path / "ft-src"
    work.mkdir()
    torch.save(ft, work / "pytorch_model.bin")
    ft_dir = tmp_path / "ft"
    ft_dir.mkdir()
    rezip(work / "pytorch_model.bin", ft_dir / "pytorch_model.bin", lambda i: zipfile.ZIP_DEFLATED)
    r = cli("add", "ft", "--finetuned", ft_dir, "--base", base_dir)
    assert r.exit_code == 0, r.stderr
    loaded = torch.load(ft_dir / "pytorch_model.bin", weights_only=True)
    with Registry.open() as reg:
        stored = load_file(str(reg.blob_path("ft")))
    for name, t in stored.items():
        exact = loaded[name].double() - base_tensors[name].double()
        assert torch.allclose(t.double(), exact, rtol=0, atol=1e-6), name
    assert max(float(t.abs().max()) for t in stored.values()) < 0.2  # garbage from compressed bytes would be ~1e11
