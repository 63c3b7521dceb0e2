"""The bad-input catalogue: every way of handing pvreg a wrong file, name, spec or Hub repo.

One case per line: ``C(id, setup, argv, exit code, substring of the message)``.  ``argv`` is a template:
``{t}`` is the case's scratch directory, ``{base}`` the base model, ``{url}`` the loopback Hub server (started
only for cases that use it), ``{tail}`` any extra argument the setup returned (for values a shell line cannot
carry, such as a newline).  Every case must end with the given exit code (2: bad input, 1: environment or
integrity), exactly one stderr line starting ``error: ``, no traceback, and the registry — every table row,
every stored file and the SQLite file's bytes — exactly as it was before.

The registry starts with ``helpful@1`` and ``harmless@1`` on the base.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.factories import make_base, make_vector
from safetensors.torch import save_file

pytestmark = pytest.mark.usefixtures("backend")

TOKEN = "hf_dummy_catalogue_token"
N = "model.layers.0.mlp.up_proj.weight"  # shape (32, 16) in the factory base
SHAPE = (32, 16)


# --- the environment a setup works in --------------------------------------------------------------------------------


@dataclass
class Env:
    tmp: Path
    base_dir: Path
    base: dict[str, torch.Tensor]
    cli: Callable
    monkeypatch: pytest.MonkeyPatch
    home: Path
    _server: Any = None
    tail: list[str] = field(default_factory=list)

    def p(self, name: str) -> Path:
        return self.tmp / name

    @property
    def server(self):
        if self._server is None:
            from helpers.hubserver import HubServer, isolate_hf_client

            isolate_hf_client(self.monkeypatch, self.tmp / "hf-home", token=TOKEN)
            self._server = HubServer(self.tmp / "hubdata", tokens={TOKEN: "alice"}).start()
        return self._server


# --- setup helpers: each returns a function of Env --------------------------------------------------------------------


def nothing(env: Env) -> None:
    pass


def raw(name: str, data: bytes | Callable[[Env], bytes]) -> Callable[[Env], None]:
    def make(env: Env) -> None:
        env.p(name).write_bytes(data(env) if callable(data) else data)
    return make


def header(name: str, hdr: Any, data: bytes = b"") -> Callable[[Env], None]:
    body = json.dumps(hdr).encode()
    return raw(name, struct.pack("<Q", len(body)) + body + data)


def st(name: str, make_tensors: Callable[[], dict[str, torch.Tensor]], metadata: dict | None = None):
    def make(env: Env) -> None:
        save_file(make_tensors(), str(env.p(name)), metadata=metadata)
    return make


def full(value: float, dtype=torch.float32, shape=SHAPE) -> Callable[[], dict[str, torch.Tensor]]:
    return lambda: {N: torch.full(shape, value).to(dtype)}


def good_bytes(env: Env) -> bytes:
    save_file({N: torch.full(SHAPE, 0.1)}, str(env.p("good.safetensors")))
    return env.p("good.safetensors").read_bytes()


def mkdir(name: str) -> Callable[[Env], None]:
    return lambda env: env.p(name).mkdir(parents=True)


def symlink(name: str, target: str) -> Callable[[Env], None]:
    def make(env: Env) -> None:
        env.p(name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, env.p(name))
    return make


def both(*steps: Callable[[Env], None]) -> Callable[[Env], None]:
    def make(env: Env) -> None:
        for s in steps:
            s(env)
    return make


def tail(*args: str) -> Callable[[Env], None]:
    return lambda env: env.tail.extend(args)


class Payload:
    """Pickling this runs ``open(marker, 'w')`` on load — unless the loader refuses it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def reduce_zip(env: Env) -> None:
    torch.save({N: torch.zeros(SHAPE), "evil": Payload(str(env.p("pwned")))}, str(env.p("evil.bin")))


def reduce_legacy(env: Env) -> None:
    env.p("evil-legacy.bin").write_bytes(pickle.dumps({"evil": Payload(str(env.p("pwned")))}, protocol=2))


def zip_not_torch(env: Env) -> None:
    with zipfile.ZipFile(env.p("notorch.bin"), "w") as z:
        z.writestr("hello.txt", "not a checkpoint")
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")


# tensor-file hardening (issue #11): headers json.dumps cannot write, FIFOs, crafted .bin files


def raw_header(name: str, text: str, data: bytes = b"") -> Callable[[Env], None]:
    """A header given as JSON text: duplicate keys, NaN literals and lone surrogates need it."""
    body = text.encode("utf-8")
    return raw(name, struct.pack("<Q", len(body)) + body + data)


def entry(shape: Any = (32, 16), offsets: Any = None, dtype: Any = "F32", **extra: Any) -> dict:
    import math

    if offsets is None:
        offsets = [0, 4 * math.prod(shape)]
    return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape, "data_offsets": offsets, **extra}


def fifo(name: str) -> Callable[[Env], None]:
    """A named pipe.  Should pvreg ever open it, a guard feeds it EOF after 15 s: a regression fails, not hangs."""
    import threading
    import time

    def make(env: Env) -> None:
        path = env.p(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)

        def unblock() -> None:
            time.sleep(15)
            for _ in range(120):
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                    return
                except FileNotFoundError:
                    return
                except OSError:  # ENXIO: nobody is reading it, as it should be
                    time.sleep(0.5)
        threading.Thread(target=unblock, daemon=True).start()
    return make


def index_naming(shard: str, index: str = "model.safetensors.index.json") -> Callable[[Env], None]:
    def make(env: Env) -> None:
        env.p("ix").mkdir(exist_ok=True)
        env.p(f"ix/{index}").write_text(json.dumps({"weight_map": {N: shard}}))
    return make


def bin_of(name: str, make_obj: Callable[[], Any]) -> Callable[[Env], None]:
    def make(env: Env) -> None:
        import warnings

        with warnings.catch_warnings():  # torch warns that sparse CSR and quantized tensors are beta/deprecated
            warnings.simplefilter("ignore")
            obj = make_obj()
        torch.save(obj, str(env.p(name)))
    return make


def unix_socket(path: Path) -> None:
    import socket

    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # the socket file stays after close


def bin_short_record(env: Env) -> None:
    """A stored zip checkpoint whose first data record is shorter than its storage (mmap would read past it)."""
    torch.save({N: torch.full(SHAPE, 0.5)}, str(env.p("full.bin")))
    with zipfile.ZipFile(env.p("full.bin")) as zi, zipfile.ZipFile(env.p("short.bin"), "w") as zo:
        for info in zi.infolist():
            data = zi.read(info)
            zo.writestr(info.filename, data[:16] if info.filename.endswith("/data/0") else data)


def index_naming_dir(env: Env) -> None:
    d = env.p("idx")
    (d / "shard.safetensors").mkdir(parents=True)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {N: "shard.safetensors"}}))


def exported(env: Env, name: str = "helpful") -> Path:
    from pvreg import Registry

    out = env.p(f"{name}-export.safetensors")
    with Registry.open() as reg:
        reg.export(name, out)
    return out


def export_tampered(env: Env) -> None:
    out = exported(env)
    data = bytearray(out.read_bytes())
    data[-1] ^= 0x01
    out.write_bytes(bytes(data))


def fake_ambiguous(env: Env) -> None:
    """Two versions whose sha256 share 8 hex digits (cannot be made on purpose; insert rows directly)."""
    from pvreg import Registry
    from pvreg.registry.storage.bases import ResolvedBase
    from pvreg.registry.sources.ingest import BlobStats
    from pvreg.registry.storage.writes import NewVersion

    with Registry.open() as reg:
        fp = reg.resolve("helpful").base_fingerprint
        for name, digit in (("fake-a", "1"), ("fake-b", "2")):
            stats = BlobStats(sha256="abcdef01" + digit * 56, size_bytes=1, norm=1.0, tensor_norms={},
                              dtype="float32", num_tensors=1, num_params=1)
            reg.store.commit_version(NewVersion(name=name, stats=stats, base=ResolvedBase(fp)))


def same_blob_twice(env: Env) -> None:
    assert env.cli("add", "twin", "--vector", env.p("../helpful.safetensors"), "--base", env.base_dir).exit_code == 0


def other_base(env: Env) -> None:
    make_base(env.p("other-base"), seed=7)


# --- outputs that would overwrite what pvreg reads or owns ---


def blob_of(name: str) -> Callable[[Env], None]:
    """Append the stored blob path of ``name`` to the argv (as the output path)."""
    def make(env: Env) -> None:
        from pvreg import Registry

        with Registry.open() as reg:
            env.tail.append(str(reg.blob_path(name)))
    return make


def base_with_fifo(env: Env) -> None:
    """A copy of the base (same fingerprint) whose directory also holds a FIFO."""
    import shutil

    shutil.copytree(env.base_dir, env.p("fifo-base"))
    os.mkfifo(env.p("fifo-base/notes.txt"))


def no_output(env: Env) -> None:
    leftovers = [p.name for p in env.tmp.iterdir() if p.name == "out" or p.name.startswith(".pvreg-tmp-")]
    assert not leftovers, leftovers


def spec_file(name: str, text: str) -> Callable[[Env], None]:
    return lambda env: env.p(name).write_text(text)


# --- Hub repos, crafted commit by commit -------------------------------------------------------------------------------


def hub_repo(repo: str, files: Callable[[Env], dict[str, bytes]]) -> Callable[[Env], None]:
    def make(env: Env) -> None:
        from huggingface_hub import CommitOperationAdd, HfApi

        server = env.server
        api = HfApi(endpoint=server.url, token=TOKEN)
        api.create_repo(repo)
        ops = [CommitOperationAdd(path, data) for path, data in files(env).items()]
        if ops:
            api.create_commit(repo, ops, commit_message="crafted")
    return make


def side_registry(env: Env, vector_seed: int, **base_kw) -> Path:
    """A second registry (own SQLite file, whatever backend the test runs on) holding 'helpful' on another base."""
    other = env.p("other-reg")
    tensors = make_base(env.p("other-base"), seed=7, **base_kw)
    make_vector(env.p("o.safetensors"), tensors, seed=vector_seed)
    saved = os.environ.pop("PVREG_DATABASE_URL", None)
    try:
        assert env.cli("--registry", other, "add", "helpful", "--vector", env.p("o.safetensors"),
                       "--base", env.p("other-base")).exit_code == 0
    finally:
        if saved is not None:
            os.environ["PVREG_DATABASE_URL"] = saved
    return other


def published(env: Env, name: str, registry: Path | None = None) -> tuple[bytes, dict]:
    """(exported blob bytes, pvreg.json as a dict) exactly as ``pvreg push`` would publish ``name``."""
    from pvreg import Registry
    from pvreg.registry.hub.layout import json_bytes, published
    from pvreg.registry.sources.exported import write_exported

    out = env.p(f"pub-{name}.safetensors")
    where = f"sqlite:///{registry / 'registry.db'}" if registry is not None else None
    if registry is not None:
        env.monkeypatch.setenv("PVREG_HOME", str(registry))  # blobs of a URL-opened registry live in PVREG_HOME
    with Registry.open(where) as reg:
        public, doc = published(reg, reg.resolve(name))
        write_exported(reg.blob_path(name), public, out)
    if registry is not None:
        env.monkeypatch.setenv("PVREG_HOME", str(env.home))
    return out.read_bytes(), json.loads(json_bytes(doc))


