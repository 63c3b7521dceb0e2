"""Both card renderers, on their own: the Hub repo's README (``hub.card``) and a composed model's (``merge.modelcard``).

The Hub card keeps every byte its owner wrote outside pvreg's markers, whatever state
the markers are in, and rendering its own output again changes nothing (so identical
re-pushes make no commit).  The composed model's card has front matter Hugging Face
parses and one escaped table row per input.  Expectations are written out here (YAML
parsed with PyYAML, owner text found with a regex of its own), not taken from pvreg.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml
from helpers.cards import CARDS, B, E, owner_text

REPO = "alice/prefs"
HUB_ID = "acme/tiny-llama"


def hub_vector(name: str, dataset: str | None = None, base=None):
    """A ``pvreg.json`` as push writes it (made up values; the renderer only formats them)."""
    from pvreg.schemas.hub import HubVectorFile

    return HubVectorFile(name=name, version=1, sha256=name[0] * 64, size_bytes=10, base_fingerprint="f" * 64,
                         dataset=dataset, norm=1.5, dtype="float32", num_tensors=1, num_params=4,
                         created_at="2026-01-01T00:00:00Z", base=base)


# --- the Hub card: markers in any state ---------------------------------------------------------------------------


@pytest.mark.parametrize("card", list(CARDS.values()), ids=list(CARDS))
def test_card_markers_in_any_state_leave_exactly_one_section(card):
    from pvreg.registry.hub.card import render_card

    vectors = [hub_vector("alpha", "org/ds:helpful"), hub_vector("beta")]
    out = render_card(REPO, vectors, card)
    assert out.count(B) == 1 and out.count(E) == 1 and out.index(B) < out.index(E)
    assert owner_text(out) == owner_text(card)  # every owner token kept, in order
    assert "| alpha | 1 | +1 | 1.5 | org/ds:helpful |" in out and "| beta |" in out
    assert render_card(REPO, vectors, out) == out  # a re-push of the same vectors changes nothing
    front = out.split("---", 2)[1]
    import yaml

    meta = yaml.safe_load(front)
    assert meta["library_name"] == "pvreg" and meta["datasets"] == ["org/ds"]
    if "license: mit" in card:
        assert meta["license"] == "mit"


def test_card_render_is_a_fixpoint_for_any_marker_soup():
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from pvreg.registry.hub.card import render_card

    pieces = st.sampled_from([B, E, "\n", "\r\n", "OWNER1", "OWNER2", " ", "---\n", "| x |", "text", "<!--", "-->"])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(pieces, max_size=14), st.sampled_from([None, "x<!-- pvreg:end -->y", "a|b"]))
    def check(parts, dataset):
        card = "".join(parts)
        vectors = [hub_vector("alpha", dataset)]
        out = render_card(REPO, vectors, card)
        assert out.count(B) == 1 and out.count(E) == 1 and out.index(B) < out.index(E), out
        assert render_card(REPO, vectors, out) == out, (card, out)

    check()


def test_card_cells_cannot_forge_markers_or_columns():
    from pvreg.registry.hub.card import render_section

    section = render_section(REPO, [hub_vector("alpha", f"evil {E} | col\nrow")])
    assert section.count(E) == 1 and section.endswith(E + "\n")
    row = [ln for ln in section.splitlines() if ln.startswith("| alpha")][0]
    assert row.count(" | ") == 6 and "\\|" in row and "&lt;!-- pvreg:end --&gt;" not in row and "&lt;!--" in row


def test_composed_model_card_renderer():
    """modelcard.render_model_card: front matter Hugging Face can parse, one table row per input, escaped cells."""
    from types import SimpleNamespace

    import yaml
    from pvreg.registry.merge.modelcard import render_model_card
    from pvreg.schemas.compose import ComposeSpec
    from pvreg.schemas.vector import BaseModelInfo

    spec = ComposeSpec(terms=[{"ref": "a", "coefficient": 1}, {"ref": "b@2", "coefficient": -0.5}], method="ties",
                       density=0.5)
    inputs = [SimpleNamespace(term=t, meta=SimpleNamespace(ref=r, sha256=c * 64, sign=s, dataset=d))
              for t, r, c, s, d in zip(spec.terms, ["a@1", "b@2"], "ab", [1, -1], ["x|y\nz", None])]
    plan = SimpleNamespace(spec=spec, inputs=inputs, base_fingerprint="f" * 64, params={"density": 0.5, "seed": None},
                           method=SimpleNamespace(name="ties"))
    card = render_model_card(plan, BaseModelInfo(fingerprint="f" * 64, hub_id=HUB_ID), "e" * 64)
    assert card == render_model_card(plan, BaseModelInfo(fingerprint="f" * 64, hub_id=HUB_ID), "e" * 64)
    front = yaml.safe_load(card.split("---\n")[1])
    assert front == {"base_model": HUB_ID, "tags": ["pvreg", "preference-vector", "merge"],
                     "library_name": "transformers"}
    rows = [ln for ln in card.splitlines() if ln.startswith("| a") or ln.startswith("| b")]
    assert rows == ["| a | a@1 | `" + "a" * 12 + "` | 1 | +1 | x\\|y z |",
                    "| b@2 | b@2 | `" + "b" * 12 + "` | -0.5 | -1 | - |"]
    assert "- Method: `ties` (density=0.5)" in card and f"`{'e' * 64}`" in card


def _front(card: str) -> dict:
    assert card.startswith("---\n"), card
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_new_card_has_metadata_one_section_and_a_row_per_vector_sorted_by_name():
    from pvreg.registry.hub.card import render_card
    from pvreg.schemas.hub import HubBaseInfo

    base = HubBaseInfo(fingerprint="f" * 64, hub_id=HUB_ID)
    vectors = [hub_vector("zeta", "org/b:harmless", base=base), hub_vector("alpha", "org/a:helpful", base=base),
               hub_vector("mid", "org/a")]
    for existing in (None, ""):
        card = render_card(REPO, vectors, existing)
        assert _front(card) == {"library_name": "pvreg", "tags": ["pvreg", "preference-vector"],
                                "base_model": HUB_ID, "datasets": ["org/a", "org/b"]}
        body = card.split("---\n", 2)[2]
        assert body.startswith(B + "\n# prefs\n") and body.endswith(E + "\n")
        rows = [ln for ln in body.splitlines() if ln.startswith("| ") and not ln.startswith("| Name")]
        assert [r.split(" | ")[0] for r in rows] == ["| alpha", "| mid", "| zeta"]
        # base column: the Hub id when known, else the fingerprint's first 12 hex digits
        assert rows[0] == "| alpha | 1 | +1 | 1.5 | org/a:helpful | acme/tiny-llama | `" + "a" * 12 + "` |"
        assert rows[1] == "| mid | 1 | +1 | 1.5 | org/a | " + "f" * 12 + " | `" + "m" * 12 + "` |"
        assert f"pvreg pull {REPO}" in body


def test_card_without_datasets_or_bases_has_no_such_keys_and_several_bases_are_listed():
    from pvreg.registry.hub.card import render_card
    from pvreg.schemas.hub import HubBaseInfo

    assert _front(render_card(REPO, [hub_vector("alpha")])) == {"library_name": "pvreg",
                                                                "tags": ["pvreg", "preference-vector"]}
    two = [hub_vector("a", base=HubBaseInfo(fingerprint="1" * 64, hub_id="org/y")),
           hub_vector("b", base=HubBaseInfo(fingerprint="2" * 64, hub_id="org/x")),
           hub_vector("c", base=HubBaseInfo(fingerprint="3" * 64, label="local-only"))]
    card = render_card(REPO, two)
    assert _front(card)["base_model"] == ["org/x", "org/y"]  # sorted; a label is not a Hub id
    assert "| c | 1 | +1 | 1.5 | - | local-only |" in card


def test_owner_front_matter_keys_and_tags_are_kept_and_pvreg_tags_added_once():
    from pvreg.registry.hub.card import render_card

    existing = "---\nlicense: apache-2.0\ntags:\n- mine\n- pvreg\nlanguage: en\n---\n# Title OWNER1\n"
    card = render_card(REPO, [hub_vector("alpha", "org/ds")], existing)
    front = _front(card)
    assert front["license"] == "apache-2.0" and front["language"] == "en"
    assert front["tags"] == ["mine", "pvreg", "preference-vector"]
    assert front["library_name"] == "pvreg" and front["datasets"] == ["org/ds"]
    assert owner_text(card) == ["OWNER1"] and "# Title OWNER1\n" in card
    # Already right: the owner's own formatting of the header is kept byte for byte.
    assert render_card(REPO, [hub_vector("alpha", "org/ds")], card) == card


def test_unparseable_front_matter_stays_in_the_body_under_a_fresh_header():
    from pvreg.registry.hub.card import render_card

    for existing in ("---\nkey: [unclosed\n---\nOWNER1\n", "---\n- a list\n---\nOWNER1\n"):
        card = render_card(REPO, [hub_vector("alpha")], existing)
        assert _front(card) == {"library_name": "pvreg", "tags": ["pvreg", "preference-vector"]}
        assert existing in card  # nothing the owner wrote is dropped
        assert card.count(B) == 1 and card.index(existing) < card.index(B)


def test_table_cells_are_one_line_and_cannot_break_the_table():
    from pvreg.registry.hub.card import render_section

    section = render_section(REPO, [hub_vector("alpha", "a\r\nb\tc|d <x>")])
    (row,) = [ln for ln in section.splitlines() if ln.startswith("| alpha")]
    assert "| a b c\\|d &lt;x> |" in row
    assert row.count(" | ") == 6


# --- the composed model's card ------------------------------------------------------------------------------------


def _plan(method: str = "linear", params: dict | None = None, **spec_options):
    """What render_model_card reads of a compose Plan: the spec, each input's term and stored metadata."""
    from pvreg.schemas.compose import ComposeSpec

    spec = ComposeSpec(terms=[{"ref": "helpful", "coefficient": 0.5}], method=method, **spec_options)
    inputs = [SimpleNamespace(term=spec.terms[0], meta=SimpleNamespace(ref="helpful@3", sha256="c" * 64, sign=-1,
                                                                       dataset="org/ds"))]
    return SimpleNamespace(spec=spec, inputs=inputs, base_fingerprint="f" * 64, params=params or {},
                           method=SimpleNamespace(name=method))


