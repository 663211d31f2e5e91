"""The seam for signed commands: what the dispatcher asks of a signature verifier.

The dispatcher calls `verify` right after a request's envelope has passed the schema, before its
id is looked up for idempotency, so an unsigned repeat of a signed request's id never gets the
stored reply. agent.commands.signing implements it with Ed25519 and the platform's public keys;
without a verifier commands are not authenticated (the runtime says so at start-up).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class CommandVerifier(Protocol):
    def verify(self, envelope: dict[str, Any], user_properties: Mapping[str, str]) -> None:
        """Raise CommandError("unauthenticated", reason) unless the envelope is signed by a trusted key.

        `envelope` is the request's JSON object as received (with `sig`); `user_properties` are
        the MQTT 5 user properties of the message (the first value of a repeated name).
        """
