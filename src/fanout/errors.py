"""The one exception hierarchy of fanout.

The core raises these; only ``cli.py`` turns them into a line on stderr and an exit code.

* FanoutError
  x ConfigError      - the agents file, a flag or the environment is wrong (exit 2)
  x ProviderError    - an endpoint failed; ``retryable`` says whether to try again
  x BudgetExceeded   - a call was not made: it could have broken ``--max-cost``
  x StorageError     - the run history could not be read or written (exit 1)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fanout.models import Usage


class FanoutError(Exception):
    """Base of every error fanout raises on purpose."""

    exit_code = 1


class ConfigError(FanoutError):
    """The agents file, a command-line flag or an environment variable is wrong."""

    exit_code = 2


class ProviderError(FanoutError):
    """One call to an endpoint failed.

    ``kind`` is a short machine-readable name (``rate_limit``, ``timeout``, ``server_error``,
    ``incomplete_stream``...), ``retry_after`` the wait in seconds the server asked for, if it
    did; ``partial_text`` what a stream had sent before it failed, for display (never an answer).
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        status_code: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        usage: Usage | None = None,
        partial_text: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status_code = status_code
        self.retryable = retryable
        self.retry_after = retry_after
        # Rate-limit headers of the failed response, for the limiter.
        self.headers: Mapping[str, str] = headers or {}
        # Tokens the failed response still reported (billed, so counted).
        self.usage = usage
        # What a stream delivered before it broke off (shown, never taken for an answer).
        self.partial_text = partial_text

    def __str__(self) -> str:
        return self.message

    @classmethod
    def timeout(cls, seconds: float) -> ProviderError:
        return cls(f"no answer within {seconds:g} s", kind="timeout", retryable=True)


class BudgetExceeded(FanoutError):
    """A call was not made because its worst case did not fit in what ``--max-cost`` left."""


class StorageError(FanoutError):
    """The run history could not be opened, read or written (a disk, permission or corruption
    problem, not a mistake in the command)."""


class StdoutClosed(Exception):
    """Whoever read our stdout has gone (``| head -1``): the command ends quietly. Not a
    ``FanoutError``: nothing went wrong that anyone is left to be told about."""