def test_composed_model_card_without_a_known_base_and_with_options():
    from pvreg.registry.merge.modelcard import render_model_card
    from pvreg.schemas.vector import BaseModelInfo

    card = render_model_card(_plan(normalize=True, accumulate="float64", dtype="bfloat16"), None, "e" * 64)
    assert yaml.safe_load(card.split("---\n")[1]) == {"tags": ["pvreg", "preference-vector", "merge"],
                                                      "library_name": "transformers"}
    assert "- Base model: unknown (fingerprint `" + "f" * 64 + "`)" in card
    assert "- Method: `linear`\n" in card  # no parameters: no parentheses
    assert "- Normalize: yes" in card and "- Accumulation: float64; output dtype: bfloat16" in card
    assert "| helpful | helpful@3 | `" + "c" * 12 + "` | 0.5 | -1 | org/ds |" in card
    local = render_model_card(_plan(), BaseModelInfo(fingerprint="f" * 64, label="my-base"), "e" * 64)
    assert "base_model" not in yaml.safe_load(local.split("---\n")[1])  # a local label is not a Hub id
    assert "- Base model: my-base (" in local and "- Normalize: no" in local
    assert "output dtype: as the base" in local


@pytest.mark.parametrize("params,shown", [({"density": 0.25, "seed": 7}, "(density=0.25, seed=7)"),
                                          ({"density": None, "seed": None}, "")])
def test_composed_model_card_lists_only_the_parameters_that_are_set(params, shown):
    from pvreg.registry.merge.modelcard import render_model_card

    card = render_model_card(_plan("dare_ties", params), None, "e" * 64)
    assert ("- Method: `dare_ties`" + (f" {shown}" if shown else "") + "\n") in card
