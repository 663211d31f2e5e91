"""Where a command's reply goes, and its bytes: the one rule shared by the dispatcher and the server.

The reply address is the MQTT 5 Response Topic when it is a usable topic, else the request's
`reply_to` (the MQTT 3.1.1 way) when that is one; the Correlation Data is echoed as it came.
"Usable" is what MQTT allows a PUBLISH topic to be (`valid_reply_topic`): anything else would
make paho raise in the middle of answering, so such an address is ignored, never published to.

A usable address must also be one the platform reads replies from (`ReplyTopics`): under
`{root}/reply/` or under a prefix named in `gateway.reply_prefixes`. Otherwise the gateway would
write wherever its broker account may, its own status, events and audit topics included, on behalf
of whoever sent the request; such a request is answered nowhere (`Address.hostile` names the topic).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from agent.commands import models as m
from agent.commands.models import ErrorCode

MAX_TOPIC_BYTES = 65535  # MQTT's limit for a UTF-8 string, so for a topic name


def reply_ok(request_id: str, result: dict[str, Any]) -> bytes:
    return m.Reply(id=request_id, result=result).model_dump_json().encode("utf-8")


def reply_error(request_id: str | None, code: ErrorCode, message: str) -> bytes:
    # Messages may quote what the platform sent (e.g. a dict key); a lone surrogate from a JSON
    # escape like "\udc00" cannot be encoded as UTF-8 and would turn the reply into `internal`.
    safe = message[:1000].encode("utf-8", "backslashreplace").decode("utf-8")
    body = m.ErrorBody(code=code, message=safe)
    return m.ErrorReply(id=request_id, error=body).model_dump_json().encode("utf-8")


def valid_reply_topic(topic: object) -> str | None:
    """`topic` when MQTT allows publishing to it, else None.

    That is a str that encodes as UTF-8 (no lone surrogates), has no U+0000 and no `+`/`#`
    wildcard, and is 1..65535 bytes long in UTF-8.
    """
    if not isinstance(topic, str) or any(c in topic for c in "+#\x00"):
        return None
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return None
    return topic if 1 <= size <= MAX_TOPIC_BYTES else None


def usable_reply_to(value: object) -> str | None:
    """A request's `reply_to` when it can be answered to (the schema's length limit included)."""
    if isinstance(value, str) and len(value) <= m.MAX_TOPIC_CHARS:
        return valid_reply_topic(value)
    return None


@dataclass(frozen=True, slots=True)
class ReplyTopics:
    """The topic prefixes replies may go under (each without its trailing `/`)."""

    prefixes: tuple[str, ...]

    @classmethod
    def of(cls, reply_prefix: str, configured: Iterable[str] = ()) -> ReplyTopics:
        """`{root}/reply` (agent.mqtt.topics.Topics.reply_prefix) and the configured prefixes."""
        return cls((reply_prefix, *configured))

    def allows(self, topic: str) -> bool:
        """Whether `topic` lies strictly under one of the prefixes (`{prefix}/` and at least a level)."""
        return any(topic.startswith(p + "/") and len(topic) > len(p) + 1 for p in self.prefixes)


@dataclass(frozen=True, slots=True)
class Address:
    """Where a request is answered (`topic`, None: nowhere), and the first address it named that
    lies outside the reply prefixes (`hostile`; then `topic` is None)."""

    topic: str | None
    hostile: str | None = None


def choose_address(rule: ReplyTopics, response_topic: object, reply_to: object) -> Address:
    """The MQTT 5 Response Topic, else `reply_to`; nowhere when either lies outside `rule`."""
    named = [t for t in (valid_reply_topic(response_topic), usable_reply_to(reply_to)) if t is not None]
    hostile = next((t for t in named if not rule.allows(t)), None)
    if hostile is not None:
        return Address(None, hostile)
    return Address(named[0] if named else None)


def user_properties(message: mqtt.MQTTMessage) -> dict[str, str]:
    """The MQTT 5 user properties of a message, the first value of a repeated name winning."""
    props = message.properties
    pairs = getattr(props, "UserProperty", None) if props is not None else None
    found: dict[str, str] = {}
    for pair in pairs or ():
        if isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair):
            found.setdefault(pair[0], pair[1])
    return found


def response_properties(message: mqtt.MQTTMessage) -> tuple[str | None, bytes | None]:
    """The MQTT 5 Response Topic (not yet checked) and Correlation Data of a request, if any."""
    props = message.properties
    topic = getattr(props, "ResponseTopic", None) if props is not None else None
    corr = getattr(props, "CorrelationData", None) if props is not None else None
    return (
        topic if isinstance(topic, str) else None,
        bytes(corr) if isinstance(corr, bytes | bytearray) else None,
    )


def reply_address(
    message: mqtt.MQTTMessage, payload: bytes, rule: ReplyTopics
) -> tuple[str | None, bytes | None]:
    """(reply topic or None, correlation data) of a request that is answered without being
    dispatched (queue full, or its handling failed): `payload` is read only for `reply_to`."""
    response_topic, corr = response_properties(message)
    return choose_address(rule, response_topic, _peek_reply_to(payload)).topic, corr


def _peek_reply_to(payload: bytes) -> object:
    if len(payload) > m.MAX_REQUEST_BYTES:
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return obj.get("reply_to") if isinstance(obj, dict) else None
