"""The command queue and its workers: requests from `{root}/cmd` in, replies out.

paho's network thread hands every request to `submit`, which never blocks it: the request is
queued (at most `queue_size`), or answered `busy` at once when the queue is full. `workers`
threads (`commands.0`, `commands.1`, …) take requests off the queue, run them through the
`Dispatcher` and send its reply with `reply(topic, payload, correlation)`. Several workers let a
slow command (a clip export) run while pings are still answered.

A worker survives anything one request can do: an exception from the dispatcher or from `reply`
(e.g. paho refusing a topic) is logged and answered `internal` where the request has a usable
reply address, and the worker takes the next request. A worker that dies anyway is listed by
`dead_threads` so the runtime's watchdog can have the agent restarted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt

from agent.commands.dispatcher import Dispatcher
from agent.commands.replies import reply_address, reply_error, response_properties

log = logging.getLogger(__name__)

Reply = Callable[[str, bytes, bytes | None], None]
"""Publish a reply: (topic, payload, MQTT 5 Correlation Data to echo or None), QoS 1."""

_POLL_S = 0.2  # how long a worker waits for a request before it looks at the stop flag again


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
        self._queue: queue.Queue[mqtt.MQTTMessage] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards _threads (start/stop/dead_threads from any thread)
        self._threads: list[threading.Thread] = []

    # -- paho's thread -----------------------------------------------------------------------

    def submit(self, message: mqtt.MQTTMessage) -> None:
        """Queue a request for a worker, or answer it `busy` when the queue is full; never blocks."""
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self._busy(message)

    def _busy(self, message: mqtt.MQTTMessage) -> None:
        try:
            topic, corr = reply_address(message, bytes(message.payload))
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
            try:
                message = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            try:
                self._handle(message)
            except Exception:
                self._internal(message)

    def _handle(self, message: mqtt.MQTTMessage) -> None:
        response_topic, corr = response_properties(message)
        out = self._dispatcher.handle(bytes(message.payload), response_topic, corr)
        if out is not None:
            self._reply(*out)

    def _internal(self, message: mqtt.MQTTMessage) -> None:
        """Log what failed while handling `message` and answer `internal` where that is possible."""
        topic: str | None = None
        try:
            topic, corr = reply_address(message, bytes(message.payload))
            log.exception("command worker: handling a request failed (reply topic %.200r)", topic)
            if topic is not None:
                self._reply(topic, reply_error(None, "internal", "internal error"), corr)
        except Exception:
            log.exception("command worker: answering internal to %.200r failed too", topic)
