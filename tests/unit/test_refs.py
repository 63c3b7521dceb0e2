"""The reference grammar (``pvreg.registry.refs``): every form ``parse_ref`` accepts, and every message it refuses with.

``NAME``, ``NAME@N``, ``NAME@ALIAS`` and ``sha256:HEX`` (8 to 64 hex digits, any case);
names and aliases are 1-64 of ``[a-z0-9_.-]`` not starting with '.', and an alias is
never all digits.  Every refusal is one line naming the text as typed (quoted, control
characters escaped, long text shortened) and why; the errors are ``UserError``s (exit
code 2) and ``ValueError``s for Python callers.
"""

from __future__ import annotations

import pytest
from pvreg.registry.errors import InvalidNameError, InvalidReferenceError, UserError
from pvreg.registry.refs import Ref, check_alias, check_name, parse_ref

HEX64 = "0123456789abcdef" * 4


# --- accepted forms ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("helpful", Ref(text="helpful", name="helpful")),
    ("a", Ref(text="a", name="a")),
    ("my_vec-2.1", Ref(text="my_vec-2.1", name="my_vec-2.1")),
    ("x" * 64, Ref(text="x" * 64, name="x" * 64)),
    ("helpful@3", Ref(text="helpful@3", name="helpful", version=3)),
    ("helpful@1", Ref(text="helpful@1", name="helpful", version=1)),
    ("helpful@007", Ref(text="helpful@007", name="helpful", version=7)),
    ("helpful@12345678901234567890", Ref(text="helpful@12345678901234567890", name="helpful",
                                         version=12345678901234567890)),
    ("helpful@prod", Ref(text="helpful@prod", name="helpful", alias="prod")),
    ("helpful@v1", Ref(text="helpful@v1", name="helpful", alias="v1")),
    ("helpful@1.0", Ref(text="helpful@1.0", name="helpful", alias="1.0")),
    ("sha256:deadbeef", Ref(text="sha256:deadbeef", sha_prefix="deadbeef")),
    ("sha256:DEADBEEF", Ref(text="sha256:DEADBEEF", sha_prefix="deadbeef")),
    ("sha256:" + HEX64, Ref(text="sha256:" + HEX64, sha_prefix=HEX64)),
])
def test_every_accepted_form(text: str, expected: Ref) -> None:
    assert parse_ref(text) == expected


def test_exactly_one_selector_is_set() -> None:
    for text in ("n", "n@2", "n@al", "sha256:" + "a" * 8):
        ref = parse_ref(text)
        selectors = [ref.version, ref.alias, ref.sha_prefix]
        assert sum(s is not None for s in selectors) == (0 if text == "n" else 1), ref
        assert (ref.name is None) == text.startswith("sha256:")


