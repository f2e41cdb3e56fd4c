"""``fanout models``: what each endpoint of the panel serves (``GET /v1/models``), which are
unreachable, and which personas ask for a model their endpoint does not list.

Every endpoint the panel's personas, roles and fallbacks use is asked at once; one that
cannot be asked (no key for a remote one, ``base_url: local``) says why instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import anyio

from fanout.config import Panel
from fanout.errors import ProviderError
from fanout.local import LOCAL_URL
from fanout.models import Agent, Endpoint


@dataclass
class EndpointModels:
    """One endpoint: who uses it, and what it said."""

    endpoint: Endpoint
    users: dict[str, str] = field(default_factory=dict)  # persona or role -> the model it asks
    models: list[str] = field(default_factory=list)
    error: str | None = None  # why it could not be listed: unreachable, key refused...

    @property
    def reachable(self) -> bool:
        return self.error is None

    @property
    def missing(self) -> dict[str, str]:
        """Who asks for a model the endpoint does not list (when it listed any)."""
        if self.error is not None or not self.models:
            return {}
        served = {_bare(m) for m in self.models}
        return {who: model for who, model in self.users.items() if _bare(model) not in served}

    def document(self) -> dict[str, object]:
        return {
            "base_url": self.endpoint.display_url,
            "host": self.endpoint.host,
            "api_key_env": self.endpoint.api_key_env,
            "reachable": self.reachable,
            "error": self.error,
            "models": self.models,
            "used_by": self.users,
            "not_listed": self.missing,
        }


def panel_endpoints(panel: Panel) -> list[EndpointModels]:
    """Every endpoint the panel uses, in the order first met: its personas, its synthesizer,
    the roles the file declares (a judge:, a router:...), and their fallbacks."""
    found: dict[Endpoint, EndpointModels] = {}
    callers: list[tuple[str, Agent]] = [(a.name, a) for a in panel.agents]
    roles = {"synthesizer": panel.synthesizer}
    roles.update({role: panel.role(role) for role in panel.declared})
    callers += [(_role_label(role, agent), agent) for role, agent in roles.items()]
    for who, agent in callers:
        found.setdefault(agent.endpoint, EndpointModels(agent.endpoint)).users[who] = agent.model
        for number, fallback in enumerate(agent.fallbacks, 1):
            entry = found.setdefault(fallback.endpoint, EndpointModels(fallback.endpoint))
            entry.users[f"{who} (fallback {number})"] = fallback.model
    return list(found.values())


def _role_label(role: str, agent: Agent) -> str:
    return role if agent.name == role else f"{agent.name} ({role})"


async def list_endpoints(
    endpoints: Sequence[EndpointModels],
    environ: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
) -> None:
    """Ask every endpoint at once what it serves; each entry gets its models or its error."""
    from fanout.provider import OpenAIProvider

    environ = os.environ if environ is None else environ
    provider = OpenAIProvider(environ)

    async def ask(entry: EndpointModels) -> None:
        endpoint = entry.endpoint
        if endpoint.base_url == LOCAL_URL:
            entry.error = "the model on this machine (--local): fanout starts it for a run"
        elif not endpoint.is_local and not environ.get(endpoint.api_key_env):
            entry.error = f"not asked: no key in ${endpoint.api_key_env}"
        else:
            try:
                entry.models = sorted(await provider.list_models(endpoint, timeout_s))
            except ProviderError as exc:
                entry.error = _unreachable(exc)

    try:
        async with anyio.create_task_group() as tg:
            for entry in endpoints:
                tg.start_soon(ask, entry)
    finally:
        with anyio.CancelScope(shield=True):
            await provider.aclose()


def _unreachable(error: ProviderError) -> str:
    """Why an endpoint could not list its models, in a few words."""
    if error.status_code in (401, 403):
        return f"key refused: {error.message}"
    if error.status_code == 404:
        return f"lists no models (no /models route): {error.message}"
    if error.kind in ("connection", "timeout"):
        return f"unreachable: {error.message}"
    return error.message


def exit_code(endpoints: Sequence[EndpointModels]) -> int:
    """0 when every endpoint listed its models, 3 when some did, 1 when none did (the model
    on this machine, started only for a run, is left out)."""
    asked = [e for e in endpoints if e.endpoint.base_url != LOCAL_URL]
    listed = sum(1 for e in asked if e.reachable)
    return 0 if listed == len(asked) else 3 if listed else 1


def _bare(model: str) -> str:
    """A model as Ollama also knows it: ``llama3.2`` is ``llama3.2:latest``."""
    return model.removesuffix(":latest")


def _shown(text: str) -> str:
    """What a server sent, with control characters shown, never acted on by a terminal."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def listing_text(endpoints: Sequence[EndpointModels]) -> str:
    """The listing for a person: each endpoint, who uses it, then its models (``*`` for one
    the panel asks for) or why it could not be asked."""
    blocks: list[str] = []
    for entry in endpoints:
        endpoint = entry.endpoint
        head = f"{endpoint.display_url} (${endpoint.api_key_env}) · used by " + ", ".join(
            entry.users
        )
        asked = {_bare(m) for m in entry.users.values()}
        if entry.error is not None:
            lines = [f"  ✗ {_shown(entry.error)}"]
        elif not entry.models:
            lines = ["  (lists no models)"]
        else:
            lines = [f"  {'*' if _bare(m) in asked else ' '} {_shown(m)}" for m in entry.models]
        lines += [
            f"  ! {who} asks for {_shown(model)}, which it does not list"
            for who, model in entry.missing.items()
        ]
        blocks.append("\n".join([head, *lines]))
    return "\n\n".join(blocks) + "\n"
