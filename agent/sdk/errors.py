"""What the platform client raises: one base class, so a caller can catch every client failure."""

from __future__ import annotations

from agent.errors import AgentError

__all__ = ["ClientError", "CommandFailed", "ConnectFailed", "NoReply"]


class ClientError(AgentError):
    """Base of the client's errors."""


class ConnectFailed(ClientError):  # noqa: N818 - the name says what happened
    """The broker could not be reached or refused the connection (reason in the message)."""


class CommandFailed(ClientError):  # noqa: N818 - the name says what happened
    """The agent answered `{"ok":false,"error":{"code","message"}}`."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        self.code = code
        self.message = message
        self.request_id = request_id
        super().__init__(f"{code}: {message}")


class NoReply(ClientError, TimeoutError):  # noqa: N818 - the name says what happened
    """Nothing (or not everything) arrived in time; the command may or may not have run."""
