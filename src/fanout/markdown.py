"""An answer's Markdown, read one way for every place that shows it (markdown-it, CommonMark
with tables and strikethrough: the parser Rich draws the terminal's Markdown with).

* ``answer_html``: sanitised HTML for the HTML export. Raw HTML in an answer is text, never
  markup; images are not drawn (a page that fetched one would tell a server it was opened);
  links keep their text and go only to web and mail addresses.
* ``demote_headings``: an answer's own headings pushed below the ``## persona`` heading that
  plain Markdown output puts above it.

Answers are untrusted model output: nothing here may turn their text into markup.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # markdown-it is imported when an answer is first read (about 25 ms)
    from markdown_it import MarkdownIt

# What may come before a heading's hashes on its line: indentation, blockquote markers and
# list markers (a heading inside a quote or a list item).
_CONTAINERS = r"(?:[ \t]*(?:>|[-*+]|\d{1,9}[.)])(?=[ \t]))*[ \t]*"
_ATX = re.compile(rf"^({_CONTAINERS})(#{{1,6}})(?=[ \t]|$)")
_PREFIX = re.compile(rf"^{_CONTAINERS}")
_UNDERLINE = re.compile(r"\n[ \t>]*(=+|-+)[ \t]*(\n|$)")  # a setext heading's, maybe


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    parser.enable(["table", "strikethrough"]).disable("image")
    default_link = parser.validateLink
    parser.validateLink = lambda url: _web_or_mail(url) and default_link(url)  # type: ignore[method-assign]
    return parser


def _web_or_mail(url: str) -> bool:
    # A browser drops controls and spaces around (and tabs inside) a URL: "\x01javascript:"
    # is javascript. Such a URL is no link at all.
    if re.search(r"[\x00-\x20\x7f-\x9f]", url):
        return False
    scheme = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*):", url)
    return scheme is None or scheme[1].lower() in ("http", "https", "mailto")


def answer_html(text: str) -> str:
    """``text`` as sanitised HTML: what the terminal draws as Markdown, drawn by a browser."""
    html: str = _parser().render(text)
    return html.replace("<a href=", '<a rel="noopener noreferrer nofollow" href=')


def demote_headings(text: str, levels: int = 2) -> str:
    """``text`` with each of its headings ``levels`` deeper (at most ``######``): under a
    ``## persona`` heading, an answer's ``# Title`` becomes ``### Title``. Headings in code
    blocks are code, and stay as they are."""
    if "#" not in text and not _UNDERLINE.search(text):
        return text  # no heading: no need to load the parser
    lines: list[str | None] = list(text.split("\n"))
    for token in _parser().parse(text):
        if token.type != "heading_open" or token.map is None:
            continue
        level = min(int(token.tag[1]) + levels, 6)
        start, end = token.map
        first = lines[start] or ""
        if token.markup.startswith("#"):
            hashes = _ATX.match(first)
            if hashes:
                lines[start] = hashes[1] + "#" * level + first[hashes.end() :]
            continue
        # Setext ("Title" over "====="): one ATX line instead, the same lines dropped.
        lead = _PREFIX.match(first)
        words = " ".join(_PREFIX.sub("", line or "").strip() for line in lines[start : end - 1])
        lines[start] = f"{lead[0] if lead else ''}{'#' * level} {words}"
        lines[start + 1 : end] = [None] * (end - start - 1)
    return "\n".join(line for line in lines if line is not None)
