"""Does a set of tensors fit a base model? One checker, one message style, for every caller.

Sources (a delta file, θ+/θ− checkpoints, a fine-tune, adapters), compose and
in-memory apply all ask the same question before reading tensor data; they
differ only in whether the inputs must cover the base exactly and in how many
problems they report.  Each problem is a :class:`Misfit` with structured fields;
:func:`misfit_error` turns them into one :class:`BaseMismatchError` carrying the
first problem's tensor name and both shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pvreg.registry.errors import BaseMismatchError
from pvreg.registry.tensors.dtypes import FLOAT_DTYPES, dtype_name

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Misfit:
    """One way a tensor does not fit: ``kind`` is ``not_in_base``, ``missing``, ``shape`` or ``base_dtype``."""

    tensor: str
    kind: str
    shape: Shape | None = None
    base_shape: Shape | None = None
    base_dtype: str | None = None
    exact: bool = False

    def message(self, base_label: str = "the base") -> str:
        name = repr(self.tensor)
        if self.kind == "not_in_base":  # for a full checkpoint, the shape tells which tensor it is
            shown = f" (shape {list(self.shape)})" if self.exact and self.shape is not None else ""
            return f"tensor {name}{shown} does not exist in {base_label}"
        if self.kind == "missing":
            return f"lacks tensor {name} (shape {list(self.base_shape or ())} in {base_label})"
        if self.kind == "shape":
            return (
                f"tensor {name} has shape {list(self.shape or ())} but {base_label} has {list(self.base_shape or ())}"
            )
        return f"tensor {name} is {dtype_name(self.base_dtype or '')} in {base_label}, not floating point"


def fit_problems(
    shapes: Mapping[str, Shape],
    base: Mapping[str, Shape],
    *,
    exact: bool = False,
    base_dtypes: Mapping[str, str] | None = None,
) -> list[Misfit]:
    """Every misfit of ``shapes`` (tensor name -> shape) against ``base``, sorted by tensor name.

    ``exact``: the inputs must have every base tensor too (full checkpoints).
    ``base_dtypes``: when given, a base tensor that is not floating point cannot be merged into.
    """
    found: list[Misfit] = []
    names = sorted(set(shapes) | set(base)) if exact else sorted(shapes)
    for name in names:
        shape, b = shapes.get(name), base.get(name)
        if b is None:
            found.append(Misfit(name, "not_in_base", shape=shape, exact=exact))
        elif shape is None:
            found.append(Misfit(name, "missing", base_shape=b))
        elif tuple(shape) != tuple(b):
            found.append(Misfit(name, "shape", shape=tuple(shape), base_shape=tuple(b)))
        elif base_dtypes is not None and base_dtypes.get(name) not in FLOAT_DTYPES:
            found.append(Misfit(name, "base_dtype", base_dtype=base_dtypes.get(name)))
    return found


def misfit_error(
    label: str, misfits: Sequence[Misfit], *, limit: int = 1, base_label: str = "the base", expected: str | None = None
) -> BaseMismatchError:
    """One error for ``misfits`` (at least one), naming up to ``limit`` of them."""
    shown = ", ".join(m.message(base_label) for m in misfits[:limit])
    more = f" (and {len(misfits) - limit} more)" if len(misfits) > limit else ""
    first = misfits[0]
    return BaseMismatchError(
        f"{label}: {shown}{more}",
        tensor=first.tensor,
        shape=first.shape,
        base_shape=first.base_shape,
        misfits=list(misfits),
        expected=expected,
    )


def check_fit(label: str, shapes: Mapping[str, Shape], base: Mapping[str, Shape], *, exact: bool = False) -> None:
    """Raise :func:`misfit_error` for the first misfit, if any (sources stop at the first)."""
    misfits = fit_problems(shapes, base, exact=exact)
    if misfits:
        raise misfit_error(label, misfits)
