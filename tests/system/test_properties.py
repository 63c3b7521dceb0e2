"""Property tests (hypothesis): the spec grammar, fingerprint invariances, and the linearity of compose."""

from __future__ import annotations

import math
import re
import shutil
import uuid
from pathlib import Path

import pytest
import torch
from helpers.factories import make_base, make_vector
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pvreg.registry.errors import PvregError, SpecError
from pvreg.registry.merge.spec import parse_token, parse_tokens
from pvreg.schemas.compose import ComposeTerm
from safetensors.torch import load_file, save_file

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# --- the spec grammar ------------------------------------------------------------------------------------------------

NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_.-"
# (a vector named "sha256" exists, but "sha256:..." always reads as a sha256 reference;
# a name never starts with '.': it is a Hub folder name, and .git/.cache/hidden folders are not)
names = st.text(NAME_CHARS, min_size=1, max_size=64).filter(lambda s: s != "sha256" and not s.startswith("."))
versions = st.integers(min_value=1, max_value=10**12)
hexes = st.text("0123456789abcdef", min_size=8, max_size=64)
refs = st.one_of(
    names,
    st.builds(lambda n, v: f"{n}@{v}", names, versions),
    st.builds(lambda n, a: f"{n}@{a}", names, names.filter(lambda a: not a.isdigit())),
    st.builds(lambda h: f"sha256:{h}", hexes),
)
finite = st.floats(allow_nan=False, allow_infinity=False)
digits = st.text("0123456789", min_size=1, max_size=6)


@st.composite
def coefficient_texts(draw) -> str:
    """Every spelling the grammar allows: sign, integer/fraction parts, exponent — and repr() of any float."""
    if draw(st.booleans()):
        return repr(draw(finite))
    sign = draw(st.sampled_from(["", "+", "-"]))
    mantissa = draw(st.one_of(digits, st.builds(lambda a, b: f"{a}.{b}", digits, st.text("0123456789", max_size=6)),
                              st.builds(lambda b: f".{b}", digits)))
    exponent = draw(st.one_of(st.just(""), st.builds(lambda e, s, d: f"{e}{s}{d}", st.sampled_from("eE"),
                                                     st.sampled_from(["", "+", "-"]), st.text("0123456789", min_size=1, max_size=3))))
    text = sign + mantissa + exponent
    assume(_coefficient_ok(text))
    return text


@FAST
@given(ref=refs, coef=st.one_of(st.none(), coefficient_texts()))
def test_every_valid_token_round_trips(ref: str, coef: str | None) -> None:
    token = ref if coef is None else f"{ref}:{coef}"
    expected = ComposeTerm(ref=ref, coefficient=1.0 if coef is None else float(coef))
    assert parse_token(token) == expected
    # formatting the parsed term and parsing it again gives the same term
    term = parse_token(token)
    assert parse_token(f"{term.ref}:{term.coefficient!r}") == term


@FAST
@given(terms=st.lists(st.tuples(refs, finite), min_size=1, max_size=5))
def test_spec_strings_round_trip(terms: list[tuple[str, float]]) -> None:
    text = " ".join(f"{r}:{c!r}" for r, c in terms)
    expected = [ComposeTerm(ref=r, coefficient=c) for r, c in terms]
    assert parse_tokens(text) == expected
    assert parse_tokens(text.split()) == expected


# An independent statement of the grammar, used as the oracle for arbitrary strings.
_NAME = r"[a-z0-9_.-]{1,64}"
_COEF = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_TOKEN = re.compile(
    rf"(?P<ref>sha256:[0-9a-fA-F]{{8,64}}|(?P<name>{_NAME})(?:@(?P<sel>{_NAME}))?)(?::(?P<coef>{_COEF}))?",
    re.ASCII,
)


def grammar_accepts(token: str) -> bool:
    m = _TOKEN.fullmatch(token)
    if m is None:
        return False
    if m["name"] is not None:
        if token.startswith("sha256:"):  # that prefix always starts a sha256 reference, never NAME:COEF
            return False
        if m["name"].startswith("."):
            return False
        sel = m["sel"]
        if sel is not None and (sel.startswith(".") or (sel.isdigit() and int(sel) < 1)):
            return False
    return m["coef"] is None or _coefficient_ok(m["coef"])


def _coefficient_ok(text: str) -> bool:
    """Finite, and not a nonzero literal that underflows to 0 (``1e-400``)."""
    value = float(text)
    mantissa = re.split("[eE]", text)[0]
    return math.isfinite(value) and not (value == 0 and any(c in "123456789" for c in mantissa))


NEAR_GRAMMAR = st.text(
    st.one_of(st.sampled_from(list("abz09_.-@:+-eE .sha256/\\\t\n\x00AF")), st.characters()), max_size=24
) | st.builds(lambda r, s: r + s, refs, st.text(st.sampled_from(list(":@.+-eE0123456789naif _\u0661\uff11")), max_size=8))


@FAST
@given(token=NEAR_GRAMMAR)
@example("helpful:\u0661")  # a non-ASCII digit that float() would accept
@example("helpful:1e400")
@example("sha256:ABCDEF01:2")
@example("a@00")
@example("sha256:0")
def test_tokens_outside_the_grammar_raise_pvreg_errors_only(token: str) -> None:
    try:
        term = parse_token(token)
    except PvregError as exc:
        assert isinstance(exc, SpecError)
        assert "\n" not in str(exc)
        assert not grammar_accepts(token), f"{token!r} is in the grammar but was refused: {exc}"
    else:
        assert grammar_accepts(token), f"{token!r} is outside the grammar but parsed as {term}"
        assert math.isfinite(term.coefficient)


