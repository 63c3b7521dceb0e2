"""How vectors relate: cosine similarity, norms, sign agreement, touched share, and a semantic diff.

Vectors are safetensors files (registry blobs, exports, ``--vector-only``
outputs).  Everything streams: one tensor at a time per file, in row chunks
of at most ``chunk_elements`` entries, accumulated in float64 — memory stays
at a few chunks whatever the model size.  A tensor that a vector lacks counts
as zeros (pvreg leaves all-zero tensors out of its blobs).

Statistics (per group of entries; the whole vector is one group):

- ``norms[i]`` = ‖vᵢ‖₂; ``touched[i]`` = share of entries with vᵢ ≠ 0;
- ``cosine[i][j]`` = ⟨vᵢ, vⱼ⟩ / (‖vᵢ‖‖vⱼ‖), None when a norm is 0;
- ``sign_agreement[i][j]`` = share of the entries both touch where
  sign(vᵢ) = sign(vⱼ), None when they touch no common entry.

Groups: ``tensor`` (each tensor name), ``layer`` (``layers.N`` from names like
``model.layers.N.…``; other tensors form ``other``) or ``module-type`` (the name
without its model prefix, layer index and ``.weight``/``.bias``:
``self_attn.q_proj``, ``mlp.down_proj``, ``embed_tokens``, ``lm_head``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import (
    BaseMismatchError,
    EvalError,
    InvalidTensorFileError,
    InvalidVectorError,
    NotFoundError,
)

if TYPE_CHECKING:
    import torch

    from pvreg.schemas.evaluation import DiffReport, GroupBy, GroupStats, SimilarityReport

#: Default number of entries read from one tensor at once.
CHUNK_ELEMENTS = 1 << 22
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")
_PREFIXES = ("base_model.model.", "model.", "transformer.", "gpt_neox.", "decoder.")


def layer_of(name: str) -> str:
    """``layers.N`` for a tensor of transformer block N, ``other`` for embeddings, final norm, head."""
    m = _LAYER_RE.search(name)
    return f"layers.{m.group(1)}" if m else "other"


def module_type_of(name: str) -> str:
    """The tensor's module kind, shared by every layer: ``model.layers.3.mlp.up_proj.weight`` -> ``mlp.up_proj``."""
    m = _LAYER_RE.search(name)
    rest = name[m.end() :] if m and m.end() < len(name) else name
    if not m:
        for prefix in _PREFIXES:
            if rest.startswith(prefix):
                rest = rest[len(prefix) :]
                break
    for suffix in (".weight", ".bias"):
        if rest.endswith(suffix) and len(rest) > len(suffix):
            rest = rest[: -len(suffix)]
            break
    return rest


_GROUPERS: dict[GroupBy, Callable[[str], str]] = {
    "tensor": lambda n: n,
    "layer": layer_of,
    "module-type": module_type_of,
}


