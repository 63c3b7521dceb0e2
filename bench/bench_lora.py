"""LoRA export of a dense vector (issue #17): time, rank and error per rank policy, and mergekit-extract-lora.

    python bench/bench_lora.py [--layers 2] [--ranks 8,16,32,64,128,256] [--energies 0.5,0.8,0.9,0.95,0.99]
                               [--mergekit-ranks 32] [--skip-mergekit] [--skip-svd] [--workdir DIR] [--keep]
                               [--out FILE]

The vector has the tensor layout of a Qwen2.5-0.5B-like Llama (hidden 896,
intermediate 4864, 14 heads / 2 kv heads of 64, vocab 151936, tied
embeddings, q/k/v biases), bf16, in one safetensors file.  The model has 24
layers; the default ``--layers 2`` keeps a run near 10 minutes on 2 cores (each
rank policy is a separate full pass of float32 SVDs).  Every layer is built
the same way, so per-module ranks and errors do not depend on ``--layers``;
time and output size grow in proportion (``--layers 24`` for the whole 0.5B).

The delta is synthetic, and not Gaussian: an i.i.d. Gaussian matrix has a flat
spectrum, so every rank policy would look equally bad.  Each 2-D module is
φ = Σ_{i<k} σ_i a_i b_iᵀ + noise, with k = ``--signal-rank`` random directions,
σ_i ∝ (i+1)^-``--decay`` and isotropic Gaussian noise carrying ``--noise`` of
the energy (defaults: 256, 0.5, 10%), scaled to an element RMS of 1e-3.

Each policy is timed as a user would run it: one complete pass over the file
(stream every tensor with pvreg's safetensors reader, ``low_rank`` per 2-D
linear module, factors cast to bf16 and written with pvreg's streaming
writer).  No SVD is shared between policies.  The embedding (which not every
engine can take as LoRA; the exporter drops or carries it per ``--target``)
and the 1-D tensors are not factorised; the table says which share of ‖φ‖²
they hold.  "error (reported)" is ``overall_error`` of the float32 factors;
"error (bf16 file)" is re-measured from the written file against φ, with
plain torch.

mergekit-extract-lora (bench/requirements.txt) runs on the same delta: it
needs a base and a fine-tuned model directory, so the base is all zeros and the
fine-tuned model *is* the delta file (then ft − base = φ exactly in bf16);
embeddings are excluded and norms/biases skipped, so it factorises the same
modules.  Its time includes its process start-up (shown separately).

``--skip-svd`` leaves out the SVD-method section, which times, per module
shape, gesdd on φ as stored, gesdd on φᵀ, and ``torch.svd_lowrank`` at small
ranks with its error in excess of the optimum.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[1]
EMBED = "model.embed_tokens.weight"
T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[bench-lora {time.perf_counter() - T0:6.0f}s] {msg}", file=sys.stderr, flush=True)


def qwen_config(layers: int) -> dict:
    """A Qwen2ForCausalLM config with Qwen2.5-0.5B's widths (tied embeddings, q/k/v biases)."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": layers,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    }