# --- fingerprints --------------------------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@st.composite
def tensor_sets(draw) -> dict[str, torch.Tensor]:
    count = draw(st.integers(1, 5))
    tensor_names = draw(st.lists(st.text("abcdefgh.", min_size=1, max_size=8), min_size=count, max_size=count,
                                 unique=True))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    out = {}
    for n in tensor_names:
        shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
        out[n] = torch.randn(shape, generator=g).to(draw(st.sampled_from(DTYPES)))
    return out


def _fingerprint(path: Path) -> str:
    from pvreg.registry.tensors.fingerprint import fingerprint_path

    return fingerprint_path(path)  # no cache: every call reads the bytes


@SLOW
@given(tensors=tensor_sets(), data=st.data())
def test_fingerprint_ignores_sharding_file_order_and_format(tmp_path, tensors, data) -> None:
    from helpers.factories import save_checkpoint

    root = tmp_path / uuid.uuid4().hex
    one = save_checkpoint(root / "one", tensors)
    reference = _fingerprint(one)
    # N shards with the tensors dealt out in a random order, under random file names
    shards = data.draw(st.integers(1, len(tensors)))
    order = data.draw(st.permutations(sorted(tensors)))
    shard_dir = root / "shards"
    shard_dir.mkdir(parents=True)
    file_names = data.draw(st.lists(st.text("abcxyz0123", min_size=1, max_size=6), min_size=shards,
                                    max_size=shards, unique=True))
    groups = [order[i::shards] for i in range(shards)]
    for fname, group in zip(file_names, groups):
        if group:
            save_file({n: tensors[n] for n in group}, str(shard_dir / f"{fname}.safetensors"),
                      metadata={"note": uuid.uuid4().hex})
    assert _fingerprint(shard_dir) == reference
    torch.save({n: tensors[n] for n in reversed(order)}, str(root / "model.bin"))
    assert _fingerprint(root / "model.bin") == reference
    shutil.rmtree(root)


@SLOW
@given(tensors=tensor_sets(), data=st.data())
def test_fingerprint_changes_with_any_tensor_byte(tmp_path, tensors, data) -> None:
    path = tmp_path / f"{uuid.uuid4().hex}.safetensors"
    save_file(tensors, str(path))
    before = _fingerprint(path)
    name = data.draw(st.sampled_from(sorted(tensors)))
    t = tensors[name]
    nbytes = t.numel() * t.element_size()
    index = data.draw(st.integers(0, nbytes - 1))
    bit = data.draw(st.integers(0, 7))
    changed = dict(tensors)
    raw = t.contiguous().view(-1).view(torch.uint8).clone()
    raw[index] ^= 1 << bit
    changed[name] = raw.view(t.dtype).view(t.shape)
    save_file(changed, str(path))
    assert _fingerprint(path) != before
    path.unlink()


# --- compose is linear ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from pvreg import Registry

    root = tmp_path_factory.mktemp("linear")
    base = make_base(root / "base", seed=0)
    for name, seed in (("a", 1), ("b", 2)):
        make_vector(root / f"{name}.safetensors", base, seed=seed, scale=0.05)
    reg = Registry.open(root / "reg")
    for name in ("a", "b"):
        reg.add(name, root / f"{name}.safetensors", base=root / "base")
    yield reg, root, base
    reg.close()


def _vector(reg, root: Path, *terms: str) -> dict[str, torch.Tensor]:
    out = root / f"{uuid.uuid4().hex}.safetensors"
    reg.compose(list(terms), out=out, vector_only=True)
    tensors = load_file(str(out))
    out.unlink()
    return tensors


def _model(reg, root: Path, *terms: str) -> dict[str, torch.Tensor]:
    out = root / uuid.uuid4().hex
    reg.compose(list(terms), base=root / "base", out=out)
    tensors = {}
    for f in sorted(out.glob("*.safetensors")):
        tensors |= load_file(str(f))
    shutil.rmtree(out)
    return tensors


coefficients = st.floats(min_value=-3, max_value=3, allow_nan=False).map(lambda c: round(c, 6))


def _close(x: torch.Tensor, y: torch.Tensor) -> None:
    torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@SLOW
@given(x=coefficients, y=coefficients)
def test_compose_is_linear(world, x: float, y: float) -> None:
    reg, root, base = world
    va, vb, vab = _vector(reg, root, f"a:{x!r}"), _vector(reg, root, f"b:{y!r}"), _vector(reg, root, f"a:{x!r}", f"b:{y!r}")
    assert va.keys() == vb.keys() == vab.keys()
    for n in vab:
        _close(va[n] + vb[n], vab[n])
    model = _model(reg, root, f"a:{x!r}", f"b:{y!r}")
    assert model.keys() == base.keys()
    for n in base:
        _close(model[n], base[n] + vab[n])


def test_adding_then_subtracting_a_vector_returns_the_base(world) -> None:
    """a:1 then a:-1 is the base again: as numbers, and through a composed-and-registered vector."""
    reg, root, base = world
    # vec(a:1) alone would be byte-identical to a's blob (refused as a duplicate), so register a:1 b:1
    reg.compose(["a:1", "b:1"], vector_only=True, register="ab")
    model = _model(reg, root, "ab:1", "a:-1", "b:-1")
    for n in base:
        _close(model[n], base[n])
    plus = _model(reg, root, "a:1")
    minus = _vector(reg, root, "a:-1")
    for n in base:
        _close(plus[n] + minus[n], base[n])
