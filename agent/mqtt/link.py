"""The gateway's MQTT link: one paho client, its Last Will, and a pump that never blocks callers.

Callers (frame threads, command handlers, telemetry) hand messages to `publish`, which only
stores or queues an `OutboxMessage` and returns. QoS 1 messages go through the outbox, which
keeps them until the broker's PUBACK; QoS 0 messages (telemetry, live stream frames) go to a small
bounded in-memory queue whose oldest entries are dropped, and counted, when it is full. One
thread, `mqtt.pump`, owned by this class, moves messages from both queues into paho. Command
replies (`reply`) go to paho directly at QoS 1 without being stored: a reply is only useful to
a platform that is waiting for it now.

A second thread, `mqtt.net`, also owned here, connects: it runs paho's network thread
(`loop_start`) for one connection at a time and, when that ends, waits before the next attempt
as agent.mqtt.reconnect decides (a quick jittered first attempt, then one attempt per window
of `reconnect_spread_s`, doubling up to `reconnect_max_s`, so a fleet returns spread out);
paho never reconnects by itself. Every
successful CONNACK republishes the retained `online` status, then whatever the `on_connect` hooks
add (camera statuses, settings), then resumes the outbox. paho resends an older status that was
in flight when the connection dropped after that copy; its acknowledgement has the current one
sent again, so the broker keeps the newest.

`mqtt.protocol = "auto"` tries MQTT 5 and falls back to 3.1.1 when the broker refuses it
(reconnect.ProtocolChoice). Another client with this client id taking the session is logged at
ERROR and answered with a long wait (reconnect.TakeoverWatch). A connection that fails is logged
at WARNING with a reason an operator can act on, without flooding the journal
(agent.mqtt.connect_failures); the paho client itself is built from the config in
agent.mqtt.paho_client.

What the broker announces in its MQTT 5 CONNACK is honoured: Receive Maximum caps the in-flight
window, a message larger than the Maximum Packet Size is taken out of the outbox with an ERROR
(never sent: the broker would drop the connection for it on every retry), and Retain Available 0
(or a retained Will refused with 0x9A) makes the link publish everything, Will included, without
the retain flag. MQTT 3.1.1 announces none of this: there, a message that the broker answers by
dropping the connection right after it was sent, `POISON_STRIKES` times in a row, is set aside
the same way, so one such message never blocks the queue behind it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
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
from agent.mqtt.connect_failures import (
    UNSUPPORTED_PROTOCOL_VERSION,
    ConnectFailures,
    connack_failure_reason,
    connect_failure_reason,
)
from agent.mqtt.outbox import Kind, Outbox, OutboxMessage
from agent.mqtt.paho_client import disable_nagle, paho_client
from agent.mqtt.reconnect import SESSION_TAKEN_OVER, ProtocolChoice, TakeoverWatch, backoff_of

__all__ = ["LinkStats", "MqttLink", "disable_nagle"]  # disable_nagle: agent.sdk's clients use it too

log = logging.getLogger(__name__)

RETAIN_NOT_SUPPORTED = 0x9A  # CONNACK / DISCONNECT reason code
_BEFORE_CONNACK = -1  # a `_drop` reason: the broker closed a new connection before its CONNACK
# DISCONNECT reasons that blame a packet we sent: the message in flight is the suspect.
_BLAMES_A_MESSAGE = {0x81, 0x82, 0x90, 0x93, 0x95, 0x99, 0x9E}


@dataclass(frozen=True, slots=True)
class _Sent:
    """An outbox message handed to paho, awaiting its PUBACK (what an ERROR about it names)."""

    id: int
    topic: str
    size: int
    kind: Kind
    at: float  # monotonic time it was handed to paho


@dataclass
class LinkStats:
    """Counters for telemetry's `mqtt` section."""

    connects: int = 0
    disconnects: int = 0
    qos0_dropped: int = 0
    protocol: str | None = None  # the MQTT version of the last successful connection
    takeovers: int = 0  # sessions taken by another client with this client id
    too_large: int = 0  # messages refused: larger than the broker's Maximum Packet Size
    set_aside: int = 0  # messages the broker dropped the connection for, again and again (3.1.1)
    retain_available: bool = True  # False once the broker said it keeps no retained messages
    last_takeover_at: float | None = None  # wall clock of the last one


