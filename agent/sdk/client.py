"""The platform's side of the command protocol, as a small client for integrators and `edge-agent ctl`.

One `PlatformClient` holds one MQTT connection to the broker and talks to one gateway (its topic
root). `request()` sends a command on `{root}/cmd` and waits for the matching reply:

- Replies come back on a reply topic of this client alone, `{root}/reply/{client uuid}`, subscribed
  (SUBACK awaited) before anything is sent. On MQTT 5 the request carries it as Response Topic and
  the request id as Correlation Data; the envelope also always carries it as `reply_to`, so a
  gateway whose own link runs MQTT 3.1.1 (and so never sees the Response Topic) answers as well.
- Replies are matched by Correlation Data, else by the `id` in the reply; replies nobody waits
  for (late ones, after a timeout) are dropped.
- An error reply raises `CommandFailed(code, message)`; no reply in time raises `NoReply`.

Imagery arrives on other topics, which the helpers subscribe to BEFORE sending the command, since
the agent may publish the JPEG (or the first stream frame, or clip chunks) before its reply:
`snapshot()`, `stream()` and `clip_fetch()`.

Threads: paho's network thread (started in `connect`, stopped in `close`) runs the callbacks. The
pending-request map, the subscription bookkeeping and each helper's inbox have their own locks,
so one client may be shared by several threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.clock import iso, parse_iso
from agent.config import TlsConfig
from agent.errors import AgentError
from agent.mqtt.link import disable_nagle

__all__ = [
    "ClientError",
    "CommandFailed",
    "ConnectFailed",
    "LiveStream",
    "NoReply",
    "PlatformClient",
    "StreamFrame",
]

log = logging.getLogger(__name__)


class _QuietClose(logging.Filter):
    """paho 2.2 logs an ERROR 'Client is not connected' when its loop thread runs once more
    after a deliberate disconnect; that is noise for a short-lived client, so it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_paho_log = logging.getLogger("agent.sdk.client.paho")
_paho_log.addFilter(_QuietClose())

DEFAULT_CHUNK_BYTES = 256 * 1024
STREAM_INBOX = 64  # frames buffered for a slow consumer; older ones are dropped and counted
_RENEW_AHEAD_S = 10.0  # renew a long stream this long before the session would expire
_MAX_SESSION_S = 600.0  # the protocol's longest stream session


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


class StreamFrame(NamedTuple):
    """One live frame: `seq` and `ts` from the agent's user properties (on MQTT 3.1.1, which has
    none, `seq` counts frames as they arrive and `ts` is None)."""

    seq: int
    ts: str | None
    jpeg: bytes


@dataclass(slots=True)
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict[str, Any] | None = None


def _user_props(msg: mqtt.MQTTMessage) -> dict[str, str]:
    props = msg.properties
    pairs = getattr(props, "UserProperty", None) if props is not None else None
    return dict(pairs or [])


