"""Error rendering: options named once (``opt``), spelled the Python way by ``str`` and as flags by the CLI,
and several problems raised together without losing any ``except`` clause that would catch one of them.
"""

from __future__ import annotations

import pytest
from pvreg.cli.errors import error_line, flag
from pvreg.registry.errors import (
    SHOWN_PROBLEMS,
    BaseMismatchError,
    IntegrityError,
    InvalidOptionError,
    NotFoundError,
    ProblemsError,
    PvregError,
    SpecError,
    UserError,
    opt,
    raise_problems,
    render_options,
)

# --- options in messages ---------------------------------------------------------------------------------------------


def test_an_option_reads_as_python_in_str_and_as_a_flag_on_the_command_line() -> None:
    exc = SpecError(f"the output exists; pass {opt('vector_only', True)} to write only the vector")
    assert str(exc) == "the output exists; pass vector_only=True to write only the vector"
    assert error_line(exc) == "error: the output exists; pass --vector-only to write only the vector"


@pytest.mark.parametrize("name,value,python,cli", [
    ("force", None, "force", "--force"),
    ("force", True, "force=True", "--force"),
    ("base", "'/x'", "base='/x'", "--base"),
    ("as_name", "'b'", "as_name='b'", "--as"),
    ("names", None, "names", "--name"),
    ("tags", None, "tags", "--tag"),
    ("all_unreferenced", None, "all_unreferenced", "--all-unreferenced"),
])
def test_every_spelling(name: str, value: object, python: str, cli: str) -> None:
    exc = InvalidOptionError(f"bad {opt(name, value)} here")
    assert str(exc) == f"bad {python} here"
    assert error_line(exc) == f"error: bad {cli} here"
    assert flag(name) == cli


def test_render_options_takes_any_spelling_and_leaves_other_text_alone() -> None:
    message = f"{opt('a_b')} and {opt('c', 3)} but not [[a]] or ⟦Upper⟧"
    assert render_options(message) == "a_b and c=3 but not [[a]] or ⟦Upper⟧"
    assert render_options(message, lambda n, v: f"<{n}|{v}>") == "<a_b|None> and <c|3> but not [[a]] or ⟦Upper⟧"


def test_messages_are_one_line_and_fields_are_attributes() -> None:
    exc = NotFoundError("no such\nvector   'x'\t here", ref="x", candidates=["y"])
    assert str(exc) == "no such vector 'x' here"
    assert error_line(exc) == "error: no such vector 'x' here"
    assert exc.ref == "x" and exc.candidates == ["y"] and exc.fields == {"ref": "x", "candidates": ["y"]}


# --- several problems at once ----------------------------------------------------------------------------------------


def _raised(problems: list[PvregError]) -> BaseException | None:
    try:
        raise_problems(problems)
    except PvregError as exc:
        return exc
    return None


def test_a_missing_ref_and_a_base_mismatch_are_caught_as_either_and_carry_both() -> None:
    missing = NotFoundError(f"no vector 'gone'; see {opt('names')}")
    mismatch = BaseMismatchError("'b@1' was made for another base")
    exc = _raised([missing, mismatch])
    assert isinstance(exc, ProblemsError)
    assert list(exc.problems) == [missing, mismatch]
    assert exc.exit_code == 2 and isinstance(exc, UserError)
    assert str(exc) == "no vector 'gone'; see names; 'b@1' was made for another base"
    assert error_line(exc) == "error: no vector 'gone'; see --name; 'b@1' was made for another base"
    # Real except clauses, in either order, each catch the combined error.
    for first, second in ((NotFoundError, BaseMismatchError), (BaseMismatchError, NotFoundError)):
        try:
            raise_problems([missing, mismatch])
        except first as caught:
            assert caught.problems == [missing, mismatch]
        except second:  # pragma: no cover - the first clause must match
            pytest.fail(f"{first.__name__} did not catch it")
    # ...and the builtins they derive from.
    with pytest.raises(LookupError):
        raise_problems([missing, mismatch])
    with pytest.raises(ValueError):
        raise_problems([missing, mismatch])


def test_an_environment_problem_among_input_problems_makes_exit_code_1() -> None:
    exc = _raised([NotFoundError("no vector 'a'"), IntegrityError("blob of 'b@1' is damaged")])
    assert isinstance(exc, NotFoundError) and isinstance(exc, IntegrityError)
    assert exc.exit_code == 1


def test_one_problem_is_raised_as_itself_and_none_raises_nothing() -> None:
    only = NotFoundError("no vector 'a'")
    assert _raised([only]) is only
    assert _raised([]) is None
    same = [NotFoundError("no vector 'a'"), NotFoundError("no vector  'a'")]  # one problem, reported twice
    assert _raised(same) is same[0]


def test_duplicates_are_dropped_and_long_lists_are_counted() -> None:
    problems = [NotFoundError(f"no vector 'v{i}'") for i in range(SHOWN_PROBLEMS + 3)]
    exc = _raised(problems + problems[:2])
    assert list(exc.problems) == problems
    shown = "; ".join(f"no vector 'v{i}'" for i in range(SHOWN_PROBLEMS))
    assert str(exc) == f"{shown}; and 3 more problem(s)"
    assert type(exc) is type(_raised(problems))  # one class per combination of problem classes
