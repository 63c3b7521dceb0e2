"""Scoring overhead: pvreg's preference-pair scoring against a hand-written batched forward pass.

Target (issue #15): scoring 200 preference pairs costs at most 1.3× a
hand-written batched transformers forward pass over the same tokens, in the
same process.  Both sides tokenise the same 400 (prompt, completion) items,
group them into the same length-sorted, right-padded batches and run one
forward per batch under ``torch.inference_mode()``; the hand-written side
takes ``log_softmax`` over the full logits and gathers, pvreg does what
``registry/evaluation/scoring.py`` does.  Runs alternate (after a warm-up of
each on the longest pairs) and the medians are compared.  Without ``--model``
a tiny random Llama is built offline; ``--model DIR`` loads any causal LM
directory.

``--smollm2-135m`` builds a random model with SmolLM2-135M's configuration
(hidden 576, 30 layers, 9 heads / 3 KV heads, intermediate 1536, vocabulary
49152, tied embeddings) instead: the issue's reference size.

``--sweep-point`` also measures the second target: one sweep point (apply a
vector over every tensor in place, score, revert bit-exactly, store the
evaluation: ``registry/evaluation/sweep.py``'s ``_measure_point``) costs at most
the evaluation alone (``Measurer.measure``: scoring plus bootstrap intervals) + 10%.

Run: python bench/bench_scoring.py [--model DIR | --smollm2-135m] [--pairs 200] [--batch-size 16] [--repeats 5]
     [--device cpu] [--dtype float32] [--threads N] [--prompt-words LO:HI] [--completion-words LO:HI] [--sweep-point]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

#: Plain English words for prompts and completions when benchmarking a real model's tokenizer.
ENGLISH = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "help",
    "answer",
    "question",
    "careful",
    "safe",
    "honest",
    "short",
    "clear",
    "model",
    "vector",
    "preference",
]


#: SmolLM2-135M's architecture (random weights: only the shapes matter for speed).
SMOLLM2_135M = dict(
    hidden_size=576,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    intermediate_size=1536,
    vocab_size=49152,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def _span(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    return int(lo), int(hi or lo)


def make_pairs(vocab: list[str], n: int, seed: int, prompt: tuple[int, int] = (20, 60), completion=(10, 80)):
    from pvreg.registry.evaluation.evalsets import PreferencePair

    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))

    return [PreferencePair(text(*prompt), " " + text(*completion), " " + text(*completion)) for _ in range(n)]


def build_smollm(directory: Path, dtype) -> Path:
    """A random model with SmolLM2-135M's shapes plus a word-level tokenizer over ENGLISH, saved for pvreg."""
    import torch
    from helpers.models import SPECIALS, build_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).to(dtype).save_pretrained(directory)
    build_tokenizer(vocab=SPECIALS + ENGLISH).save_pretrained(directory)
    return directory


def sweep_point(model_dir: Path, model, tok, pairs, args, work: Path) -> None:
    """Time ``Measurer.measure`` alone against a whole sweep point (apply + measure + revert + store), alternating."""
    import json

    import torch
    from safetensors.torch import save_file

    from pvreg import Registry
    from pvreg.registry.evaluation.evalfiles import load_eval_sets
    from pvreg.registry.evaluation.evaluate import composition_target, resolve_composition
    from pvreg.registry.evaluation.measure import Measurer, ScoreOptions, evaluation_key
    from pvreg.registry.evaluation.sweep import _measure_point

    data = work / "pairs.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n" for p in pairs)
    )
    g = torch.Generator().manual_seed(1)
    # named_parameters lists a tied lm_head once, as the saved checkpoint does
    delta = {n: (torch.randn(p.shape, generator=g) * 1e-3).to(p.dtype) for n, p in model.named_parameters()}
    save_file(delta, str(work / "vector.safetensors"))
    del delta
    with Registry.open(work / "registry") as reg:
        reg.add("v", work / "vector.safetensors", base=model_dir)
        store = reg.store
        options = ScoreOptions(batch_size=args.batch_size, device=args.device)
        sets = load_eval_sets(pairs=[data])
        comp = resolve_composition(store, "v:0.5", model_dir)
        measurer = Measurer(model, tok, sets, options)
        target = composition_target(comp)
        key = evaluation_key(target, sets, options, kl=False)
        evals, points = [], []
        measurer.measure()  # warm-up
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            measurer.measure()
            evals.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _measure_point(store, measurer, comp.spec, key, target, sets, options, "bench")
            points.append(time.perf_counter() - t0)
    e, pt = statistics.median(evals), statistics.median(points)
    ratio = pt / e
    print(f"eval alone (score + bootstrap): {e:.4f} s  runs: {', '.join(f'{t:.4f}' for t in evals)}")
    print(f"sweep point (apply + eval + revert + store): {pt:.4f} s  runs: {', '.join(f'{t:.4f}' for t in points)}")
    print(f"ratio sweep point / eval: {ratio:.3f}x (target <= 1.10x: {'met' if ratio <= 1.10 else 'MISSED'})")