class _Vector:
    """One open safetensors file: names, shapes and row-chunked float64 reads, validated as it goes.

    ``sign`` (±1) multiplies every value read: a registered vector's effect is
    its stored sign times its blob, and that (exact) product is what is compared.
    """

    def __init__(self, path: str | os.PathLike[str], stack: ExitStack, sign: int = 1) -> None:
        from safetensors import safe_open

        self.sign = sign
        self.path = Path(path)
        if not self.path.exists():
            raise NotFoundError(f"vector file {self.path} does not exist")
        if self.path.is_dir():
            raise InvalidTensorFileError(f"{self.path} is a directory, expected a safetensors file")
        try:
            self.handle = stack.enter_context(safe_open(str(self.path), framework="pt"))
            self.shapes: dict[str, tuple[int, ...]] = {}
            for name in self.handle.keys():  # noqa: SIM118 - safe_open is no dict: it has keys() but no __iter__
                sl = self.handle.get_slice(name)
                dtype = sl.get_dtype()
                if dtype not in _FLOAT_DTYPES:
                    raise InvalidVectorError(f"{self.path}: tensor {name} has dtype {dtype}, expected a float dtype")
                self.shapes[name] = tuple(sl.get_shape())
        except (InvalidVectorError, NotFoundError):
            raise
        except Exception as e:  # safetensors raises its own error type for malformed files
            raise InvalidTensorFileError(f"{self.path}: not a readable safetensors file ({e})") from e

    def chunks(self, name: str, chunk_elements: int) -> Iterator[torch.Tensor]:
        """The tensor flattened, as consecutive float64 pieces of whole rows."""
        import torch

        shape = self.shapes[name]
        numel = 1
        for d in shape:
            numel *= d
        try:
            if len(shape) == 0 or numel <= chunk_elements:
                pieces: Iterator[torch.Tensor] = iter([self.handle.get_tensor(name)])
            else:
                row = numel // shape[0] if shape[0] else 1
                step = max(1, chunk_elements // max(1, row))
                sl = self.handle.get_slice(name)
                pieces = (sl[s : s + step] for s in range(0, shape[0], step))
            for piece in pieces:
                t = piece.reshape(-1).to(torch.float64)
                if not torch.isfinite(t).all():
                    raise InvalidVectorError(f"{self.path}: tensor {name} contains NaN or Inf")
                yield t if self.sign == 1 else -t
        except InvalidVectorError:
            raise
        except Exception as e:
            raise InvalidTensorFileError(f"{self.path}: cannot read tensor {name} ({e})") from e


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


@dataclass
class _Acc:
    """float64/int accumulators for N vectors over one group."""

    n: int
    numel: int = 0
    gram: Any = None  # float64 [N, N]: Σ vᵢ vⱼ
    nonzero: Any = None  # int64 [N, N]: Σ [vᵢ≠0][vⱼ≠0] (diagonal: touched counts)
    agree: Any = None  # int64 [N, N]: Σ [sign vᵢ = sign vⱼ ≠ 0]

    def __post_init__(self) -> None:
        import torch

        self.gram = torch.zeros((self.n, self.n), dtype=torch.float64)
        self.nonzero = torch.zeros((self.n, self.n), dtype=torch.int64)
        self.agree = torch.zeros((self.n, self.n), dtype=torch.int64)

    def add(self, present: list[int], block: torch.Tensor) -> None:
        """Add a [len(present), c] float64 block of the vectors ``present`` (the others are zero there)."""
        import torch

        idx = torch.as_tensor(present)
        nz = (block != 0).to(torch.float64)
        pos = (block > 0).to(torch.float64)
        neg = (block < 0).to(torch.float64)
        sub = torch.meshgrid(idx, idx, indexing="ij")
        self.gram[sub] += block @ block.T
        self.nonzero[sub] += (nz @ nz.T).round().to(torch.int64)
        self.agree[sub] += (pos @ pos.T + neg @ neg.T).round().to(torch.int64)

    def merge(self, other: _Acc) -> None:
        self.numel += other.numel
        self.gram += other.gram
        self.nonzero += other.nonzero
        self.agree += other.agree

    def stats(self, group: str) -> GroupStats:
        from pvreg.schemas.evaluation import GroupStats

        sq = self.gram.diagonal().tolist()
        norms = [max(0.0, s) ** 0.5 for s in sq]
        g, nz, ag = self.gram.tolist(), self.nonzero.tolist(), self.agree.tolist()
        cosine = [[_ratio(g[i][j], norms[i] * norms[j]) for j in range(self.n)] for i in range(self.n)]
        cosine = [[None if c is None else max(-1.0, min(1.0, c)) for c in row] for row in cosine]
        signs = [[_ratio(ag[i][j], nz[i][j]) for j in range(self.n)] for i in range(self.n)]
        touched = [nz[i][i] / self.numel if self.numel else 0.0 for i in range(self.n)]
        return GroupStats(
            group=group, numel=self.numel, norms=norms, touched=touched, cosine=cosine, sign_agreement=signs
        )


def _union_shapes(vectors: Sequence[_Vector]) -> dict[str, tuple[int, ...]]:
    """Every tensor name with its one shape; two files disagreeing on a shape is refused."""
    shapes: dict[str, tuple[int, ...]] = {}
    origin: dict[str, Path] = {}
    for v in vectors:
        for name, shape in v.shapes.items():
            if name in shapes and shapes[name] != shape:
                raise BaseMismatchError(
                    f"tensor {name} has shape {list(shapes[name])} in {origin[name]} but {list(shape)} in {v.path}"
                )
            shapes.setdefault(name, shape)
            origin.setdefault(name, v.path)
    return shapes


def _check_signs(signs: Sequence[int] | None, n: int) -> list[int]:
    if signs is None:
        return [1] * n
    if len(signs) != n or any(s not in (1, -1) or isinstance(s, bool) for s in signs):
        raise EvalError(f"signs must be {n} values of 1 or -1, got {list(signs)!r}")
    return list(signs)


def _check_chunk(chunk_elements: int) -> None:
    if not isinstance(chunk_elements, int) or isinstance(chunk_elements, bool) or chunk_elements < 1:
        raise EvalError(f"chunk_elements must be a positive integer, got {chunk_elements!r}")


def similarity(
    paths: Sequence[str | os.PathLike[str]],
    *,
    labels: Sequence[str] | None = None,
    group_by: GroupBy | None = None,
    signs: Sequence[int] | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> SimilarityReport:
    """Pairwise statistics of the vectors in ``paths``, over the whole vector and per ``group_by`` group.

    ``signs[i]`` (±1, default 1) multiplies vector i: registered vectors are compared as sᵢ·φᵢ.
    """
    import torch

    from pvreg.schemas.evaluation import SimilarityReport

    if not paths:
        raise EvalError("similarity needs at least one vector file")
    if labels is not None and len(labels) != len(paths):
        raise EvalError(f"{len(labels)} labels given for {len(paths)} vectors")
    if group_by is not None and group_by not in _GROUPERS:
        raise EvalError(f"group_by must be one of {', '.join(_GROUPERS)}, got {group_by!r}")
    _check_chunk(chunk_elements)
    n = len(paths)
    sign_list = _check_signs(signs, n)
    with ExitStack() as stack:
        vectors = [_Vector(p, stack, s) for p, s in zip(paths, sign_list, strict=True)]
        shapes = _union_shapes(vectors)
        groups: dict[str, _Acc] = {}
        whole = _Acc(n)
        for name in sorted(shapes):
            acc = _Acc(n)
            present = [i for i, v in enumerate(vectors) if name in v.shapes]
            for pieces in zip(*(vectors[i].chunks(name, chunk_elements) for i in present), strict=True):
                acc.add(present, torch.stack(pieces))
                acc.numel += pieces[0].numel()
            if not present:
                continue
            whole.merge(acc)
            if group_by is not None:
                key = _GROUPERS[group_by](name)
                groups.setdefault(key, _Acc(n)).merge(acc)
    return SimilarityReport(
        vectors=list(labels) if labels is not None else [str(p) for p in paths],
        whole=whole.stats("all"),
        group_by=group_by,
        groups=[groups[k].stats(k) for k in sorted(groups, key=_natural_key)],
    )


def _natural_key(text: str) -> list[Any]:
    """Sort ``layers.2`` before ``layers.10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def diff(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    labels: tuple[str, str] | None = None,
    signs: tuple[int, int] | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> DiffReport:
    """What changed from vector ``a`` to vector ``b``, per tensor and overall.

    Per tensor in both (same shape): ‖a‖, ‖b‖, ‖b−a‖/‖a‖, cos(a, b), max|b−a|.
    The summary counts a tensor only in one vector as zeros in the other; a
    tensor whose shape changed cannot be compared entry-wise and counts as
    removed from ``a`` and added in ``b``.  ``signs`` (±1 each) multiply ``a``
    and ``b``: registered vectors are compared as s·φ.
    """
    from pvreg.schemas.evaluation import (
        DiffReport,
        DiffSummary,
        ShapeChange,
        TensorDiff,
    )

    _check_chunk(chunk_elements)
    sign_a, sign_b = _check_signs(signs, 2)
    tensors: list[TensorDiff] = []
    shape_changed: list[ShapeChange] = []
    tot_aa = tot_bb = tot_ab = tot_dd = 0.0
    with ExitStack() as stack:
        va, vb = _Vector(a, stack, sign_a), _Vector(b, stack, sign_b)
        only_a = sorted(set(va.shapes) - set(vb.shapes))
        only_b = sorted(set(vb.shapes) - set(va.shapes))
        for name in sorted(set(va.shapes) | set(vb.shapes)):
            sums = {"aa": 0.0, "bb": 0.0, "ab": 0.0, "dd": 0.0}
            comparable = name in va.shapes and name in vb.shapes and va.shapes[name] == vb.shapes[name]
            if comparable:
                max_abs = 0.0
                for xa, xb in zip(va.chunks(name, chunk_elements), vb.chunks(name, chunk_elements), strict=True):
                    d = xb - xa
                    sums["aa"] += float(xa @ xa)
                    sums["bb"] += float(xb @ xb)
                    sums["ab"] += float(xa @ xb)
                    sums["dd"] += float(d @ d)
                    if d.numel():
                        max_abs = max(max_abs, float(d.abs().max()))
                na, nb = sums["aa"] ** 0.5, sums["bb"] ** 0.5
                cos = _ratio(sums["ab"], na * nb)
                tensors.append(
                    TensorDiff(
                        name=name,
                        shape=list(va.shapes[name]),
                        norm_a=na,
                        norm_b=nb,
                        rel_change=_ratio(sums["dd"] ** 0.5, na),
                        cosine=None if cos is None else max(-1.0, min(1.0, cos)),
                        max_abs_diff=max_abs,
                        identical=max_abs == 0.0,
                    )
                )
            else:
                if name in va.shapes and name in vb.shapes:
                    shape_changed.append(
                        ShapeChange(name=name, shape_a=list(va.shapes[name]), shape_b=list(vb.shapes[name]))
                    )
                for v, key in ((va, "aa"), (vb, "bb")):
                    if name in v.shapes:
                        sums[key] = sum(float(x @ x) for x in v.chunks(name, chunk_elements))
                sums["dd"] = sums["aa"] + sums["bb"]
            tot_aa += sums["aa"]
            tot_bb += sums["bb"]
            tot_ab += sums["ab"]
            tot_dd += sums["dd"]
    norm_a, norm_b = tot_aa**0.5, tot_bb**0.5
    cos = _ratio(tot_ab, norm_a * norm_b)
    identical = sum(1 for t in tensors if t.identical)
    summary = DiffSummary(
        norm_a=norm_a,
        norm_b=norm_b,
        rel_change=_ratio(tot_dd**0.5, norm_a),
        cosine=None if cos is None else max(-1.0, min(1.0, cos)),
        tensors_compared=len(tensors),
        tensors_identical=identical,
        tensors_changed=len(tensors) - identical,
        only_in_a=len(only_a),
        only_in_b=len(only_b),
        shape_changed=len(shape_changed),
    )
    la, lb = labels if labels is not None else (str(a), str(b))
    return DiffReport(
        a=la,
        b=lb,
        tensors=tensors,
        only_in_a=only_a,
        only_in_b=only_b,
        shape_changed=shape_changed,
        summary=summary,
    )
