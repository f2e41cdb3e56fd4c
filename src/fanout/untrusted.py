"""Reading text fanout did not write: JSON bounded before and after parsing.

A server's structured reply, a tool call's arguments, a batch result file or a stored document
can be anything: ``{"choice": `` then 100,000 ``[`` makes ``json.loads`` raise
``RecursionError`` (not a ``ValueError``), and a reply just under Python's limit parses into an
object whose every later ``repr`` or ``json.dumps`` fails. ``load_json`` turns both, and text too
long to be a reply, into ``UnreadableJSON``, a ``ValueError``: every reader that already treats a
``ValueError`` as "not JSON" (an abstention, a bad tool call, a damaged run) is right as it is.
"""

from __future__ import annotations

import json

# Deeper than any structured output fanout asks for (the agreement map is 4 levels; a stored
# document with a map inside it about 12), far below what Python's stack takes.
MAX_DEPTH = 64
# What fanout stores (a run's document, its settings) nests a few levels more than a reply
# inside it; a stored value deeper than this was not written by fanout.
MAX_STORED_DEPTH = 256
# A structured reply (a vote, a verdict, a ranking, a map, a tool call's arguments) longer
# than this is not one: parsing it would only cost memory.
MAX_REPLY_CHARS = 4_000_000


class UnreadableJSON(ValueError):
    """JSON too long or nested too deeply to read."""


def load_json(
    text: str | bytes, *, max_chars: int | None = MAX_REPLY_CHARS, max_depth: int = MAX_DEPTH
) -> object:
    """``text`` parsed; ``ValueError`` (``UnreadableJSON`` for the bounds) for what is not JSON,
    is longer than ``max_chars`` (``None``: no bound) or nests deeper than ``max_depth``."""
    if max_chars is not None and len(text) > max_chars:
        raise UnreadableJSON(f"{len(text):,} characters, more than the {max_chars:,} read")
    try:
        value = json.loads(text)
    except RecursionError:
        raise UnreadableJSON("nested too deeply") from None
    if _deeper_than(value, max_depth):
        raise UnreadableJSON(f"nested more than {max_depth} levels deep")
    return value


def _deeper_than(value: object, limit: int) -> bool:
    """Whether ``value``'s lists and objects nest more than ``limit`` deep (without recursion:
    the value may be as deep as the parser took)."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False

