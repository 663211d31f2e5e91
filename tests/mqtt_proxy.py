"""A loopback TCP proxy in front of a real Mosquitto that behaves like a broker without MQTT 5.

RabbitMQ 3.10's MQTT plugin closes the connection when a client's CONNECT says protocol level 5;
this proxy does the same and passes every other connection through untouched, so the quick tier
can test `mqtt.protocol = "auto"` against a real broker (the slow tier uses RabbitMQ itself).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

from tests.conftest import free_port


def _connect_level(head: bytes) -> int | None:
    """The protocol level of an MQTT CONNECT at the start of `head`, None until enough arrived."""
    if not head or head[0] >> 4 != 1:
        return 0  # not a CONNECT: pass it on, the broker will judge
    pos, shift = 1, 0
    while True:  # the remaining length, a varint of up to 4 bytes
        if pos >= len(head):
            return None
        byte = head[pos]
        pos += 1
        shift += 7
        if not byte & 0x80 or shift >= 28:
            break
    if len(head) < pos + 2:
        return None
    name_len = int.from_bytes(head[pos : pos + 2], "big")
    level_at = pos + 2 + name_len
    return head[level_at] if len(head) > level_at else None


class NoMqtt5Proxy:
    """Listens on `port` (a free loopback port by default); `refused` counts MQTT 5 CONNECTs it
    closed. One thread, owned here: start() in the constructor, stop() joins it within a second."""

    def __init__(self, broker_port: int, port: int | None = None) -> None:
        self.port = port or free_port()
        self.refused = 0
        self._broker_port = broker_port
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="no-mqtt5-proxy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for key in list(self._sel.get_map().values()):
            with contextlib.suppress(OSError):
                key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()

    def _run(self) -> None:
        # Per client socket: [peer socket or None while the CONNECT is read, bytes read so far].
        while not self._stop.is_set():
            for key, _ in self._sel.select(0.1):
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    self._pump(key)

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError):
            client, _ = self._listener.accept()
            client.setblocking(False)
            self._sel.register(client, selectors.EVENT_READ, [None, b""])

    def _close(self, *socks: socket.socket | None) -> None:
        for s in socks:
            if s is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(s)
            s.close()

    def _pump(self, key: selectors.SelectorKey) -> None:
        sock: socket.socket = key.fileobj  # type: ignore[assignment]
        state: list[socket.socket | bytes | None] = key.data
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        peer = state[0]
        if not data:
            self._close(sock, peer if isinstance(peer, socket.socket) else None)
            return
        if isinstance(peer, socket.socket):
            with contextlib.suppress(OSError):
                peer.sendall(data)
            return
        seen = state[1]
        head = (seen if isinstance(seen, bytes) else b"") + data
        level = _connect_level(head)
        if level is None:
            state[1] = head
            return
        if level == 5:
            self.refused += 1
            self._close(sock)
            return
        upstream = socket.create_connection(("127.0.0.1", self._broker_port))
        upstream.sendall(head)
        upstream.setblocking(False)
        state[0] = upstream
        self._sel.register(upstream, selectors.EVENT_READ, [sock, b""])
