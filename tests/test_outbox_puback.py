"""Outbox rows leave only on PUBACK: messages the broker never acknowledged come back after a kill.

Between the agent and the broker sits a small TCP relay that can drop the broker's PUBACK packets.
The broker gets and forwards every message, but the agent never hears that it did, so each QoS 1
message must stay in its outbox. The agent is SIGKILLed and started again on the same data_dir
through the relay passing everything: every event the platform saw from the first run must arrive
again (at-least-once; the platform deduplicates by event_id + phase + ts). An agent that deleted
rows on publish instead would send none of them again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.harness import AgentProcess, Received, Subscriber, write_config

pytestmark = pytest.mark.broker

PUBACK = 4  # MQTT control packet type (upper nibble of the first byte)
CAMERA = """
[[cameras]]
id = "cam-1"
source = "synthetic:street?fps=10&seed=11&width=320&height=180"
allowed_agencies = ["police"]
"""


def _packets(buffer: bytearray) -> Iterator[bytes]:
    """Complete MQTT packets at the front of `buffer`, removed from it as they are yielded."""
    while len(buffer) >= 2:
        length, multiplier, pos = 0, 1, 1
        while True:
            if pos >= len(buffer):
                return  # the remaining-length field itself is incomplete
            byte = buffer[pos]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            pos += 1
            if not byte & 0x80:
                break
        if len(buffer) < pos + length:
            return
        packet = bytes(buffer[: pos + length])
        del buffer[: pos + length]
        yield packet


class PubackDroppingRelay:
    """Forwards TCP between MQTT clients and a broker; while `drop_puback` is set, the broker's PUBACKs
    are not passed on. Owns its threads: `close()` shuts every socket and joins them."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.drop_puback = threading.Event()
        self.dropped = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()  # guards _sockets, _threads and dropped
        self._sockets: list[socket.socket] = [self._listener]
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._start(self._accept, "relay.accept")

    def _start(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._sockets.append(client)
                closing = self._closed.is_set()
            if closing:  # accepted while close() ran: close() may have missed it
                client.close()
                return
            try:
                upstream = socket.create_connection((self.broker.host, self.broker.port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.append(upstream)
            self._start(self._pipe, "relay.to-broker", client, upstream, False)
            self._start(self._pipe, "relay.to-client", upstream, client, True)

    def _pipe(self, src: socket.socket, dst: socket.socket, from_broker: bool) -> None:
        buffer = bytearray()
        try:
            while data := src.recv(65536):
                if not from_broker:
                    dst.sendall(data)
                    continue
                buffer += data
                for packet in _packets(buffer):
                    if packet[0] >> 4 == PUBACK and self.drop_puback.is_set():
                        with self._lock:
                            self.dropped += 1
                        continue
                    dst.sendall(packet)
        except OSError:
            pass
        finally:
            for s in (src, dst):  # one side closed: close the other so its pipe ends too
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting first, then shut every socket and join every thread."""
        with self._lock:
            self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            threads = list(self._threads)
        threads[0].join(5)  # the accept thread: no new sockets after this
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in threads:
            t.join(5)


@pytest.fixture
def relay(broker: Broker) -> Iterator[PubackDroppingRelay]:
    r = PubackDroppingRelay(broker)
    yield r
    r.close()


def event_keys(messages: list[Received]) -> Counter[tuple[str, str, str]]:
    keys: Counter[tuple[str, str, str]] = Counter()
    for m in messages:
        if m.topic.endswith("/cam/cam-1/event"):
            e = m.json()
            keys[(e["event_id"], e["phase"], e["ts"])] += 1
    return keys


def test_unacknowledged_messages_are_sent_again_after_a_kill(
    relay: PubackDroppingRelay, broker: Broker, tmp_path: Path
) -> None:
    gateway = "gw-" + uuid.uuid4().hex[:12]
    sub = Subscriber(broker.host, broker.port, f"cctv/v1/puback/{gateway}/#")
    cfg = write_config(
        tmp_path / "agent.toml",
        district="puback",
        gateway=gateway,
        port=relay.port,
        data_dir=tmp_path / "data",
        cameras=CAMERA,
    )
    relay.drop_puback.set()
    first = AgentProcess(cfg, tmp_path / "first.log")
    second: AgentProcess | None = None
    try:
        assert sub.wait_for(lambda ms: sum(event_keys(ms).values()) >= 3, 45), first.log()[-3000:]
        first.kill()
        time.sleep(0.5)  # let what was on the wire at the kill arrive
        owed = event_keys(sub.messages)
        assert relay.dropped > 0, "the relay should have withheld the broker's PUBACKs"

        relay.drop_puback.clear()
        second = AgentProcess(cfg, tmp_path / "second.log")
        redelivered = sub.wait_for(lambda ms: all(event_keys(ms)[k] >= 2 for k in owed), 30)
        again = event_keys(sub.messages)
        missing = [k for k in owed if again[k] < 2]
        assert redelivered, (
            f"{len(missing)} of {len(owed)} unacknowledged events never came again: {missing[:3]}"
        )
        code, _took = second.terminate()
        assert code == 0, second.log()[-3000:]
    finally:
        first.close()
        if second is not None:
            second.close()
        sub.close()
