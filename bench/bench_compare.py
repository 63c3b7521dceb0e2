"""`pvreg similarity` / `pvreg diff` against an I/O floor and a naive full-load computation, in one run.

Generates a synthetic bf16 Llama base of about ``--params`` parameters (bench/common.py), three
vectors over it — ``a`` random, ``b`` = 0.6·a + 0.8·noise (cosine ≈ 0.6 with a), ``c`` random over
the first half of the layers only — registers them, then times, each in a fresh child process
with its peak RSS: reading the three blobs once (the I/O floor), ``pvreg similarity a b c``,
``pvreg similarity a b c --by layer``, ``pvreg diff a b``, and a naive baseline that loads every
blob whole and computes the same whole-vector statistics in float64 (no pvreg code).  Prints a
markdown table with ratios from this one run and the largest |cosine difference| between pvreg
and the baseline.

Run: python bench/bench_compare.py [--params 2e8] [--repeats 3] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import generate_models, llama_config, llama_layout, measure  # noqa: E402


def make_vectors(root: Path, cfg: dict, seed: int = 0) -> dict[str, Path]:
    import torch
    from safetensors.torch import save_file

    layout = llama_layout(cfg)
    half = cfg["num_hidden_layers"] // 2 or 1
    g = torch.Generator().manual_seed(seed)
    vecs: dict[str, dict[str, torch.Tensor]] = {"a": {}, "b": {}, "c": {}}
    for name, shape in layout:
        a = torch.randn(shape, generator=g) * 1e-3
        vecs["a"][name] = a.to(torch.bfloat16)
        vecs["b"][name] = (0.6 * a + 0.8e-3 * torch.randn(shape, generator=g)).to(torch.bfloat16)
        layer = name.split(".layers.")[1].split(".")[0] if ".layers." in name else None
        if layer is not None and int(layer) < half:
            vecs["c"][name] = (torch.randn(shape, generator=g) * 1e-3).to(torch.bfloat16)
    out = {}
    for k, tensors in vecs.items():
        out[k] = root / f"{k}.safetensors"
        save_file(tensors, str(out[k]))
    return out


def naive_main(blobs: list[str], signs: list[int]) -> None:
    """Whole vectors in memory as float64 (what pvreg avoids): Gram matrix, touched share, sign agreement."""
    import torch
    from safetensors.torch import load_file

    states = [load_file(b) for b in blobs]
    names = sorted(set().union(*states))
    shapes = {n: next(s[n].shape for s in states if n in s) for n in names}
    flat = []
    for s, sign in zip(states, signs, strict=True):
        parts = [
            s[n].reshape(-1).to(torch.float64) * sign if n in s else torch.zeros(shapes[n].numel(), dtype=torch.float64)
            for n in names
        ]
        flat.append(torch.cat(parts))
    del states
    x = torch.stack(flat)
    del flat
    gram = x @ x.T
    nz = (x != 0).to(torch.float64)
    agree = (x > 0).to(torch.float64) @ (x > 0).to(torch.float64).T + (x < 0).to(torch.float64) @ (x < 0).to(
        torch.float64
    ).T
    both = nz @ nz.T
    norms = gram.diagonal().sqrt()
    cos = (gram / torch.outer(norms, norms)).tolist()
    print(json.dumps({"cosine": cos, "touched": (nz.mean(dim=1)).tolist(), "sign": (agree / both).tolist()}))


def floor_main(blobs: list[str]) -> None:
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    for p in blobs:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(view):
                pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=float, default=2e8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--child", choices=["naive", "floor"], help=argparse.SUPPRESS)
    ap.add_argument("--blobs", nargs="*", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--signs", nargs="*", type=int, default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "naive":
        return naive_main(args.blobs, args.signs)
    if args.child == "floor":
        return floor_main(args.blobs)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="pvreg-bench-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(args, work)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    cfg = llama_config(args.params)
    base = generate_models(work, cfg, [], shard_bytes=2 << 30)["base"]
    files = make_vectors(work, cfg)
    home = work / "registry"
    env = {**os.environ, "PVREG_HOME": str(home)}
    env.pop("PVREG_DATABASE_URL", None)
    pvreg = [sys.executable, "-c", "from pvreg.cli.main import main; main()"]
    for name, f in files.items():
        subprocess.run(
            [*pvreg, "add", name, "--vector", f, "--base", base], env=env, check=True, stdout=subprocess.DEVNULL
        )
        f.unlink()
    sys.path.insert(0, str(HERE.parent / "tests"))
    os.environ["PVREG_HOME"] = str(home)
    from pvreg import Registry

    with Registry.open(home) as reg:
        metas = [reg.resolve(n) for n in ("a", "b", "c")]
        blobs = [str(reg.blob_path(m.ref)) for m in metas]
    blob_bytes = sum(Path(b).stat().st_size for b in blobs)
    me = [sys.executable, str(Path(__file__).resolve())]
    cmds = {
        "I/O floor (read the 3 blobs once)": [*me, "--child", "floor", "--blobs", *blobs],
        "pvreg similarity a b c": [*pvreg, "similarity", "a", "b", "c", "--json"],
        "pvreg similarity a b c --by layer": [*pvreg, "similarity", "a", "b", "c", "--by", "layer", "--json"],
        "pvreg diff a b": [*pvreg, "diff", "a", "b", "--json"],
        "naive: whole vectors in float64": [
            *me,
            "--child",
            "naive",
            "--blobs",
            *blobs,
            "--signs",
            *[str(m.sign) for m in metas],
        ],
        "python -c 'import torch' (start-up in every pvreg run)": [sys.executable, "-c", "import torch"],
    }
    log = work / "bench.log"
    samples: dict[str, list] = {k: [] for k in cmds}
    for _ in range(max(1, args.repeats)):  # interleaved, so load drifts hit every command alike
        for k, cmd in cmds.items():
            s = measure(cmd, log, env=env)
            if s.rc != 0:
                raise SystemExit(f"{k} failed (rc {s.rc}); see {log}")
            samples[k].append(s)
    pv = json.loads(
        subprocess.run(cmds["pvreg similarity a b c"], env=env, capture_output=True, text=True, check=True).stdout
    )
    nv = json.loads(
        subprocess.run(
            cmds["naive: whole vectors in float64"], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    worst = max(
        abs(p - q)
        for pr, qr in zip(pv["whole"]["cosine"], nv["cosine"], strict=True)
        for p, q in zip(pr, qr, strict=True)
    )

    med = {k: statistics.median(s.wall for s in v) for k, v in samples.items()}
    rss = {k: max(s.maxrss for s in v) / 2**20 for k, v in samples.items()}
    floor = med["I/O floor (read the 3 blobs once)"]
    naive = med["naive: whole vectors in float64"]
    params = pv["whole"]["numel"]
    print(
        f"Model: hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, {params / 1e6:.0f}M entries "
        f"per vector; 3 bf16 blobs, {blob_bytes / 2**20:.0f} MiB; median of {args.repeats} runs, warm page cache.\n"
    )
    print("| measurement | median s | runs (s) | ratio | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for k, v in samples.items():
        runs = ", ".join(f"{s.wall:.2f}" for s in v)
        if k.startswith("pvreg"):
            ratio = f"{med[k] / floor:.2f}× floor, {naive / med[k]:.2f}× faster than naive"
        elif k.startswith("naive"):
            ratio = f"{med[k] / floor:.2f}× floor"
        else:
            ratio = "-"
        print(f"| {k} | {med[k]:.2f} | {runs} | {ratio} | {rss[k]:.0f} |")
    print(
        f"\npvreg vs naive: max |cosine difference| = {worst:.2e}; "
        f"peak RSS pvreg similarity / naive = {rss['pvreg similarity a b c'] / rss['naive: whole vectors in float64']:.2f}"
    )
    print(
        f"cosines (pvreg): a·b = {pv['whole']['cosine'][0][1]:.4f}, a·c = {pv['whole']['cosine'][0][2]:.4f}, "
        f"b·c = {pv['whole']['cosine'][1][2]:.4f}"
    )


if __name__ == "__main__":
    main()
