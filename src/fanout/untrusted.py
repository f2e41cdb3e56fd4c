"""Reading text fanout did not write: JSON bounded before and after parsing, and the keys
fanout sends hidden in whatever a server sends back.

A server's structured reply, a tool call's arguments, a batch result file or a stored document
can be anything: ``{"choice": `` then 100,000 ``[`` makes ``json.loads`` raise
``RecursionError`` (not a ``ValueError``), and a reply just under Python's limit parses into an
object whose every later ``repr`` or ``json.dumps`` fails. ``load_json`` turns both, and text too
long to be a reply, into ``UnreadableJSON``, a ``ValueError``: every reader that already treats a
``ValueError`` as "not JSON" (an abstention, a bad tool call, a damaged run) is right as it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

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


# -- keys a server echoes ---------------------------------------------------------------------

MASK = "***"
_SHORTEST_KEY = 4  # shorter "keys" (a loopback server's "x") would mask ordinary words


class KeyScrubber:
    """Hides the keys fanout sends in what the servers send back: an answer, a tool call, an
    error, a batch's results. A key is hidden as it is and as ``repr`` escapes it."""

    def __init__(self, keys: Iterable[str]) -> None:
        forms = {form for key in keys for form in (key, repr(key)[1:-1], key.strip())}
        # Longest first: a key that contains another is hidden whole.
        self.forms = sorted((f for f in forms if len(f) >= _SHORTEST_KEY), key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self.forms)

    def scrub(self, text: str) -> str:
        for form in self.forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def scrub_bytes(self, data: bytes) -> bytes:
        for form in self.forms:
            data = data.replace(form.encode("utf-8", "surrogatepass"), MASK.encode())
        return data

    def unfinished(self, text: str) -> int:
        """How many characters at the end of ``text`` could be the start of a key (held back
        from a stream until the next piece tells)."""
        longest = 0
        for form in self.forms:
            tail = text[max(0, len(text) - len(form) + 1) :]
            at = tail.find(form[0])
            while at != -1 and len(tail) - at > longest:
                if form.startswith(tail[at:]):
                    longest = len(tail) - at
                    break
                at = tail.find(form[0], at + 1)
        return longest


class ScrubbedStream:
    """A streamed answer's pieces passed on with the keys hidden, even a key split across
    pieces: the end of a piece that could begin one waits for the next piece (or ``flush``).
    Each piece costs the length of the piece and the keys, never of the text before it."""

    def __init__(self, scrubber: KeyScrubber, emit: Callable[[str], None]) -> None:
        self.scrubber = scrubber
        self.emit = emit
        self.held = ""

    def __call__(self, piece: str) -> None:
        text = self.scrubber.scrub(self.held + piece)
        keep = self.scrubber.unfinished(text)
        self.held = text[len(text) - keep :] if keep else ""
        if len(text) > keep:
            self.emit(text[: len(text) - keep])

    def flush(self) -> None:
        held, self.held = self.held, ""
        if held:
            self.emit(held)
