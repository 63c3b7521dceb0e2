"""Helpers for bench/run.py: synthetic checkpoints, the I/O floor, the naive merge,
output comparison and per-child measurements.

Also runnable as a script for the child processes the harness times::

    python bench/common.py floor --read F... --write-dir DIR --write-sizes N... [--fsync] [--direct]
    python bench/common.py naive --base DIR --vector FILE:W ... --out DIR

Nothing here imports pvreg: the baselines must not share its code.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BUF_BYTES = 16 << 20

# --------------------------------------------------------------------------- #
# Synthetic Llama checkpoints
# --------------------------------------------------------------------------- #

VOCAB = 32000


def _width_for(params: float) -> int:
    """Hidden size of a Llama of about ``params`` parameters (then layers fill the rest)."""
    for limit, hidden in ((0.03e9, 256), (0.2e9, 512), (1.5e9, 1024), (6e9, 2048)):
        if params < limit:
            return hidden
    return 4096


def llama_config(params: float, hidden: int | None = None) -> dict:
    """A LlamaForCausalLM config of about ``params`` parameters.

    ``hidden`` pins the width (so a second, smaller size differs only in depth and
    the largest tensor is the same); otherwise it is chosen from ``params``.
    """
    h = hidden or _width_for(params)
    heads = max(1, h // 64)
    kv = max(1, heads // 2)
    inter = 4 * h
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": inter,
        "num_hidden_layers": 1,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": h // heads,
        "vocab_size": VOCAB,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }
    fixed = count_params({**cfg, "num_hidden_layers": 0})
    per_layer = count_params({**cfg, "num_hidden_layers": 1}) - fixed
    cfg["num_hidden_layers"] = max(1, round((params - fixed) / per_layer))
    return cfg


def llama_layout(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes in the order transformers saves a Llama."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["head_dim"] * cfg["num_key_value_heads"]
    q = cfg["head_dim"] * cfg["num_attention_heads"]
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        out += [
            (f"{p}.self_attn.q_proj.weight", (q, h)),
            (f"{p}.self_attn.k_proj.weight", (kv, h)),
            (f"{p}.self_attn.v_proj.weight", (kv, h)),
            (f"{p}.self_attn.o_proj.weight", (h, q)),
            (f"{p}.mlp.gate_proj.weight", (i, h)),
            (f"{p}.mlp.up_proj.weight", (i, h)),
            (f"{p}.mlp.down_proj.weight", (h, i)),
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.post_attention_layernorm.weight", (h,)),
        ]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return out


def count_params(cfg: dict) -> int:
    return sum(math.prod(s) for _, s in llama_layout(cfg))


def split_shards(layout: list[tuple[str, tuple[int, ...]]], max_bytes: int, itemsize: int = 2):
    """Greedy, in save order, like transformers' ``max_shard_size``."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in layout:
        nbytes = math.prod(shape) * itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def _header(entries: list[tuple[str, tuple[int, ...]]], code: str = "BF16", itemsize: int = 2) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape in entries:
        n = math.prod(shape) * itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-(len(body) + 8) % 8)
    return struct.pack("<Q", len(body)) + body


def _seed(*parts: object) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def generate_models(
    root: Path, cfg: dict, variants: list[str], *, shard_bytes: int, delta_scale: float = 1e-3, seed: int = 0
) -> dict[str, Path]:
    """Write ``root/base`` and ``root/<variant>`` (base + a random low-magnitude delta), bf16.

    Streams one tensor at a time into every file (headers are fixed up front), so
    memory stays at a few copies of the largest tensor whatever the model size.
    """
    import torch

    layout = llama_layout(cfg)
    shards = split_shards(layout, shard_bytes)
    models = ["base", *variants]
    dirs = {m: root / m for m in models}
    total = sum(math.prod(s) * 2 for _, s in layout)
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        weight_map = {}
        for k, shard in enumerate(shards, 1):
            fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            weight_map |= {n: fname for n, _ in shard}
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    g = torch.Generator()
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        handles = {m: open(dirs[m] / fname, "wb") for m in models}  # noqa: SIM115 - a dict of files: closed in the finally below
        try:
            header = _header(shard)
            for f in handles.values():
                f.write(header)
            for name, shape in shard:
                g.manual_seed(_seed(seed, "base", name))
                if name.endswith("norm.weight"):
                    base32 = 1.0 + 0.02 * torch.randn(shape, generator=g)
                else:
                    base32 = 0.02 * torch.randn(shape, generator=g)
                base = base32.to(torch.bfloat16)
                del base32
                handles["base"].write(base.view(torch.uint8).numpy().data)
                base32 = base.float()
                for m in variants:
                    g.manual_seed(_seed(seed, m, name))
                    ft = torch.randn(shape, generator=g).mul_(delta_scale).add_(base32).to(torch.bfloat16)
                    handles[m].write(ft.view(torch.uint8).numpy().data)
                    del ft
                del base, base32
        finally:
            for f in handles.values():
                f.close()
    return dirs


def weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return [model_dir / n for n in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return sorted(model_dir.glob("*.safetensors"))


# --------------------------------------------------------------------------- #
# Page cache and measurement
# --------------------------------------------------------------------------- #


def read_all(files: list[Path], buf: bytearray | None = None) -> int:
    """Read every byte of ``files`` once with readinto into a reused buffer."""
    buf = buf or bytearray(BUF_BYTES)
    view = memoryview(buf)
    total = 0
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while True:
                n = f.readinto(view)
                if not n:
                    break
                total += n
    return total


def sync() -> None:
    os.sync()


def drop_caches() -> bool:
    """Flush dirty pages and drop the page cache (root only); False when not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


@dataclass
class Sample:
    wall: float
    maxrss: int  # bytes
    rc: int
    cpu: float = float("nan")  # user + system seconds of the child (all its threads)


_WRAPPER = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "_, st, ru = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write(f'{ru.ru_maxrss} {ru.ru_utime} {ru.ru_stime}')\n"
    "sys.exit(os.waitstatus_to_exitcode(st))\n"
)


def measure(cmd: list, log: Path, *, env: dict | None = None, cwd: Path | None = None) -> Sample:
    """Run ``cmd`` as a child; return its wall time, CPU time and the OS's peak RSS of that process alone.

    Linux carries ``ru_maxrss`` across fork and exec, so a child forked from this
    (large) harness would report the harness's RSS.  The tool is therefore started
    by a small wrapper (GNU ``/usr/bin/time -f %M``, else a bare ``python -S``
    fork/exec/wait4) and the peak RSS is the one that wrapper reads from wait4.
    """
    cmd = [str(c) for c in cmd]
    rss_file = log.with_name(".maxrss")
    if Path("/usr/bin/time").exists():
        wrapped = ["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss_file), *cmd]
    else:
        wrapped = [sys.executable, "-S", "-c", _WRAPPER, str(rss_file), *cmd]
    with open(log, "ab") as out:
        out.write(("\n$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        t0 = time.perf_counter()
        proc = subprocess.run(
            wrapped, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, check=False
        )  # rc goes in the Sample
        wall = time.perf_counter() - t0
    try:  # the last line: GNU time puts "Command exited with non-zero status N" before it
        rss, user, system = rss_file.read_text().splitlines()[-1].split()
        maxrss_kib, cpu = int(rss), float(user) + float(system)
    except (OSError, ValueError, IndexError):
        maxrss_kib, cpu = -1, float("nan")
    return Sample(wall, maxrss_kib * 1024, proc.returncode, cpu)


def dir_bytes(files: list[Path]) -> int:
    return sum(p.stat().st_size for p in files)


# --------------------------------------------------------------------------- #
# Child programs: the I/O floor and the naive merge
# --------------------------------------------------------------------------- #


def floor_main(read: list[str], write_dir: str, sizes: list[int], do_fsync: bool, direct: bool = False) -> None:
    """Read every input byte once, then write files of the output's sizes (fsynced like pvreg).

    ``direct``: write with ``O_DIRECT`` from one page-aligned buffer (the last block zero-padded, the file
    truncated to its size), the way pvreg writes large files; the floor is then the faster of the two.
    """
    buf = bytearray(BUF_BYTES)
    read_all([Path(p) for p in read], buf)
    out = Path(write_dir)
    out.mkdir(parents=True, exist_ok=True)
    view = memoryview(buf)
    for k, size in enumerate(sizes):
        path = out / f"out-{k:05d}.bin"
        if direct:
            _direct_write(path, size)
            continue
        with open(path, "wb", buffering=0) as f:
            left = size
            while left:
                left -= f.write(view[: min(left, len(view))])
            if do_fsync:
                os.fsync(f.fileno())
    if do_fsync:
        fd = os.open(out, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def _direct_write(path: Path, size: int, chunk: int = 8 << 20) -> None:
    import mmap

    aligned = mmap.mmap(-1, chunk)
    aligned.write(b"\x01" * chunk)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    try:
        left = size
        while left > 0:
            n = min(chunk, -(-left // 4096) * 4096)
            os.write(fd, memoryview(aligned)[:n])
            left -= n
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
        aligned.close()


def naive_main(base: str, vectors: list[tuple[str, float]], out: str) -> None:
    """Load every state dict fully, add in float32, cast to the base dtype, save like the base."""
    from safetensors.torch import load_file, save_file

    base_dir, out_dir = Path(base), Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = weight_files(base_dir)
    state = {}
    owner = {}
    for f in files:
        part = load_file(str(f))
        owner |= {n: f.name for n in part}
        state |= part
    deltas = [(load_file(p), w) for p, w in vectors]
    merged = {}
    for name, t in state.items():
        acc = t.float()
        for d, w in deltas:
            if name in d:
                acc.add_(d[name].float(), alpha=w)
        merged[name] = acc.to(t.dtype)
        del acc
    for f in files:
        save_file(
            {n: merged[n] for n in merged if owner[n] == f.name}, str(out_dir / f.name), metadata={"format": "pt"}
        )
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        (out_dir / index.name).write_text(index.read_text())
    (out_dir / "config.json").write_text((base_dir / "config.json").read_text())


# --------------------------------------------------------------------------- #
# Comparing outputs
# --------------------------------------------------------------------------- #


@dataclass
class Comparison:
    tensors: int
    worst_rel: float  # max over tensors of max|a-b| / max|b|
    worst_name: str
    over_1ulp: int  # elements where |a-b| exceeds one bf16 ulp of b
    elements: int
    delta_rel: float  # ||a-b|| / ||b - base||: error relative to the applied delta
    missing: list[str]


def _tensor_map(model_dir: Path) -> dict[str, Path]:
    from safetensors import safe_open

    out = {}
    for f in weight_files(model_dir):
        with safe_open(str(f), framework="pt") as h:
            out |= {n: f for n in h.keys()}  # noqa: SIM118 - safe_open is no dict: it has keys() but no __iter__
    return out


def compare_models(a_dir: Path, b_dir: Path, base_dir: Path | None = None) -> Comparison:
    """Tensor by tensor, ``a`` against the reference ``b`` (both any float dtype)."""
    import torch
    from safetensors import safe_open

    a_map, b_map, base_map = _tensor_map(a_dir), _tensor_map(b_dir), _tensor_map(base_dir) if base_dir else {}
    missing = sorted(set(a_map) ^ set(b_map))
    worst, worst_name, over, elements = 0.0, "", 0, 0
    err2 = delta2 = 0.0
    for name in sorted(set(a_map) & set(b_map)):
        with safe_open(str(a_map[name]), framework="pt") as fa, safe_open(str(b_map[name]), framework="pt") as fb:
            a = fa.get_tensor(name).float()
            b = fb.get_tensor(name).float()
        diff = (a - b).abs_()
        mag = float(b.abs().max()) or 1.0
        rel = float(diff.max()) / mag
        if rel > worst or not worst_name:
            worst, worst_name = rel, name
        _, exp = torch.frexp(b)
        ulp = torch.ldexp(torch.ones_like(b), exp - 8)  # bf16: 8 significant bits
        over += int((diff > ulp).sum())
        elements += b.numel()
        err2 += float(diff.double().pow(2).sum())
        if name in base_map:
            with safe_open(str(base_map[name]), framework="pt") as fz:
                z = fz.get_tensor(name).float()
            delta2 += float((b - z).double().pow(2).sum())
        del a, b, diff, ulp
    delta_rel = math.sqrt(err2 / delta2) if delta2 > 0 else float("nan")
    return Comparison(len(set(a_map) & set(b_map)), worst, worst_name, over, elements, delta_rel, missing)


@dataclass
class ExactCheck:
    elements: int
    over: int  # elements farther from the exact value than one bf16 rounding allows
    worst_ulps: float  # max |pvreg - exact| in bf16 ulps of the exact value (cancellation aside)


def check_exact(out_dir: Path, base_dir: Path, vectors: list[tuple[Path, float]]) -> ExactCheck:
    """pvreg's output against θ = base + Σ w·φ computed here independently in float64.

    Allowed per element: one bf16 rounding of the exact value (an ulp, generously:
    round-to-nearest is half of one) plus the float32 accumulation error bound
    (4 roundings of 2^-24 relative to |base| + Σ|w·φ|, which only matters where
    the terms cancel).  ``over`` must be 0.
    """
    import torch
    from safetensors import safe_open

    out_map, base_map = _tensor_map(out_dir), _tensor_map(base_dir)
    handles = [safe_open(str(p), framework="pt") for p, _ in vectors]
    over = elements = 0
    worst = 0.0
    for name in sorted(base_map):
        with safe_open(str(base_map[name]), framework="pt") as fb, safe_open(str(out_map[name]), framework="pt") as fo:
            b = fb.get_tensor(name).double()
            got = fo.get_tensor(name).double()
        exact = b.clone()
        mag = b.abs()
        for h, (_, w) in zip(handles, vectors, strict=True):
            if name in h.keys():  # noqa: SIM118 - safe_open has keys() but no __contains__
                term = h.get_tensor(name).double().mul_(float(torch.tensor(w, dtype=torch.float32)))
                exact.add_(term)
                mag.add_(term.abs_())
                del term
        _, exp = torch.frexp(exact.float())
        ulp = torch.ldexp(torch.ones_like(exact), exp - 8)  # bf16: 8 significant bits
        err = (got - exact).abs_()
        allowed = ulp + mag.mul_(4 * 2.0**-24)
        over += int((err > allowed).sum())
        worst = max(worst, float((err / ulp).max()))
        elements += exact.numel()
        del b, got, exact, mag, ulp, err, allowed
    return ExactCheck(elements, over, worst)


def sha256_seconds(nbytes: int, buf: bytearray) -> float:
    """One core's time to sha256 ``nbytes`` already in memory (the hash pvreg computes for a fingerprint)."""
    import hashlib

    view, h, left = memoryview(buf), hashlib.sha256(), nbytes
    t = time.perf_counter()
    while left > 0:
        n = min(left, len(view))
        h.update(view[:n])
        left -= n
    return time.perf_counter() - t


def output_digest(model_dir: Path) -> str:
    """sha256 over every weight file of a model directory, in name order."""
    import hashlib

    h = hashlib.sha256()
    for f in weight_files(model_dir):
        with open(f, "rb") as fh:
            while chunk := fh.read(BUF_BYTES):
                h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- #
# Machine description
# --------------------------------------------------------------------------- #


def machine_description(workdir: Path) -> list[str]:
    import platform

    def first(path: str, key: str) -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    mem_kb = first("/proc/meminfo", "MemTotal").split()[0]
    versions = []
    for mod in ("torch", "safetensors", "transformers", "mergekit", "pvreg"):
        try:
            from importlib.metadata import version

            versions.append(f"{mod} {version(mod)}")
        except Exception:
            versions.append(f"{mod} (not installed)")
    fs = subprocess.run(["df", "-T", str(workdir)], capture_output=True, text=True, check=False).stdout.splitlines()[
        -1:
    ]  # best effort
    return [
        f"CPU: {first('/proc/cpuinfo', 'model name')}, nproc {os.cpu_count()} (usable {len(os.sched_getaffinity(0))})",
        f"RAM: {int(mem_kb) / 2**20:.1f} GiB",
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"kernel: {platform.release()}; workdir filesystem: {' '.join(fs[0].split()[:2]) if fs else '?'}",
        f"Python {platform.python_version()}; " + "; ".join(versions),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("floor")
    f.add_argument("--read", nargs="+", required=True)
    f.add_argument("--write-dir", required=True)
    f.add_argument("--write-sizes", nargs="+", type=int, required=True)
    f.add_argument("--fsync", action="store_true")
    f.add_argument("--direct", action="store_true", help="write with O_DIRECT (always fsynced)")
    n = sub.add_parser("naive")
    n.add_argument("--base", required=True)
    n.add_argument("--vector", nargs="+", required=True, help="FILE:WEIGHT")
    n.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.cmd == "floor":
        floor_main(args.read, args.write_dir, args.write_sizes, args.fsync, args.direct)
    else:
        vecs = [(v.rsplit(":", 1)[0], float(v.rsplit(":", 1)[1])) for v in args.vector]
        naive_main(args.base, vecs, args.out)


if __name__ == "__main__":
    sys.exit(main())
