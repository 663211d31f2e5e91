"""The platform's side of the contract: `PlatformClient` for integrators, `edge-agent ctl` and `watch`.

Only agent/cli.py imports this package, inside the functions that build and run its `ctl`,
`watch` and `demo` subcommands (tests/test_layout.py holds the agent to that). It may use the
shared contract (agent.contract, agent.commands.models, agent.mqtt.topics) so both ends speak
the same messages.

Modules: `client` (PlatformClient: one method per command) on `connection` (the MQTT connection,
request/reply, subscriptions; its paho client from `paho_client`), `live` (stream sessions),
`clip_download` (resumable clip fetch), `errors`, `fleet` (FleetWatch, describe_sweep: fleet state
without wildcard retained messages, shared subscriptions); `ctl` and `watch` are the command-line
tools.
"""

from agent.sdk.client import PlatformClient
from agent.sdk.errors import ClientError, CommandFailed, ConnectFailed, NoReply
from agent.sdk.live import LiveStream, StreamFrame

__all__ = [
    "ClientError",
    "CommandFailed",
    "ConnectFailed",
    "LiveStream",
    "NoReply",
    "PlatformClient",
    "StreamFrame",
]
