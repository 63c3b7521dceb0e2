"""Hub commands: push, pull, and ``remote ls``.

The endpoint is ``--endpoint``, else ``$HF_ENDPOINT``, else huggingface.co; the
token comes from ``HF_TOKEN`` or ``hf auth login`` (there is deliberately no
``--token`` option: a token on the command line ends up in shell history).
"""

from __future__ import annotations

from typing import Annotated

import typer

from pvreg.cli.output import emit_json, fmt_norm, say, short, table
from pvreg.cli.state import open_registry
from pvreg.cli.vectors import JsonOpt

EndpointOpt = Annotated[
    str | None,
    typer.Option("--endpoint", help="Hub URL (default: $HF_ENDPOINT or https://huggingface.co).", show_default=False),
]
RepoArg = Annotated[str, typer.Argument(help="OWNER/NAME[@REVISION] of a Hub model repo.", show_default=False)]


def push(
    ctx: typer.Context,
    refs: Annotated[
        list[str],
        typer.Argument(help="Versions to publish: NAME, NAME@N, NAME@ALIAS or sha256:HEX.", show_default=False),
    ],
    repo: Annotated[str, typer.Option("--repo", help="Target Hub model repo, OWNER/NAME.", show_default=False)],
    revision: Annotated[str | None, typer.Option("--revision", help="Branch to commit to (default: main).")] = None,
    private: Annotated[bool, typer.Option("--private", help="Make the repo private when --create creates it.")] = False,
    create: Annotated[bool, typer.Option("--create", help="Create the repo (and branch) if missing.")] = False,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
    endpoint: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish vectors and an updated model card to a Hub repo in one commit."""
    with open_registry(ctx) as reg:
        result = reg.push(
            refs, repo, revision=revision, private=private, create=create, message=message, endpoint=endpoint
        )
    if as_json:
        emit_json(result)
        return
    where = f"{result.repo}@{result.revision}"
    if result.created_repo:
        say(f"created {result.repo}")
    if not result.committed:
        refs_text = ", ".join(v.ref for v in result.vectors)
        say(
            f"no changes: {where} already has identical {refs_text} (commit {short(result.commit_sha)}); "
            "no commit created"
        )
        return
    for v in result.vectors:
        state = "pushed" if v.changed else "unchanged"
        say(f"{state} {v.ref} -> {result.repo}:{v.path}  sha256:{short(v.sha256)}")
    say(f"commit {result.commit_sha} on {where}" + (f"  {result.commit_url}" if result.commit_url else ""))


def pull(
    ctx: typer.Context,
    repo: RepoArg,
    name: Annotated[list[str] | None, typer.Option("--name", help="Pull only this vector (repeatable).")] = None,
    as_name: Annotated[str | None, typer.Option("--as", help="Register under this local name (one vector).")] = None,
    endpoint: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Download vectors from a Hub repo, verify their sha256, and register them."""
    with open_registry(ctx) as reg:
        result = reg.pull(repo, names=name or None, as_name=as_name, endpoint=endpoint)
    if as_json:
        emit_json(result)
        return
    for v in result.vectors:
        if v.registered:
            say(
                f"pulled {result.repo}:{v.remote_name}@{v.remote_version} -> {v.meta.ref}  "
                f"sha256:{short(v.meta.sha256)}"
            )
        else:
            say(
                f"already registered: {result.repo}:{v.remote_name}@{v.remote_version} is {v.meta.ref}  "
                f"sha256:{short(v.meta.sha256)}"
            )
    say(f"from commit {result.commit_sha}", err=True)


def remote_ls(
    ctx: typer.Context,
    repo: RepoArg,
    endpoint: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the vectors in a Hub repo (reads pvreg.json files only, no blobs)."""
    with open_registry(ctx) as reg:
        listing = reg.remote_ls(repo, endpoint=endpoint)
    if as_json:
        emit_json(listing)
        return
    if not listing.vectors:
        say(f"no pvreg vectors in {listing.repo}@{listing.revision}")
        return
    table(
        ["NAME", "VERSION", "SHA256", "SIGN", "NORM", "DATASET", "BASE", "LOCAL"],
        [
            [
                v.name,
                v.version,
                short(v.sha256),
                f"{v.sign:+d}",
                fmt_norm(v.norm),
                v.dataset or "-",
                v.base_model or short(v.base_fingerprint),
                ",".join(v.local_refs) or "-",
            ]
            for v in listing.vectors
        ],
    )


remote_app = typer.Typer(
    name="remote",
    help="Inspect Hub repos without downloading blobs.",
    no_args_is_help=True,
    rich_markup_mode=None,
    add_completion=False,
)
remote_app.command("ls")(remote_ls)
