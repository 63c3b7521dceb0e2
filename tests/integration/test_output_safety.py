"""Outputs never land on the registry or an input; publishing never replaces what appeared; gc acts only on its own.

The bad-input catalogue covers each refused output path through the CLI; these tests cover what a catalogue
line cannot: a target that appears *during* a compose, two composes racing for one ``--out``, forged ``gc``
markers, and the guard itself on the SQLite-only paths.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
import torch
from pvreg import Registry
from pvreg.registry.errors import (
    NotFoundError,
    OutputExistsError,
    SpecError,
    UnsafeOutputError,
)
from pvreg.registry.files import TEMP_PREFIX, rename_noreplace
from pvreg.registry.storage.outputs import Protected, output_problems, registry_paths
from safetensors.torch import load_file


@pytest.fixture
def reg(home: Path, base_dir: Path, vector_file: Path):
    with Registry.open() as r:
        r.add("h", vector_file, base=base_dir)
        yield r


class Hook:
    """A compose progress sink that runs ``action`` once, after the first tensor is written."""

    def __init__(self, action) -> None:
        self.action = action
        self.done = False

    def start(self, tensors: int, nbytes: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        if not self.done:
            self.done = True
            self.action()


def temp_leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX)]


# --- publishing without --force never replaces what appeared -------------------------------------------------------


def test_directory_appearing_during_compose_is_kept(reg: Registry, tmp_path: Path, base_dir: Path) -> None:
    out = tmp_path / "out"

    def intrude() -> None:
        out.mkdir()
        (out / "mine.txt").write_text("user data")

    with pytest.raises(OutputExistsError, match="created there while the output was being written"):
        reg.compose("h", base=base_dir, out=out, progress=Hook(intrude))
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert (out / "mine.txt").read_text() == "user data"
    assert temp_leftovers(tmp_path) == []
    assert reg.compositions() == []


def test_empty_directory_filled_during_compose_is_kept(reg: Registry, tmp_path: Path, base_dir: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()  # an empty --out is accepted at validation...
    with pytest.raises(OutputExistsError):  # ...but not once something is in it
        reg.compose("h", base=base_dir, out=out, progress=Hook(lambda: (out / "late.txt").write_text("x")))
    assert [p.name for p in out.iterdir()] == ["late.txt"]
    assert temp_leftovers(tmp_path) == []


def test_empty_directory_still_empty_is_replaced(reg: Registry, tmp_path: Path, base_dir: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    reg.compose("h", base=base_dir, out=out)
    assert (out / "model.safetensors.index.json").is_file()


def test_file_appearing_during_vector_only_is_kept(reg: Registry, tmp_path: Path) -> None:
    out = tmp_path / "v.safetensors"
    with pytest.raises(OutputExistsError):
        reg.compose("h:0.5", out=out, vector_only=True, progress=Hook(lambda: out.write_bytes(b"theirs")))
    assert out.read_bytes() == b"theirs"
    assert temp_leftovers(tmp_path) == []


def test_vector_only_register_is_undone_when_publishing_fails(reg: Registry, tmp_path: Path) -> None:
    out = tmp_path / "v.safetensors"
    with pytest.raises(OutputExistsError):
        reg.compose("h:0.5", out=out, vector_only=True, register="mix", progress=Hook(lambda: out.write_bytes(b"x")))
    assert [e.name for e in reg.list()] == ["h"]


def test_two_composes_to_one_new_out_exactly_one_wins(reg: Registry, tmp_path: Path, base_dir: Path) -> None:
    """The inner compose starts after the outer one was validated and finishes first: the outer must refuse."""
    out = tmp_path / "out"
    inner: dict[str, object] = {}

    def race() -> None:
        inner["result"] = reg.compose("h:0.5", base=base_dir, out=out)

    with pytest.raises(OutputExistsError):
        reg.compose("h:1", base=base_dir, out=out, progress=Hook(race))
    record = json.loads((out / "pvreg-composition.json").read_text())
    assert record["inputs"][0]["coefficient"] == 0.5  # the winner's output, intact
    assert [c.output_path for c in reg.compositions()] == [str(out.resolve())]  # one row names the output
    assert temp_leftovers(tmp_path) == []


def test_force_still_replaces(reg: Registry, tmp_path: Path, base_dir: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    reg.compose("h", base=base_dir, out=out, force=True)
    assert not (out / "old.txt").exists() and (out / "config.json").is_file()


def test_rename_noreplace_refuses_files_and_empty_dirs(tmp_path: Path) -> None:
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_text("new")
    dst.write_text("old")
    with pytest.raises(FileExistsError):
        rename_noreplace(src, dst)
    assert dst.read_text() == "old" and src.exists()
    dst.unlink()
    dst.mkdir()  # plain rename(2) would replace an empty directory with a directory; this must not
    d = tmp_path / "d"
    d.mkdir()
    with pytest.raises(FileExistsError):
        rename_noreplace(d, dst)
    dst.rmdir()
    rename_noreplace(src, dst)
    assert dst.read_text() == "new" and not src.exists()


# --- the guard ----------------------------------------------------------------------------------------------------


def test_guard_names_the_most_precise_reason(home: Path, tmp_path: Path) -> None:
    from pvreg.registry.settings import Settings

    s = Settings.resolve(home)
    items = registry_paths(s)
    assert output_problems(home / "registry.db", items) == [
        f"{home / 'registry.db'}: refusing to write there, it is the registry database ({home / 'registry.db'})"]
    assert "it is the registry database" in output_problems(home / "registry.db-shm", items)[0]
    assert "it lies inside the registry's blob store" in output_problems(s.blob_dir / "ab" / "x", items)[0]
    assert "it contains the registry home" in output_problems(home.parent, items)[0]
    assert output_problems(tmp_path / "elsewhere" / "out", items) == []


def test_guard_resolves_links_and_hard_links(tmp_path: Path) -> None:
    secret = tmp_path / "data"
    secret.mkdir()
    f = secret / "weights.bin"
    f.write_bytes(b"w")
    items = [Protected(secret, "the input"), Protected(f, "the input file")]
    os.symlink(secret, tmp_path / "link")
    os.link(f, tmp_path / "hard.bin")
    assert "it is the input" in output_problems(tmp_path / "link", items)[0]
    assert "it lies inside the input" in output_problems(tmp_path / "link" / "new", items)[0]
    assert "it is the input file" in output_problems(tmp_path / "hard.bin", items)[0]
    assert "it is the input" in output_problems(tmp_path / "x" / ".." / "data", items)[0]


def test_export_cannot_overwrite_the_sqlite_database(reg: Registry, home: Path) -> None:
    before = (home / "registry.db").read_bytes()
    with pytest.raises(UnsafeOutputError, match="it is the registry database"):
        reg.export("h", home / "registry.db", force=True)
    assert (home / "registry.db").read_bytes() == before


def test_export_does_not_replace_a_file_that_appears(reg: Registry, tmp_path: Path, monkeypatch) -> None:
    """The existence check and the rename are one step: a file created in between is left alone."""
    from pvreg.registry.sources import exported as export

    out = tmp_path / "e.safetensors"
    real = export.write_exported

    def late(blob, meta, target, **kw):
        target.write_bytes(b"theirs")
        return real(blob, meta, target, **kw)

    monkeypatch.setattr(export, "write_exported", late)
    with pytest.raises(OutputExistsError, match="was created while the export was written"):
        reg.export("h", out)
    assert out.read_bytes() == b"theirs"
    assert temp_leftovers(tmp_path) == []


# --- gc acts only on what pvreg itself creates -------------------------------------------------------------------


def _marker(home: Path, record: dict) -> Path:
    m = home / "pending" / f"{uuid.uuid4().hex}.json"
    m.parent.mkdir(exist_ok=True)
    m.write_text(json.dumps(record))
    return m


def _temp_name(suffix: str = "") -> str:
    return f"{TEMP_PREFIX}{uuid.uuid4().hex}{suffix}"


def test_gc_ignores_forged_markers(reg: Registry, home: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file.txt").write_text("precious")
    moved = tmp_path / "moved.txt"
    moved.write_text("stay")
    beside = tmp_path / "elsewhere"
    beside.mkdir()
    (beside / _temp_name("-old")).mkdir()
    link = tmp_path / _temp_name()
    os.symlink(victim, link)
    forged = [
        {"path": str(victim)},                                                   # an arbitrary directory
        {"path": str(home / "registry.db")},                                      # the database
        {"path": str(tmp_path / "x" / ".." / "victim")},                          # '..'
        {"path": "victim"},                                                       # relative
        {"path": str(link)},                                                      # our naming, but a symlink
        {"aside": str(moved), "out": str(tmp_path / "new.txt")},                  # move a user file
        {"aside": str(next(beside.iterdir())), "out": str(victim)},               # aside not beside out
        {"path": 7},                                                              # not a string
    ]
    markers = [_marker(home, r) for r in forged]
    db_before = (home / "registry.db").read_bytes()
    report = reg.gc()
    assert len(report.ignored) == len(forged)
    assert all(str(m) in " ".join(report.ignored) for m in markers)
    assert (victim / "file.txt").read_text() == "precious"
    assert moved.read_text() == "stay" and not (tmp_path / "new.txt").exists()
    assert link.is_symlink() and next(beside.iterdir()).is_dir()
    assert (home / "registry.db").read_bytes()[:100] == db_before[:100]
    assert reg.verify().ok
    assert not any(m.exists() for m in markers)  # the forged hints themselves are dropped


def test_gc_still_cleans_and_restores_its_own(reg: Registry, home: Path, tmp_path: Path) -> None:
    staged = tmp_path / _temp_name()
    staged.mkdir()
    (staged / "model.safetensors").write_bytes(b"partial")
    out = tmp_path / "out"
    aside = tmp_path / _temp_name("-old")
    aside.mkdir()
    (aside / "old.txt").write_text("old output")
    _marker(home, {"path": str(staged), "aside": str(aside), "out": str(out)})  # died between the renames
    report = reg.gc()
    assert report.ignored == []
    assert not staged.exists() and (out / "old.txt").read_text() == "old output" and not aside.exists()


def test_gc_cli_warns_about_ignored_markers(reg: Registry, home: Path, tmp_path: Path, cli) -> None:
    _marker(home, {"path": str(tmp_path)})
    r = cli("gc")
    assert r.exit_code == 0
    assert "warning: " in r.stderr and "names paths pvreg did not create" in r.stderr
    assert tmp_path.is_dir()


# --- what the output holds ------------------------------------------------------------------------------------------


def test_inf_after_cast_writes_nothing(reg: Registry, tmp_path: Path, base_dir: Path) -> None:
    with pytest.raises(SpecError, match="would contain Inf/NaN as float16"):
        reg.compose("h:1e7", base=base_dir, out=tmp_path / "out", dtype="float16")
    assert not (tmp_path / "out").exists() and temp_leftovers(tmp_path) == []
    assert reg.compositions() == []


def test_symlinked_base_files_are_copied_as_content(reg: Registry, tmp_path: Path, base_dir: Path) -> None:
    """A Hub cache snapshot is all symlinks: the output gets the files' content, never a link."""
    import shutil

    snap = tmp_path / "snapshot"
    snap.mkdir()
    store = tmp_path / "hub-blobs"
    store.mkdir()
    for p in base_dir.iterdir():
        shutil.copyfile(p, store / p.name)
        os.symlink(store / p.name, snap / p.name)
    out = tmp_path / "out"
    reg.compose("h", base=snap, out=out)
    cfg = out / "config.json"
    assert cfg.is_file() and not cfg.is_symlink()
    assert json.loads(cfg.read_text()) == json.loads((base_dir / "config.json").read_text())


