"""A shallow error tree: one base, a few subclasses carrying what a caller needs."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration is invalid; `problems` lists one readable line per fault."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class SourceError(AgentError):
    """A frame source could not be opened or stopped delivering frames."""
