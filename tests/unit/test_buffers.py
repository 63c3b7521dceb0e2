"""OutputBuffers: reused memory for written-behind outputs, never lent twice at once, bounded."""

from __future__ import annotations

import threading

import pytest
import torch

from pvreg.registry.tensors.buffers import OutputBuffers


def span(t: torch.Tensor) -> tuple[int, int]:
    return t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()


def test_a_given_back_buffer_is_lent_again_for_a_tensor_that_fits() -> None:
    pool = OutputBuffers()
    a = pool.take("a", (64, 32), torch.bfloat16)
    assert a.shape == (64, 32) and a.dtype == torch.bfloat16 and a.is_contiguous()
    first = a.data_ptr()
    del a
    pool.give("a")
    b = pool.take("b", (16, 8), torch.float32)  # 512 B of the 4 KiB buffer
    assert b.data_ptr() == first and b.shape == (16, 8) and b.dtype == torch.float32
    c = pool.take("c", (100_000,), torch.float32)  # larger than anything idle: fresh memory
    assert c.data_ptr() != first


def test_lent_buffers_never_overlap() -> None:
    pool = OutputBuffers()
    lent = [pool.take(f"t{i}", (1000 + i,), torch.float16) for i in range(5)]
    spans = sorted(span(t) for t in lent)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
    with pytest.raises(RuntimeError, match="already lent"):
        pool.take("t0", (4,), torch.float16)


def test_idle_buffers_are_bounded_and_the_largest_are_kept() -> None:
    pool = OutputBuffers(keep=2)
    sizes = [10, 40, 20, 30]  # KiB
    for i, kib in enumerate(sizes):
        pool.take(f"t{i}", (kib * 1024,), torch.uint8)
    for i in range(len(sizes)):
        pool.give(f"t{i}")
    assert pool.held_bytes == (40 + 30) * 1024
    pool.give("never-lent")  # ignored
    assert pool.held_bytes == (40 + 30) * 1024


def test_give_from_the_write_thread() -> None:
    pool = OutputBuffers()
    t = pool.take("w", (256,), torch.float32)
    ptr = t.data_ptr()
    del t
    th = threading.Thread(target=pool.give, args=("w",))
    th.start()
    th.join()
    assert pool.take("again", (256,), torch.float32).data_ptr() == ptr


def test_empty_tensors_need_no_buffer() -> None:
    pool = OutputBuffers()
    assert pool.take("e", (0, 5), torch.bfloat16).shape == (0, 5)
    assert pool.held_bytes == 0
