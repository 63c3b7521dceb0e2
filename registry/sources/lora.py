"""Dense weight deltas from a PEFT LoRA adapter.

A LoRA adapter stores, for each adapted module, two factors ``A`` (``lora_A.weight``,
shape ``[r, in]``) and ``B`` (``lora_B.weight``, shape ``[out, r]``). Merging the
adapter adds ``ΔW = s · B · A`` to the module's weight, with ``s = lora_alpha / r``
(``lora_alpha / sqrt(r)`` with rsLoRA), where ``r``/``lora_alpha`` may be overridden
per module by ``rank_pattern``/``alpha_pattern``. For GPT-2 style ``Conv1D`` modules
the base weight is stored ``[in, out]`` and ΔW is transposed to match.

:class:`LoraAdapter` turns an adapter directory into such dense float32 deltas keyed
by the *base model's* tensor names, one module at a time, and refuses anything that
is not exactly a dense delta on existing base tensors (DoRA, biases, saved full
modules, embedding LoRA, LoRA variants, inits that rewrite the base weights, ...).

Only the installed-peft semantics are reproduced here; pvreg does not import peft.
"""

from __future__ import annotations

import io
import json
import math
import pickletools
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pvreg.registry.errors import (
    BaseMismatchError,
    InvalidTensorFileError,
    NotFoundError,
    UnsafeCheckpointError,
    UnsupportedAdapterError,
)
from pvreg.registry.tensors.dtypes import DTYPES, FLOAT_DTYPES, dtype_code, dtype_name
from pvreg.registry.tensors.hfnames import (
    ADAPTER_BIN,
    ADAPTER_CONFIG,
    ADAPTER_SAFETENSORS,
    PEFT_PREFIX,
)
from pvreg.registry.tensors.inputfile import read_capped
from pvreg.registry.tensors.safetensors import SafetensorsFile

__all__ = ["LoraAdapter"]

#: Real adapter configs are a few KB.
MAX_CONFIG_BYTES = 16 * 2**20

_KEY_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")


# adapter_config.json fields that are harmless whatever their value (bookkeeping,
# which-modules-to-target selectors already reflected in the saved tensors, training
# only settings) or that are checked explicitly below.
_KNOWN_FIELDS = frozenset(
    {
        "peft_type",
        "peft_version",
        "task_type",
        "auto_mapping",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "r",
        "lora_alpha",
        "use_rslora",
        "rank_pattern",
        "alpha_pattern",
        "fan_in_fan_out",
        "lora_dropout",
        "target_modules",
        "exclude_modules",
        "layers_to_transform",
        "layers_pattern",
        "init_lora_weights",
        "runtime_config",
        "megatron_core",
        "qalora_group_size",
        "ensure_weight_tying",
        "eva_config",
        "corda_config",
        "lora_ga_config",
        "loftq_config",
        "bias",
    }
)

# Fields whose truthy value means something pvreg cannot represent as a dense delta.
_REFUSED_FIELDS = {
    "use_dora": "DoRA (use_dora) rescales the merged weight by a learned magnitude",
    "modules_to_save": "modules_to_save stores full replacement modules",
    "lora_bias": "lora_bias adds a trained bias",
    "layer_replication": "layer_replication changes the model's layer structure",
    "target_parameters": "target_parameters (LoRA on raw nn.Parameters) is not supported",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) cannot be merged",
    "use_qalora": "QALoRA (use_qalora) is not a plain B·A delta",
    "velora_config": "LoRA variant velora_config is not supported",
    "monteclora_config": "LoRA variant monteclora_config is not supported",
    "use_bdlora": "LoRA variant use_bdlora (block-diagonal LoRA) is not supported",
    "arrow_config": "LoRA variant arrow_config (routed LoRA) is not supported",
    "kasa_config": "LoRA variant kasa_config is not supported",
    "trainable_token_indices": "trainable_token_indices stores full embedding rows",
    "megatron_config": "Megatron parallel LoRA layers are not supported",
}

