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


class DetectorUnavailableError(AgentError):
    """Object detection is enabled but no TFLite interpreter package can be imported.

    `tried` maps each interpreter module tried to why its import failed.
    """

    def __init__(self, tried: dict[str, str]) -> None:
        self.tried = tried
        reasons = "; ".join(f"{module}: {why}" for module, why in tried.items())
        super().__init__(
            "object detection is enabled but no TFLite interpreter is installed "
            f"(pip install ai-edge-litert, or tflite-runtime on Raspberry Pi OS); tried {reasons}"
        )


class ModelError(AgentError):
    """A detection model or its labels file cannot be used; `path` names the file."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")