# --- refusals: the whole message --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,message", [
    ("", "empty reference"),
    ("sha256:", "invalid reference 'sha256:': sha256: needs 8 to 64 hex digits"),
    ("sha256:abc1234", "invalid reference 'sha256:abc1234': sha256: needs 8 to 64 hex digits"),
    ("sha256:" + HEX64 + "0", f"invalid reference 'sha256:{HEX64}0': sha256: needs 8 to 64 hex digits"),
    ("sha256:xyz12345", "invalid reference 'sha256:xyz12345': sha256: needs 8 to 64 hex digits"),
    ("sha256: deadbeef", "invalid reference 'sha256: deadbeef': sha256: needs 8 to 64 hex digits"),
    ("Helpful", "invalid reference 'Helpful': invalid name 'Helpful': "
                "may only contain lowercase letters, digits, '-', '_' and '.'"),
    ("a b", "invalid reference 'a b': invalid name 'a b': may only contain lowercase letters, digits, '-', '_' and '.'"),
    ("a/b", "invalid reference 'a/b': invalid name 'a/b': may only contain lowercase letters, digits, '-', '_' and '.'"),
    ("@3", "invalid reference '@3': invalid name '': is empty"),
    (".hidden", "invalid reference '.hidden': invalid name '.hidden': "
                "cannot start with '.' (it must be usable as a Hub folder name)"),
    ("x" * 65, f"invalid reference '{'x' * 65}': invalid name '{'x' * 65}': is 65 characters (at most 64)"),
    ("helpful@0", "invalid reference 'helpful@0': versions start at 1"),
    ("helpful@000", "invalid reference 'helpful@000': versions start at 1"),
    ("helpful@", "invalid reference 'helpful@': invalid alias '': is empty"),
    ("helpful@Prod", "invalid reference 'helpful@Prod': invalid alias 'Prod': "
                     "may only contain lowercase letters, digits, '-', '_' and '.'"),
    ("helpful@1@2", "invalid reference 'helpful@1@2': invalid alias '1@2': "
                    "may only contain lowercase letters, digits, '-', '_' and '.'"),
    ("helpful@.x", "invalid reference 'helpful@.x': invalid alias '.x': "
                   "cannot start with '.' (it must be usable as a Hub folder name)"),
    # Non-ASCII digits are digits to str.isdigit() but not a version number.
    ("helpful@\u0663", "invalid reference 'helpful@\u0663': invalid alias '\u0663': "
                       "may only contain lowercase letters, digits, '-', '_' and '.'"),
])
def test_every_refusal_names_the_text_and_why(text: str, message: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_ref(text)
    assert str(info.value) == message
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("value", [None, 3, b"helpful", ["helpful"]])
def test_a_reference_that_is_not_text_is_refused(value: object) -> None:
    with pytest.raises(InvalidReferenceError, match="^empty reference$|^invalid reference"):
        parse_ref(value)  # type: ignore[arg-type]


def test_control_characters_are_escaped_and_long_text_is_shortened_in_messages() -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_ref("evil\x1b[2J\u202e")
    msg = str(info.value)
    assert "\x1b" not in msg and "\u202e" not in msg
    assert msg.startswith("invalid reference 'evil\\x1b[2J\\u202e': ")
    with pytest.raises(InvalidReferenceError) as info:
        parse_ref("A" * 500)
    msg = str(info.value)
    assert msg == f"invalid reference '{'A' * 77}...': invalid name '{'A' * 77}...': is 500 characters (at most 64)"


# --- names and aliases ------------------------------------------------------------------------------------------------


def test_check_name_returns_valid_names() -> None:
    for name in ("a", "0", "x" * 64, "a.b", "a-b_c", "9lives", "trailing.", "-lead", "_lead"):
        assert check_name(name) == name


@pytest.mark.parametrize("name,why", [
    ("", "is empty"),
    ("x" * 65, "is 65 characters (at most 64)"),
    (".git", "cannot start with '.' (it must be usable as a Hub folder name)"),
    ("UPPER", "may only contain lowercase letters, digits, '-', '_' and '.'"),
    ("a@b", "may only contain lowercase letters, digits, '-', '_' and '.'"),
    ("caf\u00e9", "may only contain lowercase letters, digits, '-', '_' and '.'"),
    ("a\nb", "may only contain lowercase letters, digits, '-', '_' and '.'"),
])
def test_check_name_refusals(name: str, why: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        check_name(name)
    assert str(info.value) == f"invalid name {name!r}: {why}"
    with pytest.raises(InvalidNameError) as info:
        check_name(name, what="vector name")
    assert str(info.value) == f"invalid vector name {name!r}: {why}"
    assert info.value.exit_code == 2 and isinstance(info.value, ValueError)


def test_check_name_refuses_what_is_not_text() -> None:
    with pytest.raises(InvalidNameError, match=r"^invalid name '5': may only contain"):
        check_name(5)  # type: ignore[arg-type]


def test_check_alias() -> None:
    for alias in ("prod", "v1", "1.0", "1a", "a1", "stable-2"):
        assert check_alias(alias) == alias
    for alias in ("1", "12", "007"):
        with pytest.raises(InvalidNameError) as info:
            check_alias(alias)
        assert str(info.value) == (f"invalid alias {alias!r}: an alias cannot be a number "
                                   "(it would read as a version)")
    with pytest.raises(InvalidNameError) as info:
        check_alias("Prod")
    assert str(info.value) == "invalid alias 'Prod': may only contain lowercase letters, digits, '-', '_' and '.'"
    with pytest.raises(InvalidNameError, match=r"^invalid alias '': is empty$"):
        check_alias("")