def test_large_spec_is_one_bounded_line(reg: Registry, tmp_path: Path, base_dir: Path) -> None:
    terms = [f"missing-{i}:1" for i in range(5000)]
    with pytest.raises(NotFoundError) as info:
        reg.compose(terms, base=base_dir, out=tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message and len(message) < 2000
    assert message.endswith("and 4990 more problem(s)")
    assert "no vector named 'missing-0'" in message


def test_many_good_terms_resolve_in_bulk(reg: Registry, tmp_path: Path, base_dir: Path, base_tensors) -> None:
    """Every term resolved and applied: the result matches an independent sum."""
    from helpers.factories import make_vector

    names = [f"v{i}" for i in range(40)]
    expected = {k: v.clone().float() for k, v in base_tensors.items()}
    for i, n in enumerate(names):
        f = tmp_path / f"{n}.safetensors"
        make_vector(f, base_tensors, seed=100 + i)
        reg.add(n, f, base=base_dir)
        for k, v in load_file(str(f)).items():
            expected[k] += 0.1 * v.float()
    out = tmp_path / "out"
    reg.compose([f"{n}:0.1" for n in names], base=base_dir, out=out)
    from safetensors import safe_open

    got = {}
    for shard in out.glob("model-*.safetensors"):
        with safe_open(str(shard), "pt") as fh:
            got.update({k: fh.get_tensor(k) for k in fh.keys()})
    for k, v in expected.items():
        assert torch.allclose(got[k].float(), v, atol=1e-5), k
