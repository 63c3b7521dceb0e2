"""``public_provenance``: the one rule for what of a provenance record may be published."""

from __future__ import annotations

import pytest
from pvreg.registry.sources.public import public_meta, public_path, public_provenance
from pvreg.schemas.vector import VectorMeta


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/home/alice/models/llama", "llama"),
        ("/home/alice/models/llama/", "llama"),
        ("/home/alice/m/model.safetensors", "model.safetensors"),
        ("/home/alice smith/m", "m"),  # a whole-string path may hold spaces
        ("~/m/adapter", "adapter"),
        ("~alice/m", "m"),
        ("~", "."),
        ("C:\\Users\\alice\\m", "m"),
        ("C:/Users/alice/m", "m"),
        ("\\\\host\\share\\alice\\m", "m"),
        ("/", "."),
        # not absolute paths: unchanged
        ("model.safetensors", "model.safetensors"),
        ("helpful/vector.safetensors", "helpful/vector.safetensors"),
        ("meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-1B"),
        ("https://huggingface.co/alice/prefs", "https://huggingface.co/alice/prefs"),
        ("positive - negative", "positive - negative"),
    ],
)
def test_public_path(text: str, expected: str) -> None:
    assert public_path(text) == expected
    assert public_provenance({"path": text}) == {"path": expected}


def test_paths_inside_longer_strings_and_nested_records() -> None:
    record = {
        "source": "pair",
        "positive": {"path": "/home/alice/run/pos", "fingerprint": "ab" * 32, "files": 2},
        "label": "/home/alice/run/pos - /home/alice/run/neg",
        "note": "loaded from '/home/alice/x.bin', see https://example.org/a/b and repo/file",
        "hub": {"endpoint": "http://127.0.0.1:8080", "path": "helpful/vector.safetensors"},
        "list": ["/srv/alice/a", 3, None, True, {"deep": ["~/b/c"]}],
        "training": {"base": "/home/alice/llama", "data": {"path": "/home/alice/p.jsonl", "sha256": "cd" * 32}},
    }
    out = public_provenance(record)
    assert out == {
        "source": "pair",
        "positive": {"path": "pos", "fingerprint": "ab" * 32, "files": 2},
        "label": "pos - neg",
        "note": "loaded from 'x.bin', see https://example.org/a/b and repo/file",
        "hub": {"endpoint": "http://127.0.0.1:8080", "path": "helpful/vector.safetensors"},
        "list": ["a", 3, None, True, {"deep": ["c"]}],
        "training": {"base": "llama", "data": {"path": "p.jsonl", "sha256": "cd" * 32}},
    }
    assert "alice" not in repr(out)
    assert record["positive"]["path"] == "/home/alice/run/pos"  # the input is not modified


def test_public_meta_keeps_everything_but_local_paths() -> None:
    meta = VectorMeta(name="v", version=1, sha256="a" * 64, size_bytes=10, base_fingerprint="b" * 64,
                      dtype="float32", kind="file", norm=1.0, num_tensors=1, num_params=1, created_at="2026-01-01T00:00:00Z",
                      provenance={"source": "file", "path": "/home/alice/v.safetensors"}, aliases=["prod"])
    public = public_meta(meta)
    assert public.provenance == {"source": "file", "path": "v.safetensors"}
    assert public.model_dump(exclude={"provenance"}) == meta.model_dump(exclude={"provenance"})
    assert meta.provenance["path"] == "/home/alice/v.safetensors"
