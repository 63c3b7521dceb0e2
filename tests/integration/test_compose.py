"""Registry.compose end to end against independent plain-torch computations."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from helpers.factories import make_base, make_vector
from helpers.models import SMALL_LLAMA, build_llama
from pvreg.registry.api import Registry
from pvreg.registry.errors import (
    BaseMismatchError,
    OutputExistsError,
    SpecError,
    UnsafeOutputError,
)
from pvreg.registry.files import TEMP_PREFIX
from safetensors.torch import load_file, save_file


@pytest.fixture
def reg(home: Path):
    with Registry.open() as r:
        yield r


def load_dir(out: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a sharded output, checking the index against the shards."""
    index = json.loads((out / "model.safetensors.index.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(set(index["weight_map"].values())):
        part = load_file(str(out / f))
        assert all(index["weight_map"][n] == f for n in part)
        tensors |= part
    assert set(tensors) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    return tensors


def file_norm(tensors: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors.values()))


def assert_close_dtype(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to one unit in the last place of the output dtype (summation order differs)."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    eps = torch.finfo(got.dtype).eps
    torch.testing.assert_close(got.double(), expected.double(), rtol=eps, atol=max(eps * 1e-2, 1e-6))


def no_leftovers(directory: Path) -> bool:
    return not any(p.name.startswith(TEMP_PREFIX) for p in directory.iterdir())


LINEAR_CASES = {
    "f32": {},
    "bf16-base": {"base_dtype": torch.bfloat16},
    "fp16-base": {"base_dtype": torch.float16},
    "bf16-vectors": {"vec_dtype": torch.bfloat16},
    "negative-coefficients": {"coefs": (-1.5, -0.25)},
    "sign-minus": {"signs": (1, -1), "coefs": (0.5, 2.0)},
    "accumulate-float64": {"accumulate": "float64", "coefs": (1e-3, 3.0)},
    "dtype-override": {"dtype": "bfloat16"},
    "normalize": {"normalize": True, "coefs": (2.0, -1.0)},
}


@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_linear_matches_independent_computation(reg: Registry, tmp_path: Path, case: str) -> None:
    c = {"base_dtype": torch.float32, "vec_dtype": torch.float32, "coefs": (1.0, 0.7), "signs": (1, 1),
         "accumulate": None, "dtype": None, "normalize": None, **LINEAR_CASES[case]}
    base_dir = tmp_path / "base"
    base = make_base(base_dir, seed=0, dtype=c["base_dtype"])
    names = sorted(base)
    paths = [tmp_path / "v1.safetensors", tmp_path / "v2.safetensors"]
    make_vector(paths[0], base, seed=1, names=names[:9], dtype=c["vec_dtype"], scale=0.05)
    make_vector(paths[1], base, seed=2, names=names[6:14], dtype=c["vec_dtype"], scale=0.05)
    for name, path, sign in zip(("one", "two"), paths, c["signs"]):
        reg.add(name, path, base=base_dir, sign=sign)
    out = tmp_path / "out"
    result = reg.compose([f"one:{c['coefs'][0]}", f"two:{c['coefs'][1]}"], base=base_dir, out=out,
                         accumulate=c["accumulate"], dtype=c["dtype"], normalize=c["normalize"])
    got = load_dir(out)

    # Independent computation straight from the files.
    base_f = load_file(str(base_dir / "model.safetensors"))
    vecs = [load_file(str(p)) for p in paths]
    acc = torch.float64 if c["accumulate"] == "float64" else torch.float32
    weights = [coef * sign / (file_norm(v) if c["normalize"] else 1.0)
               for coef, sign, v in zip(c["coefs"], c["signs"], vecs)]
    assert set(got) == set(base_f)
    touched = 0
    for n, b in base_f.items():
        out_dtype = getattr(torch, c["dtype"]) if c["dtype"] else b.dtype
        users = [(w, v[n]) for w, v in zip(weights, vecs) if n in v]
        if not users:
            assert torch.equal(got[n], b.to(out_dtype)) and got[n].dtype == out_dtype, n
            continue
        touched += 1
        e = b.to(acc)
        for w, d in users:
            e = e + w * d.to(acc)
        assert_close_dtype(got[n], e.to(out_dtype))
    assert touched == 14
    assert result.output_fingerprint == reg.fingerprint(out)
    assert result.output_kind == "model" and Path(result.out) == out


def test_untouched_tensors_are_raw_copies(reg: Registry, tmp_path: Path) -> None:
    base_dir = tmp_path / "base"
    base = make_base(base_dir, seed=0, dtype=torch.bfloat16)
    make_vector(tmp_path / "v.safetensors", base, seed=1, names=["lm_head.weight"])
    reg.add("v", tmp_path / "v.safetensors", base=base_dir)
    reg.compose("v:0.5", base=base_dir, out=tmp_path / "out")
    got = load_dir(tmp_path / "out")
    for n, b in base.items():
        if n != "lm_head.weight":
            assert got[n].view(torch.int16).equal(b.view(torch.int16))


def _tiny_base(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {"a": torch.full((4,), 10.0), "b": torch.zeros(2, 2), "c": torch.arange(3.0)}
    directory.mkdir(parents=True)
    save_file(tensors, str(directory / "model.safetensors"))
    return tensors


@pytest.fixture
def tiny(reg: Registry, tmp_path: Path) -> Path:
    base_dir = tmp_path / "tiny"
    _tiny_base(base_dir)
    save_file({"a": torch.tensor([1.0, -2.0, 3.0, -4.0]), "b": torch.tensor([[0.5, -0.25], [2.0, -8.0]])},
              str(tmp_path / "v1.safetensors"))
    save_file({"a": torch.tensor([-1.0, 1.0, 1.0, -1.0])}, str(tmp_path / "v2.safetensors"))
    reg.add("v1", tmp_path / "v1.safetensors", base=base_dir)
    reg.add("v2", tmp_path / "v2.safetensors", base=base_dir)
    return base_dir


def test_ties_hand_computed(reg: Registry, tiny: Path, tmp_path: Path) -> None:
    # density 0.5: v1.a keeps |x| >= 3 -> [0,0,3,-4]; v2.a all tie at 1 -> all kept.
    # sum [-1,1,4,-5] elects [-,+,+,-]; disjoint means: [-1, 1, (3+1)/2, (-4-1)/2].
    # v1.b keeps |x| >= 2 -> [[0,0],[2,-8]]; c untouched.
    reg.compose("v1 v2", base=tiny, out=tmp_path / "out", method="ties", density=0.5)
    got = load_dir(tmp_path / "out")
    assert got["a"].tolist() == [9.0, 11.0, 12.0, 7.5]
    assert got["b"].tolist() == [[0.0, 0.0], [2.0, -8.0]]
    assert got["c"].tolist() == [0.0, 1.0, 2.0]


def test_dare_ties_density_one_is_sign_consensus(reg: Registry, tiny: Path, tmp_path: Path) -> None:
    # No drop at density 1: d1=[1,-2,3,-4], d2=[-1,1,1,-1]; sum [0,-1,4,-5].
    reg.compose("v1 v2", base=tiny, out=tmp_path / "out", method="dare_ties", density=1.0, seed=5)
    got = load_dir(tmp_path / "out")
    assert got["a"].tolist() == [10.0, 8.0, 12.0, 7.5]
    assert got["b"].tolist() == [[0.5, -0.25], [2.0, -8.0]]


def _mask(seed: int, name: str, sha: str, shape: tuple[int, ...], density: float) -> torch.Tensor:
    s = int.from_bytes(hashlib.sha256(f"{seed}\0{name}\0{sha}".encode()).digest()[:8], "big")
    g = torch.Generator().manual_seed(s)
    return torch.rand(shape, generator=g, dtype=torch.float32) < density


def test_dare_linear_hand_computed(reg: Registry, tiny: Path, tmp_path: Path) -> None:
    reg.compose("v1:2 v2:-1", base=tiny, out=tmp_path / "out", method="dare_linear", density=0.5, seed=7)
    got = load_dir(tmp_path / "out")
    v1, v2 = reg.resolve("v1"), reg.resolve("v2")
    d1 = torch.tensor([1.0, -2.0, 3.0, -4.0]) * _mask(7, "a", v1.sha256, (4,), 0.5) / 0.5
    d2 = torch.tensor([-1.0, 1.0, 1.0, -1.0]) * _mask(7, "a", v2.sha256, (4,), 0.5) / 0.5
    assert torch.equal(got["a"], torch.full((4,), 10.0) + 2 * d1 - d2)


def _shard_hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
def test_fixed_seed_is_byte_identical_and_seed_matters(reg: Registry, tmp_path: Path, base_dir: Path,
                                                       base_tensors, method: str) -> None:
    make_vector(tmp_path / "h.safetensors", base_tensors, seed=1)
    make_vector(tmp_path / "s.safetensors", base_tensors, seed=2)
    reg.add("h", tmp_path / "h.safetensors", base=base_dir)
    reg.add("s", tmp_path / "s.safetensors", base=base_dir)
    outs = []
    for i, seed in enumerate((3, 3, 4)):
        out = tmp_path / f"out{i}"
        reg.compose("h:1 s:0.5", base=base_dir, out=out, method=method, density=0.3, seed=seed, shard_size="4KB")
        outs.append(_shard_hashes(out))
    assert outs[0] == outs[1]  # every file, shards included
    shards = [n for n in outs[0] if n.endswith(".safetensors")]
    assert len(shards) > 1
    assert any(outs[0][n] != outs[2][n] for n in shards)


def test_output_directory_contents(reg: Registry, tmp_path: Path) -> None:
    base_dir = tmp_path / "base"
    base = make_base(base_dir, seed=0, cfg={"_name_or_path": "org/tiny-llama"})
    (base_dir / "tokenizer.json").write_text('{"fake": true}')
    (base_dir / "generation_config.json").write_text("{}")
    (base_dir / "README.md").write_text("base card")
    (base_dir / "extra").mkdir()
    (base_dir / "extra" / "notes.txt").write_text("hi")
    make_vector(tmp_path / "h.safetensors", base, seed=1, names=sorted(base)[:3])
    reg.add("helpful", tmp_path / "h.safetensors", base=base_dir, dataset="PKU-SafeRLHF:helpful")
    res = reg.compose("helpful:0.8", base=base_dir, out=tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "tokenizer.json").read_text() == '{"fake": true}'
    assert (out / "config.json").read_bytes() == (base_dir / "config.json").read_bytes()
    assert (out / "extra" / "notes.txt").read_text() == "hi"
    assert not (out / "model.safetensors").exists()
    for f in out.glob("*.safetensors"):
        from pvreg.registry.tensors.safetensors import SafetensorsFile

        assert SafetensorsFile(f).metadata == {"format": "pt"}
    card = (out / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["base_model"] == "org/tiny-llama"
    assert meta["tags"] == ["pvreg", "preference-vector", "merge"]
    assert meta["library_name"] == "transformers"
    v = reg.resolve("helpful")
    assert f"| helpful | helpful@1 | `{v.sha256[:12]}` | 0.8 | +1 | PKU-SafeRLHF:helpful |" in body
    doc = json.loads((out / "pvreg-composition.json").read_text())
    assert doc["output_fingerprint"] == res.output_fingerprint == reg.fingerprint(out)
    assert doc["inputs"][0]["sha256"] == v.sha256 and doc["inputs"][0]["coefficient"] == 0.8
    assert doc["inputs"][0]["sign"] == 1 and doc["method"] == "linear" and "pvreg_version" in doc
    assert set(res.files) == {p.relative_to(out).as_posix() for p in out.iterdir()}


def test_base_from_registry_when_omitted(reg: Registry, tmp_path: Path, base_dir: Path, vector_file: Path) -> None:
    reg.add("h", vector_file, base=base_dir)
    res = reg.compose(["h"], out=tmp_path / "out")
    assert res.output_fingerprint == reg.fingerprint(tmp_path / "out")


def test_existing_output_refused_then_forced(reg: Registry, tmp_path: Path, base_dir: Path, vector_file: Path) -> None:
    reg.add("h", vector_file, base=base_dir)
    out = tmp_path / "out"
    out.mkdir()
    reg.compose("h", base=base_dir, out=out)  # an empty directory is fine
    (out / "stale.txt").write_text("old")
    with pytest.raises(OutputExistsError):
        reg.compose("h:2", base=base_dir, out=out)
    assert (out / "stale.txt").exists()
    res = reg.compose("h:2", base=base_dir, out=out, force=True)
    assert not (out / "stale.txt").exists()
    assert res.output_fingerprint == reg.fingerprint(out)
    assert no_leftovers(tmp_path)


def test_failure_midway_leaves_nothing(reg: Registry, tmp_path: Path, base_dir: Path, vector_file: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # add_weighted: the linear arithmetic every tensor (every slice) goes through.
    from pvreg.registry.merge import methods as compose_mod

    reg.add("h", vector_file, base=base_dir)
    calls = {"n": 0}
    real = compose_mod.add_weighted

    def boom(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(compose_mod, "add_weighted", boom)
    with pytest.raises(RuntimeError):
        reg.compose("h", base=base_dir, out=tmp_path / "out", shard_size="2KB")
    assert not (tmp_path / "out").exists()
    assert no_leftovers(tmp_path)
    assert not list((reg.settings.home / "pending").iterdir())
    assert reg.compositions() == []


def test_vector_only_and_register(reg: Registry, tmp_path: Path, base_dir: Path, base_tensors) -> None:
    names = sorted(base_tensors)
    a = make_vector(tmp_path / "a.safetensors", base_tensors, seed=1, names=names[:6])
    b = make_vector(tmp_path / "b.safetensors", base_tensors, seed=2, names=names[4:10], dtype=torch.bfloat16)
    reg.add("a", tmp_path / "a.safetensors", base=base_dir)
    reg.add("b", tmp_path / "b.safetensors", base=base_dir, sign=-1)
    out = tmp_path / "sum.safetensors"
    res = reg.compose("a:0.5 b:2", out=out, vector_only=True, register="combo")
    got = load_file(str(out))
    assert set(got) == set(names[:10])
    for n in got:
        e = torch.zeros(base_tensors[n].shape)
        if n in a:
            e = e + 0.5 * a[n].float()
        if n in b:
            e = e + 2 * -1 * b[n].float()
        expected_dtype = torch.bfloat16 if n in b and n not in a else torch.float32
        assert_close_dtype(got[n], e.to(expected_dtype))
    meta = res.registered
    assert meta is not None and meta.kind == "compose" and meta.ref == "combo@1"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == meta.sha256
    va, vb = reg.resolve("a"), reg.resolve("b")
    assert [(p.ref, p.sha256, p.coefficient) for p in meta.parents] == [
        ("a@1", va.sha256, 0.5), ("b@1", vb.sha256, 2.0)]
    assert meta.provenance["terms"][1] == {"ref": "b@1", "coefficient": 2.0, "sha256": vb.sha256}
    records = reg.compositions()
    assert records[-1].output_kind == "vector" and records[-1].result_version_id is not None
    # The registered vector composes like any other.
    reg.compose("combo:1", base=base_dir, out=tmp_path / "m")


def test_register_requires_vector_only(reg: Registry, tmp_path: Path, base_dir: Path, vector_file: Path) -> None:
    reg.add("h", vector_file, base=base_dir)
    with pytest.raises(SpecError):
        reg.compose("h", base=base_dir, out=tmp_path / "o", register="x")


def test_compositions_recorded(reg: Registry, tmp_path: Path, base_dir: Path, vector_file: Path) -> None:
    reg.add("h", vector_file, base=base_dir)
    r1 = reg.compose("h:0.5", base=base_dir, out=tmp_path / "o1")
    r2 = reg.compose("h", base=base_dir, out=tmp_path / "o2", method="ties", density=0.5)
    recs = reg.compositions()
    assert [r.id for r in recs] == [r1.composition_id, r2.composition_id]
    assert recs[1].method == "ties" and recs[1].spec["density"] == 0.5
    assert recs[0].output_fingerprint == r1.output_fingerprint and recs[0].output_kind == "model"
    assert recs[0].spec["terms"][0]["ref"] == "h@1"
    assert recs[0].base_fingerprint == reg.resolve("h").base_fingerprint


def test_validation_happens_before_reading_tensors(reg: Registry, tmp_path: Path, base_dir: Path,
                                                   vector_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pvreg.registry.merge import methods as compose_mod

    reg.add("h", vector_file, base=base_dir)
    other = tmp_path / "other"
    make_base(other, seed=9)
    monkeypatch.setattr(compose_mod, "add_weighted", lambda *a, **k: pytest.fail("read tensor data"))
    with pytest.raises(BaseMismatchError) as exc:
        reg.compose("h", base=other, out=tmp_path / "o")
    fp = reg.resolve("h").base_fingerprint
    assert fp[:16] in str(exc.value) and reg.fingerprint(other)[:16] in str(exc.value)
    assert "h -> h@1" in str(exc.value)


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LlamaForCausalLM saved by transformers itself (config, generation config)."""
    model = build_llama(seed=0, attn=None, config=SMALL_LLAMA)
    d = tmp_path_factory.mktemp("hf") / "base"
    model.save_pretrained(d)
    return d


def test_sharded_output_loads_in_transformers_and_generates(reg: Registry, tmp_path: Path, hf_base: Path) -> None:
    from transformers import AutoModelForCausalLM

    base = load_file(str(hf_base / "model.safetensors"))
    names = sorted(base)
    make_vector(tmp_path / "h.safetensors", base, seed=1, names=names[::2], scale=0.05)
    make_vector(tmp_path / "s.safetensors", base, seed=2, names=names[1::3], scale=0.05)
    reg.add("helpful", tmp_path / "h.safetensors", base=hf_base)
    reg.add("harmless", tmp_path / "s.safetensors", base=hf_base)
    out = tmp_path / "merged"
    reg.compose("helpful:1 harmless:0.7", base=hf_base, out=out, shard_size="6KB")
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2
    assert all(s.name.endswith(f"-of-{len(shards):05d}.safetensors") for s in shards)
    assert (out / "generation_config.json").exists() and (out / "config.json").exists()
    ours = load_dir(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    state = model.state_dict()
    for n, t in ours.items():
        assert torch.equal(state[n], t), n
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                             pad_token_id=0)
    assert gen.shape == (1, 8)


def test_out_cannot_replace_the_base(reg: Registry, tmp_path: Path, base_dir: Path, vector_file: Path) -> None:
    reg.add("h", vector_file, base=base_dir)
    with pytest.raises(UnsafeOutputError, match="it is the base model"):
        reg.compose("h", base=base_dir, out=base_dir, force=True)
    assert (base_dir / "model.safetensors").exists()


def test_dtype_override_updates_config(reg: Registry, tmp_path: Path, base_dir: Path, vector_file: Path) -> None:
    reg.add("h", vector_file, base=base_dir)
    reg.compose("h", base=base_dir, out=tmp_path / "o", dtype="bf16")
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16"
    assert {t.dtype for t in load_dir(tmp_path / "o").values()} == {torch.bfloat16}


def test_gc_during_compose_keeps_the_live_staging_dir(reg: Registry, tmp_path: Path, base_dir: Path,
                                                      vector_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pvreg.registry.merge import methods as compose_mod

    reg.add("h", vector_file, base=base_dir)
    real = compose_mod.add_weighted
    seen: list[list[str]] = []

    def with_gc(*args, **kwargs):
        if not seen:
            report = reg.gc()
            seen.append(report.removed_temp)
            staged = [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
            assert len(staged) == 1 and staged[0].is_dir()
            markers = list((reg.settings.home / "pending").glob("*.json"))
            assert len(markers) == 1 and json.loads(markers[0].read_text())["path"] == str(staged[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(compose_mod, "add_weighted", with_gc)
    reg.compose("h", base=base_dir, out=tmp_path / "out")
    assert seen == [[]]
    assert no_leftovers(tmp_path) and not list((reg.settings.home / "pending").iterdir())


def test_streaming_linear_is_bit_identical_to_cast_then_fma(reg: Registry, tmp_path: Path) -> None:
    """The streaming engine (deltas multiply-added straight from bf16/f16/f32 views into one reused
    float32 buffer, slice by slice) gives the same bits as the plain-torch recipe it replaced:
    zeros, ``add_(δ.float(), alpha=w)`` per vector in (sha256, weight) order, ``+ base``, one cast.
    A tensor larger than one slice (with a ragged tail) and one smaller are both covered."""
    from safetensors.torch import save_file as save

    g = torch.Generator().manual_seed(7)
    base = {"big.weight": (torch.randn(1025, 1024 + 3, generator=g) * 0.02).to(torch.bfloat16),
            "small.weight": (torch.randn(33, 17, generator=g) * 0.02).to(torch.bfloat16)}
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    save(base, str(base_dir / "model.safetensors"))
    dtypes = {"va": torch.bfloat16, "vb": torch.float16, "vc": torch.float32}
    vecs = {}
    for name, dt in dtypes.items():
        vecs[name] = {n: (torch.randn(t.shape, generator=g) * 1e-3).to(dt) for n, t in base.items()}
        save(vecs[name], str(tmp_path / f"{name}.safetensors"))
        reg.add(name, tmp_path / f"{name}.safetensors", base=base_dir)
    coefs = {"va": 1.0, "vb": 0.7, "vc": -0.3}
    reg.compose([f"{n}:{c}" for n, c in coefs.items()], base=base_dir, out=tmp_path / "out")
    got = load_dir(tmp_path / "out")
    order = sorted(coefs, key=lambda n: (reg.resolve(n).sha256, coefs[n]))
    for n, b in base.items():
        acc = torch.zeros(b.shape, dtype=torch.float32)
        for v in order:
            acc.add_(vecs[v][n].to(torch.float32), alpha=coefs[v])
        acc.add_(b.to(torch.float32))
        expected = acc.to(torch.bfloat16)
        assert got[n].dtype == torch.bfloat16
        assert torch.equal(got[n].view(torch.int16), expected.view(torch.int16)), n


def test_device_path_matches_the_cpu_stream_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``--device cuda`` slice loop (staging buffers, transfer, add_weighted, + base, cast, copy back)
    run on the CPU device with small slices and unpinned buffers: same bits as plain-torch cast-then-FMA."""
    from pvreg.registry.merge import cuda

    monkeypatch.setattr(cuda, "GPU_SLICE_ELEMENTS", 1000)
    g = torch.Generator().manual_seed(3)
    base = (torch.randn(37, 91, generator=g) * 0.02).to(torch.bfloat16)
    deltas = [(torch.randn(37, 91, generator=g) * 1e-3).to(dt) for dt in (torch.bfloat16, torch.float16, torch.float32)]
    weights, order = [1.0, 0.7, -0.3], [2, 0, 1]
    got = cuda.merged_on_device("w", [d.reshape(-1) for d in deltas], weights, order, base, torch.bfloat16,
                                torch.float32, torch.device("cpu"), cuda.Staging(pin=False),
                                lambda name, t: t)
    acc = torch.zeros(base.shape)
    for i in order:
        acc.add_(deltas[i].float(), alpha=weights[i])
    acc.add_(base.float())
    assert torch.equal(got.view(torch.int16), acc.to(torch.bfloat16).view(torch.int16))
