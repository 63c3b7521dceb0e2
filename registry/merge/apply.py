"""Merging at test time: add a composed delta into a loaded ``torch.nn.Module``.

Why in place: reloading a base to try another coefficient costs minutes on a
large model; adding Δ to the parameters already in memory costs one pass.
Reverting must be bit-exact (θ + Δ − Δ is not θ in floating point), so the
original value of every *touched* parameter is saved on the CPU first.
Memory cost: one CPU copy of each parameter the vectors touch, in the
parameter's own dtype (for vectors over all weights, one copy of the model).

A loaded model has no fingerprint, so instead of the base check every vector
tensor must map to a parameter of the same shape.  Names are matched across
the usual transformers prefixes: ``model.`` present or absent and PEFT's
``base_model.model.``; tied parameters (``lm_head.weight`` sharing
``model.embed_tokens.weight``) are updated once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import BaseMismatchError
from pvreg.registry.merge.compose import Plan, prepare
from pvreg.registry.merge.engine import combined_delta
from pvreg.registry.merge.plan import Input
from pvreg.registry.merge.spec import build_spec
from pvreg.registry.tensors.fit import fit_problems, misfit_error
from pvreg.registry.tensors.hfnames import MODEL_PREFIX, PEFT_PREFIX

if TYPE_CHECKING:
    import torch

    from pvreg.registry.storage.store import Store
    from pvreg.schemas.compose import ComposeSpec


def _core(name: str) -> str:
    """``base_model.model.model.x`` / ``model.x`` / ``x`` all become ``x``."""
    name = name.removeprefix(PEFT_PREFIX)
    return name.removeprefix(MODEL_PREFIX)


def map_names(vector_names: Sequence[str], params: dict[str, torch.nn.Parameter]) -> tuple[dict[str, str], list[str]]:
    """Vector tensor name -> parameter name; plus the names that map to nothing.

    An exact name match wins; otherwise names are compared with the
    ``base_model.model.`` and ``model.`` prefixes stripped.
    """
    by_core: dict[str, list[str]] = {}
    for p in params:
        by_core.setdefault(_core(p), []).append(p)
    mapping: dict[str, str] = {}
    missing: list[str] = []
    for n in vector_names:
        if n in params:
            mapping[n] = n
            continue
        candidates = by_core.get(_core(n), [])
        if len(candidates) >= 1:
            # Several names for one core are tied aliases of one tensor or ambiguous;
            # prefer the one that keeps the vector's own prefix style.
            candidates = sorted(candidates, key=lambda c: (not c.endswith(n), len(c)))
            mapping[n] = candidates[0]
        else:
            missing.append(n)
    return mapping, missing


@dataclass
class AppliedComposition:
    """Handle on an in-place merge; a context manager that reverts it on exit.

    ``touched`` lists the parameter names changed; ``saved_bytes`` is the CPU
    memory held by the saved originals.
    """

    model: Any
    spec: ComposeSpec
    touched: list[str] = field(default_factory=list)
    _saved: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _params: dict[str, torch.nn.Parameter] = field(default_factory=dict, repr=False)
    active: bool = True

    @property
    def saved_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._saved.values())

    def restore(self) -> None:
        """Put back every touched parameter bit-exactly (idempotent)."""
        import torch

        if not self.active:
            return
        with torch.no_grad():
            for name, original in self._saved.items():
                self._params[name].data.copy_(original)
        self._saved.clear()
        self.active = False

    def __enter__(self) -> AppliedComposition:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.restore()


def apply(
    store: Store,
    model: Any,
    spec: ComposeSpec | str | Sequence[str],
    *,
    method: str | None = None,
    density: float | None = None,
    seed: int | None = None,
    normalize: bool | None = None,
    accumulate: str | None = None,
) -> AppliedComposition:
    """Add Σ η_i·s_i·φ_i (or a TIES/DARE combination) into ``model``'s parameters.

    Each parameter becomes ``(θ.to(acc) + Δ).to(θ.dtype)`` on its own device.

    Raises:
        SpecError, NotFoundError, BaseMismatchError: before any parameter
        changes, with every problem in one message.
    """
    import torch

    full = build_spec(spec, method=method, density=density, seed=seed, normalize=normalize, accumulate=accumulate)
    plan = prepare(store, full, base=None, need_base=False, lookup_base=False)
    try:
        params = dict(model.named_parameters(remove_duplicate=False))
        names = sorted({n for i in plan.inputs for n in i.file.infos})
        mapping, _ = map_names(names, params)  # unmapped names are misfits below
        # The model is the base: each vector tensor against the parameter its name maps to.
        shapes = {n: next(i.file.infos[n].shape for i in plan.inputs if n in i.file.infos) for n in names}
        model_shapes = {n: tuple(params[p].shape) for n, p in mapping.items()}
        misfits = fit_problems(shapes, model_shapes)
        if misfits:
            raise misfit_error("the vectors", misfits, limit=3, base_label="the model")
        targets: dict[int, list[str]] = {}
        for n, p in mapping.items():
            targets.setdefault(id(params[p]), []).append(n)
        handle = AppliedComposition(model, plan.spec, _params=params)
        try:
            with torch.no_grad():
                for n in names:
                    _apply_one(plan, n, mapping[n], params, handle, targets)
        except BaseException:
            handle.restore()
            raise
        return handle
    finally:
        plan.close()


def _apply_one(
    plan: Plan, name: str, pname: str, params: dict[str, Any], handle: AppliedComposition, targets: dict[int, list[str]]
) -> None:
    import torch

    param = params[pname]
    users: list[Input] = [i for i in plan.inputs if name in i.file.infos]
    delta = combined_delta(plan, name, users)
    for u in users:
        u.file.release(name)
    tied = targets[id(param)]
    if len(tied) > 1 and name != tied[0]:
        # A tied parameter already received the first name's delta; the others must agree.
        first_users = [i for i in plan.inputs if tied[0] in i.file.infos]
        if not torch.equal(delta, combined_delta(plan, tied[0], first_users)):
            raise BaseMismatchError(
                f"tensors {tied[0]!r} and {name!r} map to the same tied parameter {pname!r} but their deltas differ"
            )
        return
    handle._saved[pname] = param.detach().to("cpu", copy=True)
    handle.touched.append(pname)
    acc = delta.dtype
    if param.dtype == acc:
        # Same dtype: add in place (the same rounding as a copy plus add, without two more passes over the model).
        param.data.add_(delta.to(param.device))
        return
    param.data.copy_(param.detach().to(acc).add_(delta.to(param.device)).to(param.dtype))
