"""A run's own product, when it is more than its answers: an orchestrator's answer, a flow's
``output:`` (the answers of the stages it names). Its stage makes no call; its verdict is the
document's top-level ``output``, as version 2 stored it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from fanout.summary import JsonObject, Row, Rows, Summary, Verdict

Answers = dict[str, dict[str, str] | str]


@dataclass(frozen=True)
class OutputVerdict(Verdict):
    """``answers``: who wrote the product and what (``{orchestrator: text}``), or, for a flow,
    each stage named in ``output:`` and its answers (``{draft: {teacher: text}}``)."""

    type: ClassVar[str] = "output"
    legacy: ClassVar[tuple[str, ...]] = ("output",)
    answers: Answers = field(default_factory=dict)

    def to_dict(self) -> JsonObject:
        # Flat, as the document's top-level ``output`` has always been: no ``type`` beside
        # the names (a stage or a persona may be called anything).
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.answers.items()}

    def product(self) -> Mapping[str, Mapping[str, str] | str]:
        return self.answers

    def pieces(self) -> list[tuple[str, str]]:
        """(who, text) for every answer of the product, in order: ``draft · teacher``."""
        found: list[tuple[str, str]] = []
        for name, value in self.answers.items():
            if isinstance(value, str):
                found.append((name, value))
            else:
                found.extend((f"{name} · {who}", text) for who, text in value.items())
        return found

    def summary(self) -> Summary:
        pieces = self.pieces()
        if not pieces:
            return Summary("Output", "No output: the run produced no answer", decided=None)
        if len(pieces) == 1:
            ((who, text),) = pieces
            return Summary("Answer", "", answer=text, author=who)
        joined = "\n\n".join(f"**{who}**\n\n{text}" for who, text in pieces)
        rows = (Rows("points", "From", tuple(Row(who) for who, _ in pieces)),)
        names = ", ".join(self.answers)
        return Summary("Output", f"Output of {names}", answer=joined, author=names, rows=rows)

    @classmethod
    def read(cls, data: Mapping[str, object]) -> OutputVerdict:
        """A stored ``output`` verdict (its answers as they were written)."""
        answers: Answers = {}
        for key, value in data.items():
            if isinstance(value, str):
                answers[str(key)] = value
            elif isinstance(value, Mapping):
                answers[str(key)] = {str(k): str(v) for k, v in value.items()}
        return cls(answers)
