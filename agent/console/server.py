"""The console's HTTP server thread: started and stopped by the agent that owns it.

Werkzeug's threaded server: one thread per request, daemon and not joined at close, so a browser
holding a live view (or stalling its socket) cannot hold up a stop; the live views end themselves
when `stopping` is set.
"""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path

from werkzeug.serving import BaseWSGIServer, make_server

from agent.config import ConsoleConfig
from agent.console.app import ConsoleApp
from agent.console.commissioning import MaskService
from agent.console.gateway import ConsoleGateway
from agent.errors import AgentError

log = logging.getLogger(__name__)


class ConsoleServer:
    """Owns the listening socket and the thread that serves it."""

    def __init__(self, cfg: ConsoleConfig, gateway: ConsoleGateway, config_path: Path | None) -> None:
        self.cfg = cfg
        self._stopping = threading.Event()
        self.app = ConsoleApp(cfg, gateway, MaskService(gateway, config_path), self._stopping)
        context = None
        if cfg.tls_cert_file is not None and cfg.tls_key_file is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file))
        try:
            self._server: BaseWSGIServer = make_server(
                cfg.bind, cfg.port, self.app, threaded=True, ssl_context=context
            )
        except OSError as exc:
            why = exc.strerror or exc
            raise AgentError(f"console: cannot listen on {cfg.bind}:{cfg.port}: {why}") from None
        # A stop must not wait for request threads: a stalled browser can hold one in a write.
        self._server.block_on_close = False
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request in the agent's log
        self._thread = threading.Thread(target=self._serve, name="console", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

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
