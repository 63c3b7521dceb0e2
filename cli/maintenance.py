"""Maintenance commands: fingerprint, verify, gc, bases, and the db group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pvreg.cli.output import emit_json, say, short, table
from pvreg.cli.state import open_registry
from pvreg.cli.vectors import JsonOpt


def fingerprint(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Model directory, .safetensors file or .bin checkpoint.")],
    as_json: JsonOpt = False,
) -> None:
    """Print the canonical fingerprint of a model's weights."""
    with open_registry(ctx) as reg:
        fp = reg.fingerprint(path)
    emit_json({"path": str(path), "fingerprint": fp}) if as_json else say(fp)


def verify(
    ctx: typer.Context,
    ref: Annotated[str | None, typer.Argument(help="Only this reference (default: every version).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-hash blobs and recompute norms; exit 1 on any mismatch."""
    with open_registry(ctx) as reg:
        report = reg.verify(ref)
    if as_json:
        emit_json(report.model_dump(mode="json") | {"ok": report.ok})
    else:
        for p in report.problems:
            say(f"{p.ref}: {p.problem}", err=True)
        say(f"verified {report.checked} version(s): " + ("ok" if report.ok else f"{len(report.problems)} problem(s)"))
    if not report.ok:
        raise typer.Exit(1)


def gc(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would be removed.")] = False,
    all_unreferenced: Annotated[
        bool,
        typer.Option(
            "--all-unreferenced",
            help="Also when the database lists no versions at all, i.e. delete every blob "
            "(refused without it: that is what a lost or empty database looks like).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete unreferenced blobs and stale temporary files."""
    with open_registry(ctx) as reg:
        report = reg.gc(dry_run=dry_run, all_unreferenced=all_unreferenced)
    if as_json:
        emit_json(report)
        return
    verb = "would remove" if dry_run else "removed"
    note = " (only with --all-unreferenced: the database lists no versions)" if report.needs_all_unreferenced else ""
    say(
        f"{verb} {len(report.removed_blobs)} blob(s) ({report.freed_bytes} bytes){note} "
        f"and {len(report.removed_temp)} temporary file(s)"
    )
    for line in report.ignored:
        say(f"warning: {line}", err=True)


def bases(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Base models the registry knows, by fingerprint."""
    with open_registry(ctx) as reg:
        rows = reg.bases()
    if as_json:
        emit_json(rows)
        return
    table(
        ["FINGERPRINT", "LABEL", "ARCHITECTURE", "TENSORS", "PATH"],
        [
            [short(b.fingerprint, 16), b.label or "-", b.architecture or "-", b.num_tensors or "-", b.local_path or "-"]
            for b in rows
        ],
    )


db_app = typer.Typer(
    help="Inspect and upgrade the metadata database schema.",
    no_args_is_help=True,
    rich_markup_mode=None,
    add_completion=False,
)


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Print the schema revision of the database."""
    from pvreg.cli.state import State
    from pvreg.registry.api import Registry

    state = ctx.find_object(State) or State()
    with Registry.open(state.registry, upgrade=False) as reg:
        say(reg.db_current() or "(empty database)")


@db_app.command("init")
def db_init(
    ctx: typer.Context,
    adopt_blobs: Annotated[
        bool,
        typer.Option(
            "--adopt-blobs",
            help="Initialise an empty or missing database even though the blob store holds blobs "
            "(the database is lost for good; the blobs stay, unreferenced).",
        ),
    ] = False,
) -> None:
    """Create the schema of an empty database (every command does this for a fresh registry)."""
    from pvreg.cli.state import State
    from pvreg.registry.api import Registry

    state = ctx.find_object(State) or State()
    with Registry.open(state.registry, upgrade=False) as reg:
        before = reg.db_current()
    with Registry.open(state.registry, adopt_blobs=adopt_blobs) as reg:
        after = reg.db_current()
        blobs = sum(1 for _ in reg.blobs.iter_blobs())
    if before is not None:
        say(f"already initialised (at {after})")
    else:
        kept = (
            (
                f"; the store's {blobs} blob(s) are unreferenced: re-add any you need "
                "(pvreg add NAME --vector BLOB --base BASE) before a gc deletes them"
            )
            if blobs
            else ""
        )
        say(f"initialised an empty database at {after}{kept}")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Upgrade the schema to this pvreg's head (backing up a SQLite file first)."""
    from pvreg.cli.state import State
    from pvreg.registry.api import Registry

    state = ctx.find_object(State) or State()
    with Registry.open(state.registry, upgrade=False) as reg:
        before, after, backup = reg.db_upgrade()
    if before == after:
        say(f"already at {after}")
    else:
        say(f"upgraded {before or '(empty)'} -> {after}" + (f" (backup: {backup})" if backup else ""))
