"""``compose --device cuda``: the linear combination computed on a GPU, inputs read once through pinned buffers.

Per slice of :data:`GPU_SLICE_ELEMENTS`: each input's slice (a view of the
memory-mapped blob or base: the only read of those bytes) is copied into a
reused page-locked host buffer, sent to the GPU asynchronously, combined there
with the same operations in the same order as on the CPU
(:func:`~pvreg.registry.merge.methods.add_weighted`, ``+ base``, one cast),
checked to be finite, and copied back into the output tensor.  Pinned buffers
are allocated once per dtype, so host memory stays flat in model size.

Unmeasured: the machine this was written on has no GPU.  CUDA's ``add`` with
``alpha`` contracts to a fused multiply-add like the CPU kernels, so results
are expected to match the CPU path bit for bit; that has not been verified on
hardware.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pvreg.registry.errors import DeviceUnavailableError, SpecError, opt

if TYPE_CHECKING:
    import torch

#: Elements per GPU slice: 16M (64 MiB of float32), large enough to amortise each transfer's latency.
GPU_SLICE_ELEMENTS = 1 << 24

DEVICES = ("cpu", "cuda")


def compose_device(device: str) -> torch.device | None:
    """None for the CPU path, else the CUDA device; refuses an unknown name or a missing GPU."""
    if device not in DEVICES:
        raise SpecError(f"{opt('device')} must be cpu or cuda, not {device!r}")
    if device == "cpu":
        return None
    import torch

    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"{opt('device')} cuda was asked for, but torch {torch.__version__} sees no usable CUDA GPU here"
        )
    return torch.device("cuda")


class Staging:
    """Reused host buffers, one per (role, dtype): page-locked (``pin``) for fast asynchronous copies.

    ``pin=False`` (plain memory) exists so the path can be exercised without a GPU.
    """

    def __init__(self, pin: bool = True) -> None:
        self._bufs: dict[tuple[int, torch.dtype], torch.Tensor] = {}
        self._pin = pin

    def buffer(self, role: int, dtype: torch.dtype, numel: int) -> torch.Tensor:
        import torch

        key = (role, dtype)
        buf = self._bufs.get(key)
        if buf is None:
            buf = self._bufs[key] = torch.empty(GPU_SLICE_ELEMENTS, dtype=dtype, pin_memory=self._pin)
        return buf[:numel]


def merged_on_device(
    name: str,
    flats: Sequence[torch.Tensor],
    weights: Sequence[float],
    order: Sequence[int],
    base: torch.Tensor,
    out_dtype: torch.dtype,
    acc_dtype: torch.dtype,
    device: torch.device,
    staging: Staging,
    check_finite: Callable[[str, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """θ_base + Σ w·δ for one tensor on ``device``; returns the CPU output tensor.

    ``check_finite``: the engine's (passed in, so this module does not import the engine back).
    """
    import torch

    from pvreg.registry.merge.methods import add_weighted

    out = torch.empty(base.shape, dtype=out_dtype)
    flat_out, flat_base = out.view(-1), base.reshape(-1)
    numel = flat_base.numel()
    for start in range(0, numel, GPU_SLICE_ELEMENTS):
        part = slice(start, min(start + GPU_SLICE_ELEMENTS, numel))
        m = part.stop - part.start
        sent = []
        for role, src in enumerate([*flats, flat_base]):
            host = staging.buffer(role, src.dtype, m)
            host.copy_(src[part])  # the one read of these input bytes
            sent.append(host.to(device, non_blocking=True))
        acc = torch.zeros(m, dtype=acc_dtype, device=device)
        add_weighted(acc, sent[:-1], weights, order)
        acc.add_(sent[-1])
        piece = acc.to(out_dtype)
        if not bool(torch.isfinite(piece).all()):
            check_finite(name, piece.cpu())
        host_out = staging.buffer(-1, out_dtype, m)
        host_out.copy_(piece)  # synchronises: the staging buffers are free again afterwards
        flat_out[part].copy_(host_out)
    return out
