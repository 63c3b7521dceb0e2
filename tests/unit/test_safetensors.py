"""The safetensors parser (``parse_header``, ``SafetensorsFile``) and writer (``StreamingWriter``), directly.

The reference is an independent implementation: ``safetensors.torch``, the format's own reader and
writer.  Files are real files; every expectation is computed from the reference, not from pvreg.
(Non-regular input files: test_inputfiles.py; PyTorch checkpoints: test_torchfile.py.)
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.tensors import as_bytes, assert_same
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pvreg.registry.errors import InvalidTensorFileError
from pvreg.registry.tensors.safetensors import (
    SafetensorsFile,
    StreamingWriter,
    parse_header,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

ALL_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
              torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.uint16, torch.uint32,
              torch.uint64, torch.bool]


def sample_tensors() -> dict[str, torch.Tensor]:
    """Every dtype, scalars, zero-size and multi-dimensional shapes, odd byte lengths."""
    g = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    for i, dtype in enumerate(ALL_DTYPES):
        name = str(dtype).removeprefix("torch.")
        base = torch.randn((3, 5, 7), generator=g) * 10
        out[f"t.{name}"] = base.to(dtype) if not dtype.is_floating_point or dtype.itemsize > 1 else base.clamp(-4, 4).to(dtype)
        out[f"scalar.{name}"] = torch.tensor(i + 1).to(dtype)
    out["empty.1d"] = torch.zeros(0)
    out["empty.3d"] = torch.zeros((4, 0, 2), dtype=torch.float16)
    out["odd"] = torch.arange(7, dtype=torch.uint8)  # 7 bytes: the next tensor starts unaligned
    out["after.odd"] = torch.randn(11, generator=g, dtype=torch.float64)
    return out


def write_header(path: Path, header: Any, data: bytes = b"", *, text: str | None = None) -> Path:
    body = (text if text is not None else json.dumps(header)).encode("utf-8")
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


# --- the safetensors parser against the reference -------------------------------------------------------------------


def test_reads_exactly_what_the_reference_writes(tmp_path: Path) -> None:
    tensors = sample_tensors()
    path = tmp_path / "ref.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "ünïcode ✓"})
    reference = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        ref_meta = f.metadata()
    ours = SafetensorsFile(path)
    try:
        assert ours.metadata == ref_meta
        assert sorted(ours.infos) == sorted(reference)
        for name, ref in reference.items():
            info = ours.infos[name]
            assert info.shape == tuple(ref.shape)
            assert info.nbytes == ref.numel() * ref.element_size()
            assert_same(ours.tensor(name), ref)
            assert bytes(ours.raw(name)) == as_bytes(ref)
    finally:
        ours.close()


def test_reference_reads_exactly_what_the_writer_writes(tmp_path: Path) -> None:
    tensors = sample_tensors()
    target = tmp_path / "out.safetensors"
    entries = [(n, _code(t), tuple(t.shape)) for n, t in sorted(tensors.items())]
    writer = StreamingWriter(target, entries, {"format": "pt", "k": "v"})
    for name, _, _ in entries:
        writer.write(name, tensors[name])
    digest = writer.commit()
    data = target.read_bytes()
    assert digest == hashlib.sha256(data).hexdigest()
    assert writer.size == len(data)
    assert struct.unpack("<Q", data[:8])[0] % 8 == 0  # tensor data starts 8-byte aligned, as the reference writes it
    reference = load_file(str(target))
    assert sorted(reference) == sorted(tensors)
    for name, t in tensors.items():
        assert_same(reference[name], t)
    with safe_open(str(target), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "k": "v"}
    assert list(parse_header(target)[0]) == [n for n, _, _ in entries]  # file order = the order given


def _code(t: torch.Tensor) -> str:
    from pvreg.registry.tensors.dtypes import dtype_code

    return dtype_code(t.dtype)


def test_writer_accepts_raw_bytes_and_views(tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    view = base.t()  # non-contiguous: written in logical order
    target = tmp_path / "v.safetensors"
    with StreamingWriter(target, [("a", "F32", (6, 4)), ("b", "F32", (4, 6))]) as w:
        w.write("a", view)
        w.write("b", memoryview(as_bytes(base)))
        w.commit()
    ref = load_file(str(target))
    assert torch.equal(ref["a"], view) and torch.equal(ref["b"], base)


def _dir_listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.mark.parametrize("how", ["exception", "abort", "out-of-order", "wrong-size", "incomplete"])
def test_writer_that_does_not_commit_leaves_nothing(tmp_path: Path, how: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "x.safetensors"
    entries = [("a", "F32", (2,)), ("b", "F32", (3,))]
    with pytest.raises((RuntimeError, AssertionError)):
        with StreamingWriter(target, entries) as w:
            if how == "exception":
                w.write("a", torch.zeros(2))
                raise RuntimeError("boom")
            if how == "abort":
                w.write("a", torch.zeros(2))
                w.abort()
                raise RuntimeError("aborted")
            if how == "out-of-order":
                w.write("b", torch.zeros(3))
            if how == "wrong-size":
                w.write("a", torch.zeros(3))
            if how == "incomplete":
                w.write("a", torch.zeros(2))
                w.commit()
    assert _dir_listing(out) == []  # neither the target nor a temporary file


def test_writer_overwrite_false_keeps_the_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "x.safetensors"
    target.write_bytes(b"keep me")
    with StreamingWriter(target, [("a", "F32", (1,))], overwrite=False) as w:
        w.write("a", torch.ones(1))
        with pytest.raises(FileExistsError):  # the rename cannot replace anything (renameat2 NOREPLACE)
            w.commit()
    assert target.read_bytes() == b"keep me"
    assert _dir_listing(tmp_path) == ["x.safetensors"]


def test_writer_commit_to_another_target(tmp_path: Path) -> None:
    first, second = tmp_path / "staging.safetensors", tmp_path / "final.safetensors"
    with StreamingWriter(first, [("a", "F32", (2,))]) as w:
        w.write("a", torch.tensor([1.0, 2.0]))
        w.commit(second)
    assert _dir_listing(tmp_path) == ["final.safetensors"]
    assert torch.equal(load_file(str(second))["a"], torch.tensor([1.0, 2.0]))


E = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
DATA = struct.pack("<2f", 1.5, -2.0)


@pytest.mark.parametrize("header,data", [
    ({"__metadata__": None, "a": E}, DATA),                                   # null metadata: the reference allows it
    ({"a": {**E, "extra": [1, {"x": None}]}}, DATA),                          # unknown entry fields are ignored by both
    ({"z": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]}, "a": E}, DATA),   # zero-size at the end...
    ({"a": E, "z": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}, DATA),   # ...and at a shared start offset
    ({"a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, DATA),
    ({"b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}, "a": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}}, DATA),
    ({"model.ünïcode.✓": E, "a": {"dtype": "F32", "shape": [0, 2**60], "data_offsets": [8, 8]}}, DATA),
])
def test_accepts_what_the_reference_accepts(tmp_path: Path, header: dict, data: bytes) -> None:
    path = write_header(tmp_path / "q.safetensors", header, data)
    reference = load_file(str(path))
    ours = SafetensorsFile(path)
    assert sorted(ours.infos) == sorted(reference)
    for name, ref in reference.items():
        assert_same(ours.tensor(name), ref)


def test_header_padding_and_whitespace_are_accepted(tmp_path: Path) -> None:
    text = ' {\n "a" : ' + json.dumps(E) + " }" + " " * 13
    path = write_header(tmp_path / "p.safetensors", None, DATA, text=text)
    assert_same(SafetensorsFile(path).tensor("a"), load_file(str(path))["a"])


def _refused(path: Path) -> str:
    with pytest.raises(InvalidTensorFileError) as info:
        parse_header(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 400, message
    return message


BAD_HEADERS: list[tuple[str, str, str]] = [
    # (id, header text, message fragment); the tensor is always called "w.0"
    ("dtype-list", '{"w.0": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}', "tensor 'w.0' has unknown dtype ['F32']"),
    ("dtype-number", '{"w.0": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}}', "tensor 'w.0' has unknown dtype 4"),
    ("dtype-lowercase", '{"w.0": {"dtype": "f32", "shape": [2], "data_offsets": [0, 8]}}', "unknown dtype 'f32'"),
    ("bool-dim", '{"w.0": {"dtype": "F32", "shape": [true, true], "data_offsets": [0, 4]}}', "tensor 'w.0' has an invalid shape [True, True]"),
    ("bool-offset", '{"w.0": {"dtype": "F32", "shape": [1], "data_offsets": [false, 4]}}', "tensor 'w.0' has invalid data_offsets"),
    ("float-dim", '{"w.0": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}', "dimension 0 is a JSON number"),
    ("exp-dim", '{"w.0": {"dtype": "F32", "shape": [2e0], "data_offsets": [0, 8]}}', "dimension 0 is a JSON number"),
    ("negative-dim", '{"w.0": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}', "dimension 0 (-2) is outside 0 <= n < 2**63"),
    ("dim-2-63", '{"w.0": {"dtype": "F32", "shape": [0, 9223372036854775808], "data_offsets": [0, 0]}}', "is outside 0 <= n < 2**63"),
    ("dim-u64-max", '{"w.0": {"dtype": "F32", "shape": [18446744073709551615, 0], "data_offsets": [0, 0]}}', "is outside 0 <= n < 2**63"),
    ("21-digit-dim", '{"w.0": {"dtype": "F32", "shape": [0, 100000000000000000000], "data_offsets": [0, 0]}}', "header holds a 21-digit integer"),
    ("5000-digit-offset", '{"w.0": {"dtype": "F32", "shape": [2], "data_offsets": [0, %s]}}' % ("7" * 5000), "header holds a 5000-digit integer"),
    ("stride-overflow", '{"w.0": {"dtype": "F32", "shape": [0, 4611686018427387904, 2], "data_offsets": [0, 0]}}', "its dimensions multiply to 2**63 bytes or more"),
    ("bytes-overflow", '{"w.0": {"dtype": "F64", "shape": [2305843009213693952], "data_offsets": [0, 8]}}', "its dimensions multiply to 2**63 bytes or more"),
    ("rank-65", '{"w.0": {"dtype": "F32", "shape": [%s], "data_offsets": [0, 4]}}' % ", ".join(["1"] * 65), "it has 65 dimensions (at most 64)"),
    ("offsets-3", '{"w.0": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}}', "invalid data_offsets [0, 4, 8]"),
    ("offsets-reversed", '{"w.0": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}', "invalid data_offsets [8, 0]"),
    ("offsets-string", '{"w.0": {"dtype": "F32", "shape": [2], "data_offsets": "0-8"}}', "invalid data_offsets '0-8'"),
    ("offsets-null", '{"w.0": {"dtype": "F32", "shape": [2], "data_offsets": null}}', "invalid data_offsets None"),
    ("offset-2-63", '{"w.0": {"dtype": "F32", "shape": [0], "data_offsets": [9223372036854775808, 9223372036854775808]}}', "invalid data_offsets"),
    ("no-dtype", '{"w.0": {"shape": [2], "data_offsets": [0, 8]}}', "tensor 'w.0' has no 'dtype'"),
    ("no-shape", '{"w.0": {"dtype": "F32", "data_offsets": [0, 8]}}', "tensor 'w.0' has no 'shape'"),
    ("entry-list", '{"w.0": ["F32", [2], [0, 8]]}', "entry for tensor 'w.0' is not an object"),
    ("entry-null", '{"w.0": null}', "entry for tensor 'w.0' is not an object"),
    ("duplicate-tensor", '{"w.0": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "w.0": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "tensor 'w.0' appears twice in the header"),
    ("duplicate-shape", '{"w.0": {"dtype": "F32", "shape": [2], "shape": [1, 2], "data_offsets": [0, 8]}}', "entry for tensor 'w.0' has the key 'shape' twice"),
    ("duplicate-metadata-key", '{"__metadata__": {"a": "1", "a": "1"}, "w.0": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "__metadata__ has the key 'a' twice"),
    ("metadata-list", '{"__metadata__": [["a", "b"]], "w.0": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "not be a JSON array"),
    ("metadata-true", '{"__metadata__": true, "w.0": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "not be a JSON boolean"),
    ("metadata-int-value", '{"__metadata__": {"a": 1}, "w.0": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "__metadata__ must map strings to strings ('a' maps to a JSON integer)"),
    ("metadata-surrogate-key", '{"__metadata__": {"\\udfff": "x"}, "w.0": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "contains a lone surrogate"),
    ("NaN", '{"w.0": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 8]}}', "header holds NaN, which is not JSON"),
    ("Infinity", '{"__metadata__": {"a": Infinity}, "w.0": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "header holds Infinity"),
    ("nested-arrays", '{"w.0": ' + "[" * 20_000 + "]" * 20_000 + "}", "header JSON is nested too deeply"),
    ("nested-objects", '{"a": ' * 20_000 + "0" + "}" * 20_000, "header JSON is nested too deeply"),
    ("not-an-object", "[1, 2]", "header is not a JSON object"),
    ("trailing-comma", '{"w.0": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},}', "header is not JSON (Expecting property name"),
    ("surrogate-name", '{"\\ud800": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "tensor name '\\ud800' contains a lone surrogate U+D800"),
    ("surrogate-pair-reversed", '{"\\ude00\\ud83d": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "contains a lone surrogate U+DE00"),
    ("empty-name", '{"": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "tensor name '' is empty"),
    ("tab-name", '{"a\\tb": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "tensor name 'a\\tb' contains the control character U+0009"),
    ("bell-name", '{"\\u0007": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "contains the control character U+0007"),
    ("paragraph-separator-name", '{"a\\u2029": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "contains the control character U+2029"),
]


@pytest.mark.parametrize("text,fragment", [c[1:] for c in BAD_HEADERS], ids=[c[0] for c in BAD_HEADERS])
def test_bad_header_is_one_specific_error(tmp_path: Path, text: str, fragment: str) -> None:
    path = write_header(tmp_path / "bad.safetensors", None, DATA, text=text)
    assert fragment in _refused(path)


def test_long_names_and_values_are_cut_in_messages(tmp_path: Path) -> None:
    name = "n" * 1_000_000
    path = write_header(tmp_path / "long.safetensors", {name: {"dtype": "X" * 1_000_000, "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    message = _refused(path)
    assert "'nnnnnnnn" in message and "unknown dtype 'XXXX" in message


@pytest.mark.parametrize("prefix,fragment", [
    (b"", "file is 0 bytes, shorter than the 8-byte header length"),
    (struct.pack("<Q", 8) + b"{}", "runs past the end"),
    (struct.pack("<Q", 2) + b"\xc3\x28", "header is not JSON (invalid UTF-8 at byte 0)"),
    (struct.pack("<Q", 4) + b"\xed\xa0\x80\x20", "invalid UTF-8"),  # a surrogate encoded in UTF-8 (CESU-8)
    (struct.pack("<Q", 0), "header is not JSON"),
])
def test_bad_framing(tmp_path: Path, prefix: bytes, fragment: str) -> None:
    path = tmp_path / "f.safetensors"
    path.write_bytes(prefix)
    assert fragment in _refused(path)


def test_zero_size_extremes_that_are_accepted_build_tensors(tmp_path: Path) -> None:
    """The range limits are torch's: whatever shape the parser lets through, torch can build."""
    for shape in ([0, 2**61 - 1], [2**20, 2**20, 2**20, 0], [0] * 64, [1] * 63 + [0], [2**62, 0]):
        path = write_header(tmp_path / "z.safetensors", {"z": {"dtype": "U8" if 2**62 in shape else "F32", "shape": shape, "data_offsets": [0, 0]}})
        f = SafetensorsFile(path)
        assert tuple(f.tensor("z").shape) == tuple(shape)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dims=st.lists(st.sampled_from([0, 0, 1, 2, 3, 2**31, 2**32 - 1, 2**61, 2**62, 2**63 - 1, 2**63, 2**64 - 1]),
                     min_size=1, max_size=5),
       code=st.sampled_from(["BOOL", "U8", "F16", "F32", "F64"]))
