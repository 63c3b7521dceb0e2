"""export-lora (#17): vectors and mixes as PEFT LoRA adapters, checked against peft and compose.

Every expectation is computed independently here: peft loads (and merges) the adapter, compose
writes the dense model, the SVD errors come from ``torch.linalg.svd`` in the test, LoRAX's linear
merge is re-implemented from its definition (weighted sums of lora_A and of lora_B).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("transformers")
pytest.importorskip("peft")

from helpers.models import LORA_LLAMA, build_llama  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from pvreg import Registry  # noqa: E402
from pvreg.registry.errors import InvalidOptionError, LoraExportError  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]


def _base(tmp: Path) -> Path:
    d = tmp / "llama"
    build_llama(seed=0, attn=None, config=LORA_LLAMA).save_pretrained(d)
    return d


def _adapter(tmp: Path, base: Path, name: str, seed: int, **kwargs) -> Path:
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(**kwargs))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    out = tmp / name
    peft_model.save_pretrained(out)
    return out


def _dense_vector(tmp: Path, base: Path, *, seed: int, norms: bool = True) -> Path:
    """A dense delta: a decaying spectrum on every linear weight (so truncation matters), plus norms."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, t in load_file(str(base / "model.safetensors")).items():
        if t.dim() == 2 and "embed" not in name and "lm_head" not in name:
            d0, d1 = t.shape
            k = min(d0, d1)
            u, _ = torch.linalg.qr(torch.randn(d0, k, generator=g))
            v, _ = torch.linalg.qr(torch.randn(d1, k, generator=g))
            s = 0.05 * torch.exp(-torch.arange(k, dtype=torch.float32) / 3)
            tensors[name] = ((u * s) @ v.T).contiguous()
        elif t.dim() == 1 and norms:
            tensors[name] = torch.randn(t.shape, generator=g) * 0.01
    path = tmp / f"dense-{seed}.safetensors"
    save_file(tensors, str(path))
    return path


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().float() for k, v in model.state_dict().items()}


def _assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for k in want:
        scale = max(1.0, want[k].abs().max().item())
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=2e-6 * scale, msg=k)


def _merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    return _state(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload())


