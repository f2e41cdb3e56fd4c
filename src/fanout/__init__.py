"""fanout: ask a panel of LLM personas one question at once and compare their answers."""

from fanout.errors import ConfigError, FanoutError, ProviderError
from fanout.models import Agent, AgentError, AgentResult, Endpoint, RunReport, Usage

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentError",
    "AgentResult",
    "ConfigError",
    "Endpoint",
    "FanoutError",
    "ProviderError",
    "RunReport",
    "Usage",
    "__version__",
]
