"""The compose spec grammar: REF:COEF tokens, spec files, option overrides, sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pvreg.registry.errors import NotFoundError, SpecError
from pvreg.registry.merge.compose import parse_size
from pvreg.registry.merge.spec import (
    build_spec,
    load_spec_file,
    parse_token,
    parse_tokens,
)
from pvreg.schemas.compose import ComposeSpec, ComposeTerm


@pytest.mark.parametrize(
    ("token", "ref", "coef"),
    [
        ("helpful", "helpful", 1.0),
        ("helpful:0.5", "helpful", 0.5),
        ("helpful@2:-1", "helpful@2", -1.0),
        ("helpful@prod:+.25", "helpful@prod", 0.25),
        ("helpful:1e-3", "helpful", 1e-3),
        ("helpful:-2.5E+2", "helpful", -250.0),
        ("helpful:3.", "helpful", 3.0),
        ("sha256:1f2e3d4c", "sha256:1f2e3d4c", 1.0),
        ("sha256:1f2e3d4c:0.5", "sha256:1f2e3d4c", 0.5),
        ("sha256:1f2e3d4c:-1e2", "sha256:1f2e3d4c", -100.0),
    ],
)
def test_valid_tokens(token: str, ref: str, coef: float) -> None:
    assert parse_token(token) == ComposeTerm(ref=ref, coefficient=coef)


@pytest.mark.parametrize(
    "token",
    ["helpful:", ":1", "helpful:abc", "helpful:1e400", "helpful:nan", "helpful:inf", "helpful:-inf",
     "helpful:1:2", "helpful:1_0", "helpful: 1", "Helpful:1", "sha256:xyz:1", "sha256:1f2e3d4c:1:2",
     "sha256::1", "helpful@0:1", ""],
)
def test_invalid_tokens_name_the_token(token: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse_token(token)
    msg = str(exc.value)
    assert "\n" not in msg
    assert repr(token) in msg


def test_string_and_list_forms_agree() -> None:
    assert parse_tokens("a:1  b@2:-0.5\tsha256:abcdef01") == parse_tokens(["a:1", "b@2:-0.5", "sha256:abcdef01"])
    with pytest.raises(SpecError):
        parse_tokens("   ")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_spec_file(tmp_path: Path, suffix: str) -> None:
    data = {"terms": [{"ref": "helpful", "coefficient": -0.5}, "harmless@2:0.3", {"ref": "x"}],
            "method": "ties", "density": 0.4, "normalize": True, "accumulate": "float64", "dtype": "bfloat16"}
    p = tmp_path / f"spec{suffix}"
    if suffix == ".json":
        p.write_text(json.dumps(data))
    else:
        import yaml

        p.write_text(yaml.safe_dump(data))
    spec = load_spec_file(p)
    assert [(t.ref, t.coefficient) for t in spec.terms] == [("helpful", -0.5), ("harmless@2", 0.3), ("x", 1.0)]
    assert (spec.method, spec.density, spec.normalize, spec.accumulate, spec.dtype) == (
        "ties", 0.4, True, "float64", "bfloat16")


@pytest.mark.parametrize(
    "text",
    ["terms: []", "terms: [{ref: a, coefficient: .nan}]", "terms: [{ref: a, bogus: 1}]", "- a", "terms: [a, 'b:x']",
     "{not yaml", "terms: [a]\naccumulate: float16"],
)
def test_bad_spec_files(tmp_path: Path, text: str) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(SpecError) as exc:
        load_spec_file(p)
    assert "\n" not in str(exc.value) and str(p) in str(exc.value)


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        load_spec_file(tmp_path / "nope.yaml")


def test_build_spec_overrides_only_given_options() -> None:
    spec = ComposeSpec(terms=[ComposeTerm(ref="a")], method="ties", density=0.5)
    assert build_spec(spec).method == "ties"
    merged = build_spec(spec, method="dare_linear", seed=3, density=None)
    assert (merged.method, merged.seed, merged.density) == ("dare_linear", 3, 0.5)
    assert build_spec("a:2 b").terms[0].coefficient == 2.0
    with pytest.raises(SpecError):
        build_spec(["a"], accumulate="float16")
    with pytest.raises(SpecError):
        build_spec(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "size"), [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30),
                                            ("1024", 1024), (4096, 4096), ("1.5kb", 1500), ("10 KiB", 10240)])
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GB", "-1", "0", "5XB", "1e9"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(SpecError):
        parse_size(text)
