"""Turns per-frame motion results into motion events: start → update* → end, one event_id each.

Debounce (`min_duration_s`) keeps flickers from starting events, `end_delay_s` bridges short
pauses, updates are rate-limited to `update_interval_s` and sent only while motion continues, and
an event longer than `max_event_s` is ended and a fresh one started so that none runs forever.
"""

from __future__ import annotations

import uuid
from typing import Literal

import numpy as np

from agent.analysis.events import EventPhase
from agent.analysis.motion import MotionResult, Region
from agent.capture.source import Image
from agent.clock import iso
from agent.config import MotionSettings
from agent.contract.messages import Event

Phase = Literal["start", "update", "end"]
_EPS = 1e-6  # seconds; frame times like 0.1 * 3 must count as 0.3
_BEST_MARGIN = 1.05  # a new best frame must beat the old by 5 %, so 1080p copies stay rare


class _Open:
    """The running event's state."""

    def __init__(self, started: float) -> None:
        self.event_id = str(uuid.uuid4())
        self.started = started
        self.last_motion = started
        self.last_phase = started
        self.regions: list[Region] = []
        self.peak = 0.0
        self.best: Image | None = None
        self.best_score = -1.0
        self.best_unsent = False


class MotionEventTracker:
    """Owns the motion event state of one camera."""

    def __init__(self, camera_id: str, settings: MotionSettings) -> None:
        self.camera_id = camera_id
        self._settings = settings
        self._pending_since: float | None = None
        self._open: _Open | None = None

    def update_settings(self, settings: MotionSettings) -> None:
        """Use new timings from the next frame on; a running event carries on."""
        self._settings = settings

    @property
    def active(self) -> bool:
        """True while an event is open (started and not yet ended)."""
        return self._open is not None

    def feed(  # noqa: PLR0911 (a state machine: one exit per transition)
        self, result: MotionResult, ts: float, image: Image, offset_s: float
    ) -> list[EventPhase]:
        """Account for one analysed frame; return the phases it completes (often none)."""
        s = self._settings
        ev = self._open
        if ev is None:
            if not result.motion:
                self._pending_since = None
                return []
            if self._pending_since is None:
                self._pending_since = ts
            if ts - self._pending_since < s.min_duration_s - _EPS:
                return []
            ev = self._open = _Open(self._pending_since)
            self._pending_since = None
            self._observe(ev, result, ts, image)
            return [self._phase(ev, "start", ts, offset_s)]

        if not result.motion:
            if ts - ev.last_motion >= s.end_delay_s - _EPS:
                return [self._end(ev, ts, offset_s)]
            return []

        self._observe(ev, result, ts, image)
        if ts - ev.started >= s.max_event_s - _EPS:
            # Split: end this one here and carry the ongoing motion into a new event.
            out = [self._end(ev, ts, offset_s)]
            nxt = self._open = _Open(ts)
            self._observe(nxt, result, ts, image)
            out.append(self._phase(nxt, "start", ts, offset_s))
            return out
        if ts - ev.last_phase >= s.update_interval_s - _EPS:
            return [self._phase(ev, "update", ts, offset_s)]
        return []

    def close(self, ts: float, offset_s: float) -> list[EventPhase]:
        """End the open event, if any (shutdown, end of a video)."""
        self._pending_since = None
        if self._open is None:
            return []
        return [self._end(self._open, max(ts, self._open.last_phase), offset_s)]

    # -- helpers --------------------------------------------------------------------------------

    def _observe(self, ev: _Open, result: MotionResult, ts: float, image: Image) -> None:
        ev.last_motion = ts
        ev.regions = list(result.regions)
        ev.peak = max(ev.peak, result.score)
        if ev.best is None or result.score > ev.best_score * _BEST_MARGIN:
            ev.best = np.array(image, copy=True)  # the caller's buffer may be reused
            ev.best_score = result.score
            ev.best_unsent = True

    def _phase(self, ev: _Open, phase: Phase, ts: float, offset_s: float) -> EventPhase:
        ev.last_phase = ts
        frame = ev.best if ev.best_unsent else None
        ev.best_unsent = False
        event = Event(
            event_id=ev.event_id,
            camera=self.camera_id,
            kind="motion",
            phase=phase,
            started_at=iso(ev.started),
            ts=iso(ts),
            ended_at=iso(max(ev.last_motion, ev.started)) if phase == "end" else None,
            regions=ev.regions,
            score=min(1.0, max(0.0, ev.peak)),
        )
        return EventPhase(event=event, frame=frame, offset_s=offset_s)

    def _end(self, ev: _Open, ts: float, offset_s: float) -> EventPhase:
        self._open = None
        return self._phase(ev, "end", ts, offset_s)
