"""One MQTT connection to one gateway's topic root: subscriptions and request/reply.

`Connection.request()` sends a command on `{root}/cmd` and waits for the matching reply;
`PlatformClient` (agent.sdk.client) adds one method per command on top.

- Replies come back on a reply topic of this client alone, `{root}/reply/{client uuid}`, subscribed
  (SUBACK awaited) before anything is sent. On MQTT 5 the request carries it as Response Topic and
  the request id as Correlation Data; the envelope also always carries it as `reply_to`, so a
  gateway whose own link runs MQTT 3.1.1 (and so never sees the Response Topic) answers as well.
- Replies are matched by Correlation Data, else by the `id` in the reply; replies nobody waits
  for (late ones, after a timeout) are dropped.
- An error reply raises `CommandFailed(code, message)`; no reply in time raises `NoReply`.
- With a `signing_key` every envelope carries `sig`, the platform's Ed25519 signature that
  gateways with `gateway.platform_keys` require (agent.commands.signing).

Threads: paho's network thread (started in `connect`, stopped in `close`) runs the callbacks. The
pending-request map and the subscription bookkeeping have their own locks, so one connection may
be shared by several threads.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.clock import iso
from agent.commands.signing import load_private_key, sign_envelope
from agent.config import TlsConfig
from agent.mqtt.topics import Topics
from agent.sdk.errors import ClientError, CommandFailed, ConnectFailed, NoReply
from agent.sdk.paho_client import new_paho_client

__all__ = ["Connection", "Subscription", "user_properties"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict[str, Any] | None = None


def user_properties(msg: mqtt.MQTTMessage) -> dict[str, str]:
    """The MQTT 5 user properties of a message as a dict (empty on MQTT 3.1.1, which has none)."""
    props = msg.properties
    pairs = getattr(props, "UserProperty", None) if props is not None else None
    return dict(pairs or [])


class Connection:
    """The MQTT connection under a `PlatformClient`: one gateway's command topic, request/reply and
    subscriptions; use as a context manager (connects, closes)."""

    def __init__(
        self,
        host: str,
        port: int,
        root: str,
        *,
        agency: str,
        operator: str,
        incident: str | None = None,
        protocol: Literal["auto", "5", "3.1.1"] = "5",
        tls: TlsConfig | None = None,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        keepalive_s: int = 30,
        signing_key: Ed25519PrivateKey | str | Path | None = None,
    ) -> None:
        if protocol not in ("auto", "5", "3.1.1"):
            raise ValueError(f"protocol must be 'auto', '5' or '3.1.1', got {protocol!r}")
        if not root or any(c in root for c in "+#\x00") or root.endswith("/"):
            raise ValueError(f"root must be a plain topic like cctv/v1/district/gateway, got {root!r}")
        self.host, self.port, self.root = host, port, root
        self.topics = Topics(root)
        self.requester: dict[str, str] = {"agency": agency, "operator": operator}
        if incident is not None:
            self.requester["incident"] = incident
        self.protocol: Literal["auto", "5", "3.1.1"] = protocol  # "auto" until connect() settles it
        if isinstance(signing_key, str | Path):  # read now: a bad key file fails here, not mid-command
            signing_key = load_private_key(Path(signing_key))
        self._signing_key = signing_key
        self.v5 = protocol != "3.1.1"
        self.client_uuid = uuid.uuid4().hex
        self.reply_topic = self.topics.reply(self.client_uuid)
        self._keepalive = keepalive_s
        self._pending: dict[str, _Pending] = {}  # request id -> waiter; guarded by _lock
        self._lock = threading.Lock()
        # _subs guards the subscription bookkeeping: filters to renew after a reconnect, and the
        # SUBACK/UNSUBACK results by packet id (they can arrive before subscribe() returns a mid).
        self._subs = threading.Condition()
        self._filters: set[str] = {self.reply_topic}  # subscribed filters (the reply topic too)
        self._acks: dict[int, list[ReasonCode] | None] = {}
        self._connected = threading.Event()
        self._connect_error: str | None = None
        self._was_connected = False  # connect() subscribes the first time, _on_connect after that
        self._closing = False
        self._started = False
        self._closed_before_connack = False  # the broker dropped the last attempt after CONNECT
        self._client_args = (client_id or f"platform-{self.client_uuid[:16]}", tls, username, password)
        self._mqtt = self._new_client()

    def _new_client(self) -> mqtt.Client:
        client_id, tls, username, password = self._client_args
        client = new_paho_client(client_id, v5=self.v5, tls=tls, username=username, password=password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.message_callback_add(self.reply_topic, self._on_reply)
        return client

    # -- connection ------------------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> Self:
        """Connect, subscribe the reply topic and wait for both; raise ConnectFailed.

        With protocol "auto", a broker that refuses MQTT 5 (closes the connection after CONNECT,
        as RabbitMQ 3.10 does, or answers unsupported protocol version) is tried again at once
        with 3.1.1, and `protocol` / `v5` say which version is in use."""
        if self._connected.is_set():
            return self
        deadline = time.monotonic() + timeout
        if self.protocol != "auto":
            return self._connect_once(deadline)
        try:
            self._connect_once(deadline)
        except ConnectFailed:
            if not self._refused_version():
                raise
            self._fall_back_to_311()
            self._connect_once(deadline)
        else:
            self.protocol = "5"
        return self

    def _refused_version(self) -> bool:
        error = self._connect_error or ""
        return self._closed_before_connack or "Unsupported protocol version" in error

    def _fall_back_to_311(self) -> None:
        log.info("%s:%s refused MQTT 5; using MQTT 3.1.1", self.host, self.port)
        self._mqtt._reset_sockets()
        self.protocol, self.v5 = "3.1.1", False
        self._connect_error, self._closed_before_connack = None, False
        self._closing = False
        self._mqtt = self._new_client()

    def _connect_once(self, deadline: float) -> Self:
        timeout = max(0.1, deadline - time.monotonic())
        self._connect_error, self._closed_before_connack = None, False
        try:
            self._mqtt.connect(self.host, self.port, keepalive=self._keepalive)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        if not self._started:
            self._mqtt.loop_start()
            self._started = True
        while not self._connected.wait(0.05):
            if self._connect_error is not None or time.monotonic() > deadline:
                reason = self._connect_error or f"no CONNACK within {timeout:g} s"
                self.close()
                raise ConnectFailed(f"broker {self.host}:{self.port} refused the connection: {reason}")
        self._wait_subscribed([self.reply_topic], deadline)
        return self

    def ensure_connected(self, timeout: float) -> None:
        """Connect on first use; after a lost connection, wait for paho's own reconnect."""
        if not self._started:
            self.connect(timeout)
        elif not self._connected.wait(timeout):
            raise NoReply(f"not connected to {self.host}:{self.port} (reconnecting)")

    def close(self) -> None:
        """Disconnect and stop paho's thread; pending requests then time out."""
        if self._started:
            self._closing = True
            self._mqtt.disconnect()
            self._mqtt.loop_stop()
            self._started = False
        # paho 2.2 keeps its socket and wake-up socket pair open after loop_stop() until the
        # client is garbage collected, which warns (ResourceWarning) when that happens inside a
        # reference cycle; close them now. `_reset_sockets` is what paho's own __del__ calls.
        self._mqtt._reset_sockets()
        self._connected.clear()

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- requests --------------------------------------------------------------------------------

    def envelope(
        self,
        cmd: str,
        args: dict[str, Any] | None = None,
        *,
        ttl_s: float = 30,
        request_id: str | None = None,
        issued_at: float | None = None,
    ) -> dict[str, Any]:
        """The request object `request()` would send (exposed for tests and tools), signed when
        the client has a signing key."""
        body = {
            "id": request_id or str(uuid.uuid4()),
            "cmd": cmd,
            "args": args or {},
            "issued_at": iso(issued_at),
            "ttl_s": ttl_s,
            "requester": dict(self.requester),
            "reply_to": self.reply_topic,
        }
        return body if self._signing_key is None else sign_envelope(body, self._signing_key)

    def request(
        self,
        cmd: str,
        args: dict[str, Any] | None = None,
        timeout: float = 5.0,
        ttl_s: float = 30,
        *,
        request_id: str | None = None,
        issued_at: float | None = None,
    ) -> dict[str, Any]:
        """Send a command and return its `result`; raise CommandFailed or NoReply."""
        body = self.envelope(cmd, args, ttl_s=ttl_s, request_id=request_id, issued_at=issued_at)
        reply = self.send_raw(json.dumps(body).encode("utf-8"), body["id"], timeout=timeout)
        return self._result(reply)

    def send_raw(self, payload: bytes, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """Publish `payload` as it is on `{root}/cmd` and return the whole reply object.

        `request_id` is what the reply is matched on (sent as Correlation Data on MQTT 5, so even
        a reply with `"id": null` to a garbled request is found). Raises NoReply.
        """
        self.ensure_connected(timeout)
        waiter = _Pending()
        with self._lock:
            if request_id in self._pending:
                raise ClientError(f"request {request_id!r} is already waiting for its reply")
            self._pending[request_id] = waiter
        try:
            props = None
            if self.v5:
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.ResponseTopic = self.reply_topic
                props.CorrelationData = request_id.encode("utf-8")
            info = self._mqtt.publish(self.topics.cmd, payload, qos=1, properties=props)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise ClientError(f"publishing the request failed: {mqtt.error_string(info.rc)}")
            if not waiter.done.wait(timeout):
                raise NoReply(f"no reply to request {request_id} within {timeout:g} s")
            assert waiter.reply is not None
            return waiter.reply
        finally:
            with self._lock:
                self._pending.pop(request_id, None)

    @staticmethod
    def _result(reply: dict[str, Any]) -> dict[str, Any]:
        if reply.get("ok") is True and isinstance(reply.get("result"), dict):
            return dict(reply["result"])
        error = reply.get("error")
        if isinstance(error, dict):
            rid = reply.get("id")
            raise CommandFailed(
                str(error.get("code")), str(error.get("message")), rid if isinstance(rid, str) else None
            )
        raise ClientError(f"malformed reply: {json.dumps(reply)[:200]}")

    # -- subscriptions ---------------------------------------------------------------------------

    def subscribe(
        self,
        topic_filter: str,
        handler: Callable[[mqtt.MQTTMessage], None],
        timeout: float,
        *,
        share: str | None = None,
    ) -> None:
        """Subscribe `handler` (run on paho's thread) to a filter, waiting for the SUBACK.

        With `share` (MQTT 5 only) the subscription is `$share/{share}/{topic_filter}`: the
        broker hands each message to one of the clients subscribed with that group name."""
        wire = self._wire_filter(topic_filter, share)
        with self._subs:
            self._filters.add(wire)
        self._mqtt.message_callback_add(topic_filter, self._guarded(handler))
        self._wait_subscribed([wire], time.monotonic() + timeout)

    def unsubscribe(self, topic_filter: str, *, share: str | None = None) -> None:
        wire = self._wire_filter(topic_filter, share)
        with self._subs:
            self._filters.discard(wire)
        self._mqtt.message_callback_remove(topic_filter)
        if self._connected.is_set():
            self._mqtt.unsubscribe(wire)

    def _wire_filter(self, topic_filter: str, share: str | None) -> str:
        if share is None:
            return topic_filter
        if not self.v5:
            raise ClientError("shared subscriptions need MQTT 5 (this connection runs 3.1.1)")
        if not share or any(c in share for c in "/+#"):
            raise ValueError(f"a share group is a plain name, got {share!r}")
        return f"$share/{share}/{topic_filter}"

    def subscription(
        self, topic_filter: str, handler: Callable[[mqtt.MQTTMessage], None], deadline: float
    ) -> Subscription:
        return Subscription(self, topic_filter, handler, deadline)

    @staticmethod
    def _guarded(
        handler: Callable[[mqtt.MQTTMessage], None],
    ) -> Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]:
        def call(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                handler(msg)
            except Exception:
                log.exception("handler for %s failed", msg.topic)

        return call

    def _wait_subscribed(self, filters: list[str], deadline: float) -> None:
        result, mid = self._mqtt.subscribe([(f, 1) for f in filters])
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectFailed(f"subscribing {filters} failed: {mqtt.error_string(result)}")
        with self._subs:
            while mid not in self._acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NoReply(f"no SUBACK for {filters}")
                self._subs.wait(left)
            codes = self._acks.pop(mid) or []
        refused = [f for f, rc in zip(filters, codes, strict=False) if rc.is_failure]
        if refused:
            raise ConnectFailed(f"the broker refused the subscription to {refused} (ACL?)")

    # -- paho callbacks (paho's thread) ----------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._connect_error = str(reason_code)
            return
        self._connect_error = None
        if self._was_connected:  # a reconnect: the new session has no subscriptions
            with self._subs:
                renew = list(self._filters)
            client.subscribe([(f, 1) for f in renew])
        self._was_connected = True
        self._connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._connected.is_set():
            level = logging.DEBUG if self._closing else logging.WARNING
            log.log(level, "disconnected from %s:%s: %s", self.host, self.port, reason_code)
        elif reason_code.is_failure and self._connect_error is None:  # dropped before the CONNACK
            self._closed_before_connack = True
            self._connect_error = (
                f"connection closed before CONNACK ({reason_code}); a TLS client certificate missing,"
                " or a broker without MQTT 5 (use protocol 3.1.1 or auto)?"
            )
        self._connected.clear()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._subs:
            self._acks[mid] = list(codes)
            self._subs.notify_all()
            if len(self._acks) > 1000:  # acks nobody waits for (resubscriptions after a reconnect)
                for stale in list(self._acks)[:500]:
                    self._acks.pop(stale, None)

    def _on_reply(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            reply = json.loads(msg.payload)
        except ValueError:
            log.warning("unparseable reply on %s: %.80r", msg.topic, msg.payload)
            return
        if not isinstance(reply, dict):
            log.warning("reply on %s is not an object: %.80r", msg.topic, msg.payload)
            return
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties is not None else None
        keys = []
        if isinstance(corr, bytes | bytearray):
            keys.append(bytes(corr).decode("utf-8", "replace"))
        if isinstance(reply.get("id"), str):
            keys.append(reply["id"])
        with self._lock:
            waiter = next((self._pending[k] for k in keys if k in self._pending), None)
            if waiter is None or waiter.done.is_set():
                log.debug("reply nobody waits for: %.120r", msg.payload)
                return
            waiter.reply = reply
            waiter.done.set()


class Subscription:
    """`with` block holding a subscription (SUBACK awaited on entry, unsubscribed on exit)."""

    def __init__(
        self,
        client: Connection,
        topic_filter: str,
        handler: Callable[[mqtt.MQTTMessage], None],
        deadline: float,
    ) -> None:
        self._client, self._filter, self._handler, self._deadline = client, topic_filter, handler, deadline

    def __enter__(self) -> None:
        self._client.ensure_connected(max(0.5, self._deadline - time.monotonic()))
        self._client.subscribe(self._filter, self._handler, max(0.5, self._deadline - time.monotonic()))

    def __exit__(self, *exc: object) -> None:
        self._client.unsubscribe(self._filter)