def hand_written(model, tok, pairs, batch_size: int, device) -> list[float]:
    """The straightforward batched way: pad, one forward, log_softmax over the vocabulary, gather, masked sum."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    items = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    prompts = tok([p for p, _ in items])["input_ids"]
    completions = tok([c for _, c in items], add_special_tokens=False)["input_ids"]
    seqs = [p + c for p, c in zip(prompts, completions, strict=True)]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out = [0.0] * len(seqs)
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            batch = order[s : s + batch_size]
            ids = pad_sequence([torch.tensor(seqs[i]) for i in batch], batch_first=True).to(device)
            lengths = torch.tensor([len(seqs[i]) for i in batch], device=device)[:, None]
            starts = torch.tensor([len(prompts[i]) for i in batch], device=device)[:, None]
            pos = torch.arange(ids.shape[1], device=device)[None, :]
            attn = (pos < lengths).long()
            logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            lp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            scored = (pos[:, 1:] >= starts) & (pos[:, 1:] < lengths)
            sums = (lp * scored).sum(dim=1).tolist()
            for row, i in enumerate(batch):
                out[i] = sums[row]
    return out


def pvreg_scores(model, tok, pairs, batch_size: int, device) -> list[float]:
    from pvreg.registry.evaluation.metrics import score_pairs

    chosen, rejected = score_pairs(model, tok, pairs, batch_size=batch_size, device=device, chat_template=False)
    return [s.logprob for s in chosen + rejected]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a causal LM directory (default: a tiny random Llama built here)")
    ap.add_argument("--smollm2-135m", action="store_true", help="a random model with SmolLM2-135M's configuration")
    ap.add_argument("--prompt-words", type=_span, default=(20, 60), help="LO:HI words per prompt")
    ap.add_argument("--completion-words", type=_span, default=(10, 80), help="LO:HI words per completion")
    ap.add_argument("--sweep-point", action="store_true", help="also time a sweep point against the evaluation")
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 gives stable figures on a busy machine)")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        if args.smollm2_135m:
            model_dir, vocab = build_smollm(Path(tmp) / "smollm2-135m", getattr(torch, args.dtype)), list(ENGLISH)
        elif args.model is None:
            from helpers.models import WORDS, save_tiny_lm

            model_dir, vocab = save_tiny_lm(Path(tmp) / "tiny"), WORDS
        else:
            model_dir, vocab = args.model, list(ENGLISH)
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, args.dtype))
        model.to(args.device).eval()
        pairs = make_pairs(vocab, args.pairs, args.seed, args.prompt_words, args.completion_words)
        report(model, tok, pairs, args)
        if args.sweep_point:
            sweep_point(Path(model_dir), model, tok, pairs, args, Path(tmp))
    return 0


def report(model, tok, pairs, args) -> None:
    """The scoring target: pvreg against the hand-written forward, alternating runs, medians side by side."""
    import torch

    n_tokens = sum(
        len(x)
        for x in tok([p.prompt for p in pairs] * 2)["input_ids"]
        + tok([p.chosen for p in pairs] + [p.rejected for p in pairs], add_special_tokens=False)["input_ids"]
    )
    sync = torch.cuda.synchronize if torch.device(args.device).type == "cuda" else (lambda: None)

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        result = fn(model, tok, pairs, args.batch_size, args.device)
        sync()
        return time.perf_counter() - t0, result

    # Warm-up on the longest pairs (the largest batch shapes, so allocators and kernels are warm) rather than a
    # whole pass each: at 135M on 2 CPU cores a pass takes minutes.  The values compared are every pair's.
    longest = sorted(pairs, key=lambda p: -(len(p.prompt) + max(len(p.chosen), len(p.rejected))))
    warm = longest[: 2 * args.batch_size]
    hand_written(model, tok, warm, args.batch_size, args.device)
    pvreg_scores(model, tok, warm, args.batch_size, args.device)
    ref: list[float] = []
    ours: list[float] = []
    times: dict[str, list[float]] = {"hand": [], "pvreg": []}
    for i in range(args.repeats):
        seconds, ref = timed(hand_written)
        times["hand"].append(seconds)
        seconds, ours = timed(pvreg_scores)
        times["pvreg"].append(seconds)
        print(f"run {i + 1}: hand-written {times['hand'][-1]:.4f} s, pvreg {times['pvreg'][-1]:.4f} s", flush=True)
    hand, mine = statistics.median(times["hand"]), statistics.median(times["pvreg"])
    ratio = mine / hand
    best = min(times["pvreg"]) / min(times["hand"])
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model: {'SmolLM2-135M config, random' if args.smollm2_135m else args.model or 'tiny random Llama'} ({params / 1e6:.2f}M params, {args.dtype}, {args.device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )
    print(
        f"pairs: {args.pairs} ({2 * args.pairs} items, {n_tokens} tokens), batch size {args.batch_size}, "
        f"median of {args.repeats}"
    )
    print(f"hand-written: {hand:.4f} s  runs: {', '.join(f'{t:.4f}' for t in times['hand'])}")
    print(f"pvreg:        {mine:.4f} s  runs: {', '.join(f'{t:.4f}' for t in times['pvreg'])}")
    print(f"ratio pvreg / hand-written: {ratio:.2f}x (target <= 1.30x: {'met' if ratio <= 1.3 else 'MISSED'})")
    print(f"ratio of the fastest runs: {best:.2f}x")
    print(f"max |pvreg - hand-written| log-prob: {max(abs(a - b) for a, b in zip(ours, ref, strict=True)):.3g}")


if __name__ == "__main__":
    sys.exit(main())
