"""CPU time per DPO optimizer step of ``pvreg train``: LoRA against full fine-tuning, side by side.

Issue #14 asks that a 135M-parameter Llama-architecture model be trainable on this
machine's CPU "in minutes, not hours".  This builds a *random* model with
SmolLM2-135M's configuration (hidden 576, 30 layers, 9 heads / 3 KV heads,
intermediate 1536, vocabulary 49152, tied embeddings; no download) and a word-level
tokenizer over the same vocabulary size, then runs pvreg's own ``train_pair`` (θ+ and
θ−, exactly what ``pvreg train`` runs) for every combination of batch size, max length
and thread count, once with ``method="lora"`` and once with ``method="full"``.

A step's time is measured by a trainer callback from ``on_step_begin`` to
``on_step_end`` (forward, backward and the optimizer update of one step), as CPU
time of the process (``time.process_time``: all threads together, so 2 threads that
halve the wall time show about the same CPU time) and as wall time; the figures
printed are medians over both runs' steps after each run's first (warm-up) step.
On a machine whose cores are shared the CPU time is the steadier figure: the wall
time also counts the time other processes held the cores.  The one-off costs around the steps (loading the model, TRL's reference
log-prob pass, saving θ±) are printed separately as the wall time of the whole pair.
Both methods of one row are measured in the same process, one after the other, so
their ratio is comparable even on a busy machine; absolute figures are not.

Run: python bench/bench_train.py [--batch-sizes 2 4] [--max-lengths 64 128] [--threads 1 2] [--steps 3]
     [--methods lora full] [--configs B:L:T ...] [--small]
     (--configs: just these batch:max_length:threads rows; --small: 2 layers of the same widths, a smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

#: SmolLM2-135M's architecture (HuggingFaceTB/SmolLM2-135M config.json), random weights.
SMOLLM2_135M: dict[str, Any] = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "yes", "no"]


def build_base(directory: Path, *, layers: int) -> int:
    """Write the random model and a word-level tokenizer; return the parameter count."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**SMOLLM2_135M, "num_hidden_layers": layers}))
    model.save_pretrained(directory)
    vocab = SPECIALS + [f"t{i}" for i in range(SMOLLM2_135M["vocab_size"] - len(SPECIALS))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def write_pairs(path: Path, n: int, prompt_tokens: int, seed: int) -> Path:
    """``n`` pairs whose prompt fills the max length but for the completion and EOS."""
    rng = random.Random(seed)
    words = [f"t{i}" for i in range(1000)]
    with path.open("w") as fh:
        for _ in range(n):
            prompt = " ".join(rng.choice(words) for _ in range(prompt_tokens))
            fh.write(json.dumps({"prompt": prompt, "chosen": " yes", "rejected": " no"}) + "\n")
    return path


def step_timer(times: list[tuple[float, float]]) -> Any:
    """An ``on_trainer`` hook adding a callback that appends (CPU s, wall s) of every optimizer step to ``times``."""
    from transformers import TrainerCallback

    class _Timer(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = (0.0, 0.0)
            self.first = True

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.t0 = (time.process_time(), time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            elapsed = (time.process_time() - self.t0[0], time.perf_counter() - self.t0[1])
            if self.first:  # warm-up: allocator, first kernels
                self.first = False
            else:
                times.append(elapsed)

    def hook(run: str, trainer: Any) -> None:
        trainer.add_callback(_Timer())

    return hook


def measure(base: Path, work: Path, method: str, batch: int, max_length: int, threads: int, steps: int) -> dict:
    from pvreg.registry.training import build_options, load_pairs, train_pair

    data = load_pairs(write_pairs(work / f"pairs-{batch}-{max_length}.jsonl", steps * batch, max_length - 4, 0))
    options = build_options(
        method=method,
        steps=steps,
        batch_size=batch,
        max_length=max_length,
        threads=threads,
        eval_fraction=0,
        lr=1e-4,
    )
    times: list[tuple[float, float]] = []
    out = Path(tempfile.mkdtemp(prefix=f"{method}-", dir=work))
    started = time.perf_counter()
    train_pair(base, data, options, out, on_trainer=step_timer(times))
    wall = time.perf_counter() - started
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return {
        "cpu": statistics.median(t[0] for t in times),
        "step": statistics.median(t[1] for t in times),
        "wall": wall,
        "samples": len(times),
    }


def _config(text: str) -> tuple[int, int, int]:
    batch, max_length, threads = (int(part) for part in text.split(":"))
    return batch, max_length, threads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--max-lengths", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--configs", type=_config, nargs="+", help="batch:max_length:threads rows (instead of the grid)")
    ap.add_argument("--methods", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per run (the first is not counted)")
    ap.add_argument("--small", action="store_true", help="2 layers instead of 30 (smoke test)")
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the first step of each run is warm-up)")
    configs = args.configs or [(b, m, t) for t in args.threads for b in args.batch_sizes for m in args.max_lengths]
    import torch

    with tempfile.TemporaryDirectory(prefix="pvreg-bench-train-") as tmp:
        work = Path(tmp)
        layers = 2 if args.small else SMOLLM2_135M["num_hidden_layers"]
        n_params = build_base(work / "base", layers=layers)
        print(f"model: random Llama, SmolLM2-135M config, {layers} layers, {n_params / 1e6:.1f}M parameters")
        print(
            f"torch {torch.__version__}, float32 on CPU; {args.steps} steps per run, θ+ and θ− each; per step: "
            "median after each run's first; CPU = process CPU time (all threads), wall = elapsed"
        )
        print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
        print()
        cols = [f"{m} CPU s/step" for m in args.methods] + [f"{m} wall s/step" for m in args.methods]
        cols += [f"{m} pair wall s" for m in args.methods]
        ratio = len(args.methods) == 2
        print("| batch | max_len | threads | " + " | ".join(cols) + (" | full / lora (CPU) |" if ratio else " |"))
        print("|" + "---|" * (3 + len(cols) + (1 if ratio else 0)))
        for batch, max_length, threads in configs:
            got = {m: measure(work / "base", work, m, batch, max_length, threads, args.steps) for m in args.methods}
            cells = [f"{got[m]['cpu']:.2f}" for m in args.methods]
            cells += [f"{got[m]['step']:.2f}" for m in args.methods]
            cells += [f"{got[m]['wall']:.1f}" for m in args.methods]
            tail = f" | {got['full']['cpu'] / got['lora']['cpu']:.2f}x |" if ratio else " |"
            print(f"| {batch} | {max_length} | {threads} | " + " | ".join(cells) + tail, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