# init_lora_weights values after which the adapter is relative to *rewritten* base
# weights (residual/quantized), or that select a LoRA variant.
_REFUSED_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga", "mica")


def _pattern_key(pattern_keys: list[str], key: str) -> str | None:
    """peft's ``get_pattern_key``: the first pattern matching a dotted suffix of ``key``."""
    for pattern in pattern_keys:
        try:
            if re.match(rf"(.*\.)?({pattern})$", key):
                return pattern
        except re.error as exc:
            raise UnsupportedAdapterError(f"{ADAPTER_CONFIG}: invalid rank/alpha pattern {pattern!r}: {exc}") from None
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class _Module:
    name: str  # module path without the peft prefix, e.g. "model.layers.0.self_attn.q_proj"
    key_a: str
    key_b: str
    rank: int
    alpha: float
    scaling: float
    out_features: int
    in_features: int


class LoraAdapter:
    """A PEFT LoRA adapter opened for dense-delta extraction.

    Use :meth:`open`, then :meth:`resolve` against the base model's tensor shapes,
    then :meth:`delta` for each resolved base tensor name.
    """

    def __init__(
        self,
        adapter_dir: Path,
        config: dict,
        weights_path: Path,
        modules: dict[str, _Module],
        bin_state: dict[str, torch.Tensor] | None,
        weights: SafetensorsFile | None = None,
    ) -> None:
        self.adapter_dir = adapter_dir
        self.config = config
        self.weights_path = weights_path
        self._modules = modules
        self._bin_state = bin_state
        self._weights = weights
        self._resolved: dict[str, tuple[str, bool]] = {}  # base name -> (module, transpose)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, adapter_dir: Path) -> LoraAdapter:
        adapter_dir = Path(adapter_dir)
        config_path = adapter_dir / ADAPTER_CONFIG
        if not config_path.is_file():
            raise NotFoundError(f"{config_path}: adapter config not found")
        try:
            raw = read_capped(config_path, MAX_CONFIG_BYTES, InvalidTensorFileError, "adapter config")
            config = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, huge ints
            raise InvalidTensorFileError(
                f"{config_path}: cannot parse adapter config: {exc.__class__.__name__}"
            ) from None
        if not isinstance(config, dict):
            raise InvalidTensorFileError(f"{config_path}: adapter config is not a JSON object")
        _check_config(config, config_path)

        st_path = adapter_dir / ADAPTER_SAFETENSORS
        bin_path = adapter_dir / ADAPTER_BIN
        bin_state: dict[str, torch.Tensor] | None = None
        weights: SafetensorsFile | None = None
        if st_path.is_file():
            weights_path = st_path
            weights = SafetensorsFile(st_path)  # pvreg's validating parser, parsed once
            shapes = {k: i.shape for k, i in weights.infos.items()}
            dtypes = {k: i.dtype for k, i in weights.infos.items()}
        elif bin_path.is_file():
            weights_path = bin_path
            bin_state = _load_bin(bin_path)
            shapes = {k: tuple(v.shape) for k, v in bin_state.items()}
            dtypes = {k: dtype_code(v.dtype) for k, v in bin_state.items()}
        else:
            raise NotFoundError(f"{adapter_dir}: neither {ADAPTER_SAFETENSORS} nor {ADAPTER_BIN} found")

        modules = _collect_modules(config, weights_path, shapes, dtypes)
        return cls(adapter_dir, config, weights_path, modules, bin_state, weights)

    # ------------------------------------------------------------- inspection

    @property
    def modules(self) -> list[str]:
        """Adapted module paths (peft prefix stripped), sorted."""
        return sorted(self._modules)

    def rank(self, module: str) -> int:
        return self._module(module).rank

    def scaling(self, module: str) -> float:
        return self._module(module).scaling

    def _module(self, module: str) -> _Module:
        try:
            return self._modules[module]
        except KeyError:
            raise NotFoundError(f"{self.weights_path}: no adapted module {module!r}") from None

    # -------------------------------------------------------------- resolving

    def resolve(self, base_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, str]:
        """Map each adapted module to its base tensor name.

        Returns ``{base tensor name: adapted module path}``. A module ``m`` resolves to
        ``m + ".weight"`` when the base has it, else to the single base name obtained
        by stripping or adding one leading component (model-class prefixes such as
        GPT-2's ``transformer.``). Whether ΔW is transposed (``Conv1D``/fan_in_fan_out)
        is decided from the shapes; square weights follow the layout all non-square
        adapted weights agree on, or ``fan_in_fan_out`` when there are none.
        """
        base_shapes = {k: tuple(int(d) for d in v) for k, v in base_shapes.items()}
        # Index base names by their name without the first component, for "add one".
        by_tail: dict[str, list[str]] = {}
        for name in base_shapes:
            _, sep, tail = name.partition(".")
            if sep:
                by_tail.setdefault(tail, []).append(name)

        targets: dict[str, str] = {}
        for module in self.modules:
            wanted = f"{module}.weight"
            if wanted in base_shapes:
                targets[module] = wanted
                continue
            candidates: list[str] = []
            _, sep, stripped = wanted.partition(".")
            if sep and "." in stripped and stripped in base_shapes:
                candidates.append(stripped)
            candidates.extend(by_tail.get(wanted, []))
            candidates = sorted(set(candidates))
            if not candidates:
                raise BaseMismatchError(
                    f"{self.weights_path}: adapted module {module!r} has no tensor {wanted!r} "
                    "(nor one with a leading component stripped or added) in the base model"
                )
            if len(candidates) > 1:
                raise BaseMismatchError(
                    f"{self.weights_path}: adapted module {module!r} is ambiguous in the base model: "
                    f"{', '.join(candidates)}"
                )
            targets[module] = candidates[0]

        seen: dict[str, str] = {}
        for module, base_name in targets.items():
            if base_name in seen:
                raise BaseMismatchError(
                    f"{self.weights_path}: adapted modules {seen[base_name]!r} and {module!r} "
                    f"both map to base tensor {base_name!r}"
                )
            seen[base_name] = module

        # Layout: True = transpose ΔW ([out, in] -> [in, out], Conv1D / fan_in_fan_out).
        layouts: dict[str, bool | None] = {}
        for module, base_name in targets.items():
            m = self._modules[module]
            base_shape = base_shapes[base_name]
            linear = (m.out_features, m.in_features)
            conv1d = (m.in_features, m.out_features)
            if base_shape == linear and base_shape == conv1d:
                layouts[module] = None  # square: decided below
            elif base_shape == linear:
                layouts[module] = False
            elif base_shape == conv1d:
                layouts[module] = True
            else:
                raise BaseMismatchError(
                    f"{self.weights_path}: delta of module {module!r} has shape {list(linear)} "
                    f"(or {list(conv1d)} transposed) but base tensor {base_name!r} has shape "
                    f"{list(base_shape)}"
                )
        decided = {v for v in layouts.values() if v is not None}
        fan_in_fan_out = bool(self.config.get("fan_in_fan_out", False))
        for module, layout in layouts.items():
            if layout is not None:
                continue
            if not decided or decided == {fan_in_fan_out}:
                layouts[module] = fan_in_fan_out
            else:
                raise UnsupportedAdapterError(
                    f"{self.weights_path}: cannot tell whether square module {module!r} is stored "
                    f"[out, in] (Linear) or [in, out] (Conv1D): the adapter mixes layouts or "
                    f"contradicts fan_in_fan_out={fan_in_fan_out}"
                )

        self._resolved = {targets[m]: (m, bool(layouts[m])) for m in self.modules}
        return {base_name: module for base_name, (module, _) in self._resolved.items()}

    # ----------------------------------------------------------------- deltas

    def delta(self, base_name: str) -> torch.Tensor:
        """Dense float32 ΔW for base tensor ``base_name`` (after :meth:`resolve`)."""
        try:
            module, transpose = self._resolved[base_name]
        except KeyError:
            raise NotFoundError(
                f"{self.weights_path}: no adapted module resolved to base tensor {base_name!r} "
                "(call resolve() with the base shapes first)"
            ) from None
        m = self._modules[module]
        lora_a, lora_b = self._load_pair(m)
        delta = (lora_b @ lora_a) * m.scaling
        if transpose:
            delta = delta.T
        return delta.contiguous()

    def _load_pair(self, m: _Module) -> tuple[torch.Tensor, torch.Tensor]:
        if self._bin_state is not None:
            a, b = self._bin_state[m.key_a], self._bin_state[m.key_b]
        else:
            assert self._weights is not None
            a, b = self._weights.tensor(m.key_a), self._weights.tensor(m.key_b)
        a = a.to(torch.float32)  # a copy: the mapped pages can be released
        b = b.to(torch.float32)
        if self._weights is not None:
            self._weights.release(m.key_a)
            self._weights.release(m.key_b)
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise InvalidTensorFileError(f"{self.weights_path}: LoRA factors of module {m.name!r} contain NaN or Inf")
        return a, b