def test_any_accepted_zero_size_shape_is_buildable(tmp_path: Path, dims: list[int], code: str) -> None:
    shape = [0, *dims]
    path = write_header(tmp_path / "h.safetensors", {"z": {"dtype": code, "shape": shape, "data_offsets": [0, 0]}})
    try:
        f = SafetensorsFile(path)
    except InvalidTensorFileError:
        return
    assert tuple(f.tensor("z").shape) == tuple(shape)


# Arbitrary JSON, with the values that broke the old parser well represented.
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 2**65), st.sampled_from([2**63 - 1, 2**63, -1, 0, 8, 16]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["F32", "BF16", "I8", "", "\ud800", "a\nb"]),
    st.text(max_size=5),
)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                     max_leaves=12)
_entries = st.fixed_dictionaries({}, optional={
    "dtype": st.one_of(st.sampled_from(["F32", "F16", "U8", "BOOL"]), _json),
    "shape": st.one_of(st.lists(st.sampled_from([0, 1, 2, 2**63, True, -1, 1.0]), max_size=4), _json),
    "data_offsets": st.one_of(st.lists(st.sampled_from([0, 4, 8, 2**63, False, 8.0]), max_size=3), _json),
})
_names = st.one_of(st.text(max_size=6), st.sampled_from(["", "\ud800", "x\x00", "__metadata__", "a\u2028"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.dictionaries(_names, st.one_of(_entries, _json), max_size=3), data=st.binary(max_size=24))
def test_fuzzed_headers_parse_or_fail_cleanly_and_agree_with_the_reference(tmp_path: Path, header: dict, data: bytes) -> None:
    """Any header: pvreg's parser accepts it or raises InvalidTensorFileError, never anything else.

    And whatever it accepts, the reference reader reads to the same tensors (pvreg may be stricter, never laxer).
    """
    path = write_header(tmp_path / "fz.safetensors", None, data, text=json.dumps(header))
    try:
        f = SafetensorsFile(path)
        ours = {n: f.tensor(n) for n in f.infos}
    except InvalidTensorFileError:
        return
    reference = load_file(str(path))
    assert sorted(ours) == sorted(reference)
    for name, ref in reference.items():
        assert_same(ours[name], ref)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 10_000), value=st.integers(0, 255))
def test_corrupted_byte_anywhere_in_a_header_fails_cleanly(tmp_path: Path, position: int, value: int) -> None:
    path = tmp_path / "c.safetensors"
    save_file({"a.weight": torch.ones(3, 2), "b": torch.zeros(0), "c": torch.arange(5, dtype=torch.int16)}, str(path),
              metadata={"format": "pt"})
    data = bytearray(path.read_bytes())
    hlen = struct.unpack("<Q", data[:8])[0]
    data[8 + position % hlen] = value
    path.write_bytes(bytes(data))
    try:
        f = SafetensorsFile(path)
        ours = {n: f.tensor(n) for n in f.infos}
    except InvalidTensorFileError:
        return
    reference = load_file(str(path))
    assert sorted(ours) == sorted(reference)
    for name, ref in reference.items():
        assert_same(ours[name], ref)
