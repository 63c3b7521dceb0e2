"""Text from outside: the rules every source is held to, and terminal-safe human output.

Two halves:

* validation -- a forged export or a direct Python-API call with a bad name, dataset, tag,
  message, description or lineage entry is refused before anything is written, on SQLite and
  PostgreSQL, with the same rule as the command line;
* rendering -- a registry written before these rules (rows put in with SQL here), or a local
  base directory whose name carries an escape sequence, never makes ``list``/``show``/``log``/
  ``bases``/``remote ls`` or an ``error:`` line send a control character to the terminal,
  while ``--json`` keeps the exact text.

"Unsafe" is judged here independently of pvreg's regex: by Unicode category (Cc, Zl, Zp) plus
the bidi controls the issue names.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pytest
from helpers.cli import BIDI, assert_terminal_safe
from helpers.factories import make_base, make_vector
from helpers.paths import REPO
from safetensors.torch import load_file, save_file

HOSTILE = "ev\x1b]0;pwned\x07il\x1b[2J\r\x9b31m\u202egnp.exe\u2028x"


# --- the escaping itself ---------------------------------------------------------------------------------------------


def test_escape_covers_every_control_and_bidi_character():
    from pvreg.registry.text import escape

    every = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    dangerous = [c for c in every if unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in BIDI]
    assert len(dangerous) == 65 + 2 + len(BIDI)  # C0 + DEL + C1, LS/PS, bidi controls
    for c in dangerous:
        out = escape(f"a{c}b")
        assert out.isascii() and out.isprintable() and out.startswith("a\\") and out.endswith("b"), (hex(ord(c)), out)
    assert escape("\x1b[31m") == "\\x1b[31m" and escape("\u202e") == "\\u202e" and escape("a\nb\tc") == "a\\nb\\tc"
    # ordinary text, accents, CJK, emoji and zero-width joiners are left alone
    for text in ("helpful@3  sha256:1f2e", "héllo wörld", "日本語", "👩\u200d💻", "PKU-SafeRLHF:helpful"):
        assert escape(text) == text


# --- validation: one rule per field, every source ------------------------------------------------------------------


def forged_export(path: Path, tensors: dict, **fields) -> Path:
    """A pvreg export of ``tensors`` whose embedded VectorMeta has ``fields`` overridden (a forgery)."""
    meta = {
        "name": "forged", "version": 1, "sha256": "0" * 64, "size_bytes": 1, "base_fingerprint": "0" * 64,
        "norm": 1.0, "dtype": "float32", "num_tensors": len(tensors), "num_params": 1,
        "created_at": "2026-01-01T00:00:00Z", **fields,
    }
    save_file(tensors, str(path), metadata={"format": "pt", "pvreg": json.dumps(meta)})
    return path


FORGED = [
    ("name-traversal-escape", {"name": "../../Evil Name\x1b[31m"}, "invalid name"),
    ("name-70-chars", {"name": "a" * 70}, "is 70 characters (at most 64)"),
    ("name-dot-git", {"name": ".git"}, "cannot start with '.'"),
    ("dataset-escape", {"dataset": "PKU\x1b]0;title\x07"}, "invalid dataset"),
    ("dataset-too-long", {"dataset": "d" * 257}, "is 257 characters (at most 256)"),
    ("tag-key-too-long", {"tags": {"k" * 129: "v"}}, "is 129 characters (at most 128)"),
    ("tag-key-with-equals", {"tags": {"a=b": "v"}}, "contains '='"),
    ("tag-value-newline", {"tags": {"k": "v\nw"}}, "contains the control character \\n"),
    ("message-escape", {"message": "ok\x1b[2J"}, "invalid message"),
    ("description-bidi", {"description": "safe\u202eexe.txt"}, "invalid description"),
    ("parent-ref-traversal", {"parents": [{"ref": "../x@1", "sha256": "a" * 64}]}, "invalid parent reference"),
    ("parent-sha-short", {"parents": [{"ref": "x@1", "sha256": "abc"}]}, "invalid sha256"),
    ("alias-number", {"aliases": ["12"]}, "an alias cannot be a number"),
]


@pytest.mark.parametrize("fields,needle", [f[1:] for f in FORGED], ids=[f[0] for f in FORGED])
def test_forged_export_is_refused_before_anything_is_written(backend, cli, tmp_path, base_dir, base_tensors,
                                                             snapshot, fields, needle):
    good = tmp_path / "good.safetensors"
    make_vector(good, base_tensors, seed=1)
    assert cli("add", "helpful", "--vector", good, "--base", base_dir).exit_code == 0
    forged = forged_export(tmp_path / "forged.safetensors", load_file(str(good)), **fields)
    before = snapshot()
    for argv in (["add", "--vector", forged, "--base", base_dir],            # the name from the file
                 ["add", "explicit", "--vector", forged, "--base", base_dir]):  # a forged file, whatever NAME says
        r = cli(*argv)
        assert r.exit_code == 2, (r.stdout, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
        assert str(forged) in lines[0] and "embedded pvreg metadata" in lines[0] and needle in lines[0], lines[0]
        assert_terminal_safe(r.stderr)
        assert snapshot() == before


LOCAL = [
    ("dataset-escape", {"dataset": "a\x1b[31mb"}, "invalid dataset"),
    ("dataset-whitespace-only", {"dataset": "  "}, "leading or trailing whitespace"),
    ("dataset-padded", {"dataset": " PKU "}, "leading or trailing whitespace"),
    ("tag-key-too-long", {"tags": {"k" * 129: "v"}}, "(at most 128)"),
    ("tag-value-bel", {"tags": {"k": "\x07"}}, "contains the control character \\x07"),
    ("tag-value-too-long", {"tags": {"k": "v" * 4097}}, "(at most 4096)"),
    ("message-c1", {"message": "a\x9bb"}, "contains the control character \\x9b"),
    ("message-too-long", {"message": "m" * 65537}, "(at most 65536)"),
    ("description-cr", {"description": "over\rwrite"}, "contains the control character \\r"),
]


@pytest.mark.parametrize("kwargs,needle", [c[1:] for c in LOCAL], ids=[c[0] for c in LOCAL])
def test_python_api_input_follows_the_same_rules(backend, tmp_path, base_dir, vector_file, snapshot, kwargs, needle):
    from pvreg import Registry
    from pvreg.registry.errors import InvalidTextError

    with Registry.open() as reg:
        reg.add("helpful", vector_file, base=base_dir)
    before = snapshot()
    with Registry.open() as reg, pytest.raises(InvalidTextError) as info:
        reg.add("other", vector_file, base=base_dir, **kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert snapshot() == before


def test_multiline_messages_and_long_labels_within_limits_are_accepted(tmp_path, base_dir, vector_file):
    from pvreg import Registry

    with Registry.open() as reg:
        assert reg.add("empty", vector_file, base=base_dir, dataset="").dataset == ""  # as older pvreg stored it
        meta = reg.add("helpful", vector_file, base=base_dir, dataset="d" * 256, message="line 1\n\tline 2",
                       description="x" * 65536, tags={"k" * 128: "v" * 4096, "empty": "", "note": " spaced "})
        assert meta.dataset == "d" * 256 and meta.message == "line 1\n\tline 2" and meta.tags["k" * 128] == "v" * 4096


def test_limits_fit_the_database_columns():
    """The text limits are no larger than the columns they end up in (PostgreSQL enforces VARCHAR lengths)."""
    from pvreg.registry import text
    from pvreg.registry.refs import NAME_RE
    from pvreg.registry.storage import tables

    assert tables.version_tags.c.key.type.length >= text.TAG_KEY_MAX
    longest_name = NAME_RE.pattern.rsplit(",", 1)[1].rstrip("}")
    assert tables.vectors.c.name.type.length >= int(longest_name)
    assert tables.aliases.c.alias.type.length >= int(longest_name)


def test_names_are_valid_hub_paths_and_hidden_names_are_refused():
    """Every name check_name accepts is a path component the Hub client accepts (and that a pull finds again)."""
    from huggingface_hub._commit_api import _validate_path_in_repo
    from pvreg.registry.errors import InvalidNameError
    from pvreg.registry.refs import check_name

    for name in ("a", "helpful", "a.b", "x-y_z", "a..b", "v1.0", "-dash", "_under", "a" * 64, "git", "cache."):
        check_name(name)
        assert _validate_path_in_repo(f"{name}/vector.safetensors") == f"{name}/vector.safetensors"
    for name in (".git", ".cache", ".hidden", ".", ".."):
        with pytest.raises(InvalidNameError, match="cannot start with '.'"):
            check_name(name)
    with pytest.raises(ValueError):
        _validate_path_in_repo(".git/vector.safetensors")  # what a '.git' vector would have hit at push


# --- rendering: nothing raw reaches the terminal, JSON stays exact ---------------------------------------------------


def _legacy_rows(name: str, hostile: str, *, rename: bool = True) -> None:
    """Put hostile text into an existing version's rows with SQL, as an older pvreg could have stored it."""
    from pvreg.registry.settings import Settings
    from pvreg.registry.storage import tables
    from sqlalchemy import create_engine, insert, update

    engine = create_engine(Settings.resolve().database_url)
    try:
        with engine.begin() as conn:
            vid = conn.execute(tables.vectors.select().where(tables.vectors.c.name == name)).one().id
            version = conn.execute(tables.versions.select().where(tables.versions.c.vector_id == vid)).one()
            conn.execute(update(tables.vectors).where(tables.vectors.c.id == vid)
                         .values(name=hostile[:60] if rename else name, description=hostile))
            conn.execute(update(tables.versions).where(tables.versions.c.id == version.id)
                         .values(dataset=hostile, message=hostile))
            conn.execute(insert(tables.version_tags).values(version_id=version.id, key="k\x1b", value=hostile))
            conn.execute(insert(tables.version_parents).values(version_id=version.id, position=0,
                                                                parent_ref=hostile, parent_sha256="a" * 64))
            conn.execute(update(tables.base_models).values(label=hostile, architecture=hostile))
    finally:
        engine.dispose()