# ---------------------------------------------------------------------- helpers


def _check_config(config: dict, path: Path) -> None:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise UnsupportedAdapterError(f"{path}: peft_type {peft_type!r} is not supported (only LORA)")
    for field, reason in _REFUSED_FIELDS.items():
        if config.get(field):
            raise UnsupportedAdapterError(f"{path}: {reason}")
    bias = config.get("bias", "none")
    if bias != "none":
        raise UnsupportedAdapterError(
            f"{path}: bias={bias!r} trains biases, which pvreg cannot represent (only 'none')"
        )
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_REFUSED_INITS):
        raise UnsupportedAdapterError(
            f"{path}: init_lora_weights={init!r} makes the adapter relative to rewritten base "
            "weights or selects a LoRA variant; convert it to a plain LoRA first"
        )
    for field, value in config.items():
        if field not in _KNOWN_FIELDS and field not in _REFUSED_FIELDS and value:
            raise UnsupportedAdapterError(
                f"{path}: unknown adapter_config field {field!r}={value!r}; refusing to guess its effect"
            )
    r = config.get("r")
    if not (isinstance(r, int) and not isinstance(r, bool) and r > 0):
        raise UnsupportedAdapterError(f"{path}: r={r!r} is not a positive integer")
    if not _is_number(config.get("lora_alpha")):
        raise UnsupportedAdapterError(f"{path}: lora_alpha={config.get('lora_alpha')!r} is not a number")
    for field in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(field) or {}
        if not isinstance(pattern, dict):
            raise UnsupportedAdapterError(f"{path}: {field} is not a mapping")
        for key, value in pattern.items():
            ok = (
                isinstance(value, int) and not isinstance(value, bool) and value > 0
                if field == "rank_pattern"
                else _is_number(value)
            )
            if not ok:
                raise UnsupportedAdapterError(f"{path}: {field}[{key!r}]={value!r} is invalid")


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """Load a torch checkpoint without ever executing pickled code.

    Legacy (non-zip) pickles are scanned statically and refused here; zip
    checkpoints go through the project's one weights-only loader.
    """
    from pvreg.registry.tensors.torchfile import load_torch_weights_only

    if not zipfile.is_zipfile(path):
        _classify_legacy_pickle(path)  # always raises
    return load_torch_weights_only(path)


