"""The command queue and its workers: requests from `{root}/cmd` in, replies out.

paho's network thread hands every request to `submit`, which never blocks it: the request is
queued, or answered `busy` at once when its queue is full. There is one queue per rate-limit
account (`Dispatcher.account_of`: an agency the config names, `*` for the others, `?` for
requests whose agency cannot be read), each at most `queue_size` deep, and workers take from
them in turn: an agency flooding the gateway fills only its own queue, and another agency's
request waits behind at most one request of each other account. `workers`
threads (`commands.0`, `commands.1`, …) take requests off the queue, run them through the
`Dispatcher` and send its reply with `reply(topic, payload, correlation)`. Several workers let a
slow command (a clip export) run while pings are still answered.

Each request reaches the dispatcher with what only the MQTT message carries: its Response Topic
and Correlation Data, its retain flag (a retained command is refused: it would come back on every
reconnect) and its MQTT 5 user properties (for the signature verifier). `busy` and `internal`
answers go only where the dispatcher's reply rule (`Dispatcher.reply_topics`) allows.

A worker survives anything one request can do: an exception from the dispatcher or from `reply`
(e.g. paho refusing a topic) is logged and answered `internal` where the request has a usable
reply address, and the worker takes the next request. A worker that dies anyway is listed by
`dead_threads` so the runtime's watchdog can have the agent restarted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import paho.mqtt.client as mqtt

from agent.commands.dispatcher import Dispatcher
from agent.commands.replies import reply_address, reply_error, response_properties, user_properties

log = logging.getLogger(__name__)

Reply = Callable[[str, bytes, bytes | None], None]
"""Publish a reply: (topic, payload, MQTT 5 Correlation Data to echo or None), QoS 1."""

_POLL_S = 0.2  # how long a worker waits for a request before it looks at the stop flag again


class _FairQueue:
    """Bounded FIFOs per key, taken from round-robin; thread-safe, `put` never blocks."""

    def __init__(self, per_key: int) -> None:
        self._per_key = per_key
        self._cond = threading.Condition()  # guards _queues and _turns
        self._queues: dict[str, deque[mqtt.MQTTMessage]] = {}
        self._turns: deque[str] = deque()  # keys with queued items, next to serve first

    def put(self, key: str, item: mqtt.MQTTMessage) -> bool:
        """Queue `item` under `key`; False when that key's queue is full."""
        with self._cond:
            q = self._queues.setdefault(key, deque())
            if len(q) >= self._per_key:
                return False
            q.append(item)
            if len(q) == 1:
                self._turns.append(key)
            self._cond.notify()
            return True

    def get(self, timeout: float) -> mqtt.MQTTMessage | None:
        """The oldest item of the key whose turn it is; None after `timeout` without one."""
        with self._cond:
            if not self._turns and not self._cond.wait(timeout):
                return None
            if not self._turns:
                return None
            key = self._turns.popleft()
            q = self._queues[key]
            item = q.popleft()
            if q:
                self._turns.append(key)
            else:
                del self._queues[key]
            return item


class CommandServer:
    """Owns the command queue and its worker threads; `start()` once, `stop()` at shutdown."""

    def __init__(
        self, dispatcher: Dispatcher, reply: Reply, *, workers: int = 2, queue_size: int = 256
    ) -> None:
        if workers < 1 or queue_size < 1:
            raise ValueError("workers and queue_size must be at least 1")
        self._dispatcher = dispatcher
        self._reply = reply
        self._workers = workers
        self._queue = _FairQueue(queue_size)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards _threads (start/stop/dead_threads from any thread)
        self._threads: list[threading.Thread] = []

    # -- paho's thread -----------------------------------------------------------------------

    def submit(self, message: mqtt.MQTTMessage) -> None:
        """Queue a request for a worker, or answer it `busy` when the queue is full; never blocks."""
        if not self._queue.put(self._dispatcher.account_of(bytes(message.payload)), message):
            self._busy(message)

    def _busy(self, message: mqtt.MQTTMessage) -> None:
        try:
            topic, corr = reply_address(message, bytes(message.payload), self._dispatcher.reply_topics)
            if topic is not None:
                self._reply(topic, reply_error(None, "busy", "command queue full; retry"), corr)
        except Exception:
            log.exception("command queue full, and answering busy failed")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._threads:
                return
            self._stop.clear()
            self._threads = [
                threading.Thread(target=self._work, name=f"commands.{i}", daemon=True)
                for i in range(self._workers)
            ]
            for t in self._threads:
                t.start()

    def stop(self, timeout: float) -> None:
        """Stop the workers after the request each is handling; queued requests are dropped."""
        self._stop.set()
        with self._lock:
            threads, self._threads = self._threads, []
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            log.error("command workers still busy after %.1f s: %s", timeout, ", ".join(stuck))

    def dead_threads(self) -> list[str]:
        """Names of started workers that are no longer running (none before start, after stop)."""
        with self._lock:
            return [t.name for t in self._threads if not t.is_alive()]

    # -- workers -----------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            message = self._queue.get(_POLL_S)
            if message is None:
                continue
            try:
                self._handle(message)
            except Exception:
                self._internal(message)

    def _handle(self, message: mqtt.MQTTMessage) -> None:
        response_topic, corr = response_properties(message)
        out = self._dispatcher.handle(
            bytes(message.payload),
            response_topic,
            corr,
            retained=bool(message.retain),
            user_properties=user_properties(message),
        )
        if out is not None:
            self._reply(*out)

    def _internal(self, message: mqtt.MQTTMessage) -> None:
        """Log what failed while handling `message` and answer `internal` where that is possible."""
        topic: str | None = None
        try:
            topic, corr = reply_address(message, bytes(message.payload), self._dispatcher.reply_topics)
            log.exception("command worker: handling a request failed (reply topic %.200r)", topic)
            if topic is not None:
                self._reply(topic, reply_error(None, "internal", "internal error"), corr)
        except Exception:
            log.exception("command worker: answering internal to %.200r failed too", topic)
