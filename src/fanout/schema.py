"""The JSON Schema of the result document (``fanout schema``): the document's frame, shipped as
``document.schema.json``, with every verdict type the registered shapes draw, each generated
from its dataclass. A shape added to ``fanout.shapes`` has its verdict described here without
a line of this module changing."""

from __future__ import annotations

import json
from importlib import resources

from fanout.summary import JsonObject, JsonValue


def document_schema() -> JsonObject:
    """The result document's JSON Schema (draft 2020-12), verdicts included."""
    from fanout.shapes import verdict_types

    text = (resources.files("fanout") / "document.schema.json").read_text(encoding="utf-8")
    schema: JsonObject = json.loads(text)
    defs = schema["$defs"]
    assert isinstance(defs, dict)
    kinds: list[JsonValue] = []
    seen: set[str] = set()
    for cls in verdict_types().values():
        if cls.type in seen or cls.type == "unknown":
            continue
        seen.add(cls.type)
        one = cls.schema()
        inner = one.pop("$defs", None)
        if isinstance(inner, dict):
            defs.update(inner)  # pydantic refers to them as #/$defs/<name>: from the root too
        kinds.append(one)
    defs["verdict"] = {
        "description": "What a stage decided: one of these types (its 'type' field says which; "
        "an output verdict is the run's product, by stage or by author).",
        "anyOf": kinds,
    }
    return schema
