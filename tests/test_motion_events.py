"""The motion event tracker: phases, debounce, updates, splitting, closing and the best frame."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from agent.analysis.events import EventPhase
from agent.analysis.motion import MotionResult
from agent.analysis.motion_events import MotionEventTracker
from agent.clock import parse_iso
from agent.config import MotionSettings

MOVING = MotionResult(motion=True, regions=[(0.1, 0.2, 0.3, 0.4)], score=0.5)
STILL = MotionResult(motion=False)
T0 = 1_800_000_000.0


def _feed(
    tracker: MotionEventTracker, pattern: list[bool], fps: float = 10.0, scores: list[float] | None = None
) -> list[EventPhase]:
    image = np.zeros((36, 64, 3), np.uint8)
    out: list[EventPhase] = []
    for i, moving in enumerate(pattern):
        image[:] = i % 256
        result = MOVING if moving else STILL
        if moving and scores is not None:
            result = MotionResult(motion=True, regions=MOVING.regions, score=scores[i])
        out += tracker.feed(result, T0 + i / fps, image, i / fps)
    return out


def test_phases_run_start_updates_end_with_one_id() -> None:
    tracker = MotionEventTracker("cam-1", MotionSettings(update_interval_s=1.0, end_delay_s=2.0))
    phases = _feed(tracker, [False] * 5 + [True] * 50 + [False] * 40)
    kinds = [p.event.phase for p in phases]
    assert kinds[0] == "start"
    assert kinds[-1] == "end"
    assert set(kinds[1:-1]) == {"update"}
    assert 3 <= len(kinds) - 2 <= 5
    ids = {p.event.event_id for p in phases}
    assert len(ids) == 1
    uuid.UUID(ids.pop(), version=4)
    ts = [parse_iso(p.event.ts) for p in phases]
    assert ts == sorted(ts)
    for p in phases:
        assert p.event.kind == "motion"
        assert p.event.camera == "cam-1"
        assert p.event.regions == [(0.1, 0.2, 0.3, 0.4)]
        assert 0 <= p.event.score <= 1
        assert (p.event.ended_at is not None) == (p.event.phase == "end")
    end = phases[-1].event
    assert end.ended_at is not None
    assert parse_iso(end.started_at) == pytest.approx(T0 + 0.5, abs=0.002)
    assert parse_iso(end.ended_at) == pytest.approx(T0 + 5.4, abs=0.002)
    assert parse_iso(end.ts) >= parse_iso(end.ended_at) + 2.0 - 0.002


def test_short_flicker_does_not_start_an_event() -> None:
    tracker = MotionEventTracker("cam-1", MotionSettings(min_duration_s=0.3))
    assert _feed(tracker, [True, True, False, True, True, True, False] * 3) == []
    assert not tracker.active


def test_short_pause_is_bridged_and_no_updates_while_quiet() -> None:
    tracker = MotionEventTracker("cam-1", MotionSettings(end_delay_s=2.0, update_interval_s=0.5))
    phases = _feed(tracker, [True] * 10 + [False] * 15 + [True] * 10 + [False] * 30)
    assert [p.event.phase for p in phases].count("start") == 1
    assert [p.event.phase for p in phases].count("end") == 1
    quiet = [p for p in phases if p.event.phase == "update" and 1.0 <= p.offset_s < 2.5]
    assert quiet == []


def test_long_event_is_split() -> None:
    tracker = MotionEventTracker("cam-1", MotionSettings(max_event_s=5.0, update_interval_s=10.0))
    phases = _feed(tracker, [True] * 130)
    starts = [p for p in phases if p.event.phase == "start"]
    ends = [p for p in phases if p.event.phase == "end"]
    assert len(starts) == 3
    assert len(ends) == 2
    assert ends[0].event.event_id == starts[0].event.event_id
    assert starts[1].event.event_id != starts[0].event.event_id
    assert ends[0].event.ts == starts[1].event.started_at


def test_close_ends_the_open_event_once() -> None:
    tracker = MotionEventTracker("cam-1", MotionSettings())
    phases = _feed(tracker, [True] * 20)
    assert [p.event.phase for p in phases] == ["start", "update"]
    closing = tracker.close(T0 + 3.0, 3.0)
    assert [p.event.phase for p in closing] == ["end"]
    assert closing[0].event.event_id == phases[0].event.event_id
    assert closing[0].offset_s == 3.0
    assert tracker.close(T0 + 4.0, 4.0) == []


def test_best_frame_is_a_copy_and_sent_when_it_improved() -> None:
    tracker = MotionEventTracker("cam-1", MotionSettings(update_interval_s=0.5))
    scores = [0.1 * (i + 1) if i < 8 else 0.2 for i in range(30)]
    phases = _feed(tracker, [True] * 30 + [False] * 30, scores=scores)
    start = phases[0]
    assert start.frame is not None
    assert start.frame.shape == (36, 64, 3)
    assert int(start.frame[0, 0, 0]) == 3  # the frame at which the event started, not the reused buffer
    with_frame = [p for p in phases if p.frame is not None]
    best = with_frame[-1].frame
    assert best is not None
    assert int(best[0, 0, 0]) == 7
    assert phases[-1].frame is None  # no improvement since the last phase carried it
