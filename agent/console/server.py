"""The console's HTTP server thread: started and stopped by the agent that owns it.

Werkzeug's threaded server, bounded: at most MAX_CONNECTIONS request threads (more connections are
closed at once), each losing a client silent or not reading for SOCKET_TIMEOUT_S; threads are
daemons never joined at close, so no browser can hold up a stop, and live views end themselves
when `stopping` is set.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from agent.config import ConsoleConfig
from agent.config.base import read_small
from agent.console.app import ConsoleApp
from agent.console.commissioning import MaskService
from agent.console.gateway import ConsoleGateway
from agent.errors import AgentError

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 16  # a technician's browser needs a handful; more are closed at once
SOCKET_TIMEOUT_S = 30.0  # a client silent (or not reading) this long loses its connection


class _Handler(WSGIRequestHandler):
    timeout = SOCKET_TIMEOUT_S  # slow-loris clients and stalled live views free their thread


class _BoundedServer(ThreadedWSGIServer):
    """Werkzeug's threaded server with a bound on request threads."""

    block_on_close = False  # a stop never waits for request threads
    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The console's TLS context; AgentError naming the key when a file is not what it should be
    (`check-config` says the same before a start)."""
    for name, path in (("tls_cert_file", cert), ("tls_key_file", key)):
        try:
            read_small(path)  # a folder or a device: a clear error, never an endless read
        except OSError as exc:
            raise AgentError(f"console.{name}: cannot read {path}: {exc.strerror or exc}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        why = exc.reason or exc
        raise AgentError(
            f"console.tls_key_file: {key} and {cert} are not a certificate and its key ({why})"
        ) from None
    return context


class ConsoleServer:
    """Owns the listening socket and the thread that serves it."""

    def __init__(self, cfg: ConsoleConfig, gateway: ConsoleGateway, config_path: Path | None) -> None:
        self.cfg = cfg
        self._stopping = threading.Event()
        self.app = ConsoleApp(cfg, gateway, MaskService(gateway, config_path), self._stopping)
        context = None
        if cfg.tls_cert_file is not None and cfg.tls_key_file is not None:
            context = _tls_context(cfg.tls_cert_file, cfg.tls_key_file)
        # The socket is ours to open: Werkzeug, binding it itself, prints and exits the process
        # when the port is taken; the agent must refuse to start with its own error instead.
        try:
            family = socket.AF_INET6 if ":" in cfg.bind else socket.AF_INET
            listening = socket.create_server((cfg.bind, cfg.port), family=family)
        except OSError as exc:
            why = exc.strerror or exc
            raise AgentError(f"console: cannot listen on {cfg.bind}:{cfg.port}: {why}") from None
        with listening:  # the server works on its own duplicate of the descriptor
            self._server = _BoundedServer(
                cfg.bind, cfg.port, self.app, _Handler, ssl_context=context, fd=listening.fileno()
            )
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request in the agent's log
        self._thread = threading.Thread(target=self._serve, name="console", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.port)

    def start(self) -> None:
        self._thread.start()
        scheme = "https" if self.cfg.tls else "http"
        log.info("console on %s://%s:%d/", scheme, self.cfg.bind, self.port)

    def _serve(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 1.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout)
        self._server.server_close()
