"""Commands from the platform: schema, validation, access control, execution and audit.

The runtime builds one `Dispatcher` (with its `AuditLog` and `StreamManager`) and one
`CommandServer` that feeds it every message from `{root}/cmd` on its own workers; the dispatcher
reaches the rest of the agent only through `Gateway`. Per-agency rate limits (`RateLimits`), the
reply store under data_dir and an optional signature verifier (`CommandVerifier`) are the
dispatcher's; `Dispatcher.stats()` feeds telemetry. Modules: `server` (queues, workers), `envelope`
(size, JSON, schema), `replies` (where a reply goes), `dispatcher` (the steps in order), `handlers`,
`streams` (with `stream_fmp4` and its box writer `fmp4`), `aim` (PTZ look_at geometry),
`idempotency`, `limits`, `signing`/`verifying`, `audit*` (the chained log and its records).
May not touch: analysis, the runtime or the SDK; cameras and the broker only through `Gateway`.
"""

from agent.commands.dispatcher import Dispatcher, ReplyOut
from agent.commands.gateway import ClipAccess, ClipSummary, Gateway, HoldSummary
from agent.commands.handlers import COMMANDS, CommandContext, CommandSpec
from agent.commands.limits import RateLimits
from agent.commands.models import CommandError, Request
from agent.commands.server import CommandServer
from agent.commands.streams import StreamLimits, StreamManager
from agent.commands.verifying import CommandVerifier

__all__ = [
    "COMMANDS",
    "ClipAccess",
    "ClipSummary",
    "CommandContext",
    "CommandError",
    "CommandServer",
    "CommandSpec",
    "CommandVerifier",
    "Dispatcher",
    "Gateway",
    "HoldSummary",
    "RateLimits",
    "ReplyOut",
    "Request",
    "StreamLimits",
    "StreamManager",
]
