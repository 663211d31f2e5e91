"""The gateway's MQTT link: one paho client, its Last Will, and a pump that never blocks callers.

Callers (frame threads, command handlers, telemetry) hand messages to `publish`, which only
stores or queues an `OutboxMessage` and returns. QoS 1 messages go through the outbox, which
keeps them until the broker's PUBACK; QoS 0 messages (telemetry, live stream frames) go to a small
bounded in-memory queue whose oldest entries are dropped, and counted, when it is full. One
thread, `mqtt.pump`, owned by this class, moves messages from both queues into paho. Command
replies (`reply`) go to paho directly at QoS 1 without being stored: a reply is only useful to
a platform that is waiting for it now.

paho's own network thread (`loop_start`) reconnects with capped exponential backoff; every
successful CONNACK republishes the retained `online` status, then whatever the `on_connect`
hooks add (camera statuses, settings), then resumes the outbox.

A connection that fails is logged at WARNING with a reason an operator can act on, without
flooding the journal (agent.mqtt.connect_failures); the paho client itself is built from the
config in agent.mqtt.paho_client.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.config import MqttConfig
from agent.mqtt.connect_failures import ConnectFailures, connect_failure_reason
from agent.mqtt.outbox import Kind, Outbox, OutboxMessage
from agent.mqtt.paho_client import disable_nagle, paho_client

__all__ = ["LinkStats", "MqttLink", "disable_nagle"]  # disable_nagle: agent.sdk's clients use it too

log = logging.getLogger(__name__)


@dataclass
class LinkStats:
    """Counters for telemetry's `mqtt` section."""

    connects: int = 0
    disconnects: int = 0
    qos0_dropped: int = 0


