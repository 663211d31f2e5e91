"""Turns per-frame detections into object events: one tracked object, one event_id.

A track follows one object across frames by box overlap (with a constant-velocity guess, since
inference is sparse) or, failing that, by a nearby centre. Its event starts once the track has
been seen `min_hits` times, sends updates at most every `update_interval_s`, and ends when the
object has been unseen for `end_delay_s`. The label is a score-weighted vote over the track's
history and the score an exponential average, so neither flickers between frames.

Stationary objects: an event starts only for a track that has moved (its box left where it first
stood for MOVE_HITS detections in a row), so a parked car seen in a crop because someone walked
past raises nothing. A track whose box stays put for `stationary_s` ends its event and goes quiet;
when it disappears (no motion, so no inference there) its box is remembered as parked, and a
later detection on that spot joins as stationary at once. A stationary track raises a new event
only after it has clearly moved for `min_hits` detections in a row.

Not thread-safe: one owner (the camera's pipeline) calls `update` with each detection result and
`tick` regularly, because without motion no results arrive and events must still end. The best
frame is kept by reference: frames given to `update` must not be modified afterwards (those in a
`DetectionResult` are the service's private copies).
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from agent.analysis.events import EventPhase
from agent.capture.source import Frame, Image
from agent.clock import iso
from agent.config import DetectionSettings
from agent.contract.messages import DetectedObject, Event

NormBox = tuple[float, float, float, float]  # x, y, w, h normalised
Phase = Literal["start", "update", "end"]

MATCH_IOU = 0.2  # overlap with the predicted box that continues a track
MATCH_DISTANCE = 0.6  # ...or centre distance, in box diagonals, for fast or sparse movers
CROSS_LABEL_IOU = 0.5  # a detection of another label continues a track only when it overlaps this much
STATIONARY_IOU = 0.7  # overlap with the anchor box below which the object is away from it
MOVE_HITS = 2  # consecutive hits away from the anchor that make an object a mover
SCORE_ALPHA = 0.3  # weight of a new detection in the smoothed score
PREDICT_S = 1.0  # longest gap bridged by the constant-velocity guess (objects stop, too)
PARKED_MEMORY_S = 3600.0  # how long a parked object's spot is remembered after it was last seen
PARKED_MAX = 64
MAX_TRACKS = 32  # per camera; each may hold a full frame as its best, so memory stays bounded


def iou(a: NormBox, b: NormBox) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _centre(b: NormBox) -> tuple[float, float]:
    return b[0] + b[2] / 2, b[1] + b[3] / 2


def _distance(a: NormBox, b: NormBox) -> float:
    """Centre distance in units of the larger box diagonal."""
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    return math.hypot(ax - bx, ay - by) / max(math.hypot(a[2], a[3]), math.hypot(b[2], b[3]), 1e-6)


@dataclass(slots=True)
class _Parked:
    box: NormBox
    since: float  # when it became stationary
    seen: float  # when it was last seen


@dataclass(slots=True)
class _Track:
    box: NormBox
    first_ts: float
    last_ts: float
    velocity: tuple[float, float] = (0.0, 0.0)  # centre motion, frame widths/heights per second
    hits: int = 1
    votes: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    score: float = 0.0
    anchor: NormBox = (0.0, 0.0, 0.0, 0.0)  # where it was when it last started to stand still
    anchor_ts: float = 0.0
    stationary: bool = False
    moved: bool = False  # has moved since it appeared or last stood still
    away_hits: int = 0  # consecutive hits away from the anchor
    event_id: str | None = None
    started_ts: float = 0.0
    last_phase_ts: float = 0.0
    seen_since_phase: bool = False
    best_score: float = -1.0
    best_frame: Image | None = None
    best_pending: bool = False  # the best frame improved since the last phase

    @property
    def label(self) -> str:
        return max(self.votes.items(), key=lambda kv: kv[1])[0]

    def predicted(self, ts: float) -> NormBox:
        dt = min(max(ts - self.last_ts, 0.0), PREDICT_S)
        x, y, w, h = self.box
        return (x + self.velocity[0] * dt, y + self.velocity[1] * dt, w, h)


class ObjectTracker:
    """Per-camera tracker producing `object` EventPhases."""

    def __init__(
        self,
        camera_id: str,
        settings: DetectionSettings,
        *,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.camera_id = camera_id
        self.settings = settings
        self._new_id = new_id
        self._tracks: list[_Track] = []
        self._parked: list[_Parked] = []

    def update_settings(self, settings: DetectionSettings) -> None:
        self.settings = settings

    @property
    def open_events(self) -> int:
        return sum(1 for t in self._tracks if t.event_id is not None)

    @property
    def track_count(self) -> int:
        return len(self._tracks)

    # -- public steps ---------------------------------------------------------------------------

    def update(self, objects: Sequence[DetectedObject], frame: Frame) -> list[EventPhase]:
        """Feed the (already filtered) objects detected in `frame`; return the phases to publish."""
        ts = frame.ts
        phases = self.tick(ts, frame.pts)
        matched = self._match(objects, ts)
        for ti, oi in matched:
            self._hit(self._tracks[ti], objects[oi], frame)
        taken = {oi for _, oi in matched}
        for oi, obj in enumerate(objects):
            if oi not in taken and len(self._tracks) < MAX_TRACKS:
                self._tracks.append(self._new_track(obj, frame))
        for track in self._tracks:
            phase = self._advance(track, ts, frame.pts)
            if phase is not None:
                phases.append(phase)
        return phases

    def tick(self, ts: float, offset_s: float = 0.0) -> list[EventPhase]:
        """End the events of tracks unseen for `end_delay_s`; call this regularly."""
        phases: list[EventPhase] = []
        alive: list[_Track] = []
        for track in self._tracks:
            if ts - track.last_ts <= self.settings.end_delay_s:
                alive.append(track)
                continue
            if track.event_id is not None:
                phases.append(self._phase(track, "end", ts, offset_s, ended_at=track.last_ts))
            if track.stationary:
                self._park(track)
        self._tracks = alive
        self._parked = [p for p in self._parked if ts - p.seen <= PARKED_MEMORY_S]
        return phases

    def close(self, ts: float, offset_s: float = 0.0) -> list[EventPhase]:
        """End every open event (shutdown or detection switched off) and forget all tracks."""
        phases = [self._phase(t, "end", ts, offset_s, ended_at=t.last_ts) for t in self._tracks if t.event_id]
        self._tracks = []
        return phases

    # -- matching -------------------------------------------------------------------------------

    def _match(self, objects: Sequence[DetectedObject], ts: float) -> list[tuple[int, int]]:
        """Greedy one-to-one matching: same-label pairs first, best overlap first."""
        candidates: list[tuple[int, float, float, int, int]] = []
        for ti, track in enumerate(self._tracks):
            guesses = (track.predicted(ts), track.box)  # moving on, or stopped
            label = track.label
            for oi, obj in enumerate(objects):
                overlap = max(iou(g, obj.box) for g in guesses)
                dist = min(_distance(g, obj.box) for g in guesses)
                same = obj.label == label
                if (same and (overlap >= MATCH_IOU or dist <= MATCH_DISTANCE)) or overlap >= CROSS_LABEL_IOU:
                    candidates.append((0 if same else 1, -overlap, dist, ti, oi))
        candidates.sort()
        used_t: set[int] = set()
        used_o: set[int] = set()
        pairs: list[tuple[int, int]] = []
        for _, _, _, ti, oi in candidates:
            if ti not in used_t and oi not in used_o:
                used_t.add(ti)
                used_o.add(oi)
                pairs.append((ti, oi))
        return pairs

    def _new_track(self, obj: DetectedObject, frame: Frame) -> _Track:
        track = _Track(box=obj.box, first_ts=frame.ts, last_ts=frame.ts, anchor=obj.box, anchor_ts=frame.ts)
        track.votes[obj.label] += obj.score
        track.score = obj.score
        self._remember_best(track, obj.score, frame)
        for i, spot in enumerate(self._parked):
            if iou(spot.box, obj.box) >= STATIONARY_IOU:
                track.stationary, track.anchor, track.anchor_ts = True, spot.box, spot.since
                del self._parked[i]
                break
        return track

    def _hit(self, track: _Track, obj: DetectedObject, frame: Frame) -> None:
        ts = frame.ts
        dt = ts - track.last_ts
        if dt > 0:
            (cx, cy), (ox, oy) = _centre(track.box), _centre(obj.box)
            vx, vy = (ox - cx) / dt, (oy - cy) / dt
            track.velocity = (0.5 * track.velocity[0] + 0.5 * vx, 0.5 * track.velocity[1] + 0.5 * vy)
        track.box, track.last_ts = obj.box, ts
        track.hits += 1
        track.votes[obj.label] += obj.score
        track.score += SCORE_ALPHA * (obj.score - track.score)
        track.seen_since_phase = True
        self._remember_best(track, obj.score, frame)
        if iou(track.anchor, obj.box) >= STATIONARY_IOU:  # still where it was
            track.away_hits = 0
            if not track.stationary and ts - track.anchor_ts >= self.settings.stationary_s:
                track.stationary, track.moved = True, False
            return
        track.away_hits += 1
        if track.away_hits >= (self.settings.min_hits if track.stationary else MOVE_HITS):
            if track.stationary:
                track.first_ts = ts  # its next event starts when it drives off
            track.stationary, track.moved, track.away_hits = False, True, 0
            track.anchor, track.anchor_ts = obj.box, ts

    @staticmethod
    def _remember_best(track: _Track, score: float, frame: Frame) -> None:
        if score > track.best_score:
            track.best_score, track.best_frame = score, frame.image
            track.best_pending = True

    def _park(self, track: _Track) -> None:
        self._parked.append(_Parked(track.box, track.anchor_ts, track.last_ts))
        del self._parked[:-PARKED_MAX]

    # -- events ---------------------------------------------------------------------------------

    def _advance(self, track: _Track, ts: float, offset_s: float) -> EventPhase | None:
        """The phase this track owes now, if any: start, update, or end on becoming stationary."""
        if track.event_id is None:
            if (
                not track.moved
                or track.stationary
                or track.hits < self.settings.min_hits
                or track.last_ts != ts
            ):
                return None
            track.event_id = self._new_id()
            track.started_ts = track.first_ts
            return self._phase(track, "start", ts, offset_s)
        if track.stationary:
            return self._phase(track, "end", ts, offset_s, ended_at=ts)
        # Only on a frame that saw it: an update's box must be where the object is at its ts.
        if (
            track.seen_since_phase
            and track.last_ts == ts
            and ts - track.last_phase_ts >= self.settings.update_interval_s
        ):
            return self._phase(track, "update", ts, offset_s)
        return None

    def _phase(
        self, track: _Track, phase: Phase, ts: float, offset_s: float, ended_at: float | None = None
    ) -> EventPhase:
        assert track.event_id is not None
        score = round(min(max(track.score, 0.0), 1.0), 4)
        event = Event(
            event_id=track.event_id,
            camera=self.camera_id,
            kind="object",
            phase=phase,
            started_at=iso(track.started_ts),
            ts=iso(ts),
            ended_at=iso(ended_at) if ended_at is not None else None,
            objects=[DetectedObject(label=track.label, score=score, box=track.box)],
            score=score,
        )
        frame = track.best_frame if track.best_pending else None
        track.best_pending = False
        track.last_phase_ts = ts
        track.seen_since_phase = False
        if phase == "end":  # the next event of this track (after it moves again) gets its own best
            track.event_id = None
            track.best_score, track.best_frame = -1.0, None
        return EventPhase(event=event, frame=frame, offset_s=offset_s)
