"""Publishing hygiene: what ``push`` and ``export`` write never names the publisher's machine.

Every kind of vector is made from inputs under ``<tmp>/home/zqxuser/`` (a fake user name in the path, as
``/home/<user>/...`` would be): ``--vector`` (file), dense ``--positive/--negative`` (pair), ``--finetuned``,
``--lora``, two LoRA adapters (pair), ``pvreg train`` (full and LoRA, data, base and ``--keep-checkpoints``
all under that directory), ``compose --register`` and an exported file added back (restored). The registry
lives there too. Then every version is pushed to the loopback Hub and exported, and every byte of every
pushed file (``pvreg.json``, ``vector.safetensors`` with its embedded metadata, the card) and of every
export is searched for the tmp directory, the user name and any absolute path. Locally ``pvreg show``
keeps the full paths; a pull from the Hub works and shows the relative names.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.hubserver import HubServer, isolate_hf_client
from helpers.models import make_tiny_llama, write_jsonl, yes_no_pairs
from safetensors.torch import load_file, save_file

pytest.importorskip("trl")

TOKEN = "hf_dummy_hygiene_token"
REPO = "alice/hygiene"
USER = "zqxuser"
#: A JSON string value (possibly inside a JSON string: the safetensors header embeds pvreg.json) that is a
#: POSIX absolute or home-relative path.
ABSOLUTE = re.compile(r'\\*"(?:/|~/)[^"\\]')


def _ok(result: Any) -> Any:
    assert result.exit_code == 0, result.stderr
    return result


def _leaks(data: bytes, tmp: Path, name: str) -> list[str]:
    """Local names anywhere in the bytes, and absolute paths in the text (a safetensors file: its JSON header)."""
    text = data.decode("latin-1")
    found = [needle for needle in (str(tmp), USER, str(Path.home())) if needle and needle in text]
    if name.endswith(".safetensors"):
        text = data[8 : 8 + struct.unpack("<Q", data[:8])[0]].decode()
    return found + ABSOLUTE.findall(text)


@pytest.fixture
def published(tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    user = tmp_path / "home" / USER
    reg = user / "registry"
    base = make_tiny_llama(user / "models" / "base")
    (user / "data").mkdir()
    data = write_jsonl(user / "data" / "pairs.jsonl", yes_no_pairs(12, seed=1))
    train = ["--steps", "2", "--batch-size", "2", "--threads", "1", "--eval-fraction", "0.2"]
    r = ["--registry", reg]

    _ok(cli(*r, "train", "trained", "--base", base, "--data", data, "--method", "full", *train,
            "--keep-checkpoints", user / "ckpt-full"))
    _ok(cli(*r, "train", "trained-lora", "--base", base, "--data", data, "--method", "lora", *train,
            "--keep-checkpoints", user / "ckpt-lora"))
    full, lora = user / "ckpt-full", user / "ckpt-lora"
    _ok(cli(*r, "add", "pair", "--positive", full / "positive", "--negative", full / "negative", "--base", base))
    _ok(cli(*r, "add", "finetuned", "--finetuned", full / "positive", "--base", base))
    _ok(cli(*r, "add", "adapter", "--lora", lora / "positive", "--base", base))
    _ok(cli(*r, "add", "adapters", "--positive", lora / "positive", "--negative", lora / "negative", "--base", base))
    weights = load_file(str(base / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    save_file({name: torch.full_like(weights[name], 0.01)}, str(user / "delta.safetensors"))
    _ok(cli(*r, "add", "file", "--vector", user / "delta.safetensors", "--base", base))
    _ok(cli(*r, "compose", "pair:1", "file:0.5", "--base", base, "--vector-only", "--out", user / "combo.safetensors",
            "--register", "combo"))
    _ok(cli(*r, "export", "file", user / "file-export.safetensors"))
    _ok(cli(*r, "add", "restored", "--vector", user / "file-export.safetensors"))
    names = ["trained", "trained-lora", "pair", "finetuned", "adapter", "adapters", "file", "combo", "restored"]

    isolate_hf_client(monkeypatch, tmp_path / "hf-home", token=TOKEN)
    server = HubServer(tmp_path / "hubdata", tokens={TOKEN: "alice"}).start()
    try:
        _ok(cli(*r, "push", *names, "--repo", REPO, "--create", "--endpoint", server.url))
        yield {"tmp": tmp_path, "user": user, "reg": reg, "base": base, "data": data, "names": names,
               "server": server, "cli": cli}
    finally:
        server.stop()


def test_pushed_files_and_exports_carry_no_local_path(published: dict[str, Any]) -> None:
    from huggingface_hub import HfApi

    tmp, server, user = published["tmp"], published["server"], published["user"]
    files = HfApi(endpoint=server.url, token=TOKEN).list_repo_files(REPO)
    for n in published["names"]:
        assert f"{n}/pvreg.json" in files and f"{n}/vector.safetensors" in files
    for path in files:
        assert _leaks(server.file_bytes(REPO, path), tmp, path) == [], path

    for n in published["names"]:
        out = tmp / "exports" / f"{n}.safetensors"
        out.parent.mkdir(exist_ok=True)
        _ok(published["cli"]("--registry", published["reg"], "export", n, out))
        assert _leaks(out.read_bytes(), tmp, out.name) == [], n

    # What stays: fingerprints, the data sha256, names relative to their model directory.
    doc = json.loads(server.file_bytes(REPO, "trained/pvreg.json"))
    record = doc["provenance"]["training"]
    assert record["data"]["path"] == "pairs.jsonl" and len(record["data"]["sha256"]) == 64
    assert record["base"] == "base"
    assert doc["provenance"]["positive"]["path"] == "positive"
    assert len(doc["provenance"]["positive"]["fingerprint"]) == 64
    adapter = json.loads(server.file_bytes(REPO, "adapters/pvreg.json"))["provenance"]["positive"]
    assert adapter["weights_file"] == "adapter_model.safetensors" and adapter["base_model_name_or_path"] == "base"
    assert json.loads(server.file_bytes(REPO, "file/pvreg.json"))["provenance"]["path"] == "delta.safetensors"

    # Locally, show keeps the full paths.
    local = json.loads(_ok(published["cli"]("--registry", published["reg"], "show", "pair", "--json")).stdout)
    assert local["provenance"]["positive"]["path"] == str((user / "ckpt-full" / "positive").resolve())


def test_pull_works_and_shows_relative_names(published: dict[str, Any]) -> None:
    cli, server, tmp = published["cli"], published["server"], published["tmp"]
    other = ["--registry", tmp / "elsewhere"]
    pulled = json.loads(_ok(cli(*other, "pull", REPO, "--endpoint", server.url, "--json")).stdout)
    assert sorted(v["meta"]["name"] for v in pulled["vectors"]) == sorted(published["names"])
    shown = json.loads(_ok(cli(*other, "show", "trained", "--json")).stdout)
    assert shown["provenance"]["training"]["data"]["path"] == "pairs.jsonl"
    assert shown["provenance"]["negative"]["path"] == "negative"
    assert _ok(cli(*other, "verify")).exit_code == 0