def layout(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = hd * cfg["num_key_value_heads"]
    out: list[tuple[str, tuple[int, ...]]] = [(EMBED, (v, h))]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        out += [
            (f"{p}.self_attn.q_proj.weight", (h, h)),
            (f"{p}.self_attn.q_proj.bias", (h,)),
            (f"{p}.self_attn.k_proj.weight", (kv, h)),
            (f"{p}.self_attn.k_proj.bias", (kv,)),
            (f"{p}.self_attn.v_proj.weight", (kv, h)),
            (f"{p}.self_attn.v_proj.bias", (kv,)),
            (f"{p}.self_attn.o_proj.weight", (h, h)),
            (f"{p}.mlp.gate_proj.weight", (i, h)),
            (f"{p}.mlp.up_proj.weight", (i, h)),
            (f"{p}.mlp.down_proj.weight", (h, i)),
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.post_attention_layernorm.weight", (h,)),
        ]
    return [*out, ("model.norm.weight", (h,))]


def synthetic_delta(shape: tuple[int, ...], g: torch.Generator, args: argparse.Namespace) -> torch.Tensor:
    """A bf16 delta with a decaying spectrum (low-rank signal + noise), element RMS 1e-3; 1-D: plain noise."""
    import torch

    if len(shape) == 1:
        return (1e-3 * torch.randn(shape, generator=g)).to(torch.bfloat16)
    m, n = shape
    k = min(args.signal_rank, m, n)
    sigma = (torch.arange(k, dtype=torch.float32) + 1).pow(-args.decay)
    a = torch.randn(m, k, generator=g) / math.sqrt(m)
    b = torch.randn(k, n, generator=g) / math.sqrt(n)
    phi = (a * sigma) @ b
    del a, b
    signal2 = float(phi.square().sum())
    noise = torch.randn(m, n, generator=g)
    noise *= math.sqrt(args.noise / (1 - args.noise) * signal2 / float(noise.square().sum()))
    phi += noise
    del noise
    phi *= 1e-3 / math.sqrt(float(phi.square().mean()))
    return phi.to(torch.bfloat16)


def write_delta(path: Path, cfg: dict, args: argparse.Namespace) -> None:
    import torch

    from pvreg.registry.tensors.safetensors import StreamingWriter

    entries = [(n, "BF16", s) for n, s in layout(cfg)]
    g = torch.Generator().manual_seed(args.seed)
    with StreamingWriter(path, entries, {"format": "pt"}, digest=False) as w:
        for name, shape in layout(cfg):
            w.write(name, synthetic_delta(shape, g, args))
        w.commit()


def zeros_like_file(src: Path, dst: Path) -> None:
    """The same header, all-zero tensors: mergekit's base model."""
    with open(src, "rb") as f:
        head = f.read(8)
        (n,) = __import__("struct").unpack("<Q", head)
        header = head + f.read(n)
    size = src.stat().st_size
    with open(dst, "wb") as f:
        f.write(header)
        f.truncate(size)  # a sparse file of zeros


def factorised(name: str, shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and name != EMBED


@dataclass
class Row:
    policy: str
    ranks: list[int]
    error: float
    file_error: float
    seconds: float
    nbytes: int


def export_pass(delta: Path, out: Path, policy: dict) -> tuple[list[int], float, float, int]:
    """One complete export as a user would run it; returns (ranks, reported error, seconds, bytes)."""
    import torch

    from pvreg.registry.serving.lowrank import low_rank, overall_error
    from pvreg.registry.tensors.safetensors import SafetensorsFile, StreamingWriter

    t0 = time.perf_counter()
    f = SafetensorsFile(delta)
    factors: list[tuple[str, torch.Tensor]] = []
    ranks: list[int] = []
    parts: list[tuple[float, float]] = []
    try:
        for name, info in f.infos.items():
            if not factorised(name, info.shape):
                continue
            lr = low_rank(f.tensor(name), **policy)
            f.release(name)
            module = "base_model.model." + name.removesuffix(".weight")
            factors += [
                (f"{module}.lora_A.weight", lr.a.to(torch.bfloat16)),
                (f"{module}.lora_B.weight", lr.b.to(torch.bfloat16)),
            ]
            ranks.append(lr.rank)
            parts.append((lr.norm, lr.residual))
    finally:
        f.close()
    entries = [(n, "BF16", tuple(t.shape)) for n, t in factors]
    with StreamingWriter(out, entries, {"format": "pt"}, digest=False) as w:
        for n, t in factors:
            w.write(n, t)
        w.commit()
    seconds = time.perf_counter() - t0
    return ranks, overall_error(parts), seconds, out.stat().st_size


def measured_error(delta: Path, adapter: Path, prefix: str = "base_model.model.") -> tuple[float, int]:
    """‖φ − B A‖/‖φ‖ over the factorised modules, from the files, in float64 (independent of low_rank)."""
    from safetensors import safe_open

    num = den = 0.0
    found = 0
    with safe_open(str(delta), "pt") as d, safe_open(str(adapter), "pt") as a:
        keys = set(a.keys())
        for name in d.keys():  # noqa: SIM118 - safe_open has no __iter__
            phi = d.get_tensor(name)
            if not factorised(name, tuple(phi.shape)):
                continue
            module = prefix + name.removesuffix(".weight")
            phi64 = phi.double()
            den += float(phi64.square().sum())
            if f"{module}.lora_A.weight" in keys:
                found += 1
                approx = (
                    a.get_tensor(f"{module}.lora_B.weight").double() @ a.get_tensor(f"{module}.lora_A.weight").double()
                )
                num += float((phi64 - approx).square().sum())
            else:
                num += float(phi64.square().sum())
    return math.sqrt(num / den), found


def norm_shares(delta: Path) -> tuple[float, float, int]:
    """(embedding share of ‖φ‖², 1-D share, number of factorised modules)."""
    from safetensors import safe_open

    total = emb = one = 0.0
    modules = 0
    with safe_open(str(delta), "pt") as d:
        for name in d.keys():  # noqa: SIM118
            t = d.get_tensor(name).double()
            s = float(t.square().sum())
            total += s
            if name == EMBED:
                emb += s
            elif t.ndim == 1:
                one += s
            else:
                modules += 1
    return emb / total, one / total, modules


def run_mergekit(work: Path, delta: Path, cfg: dict, rank: int, log: Path) -> tuple[float | None, float, int, str]:
    """mergekit-extract-lora at ``rank`` on base = 0, ft = φ; (seconds or None, error, bytes, note)."""
    tool = shutil.which("mergekit-extract-lora") or str(Path(sys.executable).with_name("mergekit-extract-lora"))
    if not Path(tool).exists():
        return None, math.nan, 0, "not installed (pip install -r bench/requirements.txt)"
    base, ft, out = work / "mk-base", work / "mk-ft", work / f"mk-out-{rank}"
    for d, weights in ((base, None), (ft, delta)):
        if not d.exists():
            d.mkdir()
            (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
            if weights is None:
                zeros_like_file(delta, d / "model.safetensors")
            else:
                os.link(weights, d / "model.safetensors")
    cmd = [
        tool,
        "--model",
        ft,
        "--base-model",
        base,
        "--out-path",
        out,
        "--max-rank",
        rank,
        "--exclude-regex",
        "embed_tokens|lm_head",
        "--skip-undecomposable",
        "--no-copy-tokenizer",
        "--no-write-model-card",
    ]
    s = common.measure(cmd, log)
    if s.rc != 0:
        return None, math.nan, 0, f"exit {s.rc}: " + " | ".join(common_tail(log, 3))
    files = sorted(out.glob("*.safetensors"))
    if not files:
        return None, math.nan, 0, "wrote no .safetensors"
    err, found = measured_error(delta, files[0])
    note = f"{found} modules factorised"
    return s.wall, err, sum(p.stat().st_size for p in files), note


def common_tail(path: Path, n: int) -> list[str]:
    try:
        return [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()][-n:]
    except OSError:
        return []


def svd_methods(delta: Path, ranks: list[int]) -> list[str]:
    """Per distinct module shape: full gesdd as stored, gesdd of φᵀ, randomized SVD at small ranks."""
    import torch
    from safetensors import safe_open

    lines = [
        "| module shape | gesdd φ s | gesdd φᵀ s | "
        + " | ".join(f"svd_lowrank r={r} s (excess error)" for r in ranks)
        + " |",
        "|---|---|---|" + "---|" * len(ranks),
    ]
    seen: set[tuple[int, ...]] = set()
    with safe_open(str(delta), "pt") as d:
        for name in d.keys():  # noqa: SIM118
            t = d.get_tensor(name)
            shape = tuple(t.shape)
            if not factorised(name, shape) or shape in seen:
                continue
            seen.add(shape)
            x = t.float()
            t0 = time.perf_counter()
            s = torch.linalg.svd(x, full_matrices=False)[1]
            direct = time.perf_counter() - t0
            t0 = time.perf_counter()
            torch.linalg.svd(x.T, full_matrices=False)
            transposed = time.perf_counter() - t0
            s2 = s.double().square()
            norm = math.sqrt(float(s2.sum()))
            cells = []
            for r in ranks:
                q = min(r + 10, *shape)
                torch.manual_seed(0)
                t0 = time.perf_counter()
                u, sr, v = torch.svd_lowrank(x, q=q, niter=2)
                approx = (u[:, :r] * sr[:r]) @ v[:, :r].T
                seconds = time.perf_counter() - t0  # includes the direct residual it then needs
                err = float(torch.linalg.norm((x - approx).double())) / norm
                best = math.sqrt(float(s2[r:].sum())) / norm
                cells.append(f"{seconds:.2f} (+{(err - best) / best * 100:.1f}%)")
            lines.append(f"| {shape[0]}×{shape[1]} | {direct:.2f} | {transposed:.2f} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=2, help="decoder layers of the 24 (default 2: ~10 min on 2 cores)")
    ap.add_argument("--ranks", default="8,16,32,64,128,256")
    ap.add_argument("--energies", default="0.5,0.8,0.9,0.95,0.99")
    ap.add_argument("--signal-rank", type=int, default=256)
    ap.add_argument("--decay", type=float, default=0.5)
    ap.add_argument("--noise", type=float, default=0.1, help="share of each module's energy that is noise")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mergekit-ranks", default="32")
    ap.add_argument("--skip-mergekit", action="store_true")
    ap.add_argument("--skip-svd", action="store_true", help="leave out the SVD-method comparison")
    ap.add_argument("--svd-ranks", default="8,64")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", type=Path, help="also write the report (markdown) here")
    args = ap.parse_args()
    if not 0 < args.noise < 1:
        ap.error("--noise must be in (0, 1)")
    work = Path(tempfile.mkdtemp(prefix="pvreg-bench-lora-", dir=args.workdir or "/tmp"))
    try:
        report = run(args, work)
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


def run(args: argparse.Namespace, work: Path) -> str:
    machine = common.machine_description(work)
    for line in machine:
        say(line)
    cfg = qwen_config(args.layers)
    delta = work / "delta.safetensors"
    t0 = time.perf_counter()
    write_delta(delta, cfg, args)
    say(f"wrote the synthetic delta ({delta.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s")
    emb_share, one_share, modules = norm_shares(delta)
    params = sum(math.prod(s) for _, s in layout(cfg))

    policies = [(f"rank {r}", {"rank": r}) for r in map(int, args.ranks.split(","))]
    policies += [(f"energy {e}", {"energy": e}) for e in map(float, args.energies.split(","))]
    rows: list[Row] = []
    for label, policy in policies:
        say(f"export pass: {label}")
        out = work / "adapter_model.safetensors"
        ranks, err, seconds, nbytes = export_pass(delta, out, policy)
        file_err, _ = measured_error(delta, out)
        out.unlink()
        rows.append(Row(label, ranks, err, file_err, seconds, nbytes))

    mk_lines: list[str] = []
    if args.skip_mergekit:
        mk_lines.append("mergekit-extract-lora: skipped (--skip-mergekit).")
    else:
        log = work / "mergekit.log"
        tool = shutil.which("mergekit-extract-lora") or str(Path(sys.executable).with_name("mergekit-extract-lora"))
        start = common.measure([tool, "--help"], log).wall if Path(tool).exists() else math.nan
        for r in map(int, args.mergekit_ranks.split(",")):
            say(f"mergekit-extract-lora --max-rank {r}")
            seconds, err, nbytes, note = run_mergekit(work, delta, cfg, r, log)
            ours = next((row for row in rows if row.policy == f"rank {r}"), None)
            if seconds is None:
                mk_lines.append(f"| mergekit-extract-lora --max-rank {r} | - | - | - | - | {note} |")
                continue
            ratio = f"{seconds / ours.seconds:.2f}× pvreg's" if ours else "-"
            mk_lines.append(
                f"| mergekit-extract-lora --max-rank {r} | {err:.4f} | {seconds:.1f} | {ratio} | "
                f"{nbytes / 1e6:.1f} | {note}; its start-up (--help) alone {start:.1f} s |"
            )
    svd_lines = [] if args.skip_svd else svd_methods(delta, [int(r) for r in args.svd_ranks.split(",")])

    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    L = [f"## LoRA export of a dense vector: {params / 1e9:.3f}B-parameter Qwen2.5-0.5B-like layout, bf16", ""]
    L.append("Machine: " + "; ".join(machine) + f"; load average at end: {load_end}")
    L.append("")
    L.append(
        f"Vector: {args.layers} layers (hidden 896, intermediate 4864, 14/2 heads, vocab 151936, tied embeddings), "
        f"{delta.stat().st_size / 1e9:.2f} GB bf16. Synthetic delta with a decaying spectrum, NOT random Gaussian: per "
        f"2-D module a rank-{args.signal_rank} signal with σ_i ∝ (i+1)^-{args.decay:g} plus isotropic Gaussian noise "
        f"holding {args.noise:.0%} of the energy. {modules} linear modules are factorised; the embedding "
        f"({emb_share:.1%} of ‖φ‖²) and the 1-D tensors ({one_share:.2%}) are not (the exporter drops or carries "
        "them per target) and are outside the errors below."
    )
    L.append("")
    L.append(
        "Each row is one complete export pass as a user runs it (stream the file, one float32 SVD per module, "
        "factors cast to bf16 and written); nothing is shared between rows. One run each: on a shared machine "
        "(see the load averages) the times carry its noise."
    )
    L.append("")
    L.append(
        "| rank policy | mean rank | max rank | overall rel. error (reported) | error (bf16 file) | time s | output MB |"
    )
    L.append("|---|---|---|---|---|---|---|")
    for r in rows:
        L.append(
            f"| {r.policy} | {sum(r.ranks) / len(r.ranks):.1f} | {max(r.ranks)} | {r.error:.4f} | "
            f"{r.file_error:.4f} | {r.seconds:.1f} | {r.nbytes / 1e6:.1f} |"
        )
    L.append("")
    if mk_lines:
        if mk_lines[0].startswith("|"):
            L.append("| tool | error (file) | time s | ratio | output MB | notes |")
            L.append("|---|---|---|---|---|---|")
        L += mk_lines
        L.append("")
    if svd_lines:
        L.append(
            "SVD method per module shape (one run each; svd_lowrank with q = r + 10, niter = 2; its time "
            "includes the direct residual it needs, excess = its error over the optimal rank-r error):"
        )
        L.append("")
        L += svd_lines
    return "\n".join(L)


if __name__ == "__main__":
    main()