@pytest.fixture
def setup(tmp_path: Path):
    base = _base(tmp_path)
    single = _adapter(tmp_path, base, "single", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    pos = _adapter(
        tmp_path, base, "pos", 2, r=2, lora_alpha=4, target_modules=ATTN + ["up_proj"], rank_pattern={"o_proj": 3}
    )
    neg = _adapter(tmp_path, base, "neg", 3, r=2, lora_alpha=2, target_modules=ATTN + ["down_proj"], use_rslora=True)
    return tmp_path, base, single, pos, neg


@pytest.mark.usefixtures("backend")
def test_exact_mix_with_negative_coefficient_equals_compose(setup) -> None:
    tmp, base, single, pos, neg = setup
    with Registry.open() as reg:
        a = reg.add("a", lora=single, base=base)
        p = reg.add("p", positive=pos, negative=neg, base=base)
        assert a.factors_sha256 and p.factors_sha256 and a.factors_sha256 != p.factors_sha256
        result = reg.export_lora(["a:0.7", "p:-1.3"], out=tmp / "adapter")
        reg.compose(["a:0.7", "p:-1.3"], base=base, out=tmp / "composed")
        records = reg.compositions()
    report = result.report
    assert all(t.exact for t in report.terms)
    assert report.overall_error < 1e-6 and report.dropped == [] and report.carried == []
    # ranks add up: a's 4 plus p's 2+2 (3 for o_proj on the positive side)
    ranks = {m.tensor: m.rank for m in report.modules}
    assert ranks["model.layers.0.self_attn.q_proj.weight"] == 4 + 2 + 2
    assert ranks["model.layers.1.self_attn.o_proj.weight"] == 3 + 2
    assert ranks["model.layers.0.mlp.up_proj.weight"] == 2
    _assert_same_weights(_merged(base, tmp / "adapter"), _state(AutoModelForCausalLM.from_pretrained(tmp / "composed")))

    config = json.loads((tmp / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "llama" and config["modules_to_save"] is None
    for text in (tmp / "adapter" / "adapter_config.json", tmp / "adapter" / "export_report.json"):
        assert str(tmp) not in text.read_text()
    assert [r.kind for r in records] == ["lora", "compose"]
    assert records[0].output_kind == "lora" and records[0].output_fingerprint == result.output_fingerprint
    assert records[0].report is not None and records[0].report["overall_error"] == report.overall_error


def _svd_error(delta: torch.Tensor, r: int) -> float:
    s = torch.linalg.svdvals(delta.double())
    return math.sqrt(float((s[r:] ** 2).sum())) / math.sqrt(float((s**2).sum()))


def test_dense_svd_errors_rank_monotone_energy_rule_and_dropped_share(tmp_path: Path) -> None:
    base = _base(tmp_path)
    vec = _dense_vector(tmp_path, base, seed=5)
    phi = load_file(str(vec))
    eta = -0.8
    errors: dict[int, dict[str, float]] = {}
    with Registry.open() as reg:
        reg.add("d", vec, base=base)
        for r in (1, 2, 4, 8):
            res = reg.export_lora([f"d:{eta}"], out=tmp_path / f"r{r}", rank=r, non_lora="drop")
            errors[r] = {m.tensor: m.error for m in res.report.modules}
            for m in res.report.modules:
                assert m.rank == r and m.svd_rank == r and m.exact_rank == 0
                assert m.error == pytest.approx(_svd_error(eta * phi[m.tensor], r), rel=1e-3, abs=1e-6)
        energy = reg.export_lora(["d"], out=tmp_path / "e", energy=0.9, non_lora="drop").report
    for lo, hi in ((1, 2), (2, 4), (4, 8)):
        assert all(errors[hi][t] <= errors[lo][t] + 1e-7 for t in errors[lo])
    for m in energy.modules:
        s2 = torch.linalg.svdvals(phi[m.tensor].double()) ** 2
        cum = torch.cumsum(s2, 0) / s2.sum()
        assert cum[m.rank - 1] >= 0.9 and (m.rank == 1 or cum[m.rank - 2] < 0.9)
    ones = [n for n in phi if phi[n].dim() == 1]
    assert sorted(d.tensor for d in energy.dropped) == sorted(ones)
    total = math.sqrt(sum(float(t.double().square().sum()) for t in phi.values()))
    dropped = math.sqrt(sum(float(phi[n].double().square().sum()) for n in ones))
    assert energy.dropped_share == pytest.approx(dropped / total, rel=1e-6)
    assert energy.total_norm == pytest.approx(total, rel=1e-6)


def test_peft_generates_and_logits_stay_within_the_reported_error(tmp_path: Path) -> None:
    """Bound tested: max|ℓ_adapter − ℓ_compose| ≤ 2·ε·max|ℓ_compose − ℓ_base| + 1e-4.

    ε is the reported overall relative error ‖Δ − Δ_adapter‖/‖Δ‖.  To first order the logits move
    linearly with the weight delta, so the part of Δ the adapter misses (relative size ε) moves them
    by about ε times what Δ moves them; the factor 2 leaves room for the missing part pointing in
    more sensitive directions than Δ as a whole.  With full rank (ε ≈ 0) the logits agree to 1e-4.
    """
    base = _base(tmp_path)
    vec = _dense_vector(tmp_path, base, seed=7, norms=False)
    with Registry.open() as reg:
        reg.add("d", vec, base=base)
        reg.compose(["d:2"], base=base, out=tmp_path / "composed")
        reports = {r: reg.export_lora(["d:2"], out=tmp_path / f"a{r}", rank=r).report for r in (2, 32)}
    ids = torch.tensor([[1, 5, 9, 17, 33, 65, 2, 7]])
    with torch.no_grad():
        l_base = AutoModelForCausalLM.from_pretrained(base)(ids).logits
        l_comp = AutoModelForCausalLM.from_pretrained(tmp_path / "composed")(ids).logits
        moved = float((l_comp - l_base).abs().max())
        assert moved > 1e-3  # the vector does change the model
        for r, report in reports.items():
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / f"a{r}")
            l_ad = model(ids).logits
            assert float((l_ad - l_comp).abs().max()) <= 2 * report.overall_error * moved + 1e-4
            out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
            assert out.shape == (1, ids.shape[1] + 4)
    assert reports[2].overall_error > 1e-3 and reports[32].overall_error < 1e-5


def test_engine_targets_refuse_drop_and_rank_limit(tmp_path: Path) -> None:
    base = _base(tmp_path)
    vec = _dense_vector(tmp_path, base, seed=9)
    with Registry.open() as reg:
        reg.add("d", vec, base=base)
        with pytest.raises(LoraExportError, match=r"cannot be LoRA modules for vllm.*model\.norm\.weight"):
            reg.export_lora(["d"], out=tmp_path / "v0", rank=4, target="vllm")
        with pytest.raises(InvalidOptionError, match="modules_to_save"):
            reg.export_lora(["d"], out=tmp_path / "v0", rank=4, target="vllm", non_lora="carry")
        with pytest.raises(InvalidOptionError, match="rank"):
            reg.export_lora(["d"], out=tmp_path / "v0", target="vllm", non_lora="drop")
        assert not (tmp_path / "v0").exists()
        res = reg.export_lora(["d"], out=tmp_path / "v", energy=0.99, max_rank=3, target="vllm", non_lora="drop")
    config = json.loads((tmp_path / "v" / "adapter_config.json").read_text())
    tensors = load_file(str(tmp_path / "v" / "adapter_model.safetensors"))
    assert config["modules_to_save"] is None and config["rank_pattern"] == {}
    assert config["r"] == config["lora_alpha"] == res.report.uniform_rank <= 3
    assert all(".lora_A.weight" in k or ".lora_B.weight" in k for k in tensors)
    for k, t in tensors.items():
        assert not any(w in k for w in ("embed", "lm_head", "norm"))
        assert (t.shape[0] if ".lora_A." in k else t.shape[1]) == config["r"]
    assert any(m.recompressed for m in res.report.modules)
    assert all(m.rank <= 3 for m in res.report.modules)
    # the padded, uniform-rank adapter is still what PEFT merges to the reported factors
    merged = _merged(base, tmp_path / "v")
    plain = _state(AutoModelForCausalLM.from_pretrained(base))
    phi = load_file(str(vec))
    m = res.report.modules[0]
    got = merged[m.tensor] - plain[m.tensor]
    err = float((got - phi[m.tensor]).norm() / phi[m.tensor].norm())
    assert err == pytest.approx(m.error, rel=1e-3, abs=1e-6)


def test_carry_writes_full_weights_and_the_mix_stays_exact(setup) -> None:
    tmp, base, single, _, _ = setup
    norms = {
        "model.norm.weight": torch.linspace(-0.1, 0.1, 32),
        "model.layers.1.input_layernorm.weight": torch.full((32,), 0.05),
    }
    save_file(norms, str(tmp / "norms.safetensors"))
    with Registry.open() as reg:
        reg.add("a", lora=single, base=base)
        reg.add("n", tmp / "norms.safetensors", base=base)
        res = reg.export_lora(["a:1.5", "n:-2"], out=tmp / "adapter", non_lora="carry")  # no SVD needed
        reg.compose(["a:1.5", "n:-2"], base=base, out=tmp / "composed")
    assert sorted(res.report.carried) == sorted(norms) and res.report.overall_error < 1e-6
    config = json.loads((tmp / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["modules_to_save"]) == ["model.layers.1.input_layernorm", "model.norm"]
    _assert_same_weights(_merged(base, tmp / "adapter"), _state(AutoModelForCausalLM.from_pretrained(tmp / "composed")))


def test_lorax_adapters_and_payload_merge_to_the_mix(setup) -> None:
    tmp, base, single, pos, neg = setup
    dense = _dense_vector(tmp, base, seed=11, norms=False)
    with Registry.open() as reg:
        reg.add("a", lora=single, base=base)
        reg.add("p", positive=pos, negative=neg, base=base)
        reg.add("d", dense, base=base)
        res = reg.export_lora(["a:0.7", "p:-1.3", "d:0.5"], out=tmp / "x", rank=32, target="lorax")
    request = json.loads((tmp / "x" / "lorax-request.json").read_text())
    merged = request["parameters"]["merged_adapters"]
    assert request["parameters"]["adapter_source"] == "local" and merged["merge_strategy"] == "linear"
    assert merged["ids"] == ["adapters/a-v1", "adapters/p-v1", "adapters/d-v1"]
    assert merged["weights"] == pytest.approx([math.sqrt(0.7), math.sqrt(1.3), math.sqrt(0.5)])
    # LoRAX's linear merge, from its definition: Σ w·lora_A and Σ w·lora_B, separately.
    files = [load_file(str(tmp / "x" / i / "adapter_model.safetensors")) for i in merged["ids"]]
    configs = [json.loads((tmp / "x" / i / "adapter_config.json").read_text()) for i in merged["ids"]]
    assert len({c["r"] for c in configs}) == 1 and all(c["lora_alpha"] == c["r"] for c in configs)
    assert all(set(f) == set(files[0]) for f in files)
    plain = _state(AutoModelForCausalLM.from_pretrained(base))
    want = _merged(base, tmp / "x")  # the combined adapter at the top level
    for key in (k for k in files[0] if ".lora_A." in k):
        a = sum(w * f[key] for w, f in zip(merged["weights"], files, strict=True))
        b = sum(w * f[key.replace("lora_A", "lora_B")] for w, f in zip(merged["weights"], files, strict=True))
        tensor = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        torch.testing.assert_close(b @ a, want[tensor] - plain[tensor], rtol=1e-4, atol=1e-6)
    assert [x.ref for x in res.report.lorax] == ["a@1", "p@1", "d@1"]
    assert res.report.lorax[0].error < 1e-6 and res.report.lorax[2].error < 1e-5


def test_factors_are_verified_kept_by_gc_and_removed_with_their_version(tmp_path: Path) -> None:
    base = _base(tmp_path)
    single = _adapter(tmp_path, base, "single", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    with Registry.open() as reg:
        meta = reg.add("a", lora=single, base=base)
        path = reg.blobs.path(meta.factors_sha256)
        assert reg.gc().removed_blobs == [] and path.is_file() and reg.verify().ok
        data = bytearray(path.read_bytes())
        data[-3] ^= 0xFF
        path.chmod(0o644)
        path.write_bytes(bytes(data))
        problems = reg.verify().problems
        assert [p.ref for p in problems] == ["a@1"] and "LoRA factors blob content hashes" in problems[0].problem
        reg.rm("a@1")
        assert set(reg.gc(all_unreferenced=True).removed_blobs) == {meta.sha256, meta.factors_sha256}


# --- the Hub: factors travel with their vector -------------------------------------------------------------------------

TOKEN = "hf_dummy_token_123"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from helpers.hubserver import HubServer, isolate_hf_client

    isolate_hf_client(monkeypatch, tmp_path / "hf_home", token=TOKEN)
    with HubServer(tmp_path / "hubdata", tokens={TOKEN: "alice"}) as srv:
        yield srv


def test_push_pull_round_trips_the_factors_and_refuses_tampered_ones(setup, server) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi
    from pvreg.registry.errors import IntegrityError

    tmp, base, single, pos, neg = setup
    with Registry.open(tmp / "src") as src:
        a = src.add("a", lora=single, base=base)
        src.add("plain", _dense_vector(tmp, base, seed=3, norms=False), base=base)
        src.push(["a", "plain"], "alice/prefs", create=True, endpoint=server.url)
        factors_bytes = src.blobs.path(a.factors_sha256).read_bytes()
    files = HfApi(endpoint=server.url, token=TOKEN).list_repo_files("alice/prefs")
    assert "a/lora-factors.safetensors" in files and "plain/lora-factors.safetensors" not in files
    with Registry.open() as dst:
        pulled = {v.meta.name: v.meta for v in dst.pull("alice/prefs", endpoint=server.url).vectors}
        assert pulled["a"].factors_sha256 == a.factors_sha256 and pulled["plain"].factors_sha256 is None
        assert dst.blobs.path(a.factors_sha256).read_bytes() == factors_bytes and dst.verify().ok
        res = dst.export_lora(["a:-1"], out=tmp / "pulled-adapter")
        assert res.report.terms[0].exact and res.report.overall_error < 1e-6

    # A factors file that no longer reproduces its vector is refused, and nothing is registered.
    with Registry.open(tmp / "src") as src:
        fake = load_file(str(src.blobs.path(a.factors_sha256)))
    key = next(k for k in fake if k.endswith("::A"))
    fake[key] = fake[key] * 2
    save_file(fake, str(tmp / "forged.safetensors"))
    HfApi(endpoint=server.url, token=TOKEN).create_commit(
        "alice/prefs",
        [CommitOperationAdd("a/lora-factors.safetensors", str(tmp / "forged.safetensors"))],
        commit_message="tamper",
    )
    with Registry.open(tmp / "third") as third:
        with pytest.raises(IntegrityError, match="lora-factors.safetensors"):
            third.pull("alice/prefs", endpoint=server.url)
        assert third.list() == []


def test_pull_refuses_consistently_forged_factors(setup, server) -> None:
    """A repo owner can rewrite the factors file, pvreg.json and the embedded metadata together:
    the sha256s then agree, but the factors no longer reproduce the vector, and pull refuses."""
    from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
    from pvreg.registry.errors import IntegrityError
    from pvreg.registry.sources.ingest import CheckpointSource, write_blob
    from pvreg.registry.storage.blobstore import BlobStore
    from pvreg.registry.tensors.checkpoint import open_checkpoint
    from safetensors import safe_open

    tmp, base, single, _, _ = setup
    with Registry.open(tmp / "src") as src:
        a = src.add("a", lora=single, base=base)
        src.push(["a"], "alice/prefs", create=True, endpoint=server.url)
        fake = load_file(str(src.blobs.path(a.factors_sha256)))
    key = next(k for k in fake if k.endswith("::B"))
    fake[key] = fake[key] * 1.01
    save_file(fake, str(tmp / "forged.safetensors"))
    with open_checkpoint(tmp / "forged.safetensors") as ckpt:  # the canonical sha256 a forger would declare
        forged_sha = write_blob(CheckpointSource(ckpt, "forged"), BlobStore(tmp / "scratch")).sha256
    meta = json.loads(Path(hf_hub_download("alice/prefs", "a/pvreg.json", endpoint=server.url)).read_text())
    meta["factors_sha256"] = forged_sha
    (tmp / "pvreg.json").write_text(json.dumps(meta))
    blob = hf_hub_download("alice/prefs", "a/vector.safetensors", endpoint=server.url)
    with safe_open(blob, framework="pt") as f:
        md = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    embedded = json.loads(md["pvreg"])
    embedded["factors_sha256"] = forged_sha
    md["pvreg"] = json.dumps(embedded)
    save_file(tensors, str(tmp / "vector.safetensors"), metadata=md)
    HfApi(endpoint=server.url, token=TOKEN).create_commit(
        "alice/prefs",
        [
            CommitOperationAdd("a/lora-factors.safetensors", str(tmp / "forged.safetensors")),
            CommitOperationAdd("a/pvreg.json", str(tmp / "pvreg.json")),
            CommitOperationAdd("a/vector.safetensors", str(tmp / "vector.safetensors")),
        ],
        commit_message="forge",
    )
    with Registry.open() as dst:
        with pytest.raises(IntegrityError, match="do not reproduce the vector"):
            dst.pull("alice/prefs", endpoint=server.url)
        assert dst.list() == []


def test_trained_lora_vector_keeps_its_factors_and_exports_exactly(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from helpers.models import make_tiny_llama, write_jsonl, yes_no_pairs

    base = make_tiny_llama(tmp_path / "base")
    data = write_jsonl(tmp_path / "pairs.jsonl", yes_no_pairs(16, seed=1))
    with Registry.open() as reg:
        meta = reg.train("yes", base=base, data=data, method="lora", steps=2, lr=3e-2, batch_size=4, threads=1)
        assert meta.kind == "pair" and meta.factors_sha256 is not None
        res = reg.export_lora(["yes:-2"], out=tmp_path / "adapter")
        reg.compose(["yes:-2"], base=base, out=tmp_path / "composed")
    assert res.report.terms[0].exact and {m.exact_rank for m in res.report.modules} == {16}
    _assert_same_weights(_merged(base, tmp_path / "adapter"), _state(AutoModelForCausalLM.from_pretrained(tmp_path / "composed")))


def test_gpt2_conv1d_adapter_is_written_fan_in_fan_out(tmp_path: Path) -> None:
    from helpers.models import LORA_GPT2, build_gpt2

    base = tmp_path / "gpt2"
    build_gpt2(seed=0, config=LORA_GPT2).save_pretrained(base)
    adapter = _adapter(tmp_path, base, "g", 4, r=3, lora_alpha=6, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)
    with Registry.open() as reg:
        reg.add("g", lora=adapter, base=base)
        reg.export_lora(["g:-0.9"], out=tmp_path / "adapter")
        reg.compose(["g:-0.9"], base=base, out=tmp_path / "composed")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    _assert_same_weights(_merged(base, tmp_path / "adapter"), _state(AutoModelForCausalLM.from_pretrained(tmp_path / "composed")))
