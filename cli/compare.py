"""``pvreg similarity`` and ``pvreg diff``: argument parsing and rendering only.

All work is :meth:`Registry.similarity` / :meth:`Registry.diff` (torch loads there, not
at CLI start-up).  ``--json`` prints the report models exactly; text output is tables
whose numbers use fixed formats, so columns line up.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Annotated

import typer

from pvreg.cli.output import emit_json, say, table
from pvreg.cli.state import open_registry
from pvreg.cli.vectors import JsonOpt, RefArg
from pvreg.schemas.evaluation import DiffReport, GroupStats, SimilarityReport


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def similarity(
    ctx: typer.Context,
    refs: Annotated[
        list[str],
        typer.Argument(help="Two or more vectors: NAME, NAME@N, NAME@ALIAS or sha256:HEX.", show_default=False),
    ],
    by: Annotated[
        str | None, typer.Option("--by", help="Also per group: tensor, layer or module-type.", show_default=False)
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a heatmap of the cosine matrix (.png, .svg or .pdf).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --plot file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Cosine similarity, norms, sign agreement and touched share of vectors (streamed, float64)."""
    with open_registry(ctx) as reg:
        report = reg.similarity(refs, by=by, plot=plot, force=force)
    if as_json:
        emit_json(report)
        return
    render_similarity(report)
    if plot is not None:
        say()
        say(f"wrote {plot}")


def render_similarity(report: SimilarityReport) -> None:
    """The whole-vector matrices, then one row per group (a column per vector pair)."""
    whole = report.whole
    n = len(report.vectors)
    ids = [str(i + 1) for i in range(n)]
    say(f"{n} vectors, {whole.numel} entries (a tensor a vector lacks counts as zeros)")
    table(
        ["#", "VECTOR", "NORM", "TOUCHED", *(f"COS {k}" for k in ids)],
        [
            [ids[i], report.vectors[i], f"{whole.norms[i]:.4g}", _pct(whole.touched[i]), *map(_num, whole.cosine[i])]
            for i in range(n)
        ],
    )
    say()
    say("sign agreement on the entries both vectors touch")
    table(
        ["#", "VECTOR", *(f"SIGN {k}" for k in ids)],
        [[ids[i], report.vectors[i], *map(_pct, whole.sign_agreement[i])] for i in range(n)],
    )
    if report.group_by is None:
        return
    say()
    say(f"by {report.group_by} (COS/SIGN i-j: pair of vectors #i and #j)")
    pairs = list(combinations(range(n), 2))
    table(
        [
            report.group_by.upper(),
            "ENTRIES",
            *(f"NORM {k}" for k in ids),
            *(f"COS {i + 1}-{j + 1}" for i, j in pairs),
            *(f"SIGN {i + 1}-{j + 1}" for i, j in pairs),
        ],
        [_group_row(g, pairs) for g in report.groups],
    )


def _group_row(g: GroupStats, pairs: Sequence[tuple[int, int]]) -> list[str]:
    return [
        g.group,
        str(g.numel),
        *(f"{x:.4g}" for x in g.norms),
        *(_num(g.cosine[i][j]) for i, j in pairs),
        *(_pct(g.sign_agreement[i][j]) for i, j in pairs),
    ]


def diff(ctx: typer.Context, ref_a: RefArg, ref_b: RefArg, as_json: JsonOpt = False) -> None:
    """Per-tensor change from REF_A to REF_B (‖b−a‖/‖a‖, cosine), tensors only in one, and a summary."""
    with open_registry(ctx) as reg:
        report = reg.diff(ref_a, ref_b)
    if as_json:
        emit_json(report)
        return
    render_diff(report)


def render_diff(report: DiffReport) -> None:
    s = report.summary
    say(f"diff {report.a} -> {report.b}")
    say(f"overall: |a|={s.norm_a:.4g}  |b|={s.norm_b:.4g}  |b-a|/|a|={_num(s.rel_change)}  cosine={_num(s.cosine)}")
    say(
        f"tensors: {s.tensors_compared} compared ({s.tensors_changed} changed, {s.tensors_identical} identical), "
        f"{s.only_in_a} only in {report.a}, {s.only_in_b} only in {report.b}, {s.shape_changed} changed shape"
    )
    if report.tensors:
        say()
        table(
            ["TENSOR", "SHAPE", "NORM A", "NORM B", "|B-A|/|A|", "COSINE", "MAX |B-A|"],
            [
                [
                    t.name,
                    "x".join(map(str, t.shape)) or "scalar",
                    f"{t.norm_a:.4g}",
                    f"{t.norm_b:.4g}",
                    "identical" if t.identical else _num(t.rel_change),
                    _num(t.cosine),
                    f"{t.max_abs_diff:.3g}",
                ]
                for t in report.tensors
            ],
        )
    for label, names in ((report.a, report.only_in_a), (report.b, report.only_in_b)):
        if names:
            say()
            say(f"only in {label}: {', '.join(names)}")
    for c in report.shape_changed:
        say(f"shape changed: {c.name} {c.shape_a} -> {c.shape_b}")
