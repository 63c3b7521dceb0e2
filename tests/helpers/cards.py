"""Hub model cards with pvreg's markers in every state an owner's edit can leave them.

Shared by the card renderer's unit tests and the push tests that re-push over
such a card.  :func:`owner_text` is computed independently of
``pvreg.registry.hub.card``: it is what any correct renderer must keep.
"""

from __future__ import annotations

import re

BEGIN, END = "<!-- pvreg:begin -->", "<!-- pvreg:end -->"
B, E = BEGIN, END
#: Existing cards: OWNERn tokens are the owner's text, which every render must keep in order.
CARDS = {
    "end-before-begin": f"Intro OWNER1\n{E}\nmiddle OWNER2\n{B}\nold table\nOWNER3 after\n",
    "duplicated-sections": f"OWNER1\n{B}\nold one\n{E}\nOWNER2\n{B}\nold two\n{E}\nOWNER3\n",
    "only-begin": f"OWNER1\n{B}\nOWNER2\n",
    "only-end": f"OWNER1\n{E}\nOWNER2\n",
    "two-begins-one-end": f"OWNER1\n{B}\nx\n{B}\ny\n{E}\nOWNER2\n",
    "markers-inline": f"OWNER1 {B}old{E} OWNER2\n",
    "crlf": f"---\r\nlicense: mit\r\n---\r\nOWNER1\r\n{B}\r\nold\r\n{E}\r\nOWNER2\r\n",
    "front-matter-only": "---\nlicense: mit\n---\n",
    "no-markers": "# Mine\n\nOWNER1\n",
    "bom": f"\ufeff# Mine OWNER1\n{B}\nold\n{E}\n",
}


def owner_text(card: str) -> list[str]:
    """The OWNER tokens outside pvreg's part: drop BEGIN..first END pairs, then stray markers."""
    outside = re.sub(re.escape(B) + ".*?" + re.escape(E), "", card, flags=re.S).replace(B, "").replace(E, "")
    return re.findall(r"OWNER\d", outside)