class PlatformClient:
    """A connection to one gateway's command topic; use as a context manager (connects, closes)."""

    def __init__(
        self,
        host: str,
        port: int,
        root: str,
        *,
        agency: str,
        operator: str,
        incident: str | None = None,
        protocol: Literal["5", "3.1.1"] = "5",
        tls: TlsConfig | None = None,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        keepalive_s: int = 30,
    ) -> None:
        if protocol not in ("5", "3.1.1"):
            raise ValueError(f"protocol must be '5' or '3.1.1', got {protocol!r}")
        if not root or any(c in root for c in "+#\x00") or root.endswith("/"):
            raise ValueError(f"root must be a plain topic like cctv/v1/district/gateway, got {root!r}")
        self.host, self.port, self.root = host, port, root
        self.requester: dict[str, str] = {"agency": agency, "operator": operator}
        if incident is not None:
            self.requester["incident"] = incident
        self.protocol = protocol
        self.v5 = protocol == "5"
        self.client_uuid = uuid.uuid4().hex
        self.reply_topic = f"{root}/reply/{self.client_uuid}"
        self._keepalive = keepalive_s
        self._pending: dict[str, _Pending] = {}  # request id -> waiter; guarded by _lock
        self._lock = threading.Lock()
        # _subs guards the subscription bookkeeping: filters to renew after a reconnect, and the
        # SUBACK/UNSUBACK results by packet id (they can arrive before subscribe() returns a mid).
        self._subs = threading.Condition()
        self._filters: set[str] = set()  # subscribed filters (the reply topic too)
        self._acks: dict[int, list[ReasonCode] | None] = {}
        self._connected = threading.Event()
        self._connect_error: str | None = None
        self._was_connected = False  # connect() subscribes the first time, _on_connect after that
        self._closing = False
        self._started = False

        proto = MQTTProtocolVersion.MQTTv5 if self.v5 else MQTTProtocolVersion.MQTTv311
        self._mqtt = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"platform-{self.client_uuid[:16]}",
            protocol=proto,
            clean_session=None if self.v5 else True,
        )
        self._mqtt.enable_logger(_paho_log)
        if username is not None:
            self._mqtt.username_pw_set(username, password)
        if tls is not None:
            self._mqtt.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
            )
            self._mqtt.tls_insecure_set(tls.insecure)
        self._mqtt.on_socket_open = disable_nagle
        self._mqtt.on_connect = self._on_connect
        self._mqtt.on_disconnect = self._on_disconnect
        self._mqtt.on_subscribe = self._on_subscribe
        self._mqtt.message_callback_add(self.reply_topic, self._on_reply)
        self._filters.add(self.reply_topic)

    # -- connection ------------------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> PlatformClient:
        """Connect, subscribe the reply topic and wait for both; raise ConnectFailed."""
        if self._connected.is_set():
            return self
        try:
            self._mqtt.connect(self.host, self.port, keepalive=self._keepalive)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        if not self._started:
            self._mqtt.loop_start()
            self._started = True
        deadline = time.monotonic() + timeout
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

    def __enter__(self) -> PlatformClient:
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
        """The request object `request()` would send (exposed for tests and tools)."""
        return {
            "id": request_id or str(uuid.uuid4()),
            "cmd": cmd,
            "args": args or {},
            "issued_at": iso(issued_at),
            "ttl_s": ttl_s,
            "requester": dict(self.requester),
            "reply_to": self.reply_topic,
        }

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
            info = self._mqtt.publish(f"{self.root}/cmd", payload, qos=1, properties=props)
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

    # -- commands --------------------------------------------------------------------------------

    def ping(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.request("ping", timeout=timeout)

    def describe(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.request("describe", timeout=timeout)

    def locate(
        self,
        lat: float,
        lon: float,
        radius_m: float | None = None,
        at: str | None = None,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        args: dict[str, Any] = {"lat": float(lat), "lon": float(lon)}
        if radius_m is not None:
            args["radius_m"] = float(radius_m)
        if at is not None:
            args["at"] = at
        return self.request("locate", args, timeout=timeout)

    def config_get(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.request("config.get", timeout=timeout)

    def config_set(self, partial: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        return self.request("config.set", partial, timeout=timeout)

    def clip_export(self, camera: str, start: str, end: str, timeout: float = 60.0) -> dict[str, Any]:
        return self.request("clip.export", {"camera": camera, "start": start, "end": end}, timeout=timeout)

    def clip_hold(
        self, camera: str, start: str, end: str, until: str, timeout: float = 10.0
    ) -> dict[str, Any]:
        args = {"camera": camera, "start": start, "end": end, "until": until}
        return self.request("clip.hold", args, timeout=timeout)

    def snapshot(
        self, camera: str, max_width: int | None = None, at: str | None = None, timeout: float = 5.0
    ) -> tuple[dict[str, Any], bytes]:
        """Ask for a snapshot and return (result, JPEG bytes); the JPEG topic is subscribed first."""
        request_id = str(uuid.uuid4())
        topic = f"{self.root}/cam/{camera}/snapshot/{request_id}"
        got: list[bytes] = []
        arrived = threading.Event()

        def on_jpeg(msg: mqtt.MQTTMessage) -> None:
            if not got:
                got.append(bytes(msg.payload))
                arrived.set()

        args: dict[str, Any] = {"camera": camera}
        if max_width is not None:
            args["max_width"] = max_width
        if at is not None:
            args["at"] = at
        deadline = time.monotonic() + timeout
        with self.subscription(topic, on_jpeg, deadline):
            result = self.request("snapshot", args, timeout=timeout, request_id=request_id)
            if not arrived.wait(max(0.0, deadline - time.monotonic())):
                raise NoReply(f"snapshot {request_id} answered but its JPEG did not arrive on {topic}")
        return result, got[0]

    def stream(
        self,
        camera: str,
        seconds: float,
        fps: float = 5.0,
        max_width: int = 640,
        *,
        quality: int | None = None,
        timeout: float = 5.0,
    ) -> LiveStream:
        """Start a live stream and return it: iterate it for `StreamFrame`s (`seq, ts, jpeg`) until
        `seconds` have passed or the session ended; leaving it (or `close()`) sends stream.stop."""
        return LiveStream(
            self, camera, seconds=seconds, fps=fps, max_width=max_width, quality=quality, timeout=timeout
        )

    def clip_fetch(
        self,
        clip_id: str,
        out_path: str | Path,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Download a clip to `out_path`, checking its SHA-256; return clip.fetch's result.

        Chunks are written where they belong in `out_path.part` as they arrive and remembered in
        `out_path.part.json`; when chunks are missing at `timeout` NoReply is raised and the next
        call with the same clip id and chunk size keeps what was received (the agent sends the
        whole clip again: the protocol has no ranges, but a flaky link only has to deliver each
        chunk once). On MQTT 3.1.1, which carries no `index` user property, chunks are taken in
        arrival order and a partial download is not resumed.
        """
        return _ClipDownload(self, clip_id, Path(out_path), chunk_bytes).run(timeout)

    # -- subscriptions ---------------------------------------------------------------------------

    def subscribe(
        self, topic_filter: str, handler: Callable[[mqtt.MQTTMessage], None], timeout: float
    ) -> None:
        """Subscribe `handler` (run on paho's thread) to a filter, waiting for the SUBACK."""
        with self._subs:
            self._filters.add(topic_filter)
        self._mqtt.message_callback_add(topic_filter, self._guarded(handler))
        self._wait_subscribed([topic_filter], time.monotonic() + timeout)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._subs:
            self._filters.discard(topic_filter)
        self._mqtt.message_callback_remove(topic_filter)
        if self._connected.is_set():
            self._mqtt.unsubscribe(topic_filter)

    def subscription(
        self, topic_filter: str, handler: Callable[[mqtt.MQTTMessage], None], deadline: float
    ) -> _Subscription:
        return _Subscription(self, topic_filter, handler, deadline)

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
            self._connect_error = f"connection closed before CONNACK ({reason_code}); TLS client certificate?"
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


class _Subscription:
    """`with` block holding a subscription (SUBACK awaited on entry, unsubscribed on exit)."""

    def __init__(
        self,
        client: PlatformClient,
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


class LiveStream:
    """One stream session, from stream.start to stream.stop; an iterator of `StreamFrame`s.

    The subscription to `{root}/cam/{camera}/stream/+` is made before stream.start, and frames of
    other sessions are ignored. Frames wait in a bounded inbox (`STREAM_INBOX`); a consumer that
    falls behind loses the oldest, counted in `dropped`. Sessions longer than the protocol's 600 s
    are renewed shortly before they expire.
    """

    def __init__(
        self,
        client: PlatformClient,
        camera: str,
        *,
        seconds: float,
        fps: float,
        max_width: int,
        quality: int | None,
        timeout: float,
    ) -> None:
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"seconds must be a positive number, got {seconds!r}")
        self._client = client
        self._timeout = timeout
        self.dropped = 0
        self.received = 0
        self._inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue(maxsize=STREAM_INBOX)
        self._inbox_lock = threading.Lock()  # serialises drop-oldest-then-put against other puts
        self._filter = f"{client.root}/cam/{camera}/stream/+"
        self._topic: str | None = None  # set once stream.start answered; guarded by _inbox_lock
        self._early: list[mqtt.MQTTMessage] = []  # frames that beat the reply; guarded by _inbox_lock
        self._closed = False
        self._end = time.monotonic() + seconds
        self._count = 0
        client.subscribe(self._filter, self._on_frame, timeout)
        try:
            args: dict[str, Any] = {
                "camera": camera,
                "fps": float(fps),
                "max_width": max_width,
                "duration_s": float(min(_MAX_SESSION_S, math.ceil(seconds))),
            }
            if quality is not None:
                args["quality"] = quality
            self.result = client.request("stream.start", args, timeout=timeout)
        except BaseException:
            client.unsubscribe(self._filter)
            raise
        self.session: str = str(self.result["session"])
        self.expires_at: str = str(self.result["expires_at"])
        self._expires_mono = time.monotonic() + self._seconds_left(self.expires_at)
        with self._inbox_lock:
            self._topic = str(self.result["topic"])
            early, self._early = self._early, []
        for msg in early:
            if msg.topic == self._topic:
                self._put(msg)

    @staticmethod
    def _seconds_left(expires_at: str) -> float:
        return parse_iso(expires_at) - time.time()

    def _on_frame(self, msg: mqtt.MQTTMessage) -> None:
        with self._inbox_lock:
            if self._topic is None:
                if len(self._early) < STREAM_INBOX:
                    self._early.append(msg)
                return
            if msg.topic != self._topic:
                return
        self._put(msg)

    def _put(self, msg: mqtt.MQTTMessage) -> None:
        with self._inbox_lock:
            if self._inbox.full():
                try:
                    self._inbox.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass
            self._inbox.put_nowait(msg)

    def __iter__(self) -> LiveStream:
        return self

    def __next__(self) -> StreamFrame:
        while not self._closed:
            now = time.monotonic()
            if now >= self._end:
                break
            if self._end > self._expires_mono + 1.0 and self._expires_mono - now < _RENEW_AHEAD_S:
                self._renew()
            if now > self._expires_mono + 2.0:  # the session ended on its own; last frames are in
                break
            wait = min(self._end, self._expires_mono + 2.0) - now
            try:
                msg = self._inbox.get(timeout=max(0.01, min(wait, 0.5)))
            except queue.Empty:
                continue
            self.received += 1
            props = _user_props(msg)
            seq = int(props["seq"]) if props.get("seq", "").isdigit() else self._count
            self._count += 1
            return StreamFrame(seq, props.get("ts"), bytes(msg.payload))
        self.close()
        raise StopIteration

    def _renew(self) -> None:
        left = self._end - time.monotonic()
        duration = float(min(_MAX_SESSION_S, math.ceil(left)))
        result = self._client.request(
            "stream.renew", {"session": self.session, "duration_s": duration}, timeout=self._timeout
        )
        self.expires_at = str(result["expires_at"])
        self._expires_mono = time.monotonic() + self._seconds_left(self.expires_at)

    def close(self) -> None:
        """Stop the session (a session that already ended is fine) and unsubscribe."""
        if self._closed:
            return
        self._closed = True
        try:
            self._client.request("stream.stop", {"session": self.session}, timeout=self._timeout)
        except CommandFailed as exc:
            if exc.code != "not_found":  # not_found: it had ended at its expiry
                log.warning("stream.stop %s: %s", self.session, exc)
        except NoReply:
            log.warning(
                "stream.stop %s: no reply; the session ends at %s anyway", self.session, self.expires_at
            )
        finally:
            self._client.unsubscribe(self._filter)

    def __enter__(self) -> LiveStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ClipDownload:
    """State of one clip download; chunks are written to the part file from paho's thread."""

    def __init__(self, client: PlatformClient, clip_id: str, out: Path, chunk_bytes: int) -> None:
        if chunk_bytes < 1024:
            raise ValueError(f"chunk_bytes must be at least 1024, got {chunk_bytes}")
        self._client = client
        self.clip_id = clip_id
        self.out = out
        self.part = out.with_name(out.name + ".part")
        self.state_path = out.with_name(out.name + ".part.json")
        self.chunk_bytes = chunk_bytes
        # _cond guards _have, _count, _file and _arrivals; the paho thread writes chunks under it.
        self._cond = threading.Condition()
        self._have: set[int] = set()
        self._count: int | None = None
        self._arrivals = 0
        self._file: BinaryIO | None = None

    def _load_state(self) -> None:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = None
        resumable = (
            self._client.v5
            and isinstance(state, dict)
            and state.get("clip_id") == self.clip_id
            and state.get("chunk_bytes") == self.chunk_bytes
            and self.part.exists()
        )
        if resumable:
            assert isinstance(state, dict)
            self._have = {int(i) for i in state.get("have", []) if isinstance(i, int)}
            count = state.get("count")
            self._count = count if isinstance(count, int) else None
        else:
            self._have = set()
            self.part.write_bytes(b"")

    def _save_state(self) -> None:
        with self._cond:
            state = {
                "clip_id": self.clip_id,
                "chunk_bytes": self.chunk_bytes,
                "count": self._count,
                "have": sorted(self._have),
            }
        self.state_path.write_text(json.dumps(state), encoding="utf-8")

    def _on_chunk(self, msg: mqtt.MQTTMessage) -> None:
        props = _user_props(msg)
        with self._cond:
            if self._file is None:
                return
            index_text, count_text = props.get("index", ""), props.get("count", "")
            if index_text.isdigit() and count_text.isdigit():
                index, count = int(index_text), int(count_text)
                self._count = count
            else:  # MQTT 3.1.1: no user properties, the broker keeps the agent's order
                index = self._arrivals
            self._arrivals += 1
            if index not in self._have:
                self._file.seek(index * self.chunk_bytes)
                self._file.write(msg.payload)
                self._have.add(index)
            self._cond.notify_all()

    def run(self, timeout: float) -> dict[str, Any]:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._load_state()
        deadline = time.monotonic() + timeout
        topic = f"{self._client.root}/clips/{self.clip_id}"
        with self.part.open("r+b") as f:
            with self._cond:
                self._file = f
            try:
                with self._client.subscription(topic, self._on_chunk, deadline):
                    args = {"clip_id": self.clip_id, "chunk_bytes": self.chunk_bytes}
                    left = max(0.5, deadline - time.monotonic())
                    result = self._client.request("clip.fetch", args, timeout=left)
                    count = int(result["count"])
                    with self._cond:
                        self._count = count
                        while len(self._have & set(range(count))) < count:
                            left = deadline - time.monotonic()
                            if left <= 0:
                                break
                            self._cond.wait(left)
                        missing = count - len(self._have & set(range(count)))
            except NoReply:
                self._detach_and_save()
                raise
            finally:
                with self._cond:
                    self._file = None
        if missing:
            self._detach_and_save()
            raise NoReply(
                f"clip {self.clip_id}: {missing} of {count} chunks did not arrive in time; "
                f"call again to resume ({self.part})"
            )
        return self._finish(result)

    def _detach_and_save(self) -> None:
        with self._cond:
            if self._file is not None:
                self._file.flush()
            self._file = None
        self._save_state()

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        size = int(result["bytes"])
        digest = hashlib.sha256()
        with self.part.open("r+b") as f:
            f.truncate(size)
            while block := f.read(1024 * 1024):
                digest.update(block)
        self.state_path.unlink(missing_ok=True)
        if digest.hexdigest() != result["sha256"]:
            self.part.unlink(missing_ok=True)
            raise ClientError(
                f"clip {self.clip_id}: SHA-256 {digest.hexdigest()} does not match the agent's "
                f"{result['sha256']}; the partial file was deleted"
            )
        self.part.replace(self.out)
        return result
