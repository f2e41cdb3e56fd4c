"""fanout: ask a panel of LLM personas one question at once and compare their answers.

The Python API (the CLI is one client of it)::

    import fanout

    request = fanout.RunRequest("What is temperature?", fanout.load_panel(), agents=["physicist"])
    report = fanout.run(request)              # or: await fanout.arun(request, observers=[...])
    report.to_dict()["output"]                # exactly the `fanout ask --json` document

    async with fanout.events(request) as stream:
        async for event in stream:            # RunStarted, CallDelta, CallFinished, RunFinished...
            ...

    chat = fanout.Conversation(fanout.load_panel())  # each persona keeps its own thread
    chat.ask("What is temperature?")
    chat.ask("And at absolute zero?")

The API loads on first use, so ``fanout --help`` does not pay for it (nor the live board's
first frame, drawn by ``fanout.launch`` before anything else loads).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fanout.api import RunRequest, arun, events, load_panel, prepare, run
    from fanout.config import Panel
    from fanout.conversation import Conversation
    from fanout.engine import Execution, RunSettings
    from fanout.errors import ConfigError, FanoutError, ProviderError, StorageError
    from fanout.models import (
        Agent,
        AgentError,
        AgentResult,
        Call,
        CallResult,
        Endpoint,
        RunReport,
        StageResult,
        Usage,
    )

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentError",
    "AgentResult",
    "Call",
    "CallResult",
    "ConfigError",
    "Conversation",
    "Endpoint",
    "Execution",
    "FanoutError",
    "Panel",
    "ProviderError",
    "RunReport",
    "RunRequest",
    "RunSettings",
    "StageResult",
    "StorageError",
    "Usage",
    "__version__",
    "arun",
    "events",
    "load_panel",
    "prepare",
    "run",
]

# Everything loads on first use: `fanout` is imported before the live board's first frame.
_LAZY = {
    **dict.fromkeys(
        ("ConfigError", "FanoutError", "ProviderError", "StorageError"), "fanout.errors"
    ),
    **{name: "fanout.models" for name in ("Agent", "AgentError", "AgentResult", "Call")},
    **{name: "fanout.models" for name in ("CallResult", "Endpoint", "RunReport", "StageResult")},
    "Usage": "fanout.models",
    "RunRequest": "fanout.api",
    "arun": "fanout.api",
    "events": "fanout.api",
    "load_panel": "fanout.api",
    "prepare": "fanout.api",
    "run": "fanout.api",
    "Panel": "fanout.config",
    "Conversation": "fanout.conversation",
    "Execution": "fanout.engine",
    "RunSettings": "fanout.engine",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fanout' has no attribute {name!r}")