class MqttLink:
    """Owns the paho client and the `mqtt.pump` thread; start() and stop() are its lifecycle."""

    INFLIGHT_WINDOW = 200
    QOS0_QUEUE = 256
    FAILURE_LOG_INTERVAL_S = 300.0  # a failure that lasts is repeated this often, with a count

    def __init__(
        self,
        cfg: MqttConfig,
        client_id: str,
        outbox: Outbox,
        will_topic: str,
        will_payload: bytes,
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.stats = LinkStats()
        self.v5 = cfg.protocol == "5"
        self._online: tuple[str, bytes] | None = None
        self._connect_hooks: list[Callable[[], None]] = []
        self._message_handlers: dict[str, Callable[[mqtt.MQTTMessage], None]] = {}
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        # _lock guards _qos0 only: callers append, the pump pops.
        self._lock = threading.Lock()
        self._qos0: deque[OutboxMessage] = deque()
        # paho mid -> outbox id for messages handed to paho and awaiting PUBACK. Only the pump
        # touches it: paho's thread merely appends acknowledged mids to `_acked` (deque appends
        # are atomic), because paho calls on_publish while holding its own message lock, and
        # taking a lock of ours there could deadlock against the pump's publish().
        self._mids: dict[int, int] = {}
        self._acked: deque[int] = deque()
        self._pump: threading.Thread | None = None
        self._failures = ConnectFailures(f"{cfg.host}:{cfg.port}", self.FAILURE_LOG_INTERVAL_S)
        self.client = paho_client(cfg, client_id, will_topic, will_payload, inflight=self.INFLIGHT_WINDOW)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_log = self._on_paho_log
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    # -- lifecycle -------------------------------------------------------------------------

    def set_online_message(self, topic: str, payload: bytes) -> None:
        """The retained status published first on every (re)connect."""
        self._online = (topic, payload)

    def on_connect(self, hook: Callable[[], None]) -> None:
        """Run `hook` (from paho's thread) after each successful CONNACK."""
        self._connect_hooks.append(hook)

    def subscribe(self, topic: str, handler: Callable[[mqtt.MQTTMessage], None]) -> None:
        """Subscribe at QoS 1 now and after every reconnect; `handler` runs on paho's thread."""
        self._message_handlers[topic] = handler
        if self._connected.is_set():
            self._subscribe(self.client, topic)

    def _subscribe(self, client: mqtt.Client, topic: str) -> None:
        """QoS 1; on MQTT 5 with Retain As Published, so a handler can tell a message someone
        published retained (a retained command is refused, never run) from a live one."""
        if self.v5:
            client.subscribe(topic, options=SubscribeOptions(qos=1, retainAsPublished=True))
        else:
            client.subscribe(topic, qos=1)

    def start(self) -> None:
        """Connect in the background and start the pump; `publish` works before and after."""
        # A new client session resends nothing an earlier one was handed: that is unsent again.
        self.outbox.requeue_inflight()
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()
        self._pump = threading.Thread(target=self._pump_loop, name="mqtt.pump", daemon=True)
        self._pump.start()

    def alive(self) -> bool:
        """Whether the pump thread runs; paho's network thread restarts itself on errors."""
        return self._pump is not None and self._pump.is_alive()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self, final: tuple[str, bytes] | None = None, timeout: float = 2.0) -> None:
        """Drain briefly, publish `final` (the retained offline status) and disconnect cleanly.

        The pump is joined before this returns, so the owner closes the outbox afterwards: stop
        the publishers (cameras, commands, telemetry), then `link.stop()`, then `outbox.close()`.
        Whatever was not acknowledged stays in the outbox for the next start.
        """
        deadline = time.monotonic() + timeout
        while self._connected.is_set() and time.monotonic() < deadline:
            with self._lock:
                busy = bool(self._qos0) or bool(self._mids) or bool(self._acked)
            if not busy and not self.outbox.next_batch(1):
                break
            self._wake.set()
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        if self._pump is not None:
            self._pump.join(timeout=max(1.0, deadline - time.monotonic()))
            if self._pump.is_alive():
                log.warning("mqtt pump did not stop within its deadline")
        if final is not None and self._connected.is_set():
            info = self.client.publish(final[0], final[1], qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=max(0.2, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                log.warning("could not publish the final status before disconnecting")
        self.client.disconnect()
        self.client.loop_stop()

    # -- publishing ------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        kind: Kind,
        qos: int = 1,
        retain: bool = False,
        camera: str | None = None,
        properties: dict[str, str] | None = None,
    ) -> None:
        """Queue a message; never blocks on the network. QoS 1 (or 2, sent as 1) is stored in the
        outbox until acknowledged; QoS 0 waits in a bounded queue that drops its oldest when full.

        A bad topic, kind or payload raises ValueError/TypeError here, in the caller's thread;
        OutboxError means the outbox failed or is already closed.
        """
        message = OutboxMessage(
            topic,
            payload,
            kind=kind,
            qos=min(qos, 1),
            retain=retain,
            camera=camera,
            properties=dict(properties) if properties else {},  # the caller may reuse its dict
        )
        if message.qos == 1:
            self.outbox.put(message)
        else:
            with self._lock:
                if len(self._qos0) >= self.QOS0_QUEUE:
                    self._qos0.popleft()
                    self.stats.qos0_dropped += 1
                self._qos0.append(message)
        self._wake.set()

    def _props(self, user: dict[str, str] | None, correlation: bytes | None = None) -> Properties | None:
        if not self.v5 or (not user and correlation is None):
            return None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if user:
            props.UserProperty = list(user.items())
        if correlation is not None:
            props.CorrelationData = correlation
        return props

    def reply(self, topic: str, payload: bytes, correlation: bytes | None) -> None:
        """Publish a command reply at QoS 1, not retained, echoing MQTT 5 Correlation Data when
        given. Not stored: while offline it is dropped (the platform repeats the request id)."""
        if self._connected.is_set():
            self.client.publish(topic, payload, qos=1, properties=self._props(None, correlation))

    def _pump_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.1)
            self._wake.clear()
            if not self._connected.is_set():
                continue
            try:
                self._pump_once()
            except Exception:
                log.exception("mqtt pump failed; retrying")
                time.sleep(0.5)

    def _pump_once(self) -> None:
        while self._acked:
            outbox_id = self._mids.pop(self._acked.popleft(), None)
            if outbox_id is not None:
                self.outbox.ack(outbox_id)
        while True:
            with self._lock:
                msg = self._qos0.popleft() if self._qos0 else None
            if msg is None:
                break
            self.client.publish(
                msg.topic, msg.payload, qos=0, retain=msg.retain, properties=self._props(msg.properties)
            )
        room = self.INFLIGHT_WINDOW - len(self._mids)
        if room <= 0:
            return
        batch = self.outbox.next_batch(room)
        if not batch:
            return
        self.outbox.mark_inflight([m.id for m in batch])
        for m in batch:
            # paho keeps a QoS 1 message it accepted and resends it after a reconnect under
            # the same mid, even if the link dropped just now; so every accepted mid is tracked.
            info = self.client.publish(
                m.topic, m.payload, qos=1, retain=m.retain, properties=self._props(m.properties)
            )
            self._mids[info.mid] = m.id
        if len(batch) == room:
            self._wake.set()

    # -- paho callbacks (paho's network thread) ----------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._connect_failed(f"the broker refused the connection: {reason_code}")
            return
        self._failures.connected()
        self.stats.connects += 1
        log.info("connected to %s:%s", self.cfg.host, self.cfg.port)
        if self._online is not None:
            client.publish(self._online[0], self._online[1], qos=1, retain=True)
        for topic in self._message_handlers:
            self._subscribe(client, topic)
        for hook in self._connect_hooks:
            try:
                hook()
            except Exception:
                log.exception("on-connect hook failed")
        self._connected.set()
        self._wake.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._connected.is_set():
            self.stats.disconnects += 1
            level = logging.INFO if self._stop.is_set() else logging.WARNING
            log.log(level, "disconnected from broker: %s", reason_code)
        # Dropped before CONNACK, a TLS alert from the broker is why (paho says so only in its log).
        self._failures.dropped(before_connack=not self._connected.is_set() and not self._stop.is_set())
        self._connected.clear()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError` around connecting, so the error is current.
        self._connect_failed(connect_failure_reason(sys.exc_info()[1], self.cfg.host))

    def _on_paho_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        self._failures.paho_log(level, buf)

    def _connect_failed(self, reason: str) -> None:
        """A failed attempt, reported unless the link is stopping (paho may still be retrying)."""
        if not self._stop.is_set():
            self._failures.failed(reason)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._acked.append(mid)
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        handler = self._message_handlers.get(message.topic)
        if handler is None:
            return
        try:
            handler(message)
        except Exception:
            log.exception("handler for %s failed", message.topic)
