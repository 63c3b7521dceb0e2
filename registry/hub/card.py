"""The model card (``README.md``) pvreg keeps in a Hub repo of preference vectors.

pvreg owns two things in the card: a few keys of the YAML front matter
(``library_name``, ``tags``, ``base_model``, ``datasets``) and the text between
``<!-- pvreg:begin -->`` and ``<!-- pvreg:end -->``.  Everything else the
owner wrote is kept byte for byte.  Rendering is deterministic (no dates), so
re-pushing identical vectors produces an identical card and no commit.

The markers in an existing card may be in any state (an owner's edit, a copy-paste,
an older pvreg): out of order, duplicated, or only one of them present.  Whatever the
state, :func:`render_card` leaves exactly one section, so rendering its own output
again changes nothing (``render_card(r, v, render_card(r, v, x)) == render_card(r, v, x)``)
and identical re-pushes stay commit-free.  Text inside the section that could be read
as a marker (a dataset label, say) is escaped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pvreg.schemas.hub import HubVectorFile

BEGIN = "<!-- pvreg:begin -->"
END = "<!-- pvreg:end -->"
TAGS = ("pvreg", "preference-vector")
_MARKER_RE = re.compile(re.escape(BEGIN) + "|" + re.escape(END))
_EOL_RE = re.compile(r"\r?\n")


def _split_front_matter(text: str) -> tuple[str | None, str]:
    """(front matter YAML or None, body) of a card."""
    if text.startswith(("---\n", "---\r\n")):
        first_nl = text.index("\n") + 1
        rest = text[first_nl:]
        for marker in ("\n---\n", "\n---\r\n"):
            idx = rest.find(marker)
            if idx != -1:
                return rest[: idx + 1], rest[idx + len(marker) :]
        if rest.endswith("\n---"):
            return rest[:-3], ""
        if rest.startswith("---\n"):  # empty front matter
            return "", rest[4:]
    return None, text


def _datasets(vectors: Sequence[HubVectorFile]) -> list[str]:
    """Dataset ids for the card metadata: ``ORG/NAME:subset`` is listed as ``ORG/NAME``."""
    out: list[str] = []
    for v in vectors:
        if v.dataset:
            ds = v.dataset.split(":", 1)[0].strip()
            if ds and ds not in out:
                out.append(ds)
    return sorted(out)


def _base_models(vectors: Sequence[HubVectorFile]) -> list[str]:
    return sorted({v.base.hub_id for v in vectors if v.base is not None and v.base.hub_id})


def _merge_metadata(existing: dict[str, Any], vectors: Sequence[HubVectorFile]) -> dict[str, Any]:
    meta = dict(existing)
    meta["library_name"] = "pvreg"
    tags = existing.get("tags")
    tag_list = [str(t) for t in tags] if isinstance(tags, list) else ([str(tags)] if tags else [])
    for t in TAGS:
        if t not in tag_list:
            tag_list.append(t)
    meta["tags"] = tag_list
    bases = _base_models(vectors)
    if bases:
        meta["base_model"] = bases[0] if len(bases) == 1 else bases
    datasets = _datasets(vectors)
    if datasets:
        meta["datasets"] = datasets
    return meta


def _fmt_norm(x: float) -> str:
    return f"{x:.4g}"


def _cell(value: object) -> str:
    """A table cell: one line, no column breaks, and no '<' (so no text can forge a marker)."""
    return " ".join(str(value).split()).replace("|", "\\|").replace("<", "&lt;")


def render_section(repo: str, vectors: Sequence[HubVectorFile]) -> str:
    """The pvreg-owned block, markers included."""
    lines = [
        BEGIN,
        f"# {repo.rsplit('/', maxsplit=1)[-1]}",
        "",
        "Preference vectors ([arXiv:2504.20106](https://arxiv.org/abs/2504.20106)) published with pvreg. "
        "Each vector is `<name>/vector.safetensors` (its metadata embedded) with the same metadata in "
        "`<name>/pvreg.json`. A vector is a delta to add to its base model's weights.",
        "",
        "| Name | Version | Sign | Norm | Dataset | Base | sha256 |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in sorted(vectors, key=lambda v: v.name):
        base = (v.base.hub_id or v.base.label) if v.base is not None else None
        lines.append(
            "| "
            + " | ".join(
                _cell(c)
                for c in (
                    v.name,
                    v.version,
                    f"{v.sign:+d}",
                    _fmt_norm(v.norm),
                    v.dataset or "-",
                    base or v.base_fingerprint[:12],
                    f"`{v.sha256[:12]}`",
                )
            )
            + " |"
        )
    lines += [
        "",
        "Pull them into a local registry (every blob is sha256-verified):",
        "",
        "```sh",
        f"pvreg pull {repo}",
        "```",
        END,
    ]
    return "\n".join(lines) + "\n"


def render_card(repo: str, vectors: Sequence[HubVectorFile], existing: str | None = None) -> str:
    """A new or updated card: owner text outside the markers is kept unchanged."""
    import yaml

    section = render_section(repo, vectors)
    existing = (existing or "").removeprefix("\ufeff")  # a UTF-8 BOM would hide the front matter
    front, body = _split_front_matter(existing)
    parsed: dict[str, Any] = {}
    if front is not None and front.strip():
        try:
            loaded = yaml.safe_load(front)
        except yaml.YAMLError:
            loaded = None
        if isinstance(loaded, dict):
            parsed = loaded
        else:  # unparseable front matter: keep the owner's text in the body, start a fresh header
            body = existing
            front = None
    merged = _merge_metadata(parsed, vectors)
    if front is not None and merged == parsed:
        header = "---\n" + front + "---\n"  # already right: keep the owner's formatting
    else:
        header = "---\n" + yaml.safe_dump(merged, sort_keys=False, allow_unicode=True) + "---\n"

    return header + _replace_section(body, section)


def _owned_spans(body: str) -> list[tuple[int, int, bool]]:
    """The parts of ``body`` pvreg owns: (start, end, is_section) for each.

    A section runs from a BEGIN marker to the first END after it (BEGINs in between are part
    of it).  A marker outside any section -- an END with no BEGIN before it, a BEGIN with no
    END after it -- is a span of its own, so it is removed but the owner's text around it
    stays.  Each span takes the line break that follows it.
    """
    markers = [(m.start(), m.end(), m.group() == BEGIN) for m in _MARKER_RE.finditer(body)]
    spans: list[tuple[int, int, bool]] = []
    i = 0
    while i < len(markers):
        start, end, is_begin = markers[i]
        close = next((k for k in range(i + 1, len(markers)) if not markers[k][2]), None) if is_begin else None
        if close is not None:
            spans.append((start, _eol(body, markers[close][1]), True))
            i = close + 1
        else:
            spans.append((start, _eol(body, end), False))
            i += 1
    return spans


def _eol(body: str, pos: int) -> int:
    m = _EOL_RE.match(body, pos)
    return m.end() if m else pos


def _replace_section(body: str, section: str) -> str:
    """``body`` with every pvreg-owned span removed and ``section`` put where the first
    complete section was (else where the first stray marker was; else appended)."""
    spans = _owned_spans(body)
    if not spans:
        if not body.strip():
            return section
        return body + ("" if body.endswith("\n") else "\n") + "\n" + section
    at = next((s for s, _, whole in spans if whole), spans[0][0])
    out, pos = [], 0
    for start, end, _ in spans:
        out.append(body[pos:start])
        if start == at:
            out.append(section)
        pos = end
    out.append(body[pos:])
    return "".join(out)
