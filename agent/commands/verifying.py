"""The seam for signed commands: what the dispatcher asks of a signature verifier.

The dispatcher calls `verify` right after a request's envelope has passed the schema, before its
id is looked up for idempotency, so an unsigned repeat of a signed request's id never gets the
stored reply. agent.commands.signing implements it with Ed25519 and the platform's public keys;
without a verifier commands are not authenticated (the runtime says so at start-up).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from agent.config import AgentConfig

log = logging.getLogger(__name__)


class CommandVerifier(Protocol):
    def verify(self, envelope: dict[str, Any], user_properties: Mapping[str, str]) -> None:
        """Raise CommandError("unauthenticated", reason) unless the envelope is signed by a trusted key.

        `envelope` is the request's JSON object as received (with `sig`); `user_properties` are
        the MQTT 5 user properties of the message (the first value of a repeated name).
        """


def load_verifier(cfg: AgentConfig) -> CommandVerifier | None:
    """The verifier for `gateway.platform_keys`, or None (with a warning) when none are configured.

    The Ed25519 code (agent.commands.signing, and the `cryptography` package it needs: about 8 MB
    of resident memory) is loaded only when keys are configured. Raises ConfigError naming every
    key file that cannot be read or parsed (never its content).
    """
    paths = cfg.gateway.platform_keys
    if not paths:
        log.warning(
            "commands are NOT authenticated: gateway.platform_keys is empty, so anyone who may publish"
            " on %s/cmd can act as any agency",
            cfg.topic_root,
        )
        return None
    from agent.commands.signing import verifier_for

    return verifier_for(paths)