def test_listing_commands_escape_legacy_rows_and_json_is_exact(backend, cli, base_dir, vector_file, tmp_path):
    r = cli("add", "helpful", "--vector", vector_file, "--base", base_dir, "--json")
    assert r.exit_code == 0, r.stderr
    sha = json.loads(r.stdout)["sha256"]
    make_vector(tmp_path / "b.safetensors", load_file(str(base_dir / "model.safetensors")), seed=9)
    assert cli("add", "plain", "--vector", tmp_path / "b.safetensors", "--base", base_dir).exit_code == 0
    _legacy_rows("helpful", HOSTILE)
    _legacy_rows("plain", HOSTILE, rename=False)

    for argv in (["list"], ["show", f"sha256:{sha[:12]}"], ["bases"], ["log", "plain"], ["verify"]):
        r = cli(*argv)
        assert r.exit_code == 0, (argv, r.stderr)
        assert_terminal_safe(r.stdout + r.stderr)
    out = cli("show", f"sha256:{sha[:12]}").stdout
    assert "\\x1b]0;pwned\\x07" in out and "\\u202e" in out and "\\r" in out  # visible, not acted on
    rows = cli("list").stdout.splitlines()
    assert len(rows) == 3  # header + 2: no row was split by an embedded newline or separator

    # --json keeps the exact text
    listed = {e["name"]: e for e in json.loads(cli("list", "--json").stdout)}
    assert HOSTILE[:60] in listed and listed[HOSTILE[:60]]["dataset"] == HOSTILE
    shown = json.loads(cli("show", f"sha256:{sha[:12]}", "--json").stdout)
    assert shown["message"] == HOSTILE and shown["tags"] == {"k\x1b": HOSTILE}
    assert shown["parents"][0]["ref"] == HOSTILE