class MqttLink:
    """Owns the paho client and the `mqtt.pump` thread; start() and stop() are its lifecycle."""

    INFLIGHT_WINDOW = 200
    QOS0_QUEUE = 256
    FAILURE_LOG_INTERVAL_S = 60.0  # a failure that lasts is repeated this often, with a count
    STABLE_S = 10.0  # a connection that lasted this long resets the backoff
    IDLE_WAKE_S = 1.0  # the pump and mqtt.net look again at least this often, woken or not
    POISON_S = 10.0  # a drop this soon after a message was sent (or resent) may be its fault
    POISON_STRIKES = 3  # drops in a row with the same message in flight set it aside
    ONLINE_MIDS_KEPT = 32  # online statuses awaiting PUBACK that are remembered (older: forgotten)

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
        self._client_id = client_id
        self._will = (will_topic, will_payload)
        where = f"{cfg.host}:{cfg.port}"
        self._protocol = ProtocolChoice(cfg.protocol, where)
        self._backoff = backoff_of(cfg.reconnect_min_s, cfg.reconnect_spread_s, cfg.reconnect_max_s)
        self._takeover = TakeoverWatch(client_id, where)
        self._rng = random.Random()  # spreading load, not a secret
        # _online_lock orders the retained gateway status: the online message (published by
        # paho's thread on CONNACK, or at once when it changes while connected) and the final
        # offline one (stop()). _online_live: online was sent on this connection.
        self._online_lock = threading.Lock()
        self._online: tuple[str, bytes] | None = None
        self._online_live = False
        # paho mid -> the online payload it carries, under _online_lock. paho resends an older
        # status that was in flight when a connection dropped after the reconnect's current one:
        # when the pump sees an older one acknowledged, it sends the current one again.
        self._online_sent: dict[int, bytes] = {}
        self._stopping = False
        self._connect_hooks: list[Callable[[], None]] = []
        self._message_handlers: dict[str, Callable[[mqtt.MQTTMessage], None]] = {}
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        # _lock guards _qos0 only: callers append, the pump pops.
        self._lock = threading.Lock()
        self._qos0: deque[OutboxMessage] = deque()
        # paho mid -> the outbox message handed to paho and awaiting PUBACK. The pump owns it;
        # the mqtt.net thread reads or resets it between connections, both under `_mids_lock`.
        # paho's thread merely appends acknowledged mids to `_acked` (deque appends are atomic)
        # and never takes a lock of ours: it calls on_publish while holding its own message
        # lock, and the pump holds `_mids_lock` while it calls paho's publish().
        self._mids_lock = threading.Lock()
        self._mids: dict[int, _Sent] = {}
        self._acked: deque[int] = deque()
        self._pump: threading.Thread | None = None
        self._net: threading.Thread | None = None
        # Set by paho's callbacks for the mqtt.net thread: the connection (or attempt) ended;
        # this attempt already failed with a reason; the connection was taken over; it lasted.
        self._lost = threading.Event()
        self._closing = threading.Event()  # stop() has sent DISCONNECT: end paho's loop now
        self._net_wake = threading.Event()  # _lost or _closing was just set: look again
        self._attempt_failed = False
        self._taken_over = False
        self._lasted = 0.0
        self._connected_at = 0.0  # monotonic time of the last CONNACK
        self._drop: tuple[int, bool] | None = None  # (reason, by DISCONNECT packet) of a lost connection
        self._strikes: tuple[int, int] = (0, 0)  # (outbox id, drops in a row) of the suspect message
        self._quick_retry = False  # the last drop was over a message: try again at once
        self._retain_warned = False
        # What the broker's CONNACK announced (MQTT 5): written on paho's thread before
        # `_connected` is set, read by the pump only while it is.
        self._window = self.INFLIGHT_WINDOW  # QoS 1 messages in flight: min(ours, Receive Maximum)
        self._max_packet: int | None = None  # Maximum Packet Size, None when unlimited
        self._retain = True  # the broker keeps retained messages (False: send without the flag)
        self._failures = ConnectFailures(where, self.FAILURE_LOG_INTERVAL_S)
        self._client_kind = (self._protocol.current, self._retain)
        self.client = self._new_client()

    def _new_client(self) -> mqtt.Client:
        client = paho_client(
            self.cfg,
            self._client_id,
            *self._will,
            inflight=self.INFLIGHT_WINDOW,
            protocol=self._protocol.current,
            will_retain=self._retain,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_log = self._on_paho_log
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    @property
    def v5(self) -> bool:
        """Whether the link speaks MQTT 5 (with `auto`, until the broker refuses it)."""
        return self._protocol.current == "5"

    # -- lifecycle -------------------------------------------------------------------------

    def set_online_message(self, topic: str, payload: bytes) -> None:
        """The retained status published first on every (re)connect, and at once when it
        changes on a live connection (straight to paho, in order with the CONNACK's copy and the
        final offline status: never through the outbox, which could send an older one later)."""
        with self._online_lock:
            self._online = (topic, payload)
            if self._online_live and not self._stopping:
                self._send_online(self.client)

    def _send_online(self, client: mqtt.Client) -> None:
        """Publish the online status (under _online_lock) and remember its mid."""
        assert self._online is not None
        topic, payload = self._online
        info = client.publish(topic, payload, qos=1, retain=self._retain)
        if len(self._online_sent) >= self.ONLINE_MIDS_KEPT:  # acks lost with a connection
            self._online_sent.pop(next(iter(self._online_sent)))
        self._online_sent[info.mid] = payload

    def _online_acked(self, mids: list[int]) -> None:
        """Acknowledged mids that were no outbox message's (on the pump's thread): if one carried
        an older online status, the broker now keeps that one, so send the current one again."""
        with self._online_lock:
            acked = [p for p in (self._online_sent.pop(mid, None) for mid in mids) if p is not None]
            current = self._online
            if current is None or all(payload == current[1] for payload in acked):
                return
            if self._online_live and not self._stopping:
                log.debug("an older gateway status was acknowledged last: sending the current one again")
                self._send_online(self.client)

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
        self._net = threading.Thread(target=self._net_loop, name="mqtt.net", daemon=True)
        self._net.start()
        self._pump = threading.Thread(target=self._pump_loop, name="mqtt.pump", daemon=True)
        self._pump.start()

    def alive(self) -> bool:
        """Whether the pump and the connecting thread run (paho's own thread comes and goes)."""
        threads = (self._pump, self._net)
        return all(t is not None and t.is_alive() for t in threads)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def telemetry(self) -> dict[str, Any]:
        """The telemetry's `mqtt` section (docs/protocol.md), for the agent and the simulator alike."""
        stats = self.stats
        return {
            "connected": self.connected,
            "connects": stats.connects,
            "disconnects": stats.disconnects,
            "qos0_dropped": stats.qos0_dropped,
            "protocol": stats.protocol,
            "takeovers": stats.takeovers,
            "too_large": stats.too_large,
            "set_aside": stats.set_aside,
            "retain_available": stats.retain_available,
        }

    @property
    def max_packet_size(self) -> int | None:
        """The Maximum Packet Size the broker announced in its last CONNACK (MQTT 5), None when
        it announced none (always under MQTT 3.1.1). See `max_payload` for a payload's share."""
        return self._max_packet

    def stop(self, final: tuple[str, bytes] | None = None, timeout: float = 2.0) -> None:
        """Drain briefly, publish `final` (the retained offline status) and disconnect cleanly.

        The pump is joined before this returns, so the owner closes the outbox afterwards: stop
        the publishers (cameras, commands, telemetry), then `link.stop()`, then `outbox.close()`.
        Whatever was not acknowledged stays in the outbox for the next start.
        """
        deadline = time.monotonic() + timeout
        while self._connected.is_set() and time.monotonic() < deadline:
            with self._lock:
                busy = bool(self._qos0) or bool(self._mids) or bool(self._acked)  # a glance: no _mids_lock
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
        with self._online_lock:  # no online status after this; CONNACKed but not yet hooked counts
            self._stopping = True
            info = None
            if final is not None and self.client.is_connected():
                info = self.client.publish(final[0], final[1], qos=1, retain=self._retain)
        if info is not None:  # waited for outside the lock, which paho's thread may need
            try:
                info.wait_for_publish(timeout=max(0.2, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                log.warning("could not publish the final status before disconnecting")
        self.client.disconnect()
        self._closing.set()
        self._net_wake.set()
        if self._net is not None:
            self._net.join(timeout=max(1.0, deadline + 2.0 - time.monotonic()))
            if self._net.is_alive():
                log.warning("mqtt connecting thread did not stop within its deadline")
        # paho keeps its socket pair open until garbage collection (a ResourceWarning then).
        self.client._reset_sockets()

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
            self._wake.wait(self.IDLE_WAKE_S)  # every change sets _wake: this is only a safety net
            self._wake.clear()
            if not self._connected.is_set():
                continue
            try:
                self._pump_once()
            except Exception:
                log.exception("mqtt pump failed; retrying")
                time.sleep(0.5)

    def _pump_once(self) -> None:
        others = []  # acknowledged mids of messages sent straight to paho (online statuses)
        with self._mids_lock:
            while self._acked:
                mid = self._acked.popleft()
                sent = self._mids.pop(mid, None)
                if sent is not None:
                    self.outbox.ack(sent.id)
                else:
                    others.append(mid)
        if others:
            self._online_acked(others)
        while True:
            with self._lock:
                msg = self._qos0.popleft() if self._qos0 else None
            if msg is None:
                break
            retain, props = msg.retain and self._retain, self._props(msg.properties)
            self.client.publish(msg.topic, msg.payload, qos=0, retain=retain, properties=props)
        with self._mids_lock:  # the mqtt.net thread may reset the in-flight set between connections
            room = self._window - len(self._mids)
            if room <= 0 or not self._connected.is_set():
                return
            batch = self.outbox.next_batch(room)
            if not batch:
                return
            self.outbox.mark_inflight([m.id for m in batch])
            for m in batch:
                if self._too_large(m):
                    self.outbox.ack(m.id)  # never deliverable: refused (logged), not retried forever
                    continue
                # paho keeps a QoS 1 message it accepted and resends it after a reconnect under
                # the same mid, even if the link dropped just now; so every accepted mid is tracked.
                retain = m.retain and self._retain
                info = self.client.publish(
                    m.topic, m.payload, qos=1, retain=retain, properties=self._props(m.properties)
                )
                self._mids[info.mid] = _Sent(m.id, m.topic, len(m.payload), m.kind, time.monotonic())
        if len(batch) == room:
            self._wake.set()

    # -- connecting (the mqtt.net thread) ---------------------------------------------------

    def _net_loop(self) -> None:
        """Attempt, run the connection until it ends, wait with jitter; until stop()."""
        wait = 0.0
        while not self._stop.wait(wait):
            try:
                self._attempt()
            except Exception:
                log.exception("mqtt connection attempt failed unexpectedly; retrying")
            wait = self._next_wait()

    def _attempt(self) -> None:
        if self._client_kind != (self._protocol.current, self._retain):  # auto: the other version
            self._fresh_client()  # next; or the broker refused our retained Will
        client = self.client
        self._lost.clear()
        self._attempt_failed = self._taken_over = False
        self._lasted = 0.0
        try:
            client.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError, CertificateError a ValueError
            self._connect_failed(connect_failure_reason(exc, self.cfg.host))
            return
        if self._stop.is_set():  # stop() came during the attempt: leave without the Will
            client.disconnect()
            return
        client.loop_start()
        while not self._lost.is_set():  # no polling: a fleet of links in one process stays idle
            if self._closing.is_set():
                if not self._lost.wait(0.5):
                    self._abort(client)  # DISCONNECT could not be sent: end paho's loop anyway
                break
            self._net_wake.wait(self.IDLE_WAKE_S)
            self._net_wake.clear()  # both events are set before _net_wake: none is missed
        client.loop_stop()
        self._connection_ended()

    def _fresh_client(self) -> None:
        """A new paho client for the next attempt (paho cannot change its protocol or Will, nor
        forget a message it was handed). What the old one had in flight is unsent again."""
        with self._mids_lock:
            self._mids.clear()
            self._acked.clear()
            self.outbox.requeue_inflight()
            self.client._reset_sockets()
            self.client = self._new_client()
            self._client_kind = (self._protocol.current, self._retain)
        with self._online_lock:
            self._online_sent.clear()  # the new client resends nothing of the old one's

    def _connection_ended(self) -> None:
        """After paho's thread ended a connection the broker (or the network) took: was it a
        takeover, the broker refusing retained messages, or a message it will never accept?"""
        drop, self._drop = self._drop, None
        if drop is None:
            return
        reason, by_packet = drop
        early = reason == _BEFORE_CONNACK
        if by_packet and reason == RETAIN_NOT_SUPPORTED:
            self._takeover.dropped_for_a_message()
            self._retain_refused("it disconnected the gateway for a retained message (reason 0x9A)")
            self._quick_retry = True
            return
        if by_packet and reason == SESSION_TAKEN_OVER:
            suspect = None
        elif not by_packet or reason in _BLAMES_A_MESSAGE:
            suspect = self._suspect(early=early)
        else:
            suspect = None
        if early and (suspect is None or self._strikes[0] != suspect.id):
            return  # only continues a streak a dropped connection began: a broker starting up
        if suspect is None:
            self._strikes = (0, 0)
            if self._takeover.disconnected(reason, by_packet=by_packet):
                self._taken_over = True
                self.stats.takeovers = self._takeover.takeovers
                self.stats.last_takeover_at = self._takeover.last_at
            return
        self._takeover.dropped_for_a_message()
        strikes = self._strikes[1] + 1 if self._strikes[0] == suspect.id else 1
        self._strikes = (suspect.id, strikes)
        self._quick_retry = True
        if strikes < self.POISON_STRIKES:
            return
        self._strikes = (0, 0)
        self.outbox.ack(suspect.id)  # out of the queue for good, before paho could resend it
        self._fresh_client()
        self.stats.set_aside += 1
        log.error(
            "setting aside a %s message of %d bytes on %s: the broker dropped the connection right"
            " after it was sent, %d times in a row%s. It is probably larger than the broker accepts"
            " (its max_packet_size / message size limit) or refused by its ACL; the rest of the"
            " queue continues without it",
            suspect.kind, suspect.size, suspect.topic, strikes,
            "" if by_packet else " (MQTT 3.1.1 brokers announce no Maximum Packet Size)",
        )  # fmt: skip

    def _suspect(self, *, early: bool) -> _Sent | None:
        """The largest message but no event (the oldest of equals) still awaiting its PUBACK when the
        connection dropped, if it was sent (or resent, at the CONNACK, or `early`: right after
        CONNECT) within `POISON_S` of the drop. Not simply the oldest: a broker that closes on
        reading a packet does not flush the PUBACKs it owed for the ones before it (measured on
        Mosquitto), and size is what brokers refuse by closing."""
        now = time.monotonic()
        with self._mids_lock:
            acked = set(self._acked)
            # Never an event: an event is a few kB, no broker refuses that by size, and a link
            # that keeps dropping (a flaky uplink, not a poison message) must not lose one.
            pending = [s for mid, s in self._mids.items() if mid not in acked and s.kind != "event"]
        if not pending:
            return None
        largest = min(pending, key=lambda s: (-s.size, s.id))
        recent = early or now - max(largest.at, self._connected_at) <= self.POISON_S
        return largest if recent else None

    def _retain_refused(self, how: str) -> None:
        """From now on publish without the retain flag (and a Will without it), saying so once."""
        self._retain = False
        self.stats.retain_available = False
        if self._retain_warned:
            return
        self._retain_warned = True
        log.warning(
            "the broker at %s:%s does not keep retained messages (%s): the gateway's status,"
            " camera status, config/reported and snapshots are published without the retain flag"
            " from now on, and its Last Will too. A platform subscribing later will not receive"
            " them: it must learn the fleet by asking each gateway `describe`",
            self.cfg.host, self.cfg.port, how,
        )  # fmt: skip

    @staticmethod
    def _abort(client: mqtt.Client) -> None:
        sock = client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _next_wait(self) -> float:
        """After a takeover a long wait; after a drop over one of our messages a short one (the
        broker is fine, and the message is set aside after a few); else the backoff's, reset by
        a connection that lasted."""
        if self._taken_over:
            return self._rng.uniform(0.5, 1.0) * self.cfg.takeover_backoff_s
        if self._quick_retry:
            self._quick_retry = False
            return self._rng.uniform(0.0, self.cfg.reconnect_min_s)
        if self._lasted >= self.STABLE_S:
            self._backoff.reset()
        return self._backoff.next_wait()

    def max_payload(self, topic: str, properties: dict[str, str] | None = None) -> int | None:
        """The largest payload the broker accepts on `topic` (its Maximum Packet Size minus the
        PUBLISH's other bytes), None when it announced no limit: what a sender of large
        messages (clip chunks, snapshots) sizes them by."""
        if self._max_packet is None:
            return None
        return self._max_packet - _publish_overhead(topic, properties)

    def _too_large(self, m: OutboxMessage) -> bool:
        limit = self.max_payload(m.topic, m.properties)
        if limit is None or len(m.payload) <= limit:
            return False
        self.stats.too_large += 1
        log.error(
            "not sending a %s message of %d bytes on %s: the broker accepts at most %d bytes of"
            " payload there (its Maximum Packet Size is %d); it would drop the connection for it",
            m.kind, len(m.payload), m.topic, limit, self._max_packet,
        )  # fmt: skip
        return True

    def _take_limits(self, properties: Properties | None) -> None:
        """Honour what an MQTT 5 CONNACK announced: Receive Maximum caps the in-flight window
        (a broker may disconnect a client exceeding it), Maximum Packet Size the messages,
        Retain Available 0 the retain flag (a broker disconnects a retained publish: 0x9A)."""
        if self.v5 and getattr(properties, "RetainAvailable", 1) == 0:
            self._retain_refused("its CONNACK says Retain Available 0")
        receive_max = getattr(properties, "ReceiveMaximum", None) if self.v5 else None
        window = min(self.INFLIGHT_WINDOW, int(receive_max)) if receive_max else self.INFLIGHT_WINDOW
        max_packet = getattr(properties, "MaximumPacketSize", None) if self.v5 else None
        self._max_packet = int(max_packet) if max_packet else None
        if window != self._window:
            log.info("the broker allows %d messages in flight: the link keeps at most that many", window)
        self._window = window  # paho keeps its own larger limit: it may not change while connected

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
            self._attempt_failed = True
            if reason_code.value == RETAIN_NOT_SUPPORTED and self._retain:
                self._retain_refused("its CONNACK refused our retained Last Will with 0x9A")
                self._takeover.attempt_failed()
                self._quick_retry = True
                return  # the next attempt, with a Will not retained, is expected to succeed
            if reason_code.value == UNSUPPORTED_PROTOCOL_VERSION:
                self._protocol.refused()
            self._connect_failed(connack_failure_reason(reason_code.value, str(reason_code)))
            return
        self._protocol.accepted()
        self._take_limits(properties)
        self._failures.connected()
        self._takeover.connected()
        self._connected_at = time.monotonic()
        self.stats.connects += 1
        self.stats.protocol = self._protocol.current
        log.info("connected to %s:%s (MQTT %s)", self.cfg.host, self.cfg.port, self._protocol.current)
        with self._online_lock:
            if self._stopping:
                return  # stop() has published the final status (or will disconnect at once)
            if self._online is not None:
                self._send_online(client)
            self._online_live = True
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
        was_connected = self._connected.is_set()
        self._connected.clear()
        with self._online_lock:
            self._online_live = False
        self._lasted = self._takeover.lasted()
        if was_connected:
            self.stats.disconnects += 1
            level = logging.INFO if self._stop.is_set() else logging.WARNING
            by_packet = flags.is_disconnect_packet_from_server
            if by_packet or self._stop.is_set():
                log.log(level, "disconnected from broker: %s", reason_code)
            else:
                log.log(level, "connection to the broker lost (%s)", reason_code)
            if not self._stop.is_set():  # judged on mqtt.net once paho's loop has ended
                self._drop = (reason_code.value, by_packet)
            self._failures.dropped(before_connack=False)
        elif self._stop.is_set() or self._attempt_failed:
            self._failures.dropped(before_connack=False)
        else:
            # Dropped before CONNACK: a TLS alert from the broker (paho says so only in its log),
            # or a broker that does not speak this version closing after CONNECT (RabbitMQ 3.10).
            # With `auto` the first MQTT 5 refusal is only INFO: the fallback's WARNING follows.
            tls, was = self._failures.paho_error is not None, self._protocol.current
            if not tls and self._protocol.refused() and was == "5":
                self._failures.dropped(before_connack=False)
                log.info("the broker closed the connection after an MQTT 5 CONNECT: trying MQTT 3.1.1")
            else:
                self._failures.dropped(before_connack=True)
                if not tls:  # paho resends what is in flight right after CONNECT: ours to judge
                    self._drop = (_BEFORE_CONNACK, False)
            self._takeover.attempt_failed()
        self._lost.set()
        self._net_wake.set()

    def _on_paho_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        self._failures.paho_log(level, buf)

    def _connect_failed(self, reason: str) -> None:
        """A failed attempt, reported unless the link is stopping (paho may still be retrying)."""
        self._takeover.attempt_failed()
        self._strikes = (0, 0)  # the broker, not a message, is the trouble
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


def _publish_overhead(topic: str, properties: dict[str, str] | None) -> int:
    """Bytes of a QoS 1 PUBLISH besides its payload, at most: fixed header (5), topic, packet
    id, and MQTT 5 properties (length, user properties, room for correlation data)."""
    props = sum(5 + len(k.encode()) + len(v.encode()) for k, v in (properties or {}).items())
    return 5 + 2 + len(topic.encode()) + 2 + 4 + props + 64
