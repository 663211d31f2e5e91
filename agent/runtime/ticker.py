"""A named thread that runs one job every N seconds, owned by whoever starts and stops it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Ticker:
    """Runs `job` every `interval_s` on thread `name` (first run at once if `run_at_start`).

    A job that raises is logged and run again at the next tick: a periodic duty must not die of
    one bad sample. `stop()` wakes the thread at once.
    """

    def __init__(
        self, name: str, interval_s: float, job: Callable[[], object], *, run_at_start: bool = False
    ) -> None:
        self.name = name
        self._interval_s = interval_s
        self._job = job
        self._run_at_start = run_at_start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        """True while running, and before start (nothing has died)."""
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    def _loop(self) -> None:
        if self._run_at_start:
            self._tick()
        while not self._stop.wait(self._interval_s):
            self._tick()

    def _tick(self) -> None:
        try:
            self._job()
        except Exception:
            log.exception("%s failed", self.name)
