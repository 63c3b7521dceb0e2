"""Builders for tiny models and vectors used across the test-suite.

Random tensors laid out like a Llama checkpoint (names, shapes and a
``config.json`` that transformers accepts), so tests exercise real files
without downloads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 64,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def llama_shapes(cfg: dict | None = None) -> dict[str, tuple[int, ...]]:
    c = {**LLAMA_CONFIG, **(cfg or {})}
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    head = h // c["num_attention_heads"]
    kv = head * c["num_key_value_heads"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        shapes |= {
            f"{p}.self_attn.q_proj.weight": (h, h),
            f"{p}.self_attn.k_proj.weight": (kv, h),
            f"{p}.self_attn.v_proj.weight": (kv, h),
            f"{p}.self_attn.o_proj.weight": (h, h),
            f"{p}.mlp.gate_proj.weight": (i, h),
            f"{p}.mlp.up_proj.weight": (i, h),
            f"{p}.mlp.down_proj.weight": (h, i),
            f"{p}.input_layernorm.weight": (h,),
            f"{p}.post_attention_layernorm.weight": (h,),
        }
    shapes |= {"model.norm.weight": (h,), "lm_head.weight": (v, h)}
    return shapes


def random_tensors(shapes: dict[str, tuple[int, ...]], *, seed: int, scale: float = 1.0,
                   dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: (torch.randn(s, generator=g) * scale).to(dtype) for n, s in sorted(shapes.items())}


def save_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], *, shards: int = 1,
                    config: dict | None = None, metadata: dict[str, str] | None = None) -> Path:
    """Save like transformers does: one file, or N shards plus an index."""
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(directory / "model.safetensors"), metadata=metadata or {"format": "pt"})
    else:
        weight_map = {}
        chunks = [names[i::shards] for i in range(shards)]
        for k, chunk in enumerate(chunks, 1):
            fname = f"model-{k:05d}-of-{shards:05d}.safetensors"
            save_file({n: tensors[n] for n in chunk}, str(directory / fname), metadata=metadata or {"format": "pt"})
            weight_map |= {n: fname for n in chunk}
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    cfg = {**LLAMA_CONFIG, **(config or {})}
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    return directory


def make_base(directory: Path, *, seed: int = 0, dtype: torch.dtype = torch.float32, shards: int = 1,
              cfg: dict | None = None) -> dict[str, torch.Tensor]:
    tensors = random_tensors(llama_shapes(cfg), seed=seed, dtype=dtype)
    torch_dtype = str(dtype).removeprefix("torch.")
    save_checkpoint(directory, tensors, shards=shards, config={**(cfg or {}), "torch_dtype": torch_dtype})
    return tensors


def make_vector(path: Path, base: dict[str, torch.Tensor], *, seed: int, scale: float = 0.01,
                names: list[str] | None = None, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A random delta over ``names`` (default: every base tensor)."""
    g = torch.Generator().manual_seed(seed)
    chosen = sorted(names if names is not None else base)
    tensors = {n: (torch.randn(base[n].shape, generator=g) * scale).to(dtype) for n in chosen}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return tensors


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def insert_legacy_rows(conn) -> None:
    """Rows as a revision-0001 registry held them: one base, one vector, one version, one alias.

    Written with plain SQL (not the ORM), because the ORM models describe the
    current schema, not 0001's.
    """
    from sqlalchemy import text

    conn.execute(text("INSERT INTO base_models (fingerprint, label, created_at) "
                      "VALUES (:f, 'old', CURRENT_TIMESTAMP)"), {"f": "a" * 64})
    conn.execute(text("INSERT INTO vectors (id, name, created_at) VALUES (1, 'legacy', CURRENT_TIMESTAMP)"))
    conn.execute(text(
        "INSERT INTO versions (id, vector_id, version, sha256, size_bytes, base_fingerprint, sign, norm, "
        "tensor_norms, dtype, num_tensors, num_params, kind, provenance, state, created_at) VALUES "
        "(1, 1, 1, :s, 10, :f, 1, 2.5, '{}', 'float32', 1, 4, 'file', '{}', 'active', CURRENT_TIMESTAMP)"),
        {"s": "b" * 64, "f": "a" * 64})
    conn.execute(text("INSERT INTO aliases (vector_id, alias, version_id) VALUES (1, 'prod', 1)"))
    if conn.dialect.name == "postgresql":  # explicit ids do not advance a serial's sequence; a real restore sets it
        for table in ("vectors", "versions"):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"))
