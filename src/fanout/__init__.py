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

The API loads on first use, so ``fanout --help`` does not pay for it nor the live board's
first frame (drawn by ``fanout.launch`` before anything else loads), and the command line
has its signal handlers in place first.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: `import fanout` loads nothing (see fanout.launch)
if TYPE_CHECKING:
    from typing import Any

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

_ERRORS = ("ConfigError", "FanoutError", "ProviderError", "StorageError")
_LAZY = {
    **dict.fromkeys(("RunRequest", "arun", "events", "load_panel", "prepare", "run"), "fanout.api"),
    "Panel": "fanout.config",
    "Conversation": "fanout.conversation",
    **dict.fromkeys(("Execution", "RunSettings"), "fanout.engine"),
    **dict.fromkeys(_ERRORS, "fanout.errors"),
    **dict.fromkeys(("Agent", "AgentError", "AgentResult", "Call", "CallResult"), "fanout.models"),
    **dict.fromkeys(("Endpoint", "RunReport", "StageResult", "Usage"), "fanout.models"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fanout' has no attribute {name!r}")