_IMPORTING_OPS = frozenset(
    {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"}
)


def _classify_legacy_pickle(path: Path) -> None:
    """A non-zip checkpoint: statically scan its first pickle (nothing is executed)."""
    try:
        data = path.read_bytes()
        ops = [op.name for op, _, _ in pickletools.genops(io.BytesIO(data))]
    except Exception:
        raise InvalidTensorFileError(f"{path}: neither a zip-format torch checkpoint nor a readable pickle") from None
    if _IMPORTING_OPS.intersection(ops):
        raise UnsafeCheckpointError(f"{path}: pickle imports or calls objects (needs code execution to load), refused")
    raise InvalidTensorFileError(
        f"{path}: legacy (non-zip) torch checkpoint cannot be memory-mapped; "
        "re-save it as safetensors or with torch.save's zip serialization"
    )


def _collect_modules(
    config: dict,
    path: Path,
    shapes: Mapping[str, tuple[int, ...]],
    dtypes: Mapping[str, Any],
) -> dict[str, _Module]:
    pairs: dict[str, dict[str, str]] = {}
    for key in shapes:
        match = _KEY_RE.match(key)
        if match is None:
            raise UnsupportedAdapterError(f"{path}: {_describe_unknown_key(key)}")
        module = match.group("module").removeprefix(PEFT_PREFIX)
        slot = pairs.setdefault(module, {})
        if match.group("which") in slot:
            raise InvalidTensorFileError(f"{path}: module {module!r} has duplicate lora_{match.group('which')} tensors")
        slot[match.group("which")] = key
    if not pairs:
        raise InvalidTensorFileError(f"{path}: adapter contains no LoRA tensors")

    r_default = config["r"]
    alpha_default = config["lora_alpha"]
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora", False))

    modules: dict[str, _Module] = {}
    for module, slot in sorted(pairs.items()):
        if set(slot) != {"A", "B"}:
            missing = "lora_B" if "A" in slot else "lora_A"
            raise InvalidTensorFileError(f"{path}: module {module!r} lacks its {missing} tensor")
        key_a, key_b = slot["A"], slot["B"]
        for key in (key_a, key_b):
            if dtypes[key] not in FLOAT_DTYPES:
                raise InvalidTensorFileError(
                    f"{path}: tensor {key!r} has non-float dtype {dtype_name(dtypes[key]) if dtypes[key] in DTYPES else dtypes[key]}"
                )
        shape_a, shape_b = shapes[key_a], shapes[key_b]
        if len(shape_a) != 2 or len(shape_b) != 2:
            raise UnsupportedAdapterError(
                f"{path}: module {module!r} has LoRA factors of shapes {list(shape_a)} and "
                f"{list(shape_b)}; only Linear/Conv1D (2-D) LoRA is supported"
            )
        r_key = _pattern_key(list(rank_pattern), module)
        a_key = _pattern_key(list(alpha_pattern), module)
        rank = rank_pattern[r_key] if r_key is not None else r_default
        alpha = alpha_pattern[a_key] if a_key is not None else alpha_default
        if shape_a[0] != rank or shape_b[1] != rank:
            raise InvalidTensorFileError(
                f"{path}: module {module!r} has lora_A {list(shape_a)} and lora_B {list(shape_b)} "
                f"but the config gives it rank {rank}"
            )
        scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        modules[module] = _Module(
            name=module,
            key_a=key_a,
            key_b=key_b,
            rank=rank,
            alpha=alpha,
            scaling=scaling,
            out_features=shape_b[0],
            in_features=shape_a[1],
        )
    return modules


def _describe_unknown_key(key: str) -> str:
    if "lora_embedding_" in key:
        return f"embedding LoRA tensor {key!r} is not supported"
    if "lora_magnitude_vector" in key:
        return f"DoRA magnitude tensor {key!r} is not supported"
    if re.search(r"\.lora_[AB]\.bias$", key):
        return f"LoRA bias tensor {key!r} is not supported"
    if ".lora_" in key:
        return f"unrecognised LoRA tensor {key!r} (LoRA variant or unstripped adapter name)"
    if key.endswith(".bias"):
        return f"bias tensor {key!r} is not supported (bias must be 'none')"
    return f"unrecognised tensor {key!r} (full modules such as modules_to_save or embedding layers are not supported)"