def test_local_base_directory_with_escape_sequence_in_its_name(cli, tmp_path):
    """A base's label is its directory name: a perfectly local way to get an escape sequence into output."""
    base = tmp_path / "base\x1b]2;owned\x07"
    tensors = make_base(base, seed=0)
    make_vector(tmp_path / "v.safetensors", tensors, seed=1)
    r = cli("add", "helpful", "--vector", tmp_path / "v.safetensors", "--base", base)
    assert r.exit_code == 0, r.stderr
    for argv in (["list"], ["show", "helpful"], ["bases"]):
        r = cli(*argv)
        assert r.exit_code == 0 and "\\x1b]2;owned\\x07" in r.stdout
        assert_terminal_safe(r.stdout)
    assert json.loads(cli("bases", "--json").stdout)[0]["label"] == base.name


@pytest.mark.parametrize("argv", [
    ["add", "v", "--vector", "missing\x1b[2J.safetensors", "--base", "."],
    ["show", "x\x1b[31m"],
    ["add", "v", "--vector", "x.safetensors", "--base", "nowhere\u202e"],
    ["pull", "alice/x\x1b[2J"],
    ["compose", "helpful\x9b:1", "--out", "o"],
], ids=["path", "ref", "base", "repo", "spec"])
def test_error_lines_carry_no_raw_control_characters(cli, argv):
    r = cli(*argv)
    assert r.exit_code == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert_terminal_safe(r.stderr)


def test_every_cli_renderer_goes_through_the_escaping_layer():
    """No module of the CLI writes to a terminal except through cli/output.py (say/table/emit_json)."""
    cli_dir = REPO / "cli"
    direct = re.compile(r"\bprint\(|sys\.std(out|err)\.write|typer\.echo|click\.echo|secho\(")
    offenders = []
    for path in sorted(cli_dir.glob("*.py")):
        if path.name in ("output.py", "progress.py"):  # the layer itself; rich bars draw fixed text only
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if direct.search(line) and 'print(f"pvreg {__version__}")' not in line:
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert not offenders, offenders