def j(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def hub_json_mismatch(env: Env) -> dict[str, bytes]:
    blob, doc = published(env, "helpful")
    return {"helpful/vector.safetensors": blob, "helpful/pvreg.json": j({**doc, "dataset": "someone/else"})}


def hub_other_base(env: Env) -> dict[str, bytes]:
    """The blob was made for another base than its pvreg.json declares."""
    other = side_registry(env, 3)
    blob, doc = published(env, "helpful", other)
    from pvreg import Registry

    with Registry.open() as reg:
        ours = reg.resolve("helpful").base_fingerprint
    doc = {**doc, "base_fingerprint": ours, "base": {**doc["base"], "fingerprint": ours}}
    return {"helpful/vector.safetensors": blob, "helpful/pvreg.json": j(doc)}


def hub_wrong_shapes(env: Env) -> dict[str, bytes]:
    """Consistent metadata claiming our base, over tensors of another architecture."""
    other = side_registry(env, 3, cfg={"hidden_size": 32, "intermediate_size": 64})
    from pvreg import Registry
    from pvreg.registry.hub.layout import json_bytes, published
    from pvreg.registry.sources.exported import write_exported

    with Registry.open() as reg:
        ours = reg.resolve("helpful").base_fingerprint
    out = env.p("lie.safetensors")
    env.monkeypatch.setenv("PVREG_HOME", str(other))
    with Registry.open(f"sqlite:///{other / 'registry.db'}") as reg:
        meta = reg.resolve("helpful")
        public, doc = published(reg, meta)
        public = public.model_copy(update={"base_fingerprint": ours, "name": "shapes"})
        doc = doc.model_copy(update={"base_fingerprint": ours, "name": "shapes", "base": None})
        write_exported(reg.blob_path("helpful"), public, out)
    env.monkeypatch.setenv("PVREG_HOME", str(env.home))
    return {"shapes/vector.safetensors": out.read_bytes(), "shapes/pvreg.json": json_bytes(doc)}


def hub_missing_blob(env: Env) -> dict[str, bytes]:
    _, doc = published(env, "helpful")
    return {"helpful/pvreg.json": j(doc)}


def hub_bad_json(env: Env) -> dict[str, bytes]:
    blob, _ = published(env, "helpful")
    return {"helpful/vector.safetensors": blob, "helpful/pvreg.json": b"{not json"}


def hub_good(env: Env) -> dict[str, bytes]:
    blob, doc = published(env, "helpful")
    return {"helpful/vector.safetensors": blob, "helpful/pvreg.json": j(doc)}


# --- fix-hub: forged exports, hostile Hub entries, legacy rows, endpoints that are not a Hub ---------------------------


def _reheader(data: bytes, out: Path, **changes: Any) -> None:
    """Write the tensors of the export ``data`` to ``out`` with fields of its embedded pvreg metadata changed."""
    from safetensors import safe_open
    from safetensors.torch import load

    tmp = out.with_suffix(".src")
    tmp.write_bytes(data)
    with safe_open(str(tmp), "pt") as f:
        meta = json.loads(f.metadata()["pvreg"])
    tmp.unlink()
    save_file(load(data), str(out), metadata={"format": "pt", "pvreg": json.dumps({**meta, **changes})})


def forged(**changes: Any) -> Callable[[Env], None]:
    """``forged.safetensors``: helpful's export, its embedded metadata changed (a forgery)."""
    def make(env: Env) -> None:
        _reheader(exported(env).read_bytes(), env.p("forged.safetensors"), **changes)
    return make


def hub_forged(folder: str, *, base: dict | None = None, **changes: Any):
    """Files of a repo holding ``folder/``: helpful's files with ``changes`` made to pvreg.json AND the embedded
    metadata alike (a consistent forgery), ``base`` merged into pvreg.json's base facts; and the genuine helpful."""
    def files(env: Env) -> dict[str, bytes]:
        blob, doc = published(env, "helpful")
        out = env.p(f"forged-{len(folder)}.safetensors")
        _reheader(blob, out, name=folder, **changes)
        good = {"helpful/vector.safetensors": blob, "helpful/pvreg.json": j(doc)}
        doc = {**doc, "name": folder, **changes, "base": {**doc["base"], **(base or {})}}
        return {**good, f"{folder}/vector.safetensors": out.read_bytes(), f"{folder}/pvreg.json": j(doc)}
    return files


def hub_raw_card(repo: str, card: bytes) -> Callable[[Env], None]:
    """A repo whose README.md is ``card`` as is (posted to the commit API directly: the client refuses non-UTF-8)."""
    def make(env: Env) -> None:
        import base64

        import httpx2
        from huggingface_hub import HfApi

        HfApi(endpoint=env.server.url, token=TOKEN).create_repo(repo)
        lines = [{"key": "header", "value": {"summary": "owner card"}},
                 {"key": "file", "value": {"path": "README.md", "content": base64.b64encode(card).decode()}}]
        r = httpx2.post(f"{env.server.url}/api/models/{repo}/commit/main", headers={"Authorization": f"Bearer {TOKEN}"},
                        content="\n".join(json.dumps(x) for x in lines).encode())
        assert r.status_code == 200, r.text
    return make


def legacy_name(old: str, new: str) -> Callable[[Env], None]:
    """Rename vector ``old`` to ``new`` with SQL (as an older pvreg let a forged name in); ``{tail}`` = its sha ref."""
    def make(env: Env) -> None:
        from pvreg import Registry
        from pvreg.registry.settings import Settings
        from pvreg.registry.storage import tables
        from sqlalchemy import create_engine, update

        with Registry.open() as reg:
            sha = reg.resolve(old).sha256
        engine = create_engine(Settings.resolve().database_url)
        with engine.begin() as conn:
            conn.execute(update(tables.vectors).where(tables.vectors.c.name == old).values(name=new))
        engine.dispose()
        env.tail.append(f"sha256:{sha[:16]}")
    return make


def nothing_named_evil(env: Env) -> None:
    assert not list(env.tmp.parent.rglob("evil*")), "push created a path from a forged name"


def not_a_hub(status: int) -> Callable[[Env], None]:
    """``{url}`` is a plain web server answering every request with an HTML page (HTTP ``status``)."""
    def make(env: Env) -> None:
        from helpers.hubserver import NotAHub, isolate_hf_client

        isolate_hf_client(env.monkeypatch, env.tmp / "hf-home", token=TOKEN)
        env._server = NotAHub(status)  # stopped by the fixture like the Hub server
    return make


# --- setups: train (#14) ---


def pairs(name: str, rows: list | None = None, text: str | None = None) -> Callable[[Env], None]:
    """A preference-data file: JSON lines of ``rows`` (default: four good yes/no pairs), or ``text`` as is."""
    def make(env: Env) -> None:
        from helpers.models import write_jsonl, yes_no_pairs

        if text is not None:
            env.p(name).write_text(text)
        else:
            write_jsonl(env.p(name), rows if rows is not None else yes_no_pairs(4, seed=0))
    return make


def train_base(env: Env) -> None:
    """A tiny Llama with the training tokenizer at {t}/tb (the factory base has no tokenizer)."""
    from helpers.models import make_tiny_llama

    make_tiny_llama(env.p("tb"))


# --- setups: eval and sweep (#15) ---
PAIRS_OK = '{"prompt": "w1 w2", "chosen": " w3", "rejected": " w4"}\n'


def eval_file(name: str, text: str) -> Callable[[Env], None]:
    """An eval file in the case directory (a good pairs file as well, for the other flags)."""
    def make(env: Env) -> None:
        env.p("p.jsonl").write_text(PAIRS_OK)
        env.p(name).write_text(text)
    return make


def vector_on_other_base(env: Env) -> None:
    """``other@1``, made for a base other than helpful's and harmless's."""
    env.p("p.jsonl").write_text(PAIRS_OK)
    tensors = make_base(env.p("other-base"), seed=7)
    make_vector(env.p("other.safetensors"), tensors, seed=3)
    assert env.cli("add", "other", "--vector", env.p("other.safetensors"), "--base", env.p("other-base")).exit_code == 0


def full_out(env: Env) -> None:
    env.p("p.jsonl").write_text(PAIRS_OK)
    env.p("out").mkdir()
    env.p("out/keep.txt").write_text("mine")


def assert_kept(path: Path) -> None:
    assert path.read_text() == "mine"


EVAL = "eval --base {base} "
SWEEP = "sweep --base {base} --pairs {t}/p.jsonl --out {t}/out "
PAIRS = eval_file("p.jsonl", PAIRS_OK)



# --- setups: similarity and diff (#15) ---


# vector_on_other_base (above, with the eval setups) also serves similarity and diff.


def no_plot(env: Env) -> None:
    made = [p.name for p in env.tmp.iterdir() if p.suffix in (".png", ".txt") or p.name.startswith(".pvreg-tmp-")]
    assert not made, made
    assert not list(env.home.glob("*.png")), "a plot was written into the registry home"



# --- setups: LoRA export (#17) ---


def lora_vector(env: Env) -> Path:
    """Register ``lv``, a one-module LoRA adapter on the factory base; its factors blob's path."""
    adapter = env.p("adapter")
    adapter.mkdir()
    g = torch.Generator().manual_seed(3)
    save_file({"base_model.model." + N.removesuffix(".weight") + ".lora_A.weight": torch.randn(2, 16, generator=g),
               "base_model.model." + N.removesuffix(".weight") + ".lora_B.weight": torch.randn(32, 2, generator=g)},
              str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    r = env.cli("add", "lv", "--lora", adapter, "--base", env.base_dir, "--json")
    assert r.exit_code == 0, r.stderr
    sha = json.loads(r.stdout)["factors_sha256"]
    return env.home / "blobs" / "sha256" / sha[:2] / f"{sha[2:]}.safetensors"


def lora_factors_missing(env: Env) -> None:
    lora_vector(env).unlink()


def lora_factors_damaged(env: Env) -> None:
    path = lora_vector(env)
    path.chmod(0o644)
    path.write_bytes(b"not a safetensors file")


# --- setups: performance (#13) ---


def without_gpu(env: Env) -> None:
    """The case is about a missing GPU: where torch sees one, there is nothing to refuse."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA GPU here")


# --- the catalogue -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class C:
    id: str
    setup: Callable[[Env], None]
    argv: str
    code: int
    needle: str
    after: Callable[[Env], None] | None = None


def no_marker(env: Env) -> None:
    assert not env.p("pwned").exists(), "the pickle payload ran"


def no_registry_made(env: Env) -> None:
    assert not env.p("nowhere").exists(), "a registry was created behind a dangling --registry symlink"


ADD = "add v --base {base} --vector {t}/"
COMPOSE = "compose --base {base} --out {t}/out "
PULL = "pull --endpoint {url} "
TRAIN = "train v --base {base} --data {t}/"
LORA = "export-lora --out {t}/adapter "

CASES = [
    # safetensors structure
    C("st-empty-file", raw("e.safetensors", b""), ADD + "e.safetensors", 2, "shorter than the 8-byte header"),
    C("st-3-bytes", raw("s.safetensors", b"\1\2\3"), ADD + "s.safetensors", 2, "is 3 bytes, shorter than"),
    C("st-truncated-data", raw("t.safetensors", lambda e: good_bytes(e)[:-7]), ADD + "t.safetensors", 2, "tensor data covers 2048 of 2041"),
    C("st-trailing-bytes", raw("x.safetensors", lambda e: good_bytes(e) + b"\0" * 4), ADD + "x.safetensors", 2, "tensor data covers 2048 of 2052"),
    C("st-header-past-end", raw("h.safetensors", struct.pack("<Q", 10_000) + b"{}"), ADD + "h.safetensors", 2, "runs past the end"),
    C("st-header-over-100mb", raw("b.safetensors", struct.pack("<Q", 200 * 2**20) + b"{}"), ADD + "b.safetensors", 2, "exceeds the 100 MB limit"),
    C("st-header-huge-u64", raw("u.safetensors", b"\xff" * 8 + b"{}"), ADD + "u.safetensors", 2, "exceeds the 100 MB limit"),
    C("st-header-not-json", raw("j.safetensors", struct.pack("<Q", 4) + b"{{{{"), ADD + "j.safetensors", 2, "header is not JSON"),
    C("st-header-not-utf8", raw("j.safetensors", struct.pack("<Q", 4) + b"\xff\xfe{}"), ADD + "j.safetensors", 2, "header is not JSON"),
    C("st-header-array", header("a.safetensors", []), ADD + "a.safetensors", 2, "not a JSON object"),
    C("st-metadata-not-strings", header("m.safetensors", {"__metadata__": {"a": 1}}), ADD + "m.safetensors", 2, "__metadata__ must map strings"),
    C("st-entry-not-object", header("o.safetensors", {N: 5}), ADD + "o.safetensors", 2, "is not an object"),
    C("st-offsets-overlap", header("o.safetensors", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12), ADD + "o.safetensors", 2, "offsets overlap"),
    C("st-offsets-gap", header("o.safetensors", {N: {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12), ADD + "o.safetensors", 2, "leave a gap"),
    C("st-offsets-outside-data", header("o.safetensors", {N: {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4), ADD + "o.safetensors", 2, "covers 8 of 4 data bytes"),
    C("st-offsets-reversed", header("o.safetensors", {N: {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, b"\0" * 8), ADD + "o.safetensors", 2, "invalid data_offsets"),
    C("st-offsets-negative", header("o.safetensors", {N: {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}), ADD + "o.safetensors", 2, "invalid data_offsets"),
    C("st-length-not-dtype-x-shape", header("o.safetensors", {N: {"dtype": "F32", "shape": [2], "data_offsets": [0, 12]}}, b"\0" * 12), ADD + "o.safetensors", 2, "spans 12 bytes but F32[2] needs 8"),
    C("st-unknown-dtype", header("o.safetensors", {N: {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16), ADD + "o.safetensors", 2, "unknown dtype 'F128'"),
    C("st-negative-shape", header("o.safetensors", {N: {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}), ADD + "o.safetensors", 2, "invalid shape"),
    C("st-no-tensors", header("o.safetensors", {}), ADD + "o.safetensors", 2, "contains no tensors"),
    # header fields of the wrong type or range: each a specific message naming the tensor, never "internal error"
    C("st-dtype-list", header("o.safetensors", {N: entry(dtype=["F32"])}, b"\0" * 2048), ADD + "o.safetensors", 2, f"tensor '{N}' has unknown dtype ['F32']"),
    C("st-dtype-object", header("o.safetensors", {N: entry(dtype={"F32": 1})}, b"\0" * 2048), ADD + "o.safetensors", 2, "has unknown dtype {'F32': 1}"),
    C("st-dtype-null", header("o.safetensors", {N: entry(dtype=None)}, b"\0" * 2048), ADD + "o.safetensors", 2, "has unknown dtype None"),
    C("st-dtype-missing", header("o.safetensors", {N: {"shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), ADD + "o.safetensors", 2, f"tensor '{N}' has no 'dtype'"),
    C("st-shape-missing", header("o.safetensors", {N: {"dtype": "F32", "data_offsets": [0, 4]}}, b"\0" * 4), ADD + "o.safetensors", 2, "has no 'shape'"),
    C("st-offsets-missing", header("o.safetensors", {N: {"dtype": "F32", "shape": [1]}}, b"\0" * 4), ADD + "o.safetensors", 2, "has no 'data_offsets'"),
    C("st-offset-5000-digits", raw_header("o.safetensors", '{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, %s]}}' % ("9" * 5000)), ADD + "o.safetensors", 2, "header holds a 5000-digit integer"),
    C("st-dim-5000-digits-negative", raw_header("o.safetensors", '{"a": {"dtype": "F32", "shape": [-%s], "data_offsets": [0, 4]}}' % ("9" * 5000)), ADD + "o.safetensors", 2, "header holds a 5000-digit integer"),
    C("st-header-deeply-nested", raw_header("o.safetensors", '{"a": ' + "[" * 50_000 + "]" * 50_000 + "}"), ADD + "o.safetensors", 2, "header JSON is nested too deeply"),
    C("st-header-deeply-nested-objects", raw_header("o.safetensors", '{"a": ' * 50_000 + "1" + "}" * 50_000), ADD + "o.safetensors", 2, "header JSON is nested too deeply"),
    C("st-shape-bool", header("o.safetensors", {N: entry(shape=[True, 16], offsets=[0, 64])}, b"\0" * 64), ADD + "o.safetensors", 2, f"tensor '{N}' has an invalid shape [True, 16]: dimension 0 is a JSON boolean, not an integer"),
    C("st-offsets-bool", header("o.safetensors", {N: entry(shape=[1], offsets=[False, 4])}, b"\0" * 4), ADD + "o.safetensors", 2, f"tensor '{N}' has invalid data_offsets [False, 4]"),
    C("st-offsets-bool-end", header("o.safetensors", {N: entry(shape=[0], offsets=[0, False])}), ADD + "o.safetensors", 2, "has invalid data_offsets [0, False]"),
    C("st-shape-float", header("o.safetensors", {N: entry(shape=[32.0, 16], offsets=[0, 2048])}, b"\0" * 2048), ADD + "o.safetensors", 2, "dimension 0 is a JSON number, not an integer"),
    C("st-offsets-float", header("o.safetensors", {N: entry(offsets=[0, 2048.0])}, b"\0" * 2048), ADD + "o.safetensors", 2, "has invalid data_offsets [0, 2048.0]"),
    C("st-shape-string", header("o.safetensors", {N: entry(shape="32x16", offsets=[0, 2048])}, b"\0" * 2048), ADD + "o.safetensors", 2, "invalid shape '32x16': it is a JSON string, not an array"),
    C("st-shape-null", header("o.safetensors", {N: entry(shape=None, offsets=[0, 4])}, b"\0" * 4), ADD + "o.safetensors", 2, "it is a JSON null, not an array"),
    C("st-zero-size-dim-2-63", header("o.safetensors", {N: entry(shape=[0, 2**63], offsets=[0, 0])}), ADD + "o.safetensors", 2, "dimension 1 (9223372036854775808) is outside 0 <= n < 2**63"),
    C("st-zero-size-dim-2-64", header("o.safetensors", {N: entry(shape=[2**64, 0], offsets=[0, 0])}), ADD + "o.safetensors", 2, "dimension 0 (18446744073709551616) is outside"),
    C("st-zero-size-stride-overflow", header("o.safetensors", {N: entry(shape=[0, 2**62, 2**62], offsets=[0, 0])}), ADD + "o.safetensors", 2, "its dimensions multiply to 2**63 bytes or more"),
    C("st-numel-overflow", header("o.safetensors", {N: entry(shape=[2**31, 2**31], offsets=[0, 2**62])}), ADD + "o.safetensors", 2, "its dimensions multiply to 2**63 bytes or more"),
    C("st-nbytes-overflow", header("o.safetensors", {N: entry(dtype="F64", shape=[2**62], offsets=[0, 2**62])}), ADD + "o.safetensors", 2, "its dimensions multiply to 2**63 bytes or more"),
    C("st-offsets-2-63", header("o.safetensors", {N: entry(shape=[0], offsets=[2**63, 2**63])}), ADD + "o.safetensors", 2, "has invalid data_offsets [9223372036854775808, 9223372036854775808]"),
    C("st-offsets-three", header("o.safetensors", {N: entry(offsets=[0, 1024, 2048])}, b"\0" * 2048), ADD + "o.safetensors", 2, "has invalid data_offsets [0, 1024, 2048]"),
    C("st-offsets-one", header("o.safetensors", {N: entry(offsets=[2048])}, b"\0" * 2048), ADD + "o.safetensors", 2, "has invalid data_offsets [2048]"),
    C("st-offsets-object", header("o.safetensors", {N: entry(offsets={"begin": 0, "end": 2048})}, b"\0" * 2048), ADD + "o.safetensors", 2, "has invalid data_offsets {'begin': 0"),
    C("st-rank-100", header("o.safetensors", {N: entry(shape=[1] * 100, offsets=[0, 4])}, b"\0" * 4), ADD + "o.safetensors", 2, "it has 100 dimensions (at most 64)"),
    C("st-rank-100000", header("o.safetensors", {N: entry(shape=[1] * 100_000, offsets=[0, 4])}, b"\0" * 4), ADD + "o.safetensors", 2, "it has 100000 dimensions (at most 64)"),
    C("st-duplicate-tensor", raw_header("o.safetensors", '{"%s": %s, "%s": %s}' % (N, json.dumps(entry()), N, json.dumps(entry())), b"\0" * 2048), ADD + "o.safetensors", 2, f"tensor '{N}' appears twice in the header"),
    C("st-duplicate-field", raw_header("o.safetensors", '{"%s": {"dtype": "F32", "dtype": "F16", "shape": [32, 16], "data_offsets": [0, 2048]}}' % N, b"\0" * 2048), ADD + "o.safetensors", 2, f"entry for tensor '{N}' has the key 'dtype' twice"),
    C("st-duplicate-metadata", raw_header("o.safetensors", '{"__metadata__": {}, "__metadata__": {"a": "b"}, "%s": %s}' % (N, json.dumps(entry())), b"\0" * 2048), ADD + "o.safetensors", 2, "__metadata__ appears twice in the header"),
    C("st-metadata-duplicate-key", raw_header("o.safetensors", '{"__metadata__": {"a": "1", "a": "2"}, "%s": %s}' % (N, json.dumps(entry())), b"\0" * 2048), ADD + "o.safetensors", 2, "__metadata__ has the key 'a' twice"),
    C("st-metadata-array", header("o.safetensors", {"__metadata__": [], N: entry()}, b"\0" * 2048), ADD + "o.safetensors", 2, "__metadata__ must map strings to strings, not be a JSON array"),
    C("st-metadata-false", header("o.safetensors", {"__metadata__": False, N: entry()}, b"\0" * 2048), ADD + "o.safetensors", 2, "not be a JSON boolean"),
    C("st-metadata-empty-string", header("o.safetensors", {"__metadata__": "", N: entry()}, b"\0" * 2048), ADD + "o.safetensors", 2, "not be a JSON string"),
    C("st-metadata-zero", header("o.safetensors", {"__metadata__": 0, N: entry()}, b"\0" * 2048), ADD + "o.safetensors", 2, "not be a JSON integer"),
    C("st-metadata-lone-surrogate", raw_header("o.safetensors", '{"__metadata__": {"k": "\\ud800"}, "%s": %s}' % (N, json.dumps(entry())), b"\0" * 2048), ADD + "o.safetensors", 2, "__metadata__ entry 'k' contains a lone surrogate"),
    C("st-nan-literal", raw_header("o.safetensors", '{"%s": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}' % N, b"\0" * 4), ADD + "o.safetensors", 2, "header holds NaN, which is not JSON"),
    C("st-infinity-literal", raw_header("o.safetensors", '{"%s": {"dtype": "F32", "shape": [1], "data_offsets": [0, Infinity]}}' % N, b"\0" * 4), ADD + "o.safetensors", 2, "header holds Infinity, which is not JSON"),
    C("st-minus-infinity-literal", raw_header("o.safetensors", '{"__metadata__": {"a": -Infinity}, "%s": %s}' % (N, json.dumps(entry())), b"\0" * 2048), ADD + "o.safetensors", 2, "header holds -Infinity, which is not JSON"),
    C("st-name-lone-surrogate", raw_header("o.safetensors", '{"\\ud800": %s}' % json.dumps(entry()), b"\0" * 2048), ADD + "o.safetensors", 2, "tensor name '\\ud800' contains a lone surrogate U+D800, which UTF-8 cannot encode"),
    C("st-name-low-surrogate", raw_header("o.safetensors", '{"model.\\udc80": %s}' % json.dumps(entry()), b"\0" * 2048), ADD + "o.safetensors", 2, "contains a lone surrogate U+DC80"),
    C("st-name-empty", header("o.safetensors", {"": entry()}, b"\0" * 2048), ADD + "o.safetensors", 2, "tensor name '' is empty"),
    C("st-name-newline", header("o.safetensors", {"a\nb": entry()}, b"\0" * 2048), ADD + "o.safetensors", 2, "tensor name 'a\\nb' contains the control character U+000A"),
    C("st-name-nul", header("o.safetensors", {"a\0b": entry()}, b"\0" * 2048), ADD + "o.safetensors", 2, "contains the control character U+0000"),
    C("st-name-escape-sequence", header("o.safetensors", {"\x1b[31mred": entry()}, b"\0" * 2048), ADD + "o.safetensors", 2, "contains the control character U+001B"),
    C("st-name-del", header("o.safetensors", {"a\x7f": entry()}, b"\0" * 2048), ADD + "o.safetensors", 2, "contains the control character U+007F"),
    C("st-name-c1-control", header("o.safetensors", {"a\x85": entry()}, b"\0" * 2048), ADD + "o.safetensors", 2, "contains the control character U+0085"),
    C("st-name-line-separator", header("o.safetensors", {"a\u2028b": entry()}, b"\0" * 2048), ADD + "o.safetensors", 2, "contains the control character U+2028"),
    C("st-name-long-is-cut", header("o.safetensors", {"x" * 100_000: {"dtype": "F128", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), ADD + "o.safetensors", 2, "tensor 'xxxxxxxx"),
    C("st-header-utf8-bom", raw("o.safetensors", struct.pack("<Q", 5) + b"\xef\xbb\xbf{}"), ADD + "o.safetensors", 2, "header is not JSON"),
    C("st-header-trailing-text", raw_header("o.safetensors", "{} x"), ADD + "o.safetensors", 2, "header is not JSON (Extra data"),
    C("st-header-encoded-surrogate", raw("o.safetensors", struct.pack("<Q", 9) + b'{"\xed\xa0\x80":1}'), ADD + "o.safetensors", 2, "header is not JSON (invalid UTF-8 at byte 2)"),
    # paths that are not regular files: refused before anything opens them (a FIFO would block, /dev/zero never end)
    C("path-vector-is-fifo", fifo("v.safetensors"), ADD + "v.safetensors", 2, "v.safetensors: is a FIFO (named pipe), not a weight file or a model directory"),
    C("path-vector-links-to-dev-zero", symlink("z.safetensors", "/dev/zero"), ADD + "z.safetensors", 2, "z.safetensors: is a character device, not a weight file"),
    C("path-vector-dev-null", nothing, "add v --base {base} --vector /dev/null", 2, "/dev/null: is a character device"),
    C("path-fifo-in-vector-dir", fifo("d/model.safetensors"), ADD + "d", 2, "model.safetensors: is a FIFO (named pipe), not a regular file"),
    C("path-fifo-bin-in-vector-dir", fifo("d/pytorch_model.bin"), ADD + "d", 2, "pytorch_model.bin: is a FIFO (named pipe), not a regular file"),
    C("path-socket-in-vector-dir", lambda e: unix_socket(e.p("d/model.safetensors")), ADD + "d", 2, "model.safetensors: is a socket, not a regular file"),
    C("path-fifo-shard-named-by-index", both(index_naming("model-1.safetensors"), fifo("ix/model-1.safetensors")), ADD + "ix", 2, "model-1.safetensors: is a FIFO (named pipe), not a regular file"),
    C("path-fifo-index", fifo("ix/model.safetensors.index.json"), ADD + "ix", 2, "model.safetensors.index.json: is a FIFO (named pipe), not a regular file"),
    C("path-index-is-dev-zero", symlink("ix/model.safetensors.index.json", "/dev/zero"), ADD + "ix", 2, "is a character device, not a regular file"),
    C("path-fifo-in-base-dir", both(raw("g.safetensors", good_bytes), fifo("fb/model.safetensors")), "add v --vector {t}/g.safetensors --base {t}/fb", 2, "model.safetensors: is a FIFO (named pipe)"),
    C("path-fifo-fingerprint", fifo("f.safetensors"), "fingerprint {t}/f.safetensors", 2, "f.safetensors: is a FIFO (named pipe)"),
    C("path-fifo-compose-base", fifo("fb/model.safetensors"), "compose helpful --base {t}/fb --out {t}/out", 2, "is a FIFO (named pipe)"),
    C("path-index-shard-outside", index_naming("../g.safetensors"), ADD + "ix", 2, "shard name '../g.safetensors' is not a file name in"),
    C("path-index-shard-absolute", index_naming("/dev/zero"), ADD + "ix", 2, "shard name '/dev/zero' is not a file name in"),
    C("path-index-shard-wrong-suffix", index_naming("model.bin"), ADD + "ix", 2, "shard 'model.bin' is not a .safetensors file"),
    C("path-index-empty-weight-map", both(mkdir("ix"), spec_file("ix/model.safetensors.index.json", '{"weight_map": {}}')), ADD + "ix", 2, "weight_map names no shard"),
    C("path-index-weight-map-list", both(mkdir("ix"), spec_file("ix/model.safetensors.index.json", '{"weight_map": ["a.safetensors"]}')), ADD + "ix", 2, "not a valid checkpoint index"),
    C("path-index-shard-not-string", both(mkdir("ix"), spec_file("ix/model.safetensors.index.json", '{"weight_map": {"a": ["x"]}}')), ADD + "ix", 2, "not a valid checkpoint index"),
    C("path-index-deeply-nested", both(mkdir("ix"), spec_file("ix/model.safetensors.index.json", "[" * 100_000)), ADD + "ix", 2, "not a valid checkpoint index"),
    C("path-index-not-utf8", both(mkdir("ix"), raw("ix/model.safetensors.index.json", b'{"weight_map": {"a": "\xff"}}')), ADD + "ix", 2, "not a valid checkpoint index"),
    # dtypes and values
    C("dtype-int32", st("i.safetensors", full(1, torch.int32)), ADD + "i.safetensors", 2, "has dtype int32; preference vectors must be floating point"),
    C("dtype-int64", st("i.safetensors", full(1, torch.int64)), ADD + "i.safetensors", 2, "has dtype int64"),
    C("dtype-uint8", st("i.safetensors", full(1, torch.uint8)), ADD + "i.safetensors", 2, "has dtype uint8"),
    C("dtype-bool", st("i.safetensors", full(1, torch.bool)), ADD + "i.safetensors", 2, "has dtype bool"),
    C("dtype-float8", header("f8.safetensors", {N: {"dtype": "F8_E4M3", "shape": list(SHAPE), "data_offsets": [0, 512]}}, b"\0" * 512), ADD + "f8.safetensors", 2, "has dtype float8_e4m3fn"),
    C("value-nan", st("n.safetensors", full(float("nan"))), ADD + "n.safetensors", 2, f"tensor '{N}' contains NaN or Inf"),
    C("value-inf", st("n.safetensors", full(float("inf"))), ADD + "n.safetensors", 2, "contains NaN or Inf"),
    C("value-minus-inf", st("n.safetensors", full(float("-inf"))), ADD + "n.safetensors", 2, "contains NaN or Inf"),
    C("value-nan-bf16", st("n.safetensors", full(float("nan"), torch.bfloat16)), ADD + "n.safetensors", 2, "contains NaN or Inf"),
    C("value-inf-f16", st("n.safetensors", full(1e5, torch.float16)), ADD + "n.safetensors", 2, "contains NaN or Inf"),
    C("value-one-nan", st("n.safetensors", lambda: {N: torch.zeros(SHAPE).index_put_((torch.tensor([31]), torch.tensor([15])), torch.tensor(float("nan")))}), ADD + "n.safetensors", 2, "contains NaN or Inf"),
    # fit to the base
    C("base-shape-mismatch", st("s.safetensors", full(0.1, shape=(32, 17))), ADD + "s.safetensors", 2, f"'{N}' has shape [32, 17] but the base has [32, 16]"),
    C("base-missing-tensor", st("m.safetensors", lambda: {"model.nope.weight": torch.zeros(2)}), ADD + "m.safetensors", 2, "'model.nope.weight' does not exist in"),
    C("base-path-missing", raw("g.safetensors", good_bytes), "add v --vector {t}/g.safetensors --base {t}/no-such-base", 2, "no-such-base"),
    C("base-symlink-loop", both(raw("g.safetensors", good_bytes), symlink("loop", "loop")), "add v --vector {t}/g.safetensors --base {t}/loop", 2, "no such file or directory"),
    C("base-unknown-fingerprint", raw("g.safetensors", good_bytes), "add v --vector {t}/g.safetensors --base 0123456789abcdef", 2, "no known base fingerprint starts with it"),
    # paths that are not the expected file
    C("path-missing", nothing, ADD + "absent.safetensors", 2, "absent.safetensors: no such file or directory"),
    C("path-empty-directory", mkdir("empty"), ADD + "empty", 2, "no .safetensors or .bin weight files"),
    C("path-directory-named-like-file", mkdir("dir.safetensors"), ADD + "dir.safetensors", 2, "no .safetensors or .bin weight files"),
    C("path-directory-as-shard", index_naming_dir, ADD + "idx", 2, "names missing shard shard.safetensors"),
    C("path-index-not-json", both(mkdir("idx"), spec_file("idx/model.safetensors.index.json", "{")), ADD + "idx", 2, "not a valid checkpoint index"),
    C("path-symlink-loop", symlink("loop.safetensors", "loop.safetensors"), ADD + "loop.safetensors", 2, "loop.safetensors: no such file or directory"),
    C("path-symlink-loop-in-dir", symlink("d/model.safetensors", "model.safetensors"), ADD + "d", 2, "no .safetensors or .bin weight files"),
    C("path-dangling-symlink", symlink("dangling.safetensors", "nowhere.safetensors"), ADD + "dangling.safetensors", 2, "no such file or directory"),
    C("path-unsupported-suffix", raw("v.txt", b"hello"), ADD + "v.txt", 2, "unsupported file type"),
    C("path-tensor-in-two-shards", both(mkdir("sh"), st("sh/a.safetensors", full(0.1)), st("sh/b.safetensors", full(0.2))), ADD + "sh", 2, f"tensor '{N}' appears in both a.safetensors and b.safetensors"),
    # pickle checkpoints
    C("bin-reduce-payload-zip", reduce_zip, ADD + "evil.bin", 2, "refused: the pickle needs code execution", no_marker),
    C("bin-reduce-payload-legacy", reduce_legacy, ADD + "evil-legacy.bin", 2, "refused: the pickle needs code execution", no_marker),
    C("bin-zip-not-torch", zip_not_torch, ADD + "notorch.bin", 2, "not a loadable PyTorch checkpoint"),
    C("bin-random-bytes", raw("r.bin", b"\x00garbage" * 10), ADD + "r.bin", 2, "r.bin: refused"),
    C("bin-not-a-mapping", lambda e: torch.save([torch.zeros(2)], str(e.p("l.bin"))), ADD + "l.bin", 2, "not a mapping of names to tensors"),
    C("bin-int-tensor", lambda e: torch.save({N: torch.zeros(SHAPE, dtype=torch.int16)}, str(e.p("i.bin"))), ADD + "i.bin", 2, "has dtype int16"),
    # .bin keys and values: the same name rules as safetensors, dense CPU tensors of a supported dtype only
    C("bin-key-lone-surrogate", bin_of("k.bin", lambda: {"\ud800": torch.zeros(SHAPE)}), ADD + "k.bin", 2, "tensor name '\\ud800' contains a lone surrogate U+D800"),
    C("bin-key-empty", bin_of("k.bin", lambda: {"": torch.zeros(SHAPE)}), ADD + "k.bin", 2, "tensor name '' is empty"),
    C("bin-key-control-char", bin_of("k.bin", lambda: {"a\nb": torch.zeros(SHAPE)}), ADD + "k.bin", 2, "tensor name 'a\\nb' contains the control character U+000A"),
    C("bin-key-int", bin_of("k.bin", lambda: {1: torch.zeros(SHAPE)}), ADD + "k.bin", 2, "not a mapping of names to tensors (key 1 is of type int)"),
    C("bin-key-tuple", bin_of("k.bin", lambda: {(N,): torch.zeros(SHAPE)}), ADD + "k.bin", 2, "is of type tuple"),
    C("bin-value-int", bin_of("k.bin", lambda: {N: 3}), ADD + "k.bin", 2, f"not a mapping of names to tensors ('{N}' is of type int)"),
    C("bin-value-list", bin_of("k.bin", lambda: {N: [torch.zeros(SHAPE)]}), ADD + "k.bin", 2, "is of type list"),
    C("bin-top-level-tensor", bin_of("k.bin", lambda: torch.zeros(SHAPE)), ADD + "k.bin", 2, "it holds a value of type Tensor"),
    C("bin-sparse", bin_of("k.bin", lambda: {N: torch.zeros(SHAPE).to_sparse()}), ADD + "k.bin", 2, f"tensor '{N}' is a sparse_coo tensor; only dense tensors are supported"),
    C("bin-sparse-csr", bin_of("k.bin", lambda: {N: torch.eye(32, 16).to_sparse_csr()}), ADD + "k.bin", 2, "is a sparse_csr tensor"),
    C("bin-meta-device", bin_of("k.bin", lambda: {N: torch.empty(SHAPE, device="meta")}), ADD + "k.bin", 2, "is on device meta and holds no data"),
    C("bin-complex", bin_of("k.bin", lambda: {N: torch.zeros(SHAPE, dtype=torch.complex64)}), ADD + "k.bin", 2, "has unsupported dtype complex64"),
    C("bin-quantized", bin_of("k.bin", lambda: {N: torch.quantize_per_tensor(torch.zeros(SHAPE), 0.1, 0, torch.quint8)}), ADD + "k.bin", 2, "has unsupported dtype quint8"),
    C("bin-expanded-view-bomb", bin_of("k.bin", lambda: {N: torch.zeros(1).expand(2**40)}), ADD + "k.bin", 2, "is an expanded view (4398046511104 bytes of values over 4 stored bytes)"),
    C("bin-short-record", bin_short_record, ADD + "short.bin", 2, "record size (16 bytes) does not match expected size"),
    C("bin-is-fifo", fifo("f.bin"), ADD + "f.bin", 2, "f.bin: is a FIFO (named pipe)"),
    # spec files that are not small regular text files (read with a cap, never blocking)
    C("spec-file-dev-zero", nothing, COMPOSE + "--spec /dev/zero", 2, "/dev/zero: is a character device, not a regular file"),
    C("spec-file-fifo", fifo("s.yaml"), COMPOSE + "--spec {t}/s.yaml", 2, "s.yaml: is a FIFO (named pipe), not a regular file"),
    C("spec-file-directory", mkdir("s.yaml"), COMPOSE + "--spec {t}/s.yaml", 2, "s.yaml: is a directory, not a regular file"),
    C("spec-file-too-big", raw("s.yaml", b"#" * (16 * 2**20 + 1)), COMPOSE + "--spec {t}/s.yaml", 2, "spec file is larger than the 16 MiB limit"),
    C("spec-file-not-utf8", raw("s.yaml", b"terms: [\xff]"), COMPOSE + "--spec {t}/s.yaml", 2, "spec file is not UTF-8 text"),
    C("spec-file-deeply-nested-yaml", spec_file("s.yaml", "[" * 100_000), COMPOSE + "--spec {t}/s.yaml", 2, "not valid YAML (nested too deeply)"),
    C("spec-file-deeply-nested-json", spec_file("s.json", "[" * 100_000), COMPOSE + "--spec {t}/s.json", 2, "not valid JSON (nested too deeply)"),
    C("spec-file-symlink-loop", symlink("s.yaml", "s.yaml"), COMPOSE + "--spec {t}/s.yaml", 2, "no such spec file"),
    # pvreg exports
    C("export-tampered", export_tampered, "add --vector {t}/helpful-export.safetensors", 2, "the file was modified"),
    C("export-bad-metadata", st("m.safetensors", full(0.1), {"pvreg": "{not json"}), ADD + "m.safetensors", 2, "embedded pvreg metadata is invalid"),
    C("export-other-base", both(other_base, exported), "add --vector {t}/helpful-export.safetensors --base {t}/other-base", 2, "was made for base"),
    C("export-exists", raw("taken.safetensors", b"x"), "export helpful {t}/taken.safetensors", 2, "already exists (use --force"),
    C("export-to-directory", mkdir("outdir"), "export helpful {t}/outdir --force", 2, "is a directory"),
    # names, aliases, references, options
    C("name-slash", raw("g.safetensors", good_bytes), "add a/b --base {base} --vector {t}/g.safetensors", 2, "invalid name 'a/b': may only contain"),
    C("name-backslash", raw("g.safetensors", good_bytes), "add 'a\\b' --base {base} --vector {t}/g.safetensors", 2, "may only contain"),
    C("name-dotdot", raw("g.safetensors", good_bytes), "add .. --base {base} --vector {t}/g.safetensors", 2, "invalid name '..'"),
    C("name-dot", raw("g.safetensors", good_bytes), "add . --base {base} --vector {t}/g.safetensors", 2, "invalid name '.'"),
    C("name-traversal", raw("g.safetensors", good_bytes), "add ../../etc --base {base} --vector {t}/g.safetensors", 2, "may only contain"),
    C("name-control-char", raw("g.safetensors", good_bytes), "add a\x01b --base {base} --vector {t}/g.safetensors", 2, "invalid name 'a\\x01b'"),
    C("name-newline", both(raw("g.safetensors", good_bytes), tail("a\nb")), "add --base {base} --vector {t}/g.safetensors {tail}", 2, "invalid name 'a\\nb'"),
    C("name-escape-sequence", both(raw("g.safetensors", good_bytes), tail("a\x1b[31mred")), "add --base {base} --vector {t}/g.safetensors {tail}", 2, "invalid name 'a\\x1b[31mred'"),
    C("name-65-chars", raw("g.safetensors", good_bytes), "add " + "a" * 65 + " --base {base} --vector {t}/g.safetensors", 2, "is 65 characters (at most 64)"),
    C("name-empty", raw("g.safetensors", good_bytes), "add '' --base {base} --vector {t}/g.safetensors", 2, "invalid name '': is empty"),
    C("name-uppercase", raw("g.safetensors", good_bytes), "add Helpful --base {base} --vector {t}/g.safetensors", 2, "may only contain"),
    C("name-unicode", raw("g.safetensors", good_bytes), "add héllo --base {base} --vector {t}/g.safetensors", 2, "may only contain"),
    C("name-missing", raw("g.safetensors", good_bytes), "add --base {base} --vector {t}/g.safetensors", 2, "a vector name is required"),
    C("name-dot-git", raw("g.safetensors", good_bytes), "add .git --base {base} --vector {t}/g.safetensors", 2, "invalid name '.git': cannot start with '.'"),
    C("name-leading-dot", raw("g.safetensors", good_bytes), "add .hidden --base {base} --vector {t}/g.safetensors", 2, "cannot start with '.'"),
    C("alias-leading-dot", nothing, "tag helpful@1 .prod", 2, "invalid alias '.prod': cannot start with '.'"),
    C("compose-register-dot-git", nothing, "compose helpful --vector-only --register .git", 2, "invalid name '.git'"),
    C("export-forged-name-traversal", forged(name="../../Evil Name\x1b[31m"), "add --vector {t}/forged.safetensors", 2, "embedded pvreg metadata: invalid name '../../Evil Name\\x1b[31m'"),
    C("export-forged-name-70-chars", forged(name="a" * 70), "add --vector {t}/forged.safetensors", 2, "is 70 characters (at most 64)"),
    C("export-forged-name-dot-git", forged(name=".git"), "add --vector {t}/forged.safetensors", 2, "invalid name '.git'"),
    C("export-forged-name-with-explicit-name", forged(name="Evil Name"), "add mine --vector {t}/forged.safetensors", 2, "embedded pvreg metadata: invalid name 'Evil Name'"),
    C("export-forged-dataset-escape", forged(dataset="PKU\x1b]0;pwned\x07"), "add --vector {t}/forged.safetensors", 2, "invalid dataset 'PKU\\x1b]0;pwned\\x07'"),
    C("export-forged-dataset-too-long", forged(dataset="d" * 300), "add --vector {t}/forged.safetensors", 2, "is 300 characters (at most 256)"),
    C("export-forged-tag-key-129", forged(tags={"k" * 129: "v"}), "add --vector {t}/forged.safetensors", 2, "invalid tag key"),
    C("export-forged-tag-value-control", forged(tags={"k": "a\x1b[2Jb"}), "add --vector {t}/forged.safetensors", 2, "invalid value of tag 'k'"),
    C("export-forged-message-osc", forged(message="hi\x1b]2;title\x07"), "add --vector {t}/forged.safetensors", 2, "invalid message"),
    C("export-forged-description-bidi", forged(description="txt\u202eexe"), "add --vector {t}/forged.safetensors", 2, "invalid description"),
    C("export-forged-parent-ref", forged(parents=[{"ref": "../../x@1", "sha256": "a" * 64}]), "add --vector {t}/forged.safetensors", 2, "invalid parent reference '../../x@1'"),
    C("export-forged-alias", forged(aliases=["Bad Alias"]), "add --vector {t}/forged.safetensors", 2, "invalid alias 'Bad Alias'"),
    C("dataset-escape", both(raw("g.safetensors", good_bytes), tail("a\x1b[31mb")), ADD + "g.safetensors --dataset {tail}", 2, "invalid dataset 'a\\x1b[31mb'"),
    C("dataset-newline", both(raw("g.safetensors", good_bytes), tail("a\nb")), ADD + "g.safetensors --dataset {tail}", 2, "contains the control character \\n"),
    C("dataset-too-long", raw("g.safetensors", good_bytes), ADD + "g.safetensors --dataset " + "d" * 257, 2, "is 257 characters (at most 256)"),
    C("tag-key-control", both(raw("g.safetensors", good_bytes), tail("k\x07=v")), ADD + "g.safetensors --tag {tail}", 2, "invalid tag key 'k\\x07'"),
    C("tag-value-escape", both(raw("g.safetensors", good_bytes), tail("k=\x1b]0;x\x07")), ADD + "g.safetensors --tag {tail}", 2, "invalid value of tag 'k'"),
    C("message-escape", both(raw("g.safetensors", good_bytes), tail("\x1b[2J")), ADD + "g.safetensors -m {tail}", 2, "invalid message '\\x1b[2J'"),
    C("description-bidi", both(raw("g.safetensors", good_bytes), tail("a\u202eb")), ADD + "g.safetensors --description {tail}", 2, "invalid description 'a\\u202eb'"),
    C("alias-slash", nothing, "tag helpful@1 a/b", 2, "invalid alias 'a/b'"),
    C("alias-number", nothing, "tag helpful@1 12", 2, "an alias cannot be a number"),
    C("alias-untag-unknown", nothing, "untag helpful nosuch", 2, "has no alias 'nosuch'"),
    C("ref-version-zero", nothing, "show helpful@0", 2, "versions start at 1"),
    C("ref-empty-alias", nothing, "show helpful@", 2, "is empty"),
    C("ref-sha-not-hex", nothing, "show sha256:xyz", 2, "needs 8 to 64 hex digits"),
    C("ref-sha-too-short", nothing, "show sha256:abc", 2, "needs 8 to 64 hex digits"),
    C("ref-unknown-name", nothing, "show nosuch", 2, "no vector named 'nosuch'"),
    C("ref-unknown-sha", nothing, "show sha256:00000000", 2, "no version has that sha256"),
    C("ref-ambiguous-sha", fake_ambiguous, "show sha256:abcdef01", 2, "ambiguous reference 'sha256:abcdef01': matches 2 blobs"),
    C("opt-bad-sign", raw("g.safetensors", good_bytes), ADD + "g.safetensors --sign 2", 2, "invalid sign 2"),
    C("opt-bad-tag", raw("g.safetensors", good_bytes), ADD + "g.safetensors --tag novalue", 2, "invalid tag 'novalue'"),
    C("opt-two-sources", raw("g.safetensors", good_bytes), ADD + "g.safetensors --finetuned {base}", 2, "give exactly one source"),
    C("opt-no-source", nothing, "add v --base {base}", 2, "give exactly one source"),
    C("registry-is-a-file", raw("f.txt", b"x"), "--registry {t}/f.txt list", 2, "f.txt: is a file, not a directory"),
    C("registry-under-a-file", raw("f.txt", b"x"), "--registry {t}/f.txt/reg add v --vector {t}/f.txt --base {base}", 2, "f.txt is a file, so the registry cannot be created under it"),
    C("registry-dangling-symlink", symlink("reg-link", "nowhere"), "--registry {t}/reg-link list", 2, "is a symbolic link to a missing target", no_registry_made),
    C("gc-all-unreferenced-is-a-flag", nothing, "gc --all-unreferenced=yes", 2, "Option '--all-unreferenced' does not take a value"),
    # compose spec tokens
    C("spec-missing-coefficient", nothing, COMPOSE + "helpful:", 2, "'helpful:': missing coefficient after ':'"),
    C("spec-missing-ref", nothing, COMPOSE + ":1", 2, "':1': missing reference before ':'"),
    C("spec-coefficient-word", nothing, COMPOSE + "helpful:abc", 2, "coefficient 'abc' is not a number"),
    C("spec-coefficient-overflow", nothing, COMPOSE + "helpful:1e400", 2, "coefficient '1e400' is not finite"),
    C("spec-coefficient-nan", nothing, COMPOSE + "helpful:nan", 2, "coefficient 'nan' is not a number"),
    C("spec-coefficient-inf", nothing, COMPOSE + "helpful:-inf", 2, "coefficient '-inf' is not a number"),
    C("spec-coefficient-underscore", nothing, COMPOSE + "helpful:1_0", 2, "coefficient '1_0' is not a number"),
    C("spec-coefficient-unicode-digit", nothing, COMPOSE + "helpful:\u0661", 2, "is not a number"),
    C("spec-coefficient-fullwidth", nothing, COMPOSE + "helpful:\uff11.5", 2, "is not a number"),
    C("spec-two-coefficients", nothing, COMPOSE + "helpful:1:2", 2, "expected REF:COEF with a single coefficient"),
    C("spec-sha-two-coefficients", nothing, COMPOSE + "sha256:abcdef01:1:2", 2, "single coefficient"),
    C("spec-bad-ref", nothing, COMPOSE + "Helpful:1", 2, "invalid spec token 'Helpful:1'"),
    C("spec-duplicate-ref", nothing, COMPOSE + "helpful helpful@1:0.5", 2, "duplicate vector: 'helpful' and 'helpful@1' both resolve to helpful@1"),
    C("spec-duplicate-blob", same_blob_twice, COMPOSE + "helpful twin", 2, "have the same sha256"),
    C("spec-unknown-ref", nothing, COMPOSE + "helpful nosuch:1", 2, "no vector named 'nosuch'"),
    C("spec-unknown-version", nothing, COMPOSE + "helpful@7", 2, "helpful has no version 7"),
    C("spec-unknown-alias", nothing, COMPOSE + "helpful@beta", 2, "helpful has no alias 'beta'"),
    C("spec-ambiguous-sha", fake_ambiguous, COMPOSE + "sha256:abcdef01:0.5", 2, "ambiguous reference 'sha256:abcdef01'"),
    C("spec-nothing", nothing, COMPOSE.strip(), 2, "nothing to compose"),
    C("spec-file-and-tokens", spec_file("s.yaml", "terms: [{ref: helpful}]"), COMPOSE + "helpful --spec {t}/s.yaml", 2, "not both"),
    C("spec-file-not-yaml", spec_file("s.yaml", "terms: [unclosed"), COMPOSE + "--spec {t}/s.yaml", 2, "not valid YAML"),
    C("spec-file-not-mapping", spec_file("s.json", "[1, 2]"), COMPOSE + "--spec {t}/s.json", 2, "must be a mapping"),
    C("spec-file-bad-term", spec_file("s.json", '{"terms": [{"ref": "helpful", "coefficient": "x"}]}'), COMPOSE + "--spec {t}/s.json", 2, "invalid spec at terms.0.coefficient"),
    C("spec-file-missing", nothing, COMPOSE + "--spec {t}/none.yaml", 2, "no such spec file"),
    C("compose-register-needs-vector-only", nothing, COMPOSE + "helpful --register x", 2, "--register needs --vector-only"),
    C("compose-register-bad-name", nothing, "compose helpful --vector-only --register a/b", 2, "invalid name 'a/b'"),
    C("compose-no-out", nothing, "compose helpful --base {base}", 2, "--out is required"),
    C("compose-unknown-method", nothing, COMPOSE + "helpful --method nosuch", 2, "nosuch"),
    C("compose-bad-density", nothing, COMPOSE + "helpful --method ties --density 2", 2, "density"),
    C("compose-bad-dtype", nothing, COMPOSE + "helpful --dtype int8", 2, "invalid dtype 'int8'"),
    C("compose-bad-shard-size", nothing, COMPOSE + "helpful --shard-size 0", 2, "invalid shard size '0'"),
    C("compose-out-not-empty", raw("out", b"x"), COMPOSE + "helpful", 2, "already exists and is not empty"),
    C("compose-out-is-base", nothing, "compose helpful --base {base} --out {base} --force", 2, "refusing to write there, it is the base model"),
    C("compose-other-base", other_base, "compose helpful --base {t}/other-base --out {t}/out", 2, "base mismatch"),
    # outputs that would overwrite the registry, its database or blobs, or an input (after resolving links)
    C("out-is-home", nothing, "compose helpful --base {base} --out {home} --force", 2, "it is the registry home"),
    C("out-contains-home", nothing, "compose helpful --base {base} --out {home}/.. --force", 2, "it contains the registry home"),
    C("out-inside-home", nothing, "compose helpful --base {base} --out {home}/merged", 2, "it lies inside the registry home"),
    C("out-home-via-symlink", symlink("link", "../pvreg-home"), "compose helpful --base {base} --out {t}/link --force", 2, "it is the registry home"),
    C("out-home-via-dotdot", nothing, "compose helpful --base {base} --out {t}/x/../../pvreg-home --force", 2, "it is the registry home"),
    C("out-home-parent-via-symlink", symlink("up", ".."), "compose helpful --base {base} --out {t}/up --force", 2, "it contains the registry home"),
    C("export-over-database", nothing, "export helpful {home}/registry.db --force", 2, "refusing to write there, it "),
    C("export-over-wal", nothing, "export helpful {home}/registry.db-wal --force", 2, "refusing to write there, it "),
    C("export-over-blob", blob_of("helpful"), "export helpful --force", 2, "it lies inside the registry's blob store"),
    C("export-over-blob-via-symlink", both(blob_of("helpful"), lambda e: os.symlink(e.tail.pop(), e.p("b.safetensors"))), "export helpful {t}/b.safetensors --force", 2, "it lies inside the registry's blob store"),
    C("export-into-home", nothing, "export helpful {home}/helpful.safetensors", 2, "it lies inside the registry home"),
    C("vector-only-over-blob", blob_of("harmless"), "compose helpful --vector-only --force --out", 2, "it lies inside the registry's blob store"),
    C("vector-only-over-own-input", blob_of("helpful"), "compose helpful --vector-only --force --out", 2, "it is the blob of helpful@1"),
    C("vector-only-over-base-weights", nothing, "compose helpful --vector-only --force --out {base}/model.safetensors", 2, "it is a file of the base model"),
    C("vector-only-over-base-weights-hardlink", lambda e: os.link(e.base_dir / "model.safetensors", e.p("hard.safetensors")), "compose helpful --base {base} --vector-only --force --out {t}/hard.safetensors", 2, "it is a file of the base model"),
    C("out-inside-base", nothing, "compose helpful --base {base} --out {base}/merged", 2, "it lies inside the base model"),
    C("out-parent-is-file", raw("file", b"x"), "compose helpful --base {base} --out {t}/file/merged", 2, "file/merged: cannot be created, "),
    C("export-parent-is-file", raw("file", b"x"), "export helpful {t}/file/sub/v.safetensors", 2, "is not a directory"),
    C("vector-only-parent-is-file", raw("file", b"x"), "compose helpful --vector-only --out {t}/file/v.safetensors", 2, "is not a directory"),
    C("out-is-symlink-without-force", both(mkdir("real"), symlink("lnk", "real")), "compose helpful --base {base} --out {t}/lnk", 2, "already exists (a symbolic link"),
    # coefficients and values the output cannot hold
    C("spec-coefficient-huge", nothing, COMPOSE + "helpful:1e300", 2, "coefficient 1e+300 overflows the float32 accumulator", no_output),
    C("spec-coefficient-underflow", nothing, COMPOSE + "helpful:1e-400", 2, "coefficient '1e-400' underflows to 0"),
    C("spec-coefficient-underflow-decimal", nothing, COMPOSE + "helpful:0.0000001e-320", 2, "underflows to 0"),
    C("compose-inf-after-cast", nothing, COMPOSE + "helpful:1e7 --dtype float16", 2, "would contain Inf/NaN as float16", no_output),
    C("compose-inf-after-cast-vector-only", nothing, "compose helpful:1e7 --vector-only --dtype float16 --out {t}/out", 2, "would contain Inf/NaN as float16", no_output),
    C("compose-base-dir-fifo", base_with_fifo, "compose helpful --base {t}/fifo-base --out {t}/out", 2, "notes.txt: not a regular file", no_output),
    # Hub
    C("hub-json-disagrees-with-blob", hub_repo("alice/mismatch", hub_json_mismatch), PULL + "alice/mismatch", 1, "pvreg.json says dataset='someone/else'"),
    C("hub-blob-for-other-base", hub_repo("alice/otherbase", hub_other_base), PULL + "alice/otherbase", 1, "pvreg.json says base_fingerprint="),
    C("hub-blob-wrong-shapes", hub_repo("alice/shapes", hub_wrong_shapes), PULL + "alice/shapes", 2, "has shape"),
    C("hub-missing-blob", hub_repo("alice/noblob", hub_missing_blob), PULL + "alice/noblob", 1, "pvreg.json is there but vector.safetensors is missing"),
    C("hub-json-not-json", hub_repo("alice/badjson", hub_bad_json), PULL + "alice/badjson", 1, "not valid pvreg metadata"),
    C("hub-no-vectors", hub_repo("alice/empty", lambda e: {"README.md": b"# nothing\n"}), PULL + "alice/empty", 2, "holds no pvreg vectors"),
    C("hub-missing-name", hub_repo("alice/good", hub_good), PULL + "alice/good --name zzz", 2, "no vector named zzz"),
    C("hub-missing-repo", lambda e: e.server, PULL + "alice/missing", 2, "not found"),
    C("hub-missing-revision", hub_repo("alice/good", hub_good), PULL + "alice/good@nope", 2, "revision 'nope' not found"),
    C("hub-bad-repo-id", nothing, "pull 'not a repo'", 2, "invalid Hub repo"),
    C("hub-bad-endpoint", nothing, "pull alice/good --endpoint ftp://example.org", 2, "invalid Hub endpoint"),
    C("hub-repo-double-dash", nothing, "pull alice/a--b", 2, "invalid Hub repo 'alice/a--b': the Hub does not allow '--' or '..'"),
    C("hub-repo-dot-git", nothing, "pull alice/x.git", 2, "ending in '.git'"),
    C("hub-repo-dotdot", nothing, "remote ls alice/..", 2, "invalid Hub repo 'alice/..'"),
    C("hub-repo-97-chars", nothing, "pull alice/" + "n" * 97, 2, "NAME is 97 characters (at most 96)"),
    C("hub-repo-leading-dash", nothing, "pull -- -alice/x", 2, "invalid Hub repo '-alice/x'"),
    C("hub-repo-trailing-dot", nothing, "pull alice/x.", 2, "invalid Hub repo 'alice/x.'"),
    C("hub-push-bad-repo", nothing, "push helpful --repo alice/a--b", 2, "invalid Hub repo 'alice/a--b'"),
    C("hub-folder-not-a-name", hub_repo("alice/evil", hub_forged("Evil Name")), PULL + "alice/evil", 2, "the folder's name is not a valid vector name: invalid name 'Evil Name'"),
    C("hub-folder-70-chars", hub_repo("alice/long", hub_forged("a" * 70)), PULL + "alice/long", 2, "is 70 characters (at most 64)"),
    C("hub-forged-dataset", hub_repo("alice/ds", hub_forged("sneaky", dataset="x\x1b[2J")), PULL + "alice/ds", 2, "embedded pvreg metadata: invalid dataset 'x\\x1b[2J'"),
    C("hub-forged-tag-key-129", hub_repo("alice/tag", hub_forged("sneaky", tags={"k" * 129: "v"})), PULL + "alice/tag", 2, "invalid tag key"),
    C("hub-forged-parent", hub_repo("alice/par", hub_forged("sneaky", parents=[{"ref": "x", "sha256": "a" * 64}])), PULL + "alice/par", 2, "invalid parent reference 'x'"),
    C("hub-forged-base-label", hub_repo("alice/lbl", hub_forged("sneaky", base={"label": "b\x1b[2J"})), PULL + "alice/lbl", 2, "base: invalid base label"),
    C("hub-forged-base-hub-id", hub_repo("alice/hid", hub_forged("sneaky", base={"hub_id": "acme/\u202ex"})), PULL + "alice/hid", 2, "base: invalid base Hub id 'acme/\\u202ex'"),
    C("hub-forged-base-architecture", hub_repo("alice/arch", hub_forged("sneaky", base={"architecture": "L" * 300})), PULL + "alice/arch", 2, "invalid base architecture"),
    C("hub-card-not-utf8", hub_raw_card("alice/latin1", "# Modèle à moi\n".encode("latin-1")), "push helpful --repo alice/latin1 --endpoint {url}", 2, "README.md in the repo is not UTF-8 text (byte 0xe8 at offset 5)"),
    C("hub-push-legacy-bad-name", both(lambda e: e.server, legacy_name("harmless", "../../evil")), "push --repo alice/new --create --endpoint {url} {tail}", 2, "the stored name is not a valid vector name", nothing_named_evil),
    C("hub-endpoint-html", not_a_hub(200), PULL + "alice/good", 2, "answered with something that is not JSON"),
    C("hub-endpoint-404", not_a_hub(404), "push helpful --repo alice/good --create --endpoint {url}", 2, "answered HTTP 404 (text/html) to an API request"),
    # the command line itself (click's usage errors, reported like every other bad input)
    C("cli-unknown-command", nothing, "nosuch", 2, "No such command 'nosuch'. (see 'pvreg --help')"),
    C("cli-unknown-subcommand", nothing, "db nosuch", 2, "No such command 'nosuch'. (see 'pvreg db --help')"),
    C("cli-unknown-option", nothing, "list --bogus", 2, "No such option: --bogus (see 'pvreg list --help')"),
    C("cli-unknown-global-option", nothing, "--bogus list", 2, "No such option: --bogus"),
    C("cli-missing-argument", nothing, "show", 2, "Missing argument 'ref'"),
    C("cli-option-not-an-int", nothing, ADD + "x.safetensors --sign abc", 2, "Invalid value for '--sign'"),
    C("cli-flag-with-value", nothing, "list --json=3", 2, "Option '--json' does not take a value"),
    # --- cases: train (#14)
    C("train-missing-column", pairs("d.jsonl", [{"prompt": "w1", "chosen": " yes"}]), TRAIN + "d.jsonl", 2, "d.jsonl: row 1: missing column 'rejected'"),
    C("train-no-known-columns", pairs("d.jsonl", [{"question": "w1", "answer": "yes"}]), TRAIN + "d.jsonl", 2, "row 1: no prompt/chosen/rejected or positive/negative columns (found: answer, question)"),
    C("train-empty-string", pairs("d.jsonl", [{"prompt": "w1", "chosen": " yes", "rejected": "  "}]), TRAIN + "d.jsonl", 2, "d.jsonl: row 1: 'rejected' is empty"),
    C("train-null-value", pairs("d.jsonl", [{"prompt": "w1", "chosen": None, "rejected": " no"}]), TRAIN + "d.jsonl", 2, "row 1: 'chosen' is null"),
    C("train-chosen-equals-rejected", pairs("d.jsonl", [{"prompt": "w1", "chosen": " no", "rejected": " yes"}, {"prompt": "w2", "chosen": " yes", "rejected": "yes"}]), TRAIN + "d.jsonl", 2, "d.jsonl: row 2: chosen and rejected are identical"),
    C("train-jsonl-not-json-lines", pairs("d.jsonl", text='{"prompt": "w1", "chosen": " yes", "rejected": " no"}\nprompt,chosen,rejected\n'), TRAIN + "d.jsonl", 2, "d.jsonl: row 2: not valid JSON"),
    C("train-jsonl-binary", raw("d.jsonl", b"\x89PNG\r\n\x1a\n\xff\xfe"), TRAIN + "d.jsonl", 2, "d.jsonl: not UTF-8 text"),
    C("train-json-not-array", pairs("d.json", text='{"prompt": "w1"}'), TRAIN + "d.json", 2, "d.json: expected a JSON array of pair objects, got a JSON object"),
    C("train-parquet-not-parquet", pairs("d.parquet", text='{"prompt": "w1", "chosen": " yes", "rejected": " no"}\n'), TRAIN + "d.parquet", 2, "d.parquet: not a parquet file"),
    C("train-dir-not-datasets", mkdir("ds"), TRAIN + "ds", 2, "ds: a directory, but not a datasets save_to_disk directory"),
    C("train-unsupported-suffix", pairs("d.csv", text="prompt,chosen,rejected\n"), TRAIN + "d.csv", 2, "unsupported preference data file type '.csv'"),
    C("train-data-missing", nothing, TRAIN + "nope.jsonl", 2, "nope.jsonl: no such preference data file"),
    C("train-empty-data", pairs("d.jsonl", text="\n\n"), TRAIN + "d.jsonl", 2, "d.jsonl: contains no preference pairs"),
    C("train-contrastive-no-prefix", pairs("d.jsonl", [{"positive": "yes w1 w2", "negative": "no w1 w2"}]), TRAIN + "d.jsonl", 2, "row 1: positive and negative: the two texts have no common prefix"),
    C("train-chat-mixed-with-text", pairs("d.jsonl", [{"prompt": "w1", "chosen": " yes", "rejected": " no"}, {"prompt": [{"role": "user", "content": "w1"}], "chosen": [{"role": "assistant", "content": "yes"}], "rejected": [{"role": "assistant", "content": "no"}]}]), TRAIN + "d.jsonl", 2, "row 2: has chat messages but row 1 has plain strings"),
    C("train-unknown-method", pairs("d.jsonl"), TRAIN + "d.jsonl --method qlora", 2, "invalid train option --method: Input should be 'lora' or 'full'"),
    C("train-steps-and-epochs", pairs("d.jsonl"), TRAIN + "d.jsonl --steps 2 --epochs 1", 2, "give --steps or --epochs, not both"),
    C("train-steps-zero", pairs("d.jsonl"), TRAIN + "d.jsonl --steps 0", 2, "invalid train option --steps: Input should be greater than or equal to 1"),
    C("train-lr-negative", pairs("d.jsonl"), TRAIN + "d.jsonl --lr -1", 2, "invalid train option --lr"),
    C("train-lr-nan", pairs("d.jsonl"), TRAIN + "d.jsonl --lr nan", 2, "invalid train option --lr"),
    C("train-eval-fraction-one", pairs("d.jsonl"), TRAIN + "d.jsonl --eval-fraction 1", 2, "invalid train option --eval-fraction: Input should be less than 1"),
    C("train-eval-fraction-negative", pairs("d.jsonl"), TRAIN + "d.jsonl --eval-fraction -0.1", 2, "invalid train option --eval-fraction"),
    C("train-device-unknown", pairs("d.jsonl"), TRAIN + "d.jsonl --device tpu", 2, "invalid train option --device"),
    C("train-bad-tag", pairs("d.jsonl"), TRAIN + "d.jsonl --tag novalue", 2, "invalid tag 'novalue'"),
    C("train-bad-name", pairs("d.jsonl"), "train 'Bad Name' --base {base} --data {t}/d.jsonl", 2, "invalid name 'Bad Name'"),
    C("train-label-control-char", both(pairs("d.jsonl"), tail("--dataset-label", "x\x1b[2J")), TRAIN + "d.jsonl {tail}", 2, "invalid dataset"),
    C("train-keep-in-registry", pairs("d.jsonl"), TRAIN + "d.jsonl --keep-checkpoints {home}/ckpt", 2, "lies inside the registry home"),
    C("train-keep-on-base", pairs("d.jsonl"), TRAIN + "d.jsonl --keep-checkpoints {base}", 2, "the base model"),
    C("train-keep-inside-base", pairs("d.jsonl"), TRAIN + "d.jsonl --keep-checkpoints {base}/ckpt", 2, "the base model"),
    C("train-unknown-base-dir", pairs("d.jsonl"), "train v --base {t}/nobase --data {t}/d.jsonl", 2, "nobase: no such base model directory"),
    C("train-base-not-a-model-dir", both(pairs("d.jsonl"), mkdir("empty")), "train v --base {t}/empty --data {t}/d.jsonl", 2, "empty: not a Hugging Face model directory (no config.json)"),
    C("train-base-without-tokenizer", pairs("d.jsonl"), TRAIN + "d.jsonl", 2, "cannot load a tokenizer from the base directory"),
    C("train-chat-data-without-template", both(train_base, pairs("d.jsonl", [{"prompt": [{"role": "user", "content": "w1"}], "chosen": [{"role": "assistant", "content": "yes"}], "rejected": [{"role": "assistant", "content": "no"}]}])), "train v --base {t}/tb --data {t}/d.jsonl", 2, "d.jsonl holds chat messages but the tokenizer of"),
    C("train-prompt-fills-max-length", both(train_base, pairs("d.jsonl", [{"prompt": "w1 w2 w3 w4 w5 w6 w7 w8", "chosen": " yes", "rejected": " no"}])), "train v --base {t}/tb --data {t}/d.jsonl --max-length 6", 2, "d.jsonl: row 1: the prompt is 8 tokens"),
    C("train-lora-target-unknown", both(train_base, pairs("d.jsonl")), "train v --base {t}/tb --data {t}/d.jsonl --steps 1 --lora-targets nope_proj", 2, "cannot set up DPO training: Target modules {'nope_proj'} not found"),
    #
    # --- cases: eval and sweep (#15)
    C("eval-unknown-ref", PAIRS, EVAL + "nosuch:1 --pairs {t}/p.jsonl", 2, "unknown reference 'nosuch'"),
    C("eval-no-eval-set", nothing, EVAL + "helpful", 2, "no eval set given: pass --pairs, --text or --choices"),
    C("eval-model-and-terms", PAIRS, "eval helpful --model {base} --pairs {t}/p.jsonl", 2, "give either --model DIR or composition terms"),
    C("eval-nothing-to-evaluate", PAIRS, "eval --pairs {t}/p.jsonl", 2, "nothing to evaluate"),
    C("eval-pairs-bad-row", eval_file("bad.jsonl", PAIRS_OK + '{"prompt": "w1", "chosen": "w2"}\n'), EVAL + "helpful --pairs {t}/bad.jsonl", 2, "bad.jsonl: row 2: missing column 'rejected'"),
    C("eval-pairs-not-json", eval_file("bad.jsonl", PAIRS_OK + "{oops\n"), EVAL + "helpful --pairs {t}/bad.jsonl", 2, "bad.jsonl: row 2: not valid JSON"),
    C("eval-pairs-missing-file", nothing, EVAL + "helpful --pairs {t}/none.jsonl", 2, "none.jsonl: no such eval file"),
    C("eval-text-empty", eval_file("t.txt", "\n\n"), EVAL + "helpful --text {t}/t.txt", 2, "holds no text"),
    C("eval-choices-bad-answer", eval_file("c.jsonl", '{"question": "w1", "choices": ["w2", "w3"], "answer": 5}\n'), EVAL + "helpful --choices {t}/c.jsonl", 2, "c.jsonl:1: 'answer' index 5 is out of range"),
    C("eval-duplicate-label", eval_file("t.txt", "w1 w2 w3\n"), EVAL + "helpful --pairs a={t}/p.jsonl --text a={t}/t.txt", 2, "eval set label 'a' is used twice"),
    C("eval-limit-zero", PAIRS, EVAL + "helpful --pairs {t}/p.jsonl --limit 0", 2, "--limit must be a positive integer"),
    C("eval-batch-size-zero", PAIRS, EVAL + "helpful --pairs {t}/p.jsonl --batch-size 0", 2, "--batch-size must be a positive integer"),
    C("eval-bootstrap-zero", PAIRS, EVAL + "helpful --pairs {t}/p.jsonl --bootstrap 0", 2, "--bootstrap must be a positive integer"),
    C("eval-kl-top-k-zero", PAIRS, EVAL + "helpful --text {t}/p.jsonl --kl-top-k 0", 2, "--kl-top-k must be a positive integer"),
    C("eval-base-mismatch", both(PAIRS, other_base), "eval helpful --base {t}/other-base --pairs {t}/p.jsonl", 2, "base mismatch"),
    C("eval-different-bases", vector_on_other_base, EVAL + "helpful other --pairs {t}/p.jsonl", 2, "the vectors were made for different bases"),
    C("eval-bad-term", PAIRS, EVAL + "helpful:abc --pairs {t}/p.jsonl", 2, "coefficient 'abc' is not a number"),
    C("sweep-empty-grid", PAIRS, SWEEP, 2, "the sweep grid is empty"),
    C("sweep-step-zero", PAIRS, SWEEP + "helpful=0:1:0", 2, "has step 0"),
    C("sweep-step-away", PAIRS, SWEEP + "helpful=0:1:-0.5", 2, "goes away from stop"),
    C("sweep-not-a-number", PAIRS, SWEEP + "helpful=0:x:1", 2, "'x' is not a number"),
    C("sweep-axis-twice", PAIRS, SWEEP + "helpful=0,1 helpful=2", 2, "sweep axis helpful is given twice"),
    C("sweep-axis-not-a-ref", PAIRS, SWEEP + "'Bad Name=0,1'", 2, "is not a vector reference"),
    C("sweep-unknown-ref", PAIRS, SWEEP + "nosuch=0,1", 2, "unknown reference 'nosuch'"),
    C("sweep-different-bases", vector_on_other_base, SWEEP + "helpful=0,1 --fixed other:1", 2, "the vectors were made for different bases"),
    C("sweep-fixed-twice", PAIRS, SWEEP + "helpful=0,1 --fixed helpful:1", 2, "duplicate vector"),
    C("sweep-no-eval-set", nothing, "sweep helpful=0,1 --base {base} --out {t}/out", 2, "no eval set given"),
    C("sweep-no-out", PAIRS, "sweep helpful=0,1 --base {base} --pairs {t}/p.jsonl", 2, "a sweep needs --out DIR"),
    C("sweep-out-in-registry", PAIRS, "sweep helpful=0,1 --base {base} --pairs {t}/p.jsonl --out {home}/sweep", 2, "lies inside the registry home"),
    C("sweep-out-is-eval-file", PAIRS, "sweep helpful=0,1 --base {base} --pairs {t}/p.jsonl --out {t}/p.jsonl", 2, "it is an eval file"),
    C("sweep-out-is-base", PAIRS, "sweep helpful=0,1 --base {base} --pairs {t}/p.jsonl --out {base}", 2, "it is the base model"),
    C("sweep-out-not-empty", full_out, SWEEP + "helpful=0,1", 2, "already exists and is not empty (use --force", lambda e: assert_kept(e.p("out/keep.txt"))),
    C("sweep-pairs-bad-row", eval_file("bad.jsonl", '{"prompt": "w1", "chosen": "w2", "rejected": "w2"}\n'), "sweep helpful=0,1 --base {base} --pairs {t}/bad.jsonl --out {t}/out", 2, "bad.jsonl: row 1: chosen and rejected are identical", no_output),
    #
    # --- cases: similarity and diff (#15)
    C("sim-unknown-ref", nothing, "similarity helpful nosuch", 2, "nosuch"),
    C("sim-one-ref", nothing, "similarity helpful", 2, "similarity needs at least two vectors (got only 'helpful')"),
    C("sim-no-ref", nothing, "similarity", 2, "Missing argument 'refs'"),
    C("sim-different-bases", vector_on_other_base, "similarity helpful harmless other", 2, "cannot compare vectors made for different bases: helpful@1 is on base"),
    C("sim-unknown-by", nothing, "similarity helpful harmless --by row", 2, "unknown grouping 'row' for --by: expected one of tensor, layer, module-type"),
    C("sim-plot-into-home", nothing, "similarity helpful harmless --plot {home}/cos.png", 2, "it lies inside the registry home", no_plot),
    C("sim-plot-over-database", nothing, "similarity helpful harmless --force --plot {home}/registry.db", 2, "refusing to write there, it "),
    C("sim-plot-over-blob", blob_of("helpful"), "similarity helpful harmless --force --plot", 2, "it is the blob of helpful@1"),
    C("sim-plot-bad-suffix", nothing, "similarity helpful harmless --plot {t}/cos.txt", 2, "cos.txt must end in .png, .svg, .pdf", no_plot),
    C("sim-plot-exists", raw("old.png", b"keep me"), "similarity helpful harmless --plot {t}/old.png", 2, "old.png: already exists (use --force to overwrite)", lambda e: e.p("old.png").read_bytes() == b"keep me" or pytest.fail("overwritten")),
    C("sim-plot-parent-is-file", raw("file", b"x"), "similarity helpful harmless --plot {t}/file/cos.png", 2, "is not a directory", no_plot),
    C("sim-plot-and-bad-ref", nothing, "similarity helpful nosuch --plot {home}/cos.png", 2, "nosuch", no_plot),
    C("diff-unknown-ref", nothing, "diff helpful nosuch", 2, "nosuch"),
    C("diff-one-ref", nothing, "diff helpful", 2, "Missing argument 'ref_b'"),
    C("diff-different-bases", vector_on_other_base, "diff other helpful", 2, "cannot compare vectors made for different bases: other@1 is on base"),
    C("diff-bad-ref-grammar", nothing, "diff helpful@@1 harmless", 2, "helpful@@1"),
    #
    # --- cases: LoRA export (#17)
    C("lora-no-out", nothing, "export-lora helpful --rank 4", 2, "--out DIR is required"),
    C("lora-no-terms", nothing, "export-lora --out {t}/a", 2, "nothing to export"),
    C("lora-terms-and-spec", spec_file("s.yaml", "terms: [helpful]"), "export-lora helpful --spec {t}/s.yaml --out {t}/a", 2, "either as tokens or with --spec FILE"),
    C("lora-dense-needs-rank", nothing, LORA + "helpful", 2, "helpful@1: stored dense, so its adapter is a truncated SVD; give --rank R or --energy E"),
    C("lora-rank-and-energy", nothing, LORA + "helpful --rank 4 --energy 0.9", 2, "give exactly one of --rank or --energy"),
    C("lora-rank-zero", nothing, LORA + "helpful --rank 0", 2, "invalid --rank 0"),
    C("lora-energy-above-one", nothing, LORA + "helpful --energy 1.5", 2, "invalid --energy 1.5"),
    C("lora-max-rank-zero", nothing, LORA + "helpful --rank 4 --max-rank 0", 2, "invalid --max-rank 0"),
    C("lora-rank-not-int", nothing, LORA + "helpful --rank four", 2, "Invalid value for '--rank'"),
    C("lora-refuses-non-lora", nothing, LORA + "helpful --rank 4", 2, "7 tensor(s) cannot be LoRA modules for peft and would be lost: lm_head.weight (output head), model.embed_tokens.weight (embedding)"),
    C("lora-refusal-names-the-fix", nothing, LORA + "helpful harmless:-1 --energy 0.5 --target vllm", 2, "--non-lora drop leaves them out"),
    C("lora-vllm-carry", nothing, LORA + "helpful --rank 4 --target vllm --non-lora carry", 2, "which vllm does not load"),
    C("lora-bad-target", nothing, LORA + "helpful --rank 4 --target tgi", 2, "invalid --target 'tgi'"),
    C("lora-bad-non-lora", nothing, LORA + "helpful --rank 4 --non-lora keep", 2, "invalid --non-lora 'keep'"),
    C("lora-bad-dtype", nothing, LORA + "helpful --rank 4 --non-lora drop --dtype int8", 2, "invalid dtype 'int8'"),
    C("lora-method-ties", spec_file("t.yaml", "terms: [helpful]\nmethod: ties\ndensity: 0.5\n"), "export-lora --spec {t}/t.yaml --out {t}/a --rank 4", 2, "ties is not a sum of the vectors' factors"),
    C("lora-unknown-ref", nothing, LORA + "nosuch --rank 4", 2, "no vector named 'nosuch'"),
    C("lora-bad-coefficient", nothing, LORA + "helpful:nan --rank 4", 2, "coefficient 'nan' is not a number"),
    C("lora-out-is-registry", nothing, "export-lora helpful --rank 4 --non-lora drop --out {home}", 2, "refusing to write there, it is the registry home"),
    C("lora-out-not-empty", both(mkdir("adapter"), raw("adapter/keep.txt", b"mine")), LORA + "helpful --rank 4 --non-lora drop", 2, "already exists and is not empty (use --force to replace it)"),
    C("lora-factors-missing", lora_factors_missing, "export-lora lv --out {t}/a", 1, "lv@1: LoRA factors blob sha256:"),
    C("lora-factors-damaged", lora_factors_damaged, "export-lora lv --out {t}/a", 1, "is damaged (run pvreg verify)"),
    # --- cases: performance (#13)
    #
    C("compose-device-unknown", nothing, COMPOSE + "helpful --device tpu", 2, "--device must be cpu or cuda, not 'tpu'", no_output),
    # This machine (and CI) has no GPU: cuda is refused before anything is read or written.
    C("compose-device-cuda-missing", without_gpu, COMPOSE + "helpful --device cuda", 1, "--device cuda was asked for, but torch", no_output),
]


def test_catalogue_ids_are_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.fixture
def seeded(tmp_path, cli, base_dir, base_tensors, monkeypatch, home):
    """A registry with helpful@1 and harmless@1; an Env whose scratch dir is tmp/case."""
    for name, seed in (("helpful", 1), ("harmless", 2)):
        f = tmp_path / f"{name}.safetensors"
        make_vector(f, base_tensors, seed=seed)
        r = cli("add", name, "--vector", f, "--base", base_dir)
        assert r.exit_code == 0, r.stderr
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    env = Env(case_dir, base_dir, base_tensors, cli, monkeypatch, home)
    yield env
    if env._server is not None:
        env._server.stop()


def _prepare(case: C, env: Env) -> list[str]:
    """Run the case's setup and return its argv with paths (and the Hub URL) filled in."""
    case.setup(env)
    values = {"t": env.tmp, "base": env.base_dir, "home": env.home}
    if "{url}" in case.argv:
        values["url"] = env.server.url
    return [a.format(**values) for a in shlex.split(case.argv.replace("{tail}", ""))] + env.tail


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_cleanly(case: C, seeded: Env, cli, snapshot) -> None:
    env = seeded
    argv = _prepare(case, env)
    before = snapshot()
    r = cli(*argv)
    assert r.exit_code == case.code, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert case.needle in lines[0], lines[0]
    assert snapshot() == before
    if case.after is not None:
        case.after(env)


REAL_PROCESS = ["hub-missing-name", "hub-no-vectors", "name-newline"]


@pytest.mark.parametrize("case", [c for c in CASES if c.id in REAL_PROCESS], ids=REAL_PROCESS)
def test_bad_input_in_a_real_process(case: C, seeded: Env, snapshot) -> None:
    """In-process runs cannot see what libraries log to the real stderr (the Hub client's warnings did)."""
    import subprocess
    import sys

    env = seeded
    argv = _prepare(case, env)
    before = snapshot()
    r = subprocess.run([sys.executable, "-c", "from pvreg.cli.main import main; main()", *argv],
                       capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert r.returncode == case.code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and case.needle in lines[0], r.stderr
    assert snapshot() == before
