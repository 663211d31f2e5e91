"""Whether the gateway's clock can be trusted, checked on a timer and said once per change.

A gateway without a real-time clock boots with a time that may be hours off until NTP has
synchronised it. `ClockWatch.check` reads the kernel's state (agent.clock.read_kernel_clock, or an
injected reader in tests), publishes it process-wide (agent.clock.note_synced: events stamped
while unsynchronised carry `clock_unsynced`, the gateway status `clock_synced`), logs a change
(WARNING while unsynchronised, INFO at the first sync) and calls `on_change` so the agent
republishes its retained status. Telemetry reads `telemetry()`; `close()` (the agent stopping)
makes the state unknown again, so an agent stopped in-process leaves no mark behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from agent import clock
from agent.clock import ClockSync, iso, read_kernel_clock

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 10.0


class ClockWatch:
    """Reads the clock's synchronisation state; `check()` runs on the agent's `clock` ticker."""

    def __init__(
        self,
        reader: Callable[[], ClockSync] | None = None,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._reader = reader if reader is not None else read_kernel_clock  # tests inject theirs
        self._on_change = on_change
        self.last: ClockSync | None = None
        self.first_sync_at: float | None = None  # wall clock (after the sync) of the first sync seen
        self._error: str | None = None

    def check(self) -> ClockSync | None:
        """Read the state now; None (and clock_synced unknown) when the kernel cannot say."""
        try:
            state = self._reader()
        except OSError as exc:
            if self._error is None:
                log.warning("cannot read the clock's synchronisation state (%s): events are not marked", exc)
            self._error = str(exc)
            clock.note_synced(None)
            return None
        self._error = None
        before = self.last
        self.last = state
        clock.note_synced(state.synced)
        if before is not None and before.synced == state.synced:
            return state
        if state.synced:
            if self.first_sync_at is None:
                self.first_sync_at = time.time()
            log.info("system clock synchronised (estimated error %.3f s)", state.est_error_s)
        else:
            log.warning(
                "system clock NOT synchronised (kernel's maximum error %.1f s): events are marked"
                " clock_unsynced, and commands may be refused as expired or from the future because"
                " of this gateway's clock; check timesyncd/chrony and the network path to NTP",
                state.max_error_s,
            )
        if self._on_change is not None and before is not None:
            self._on_change(state.synced)
        return state

    def close(self) -> None:
        """The agent stopped: nobody watches the clock any more, so messages are not marked."""
        clock.note_synced(None)

    def telemetry(self) -> dict[str, Any]:
        """`clock` in telemetry: synced, the kernel's estimated and maximum error, first sync."""
        state = self.last
        return {
            "synced": None if state is None else state.synced,
            "est_error_s": None if state is None else state.est_error_s,
            "max_error_s": None if state is None else state.max_error_s,
            "first_sync_at": None if self.first_sync_at is None else iso(self.first_sync_at),
            "error": self._error,
        }
