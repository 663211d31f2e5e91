"""Turns per-frame detections into object events: one tracked object, one event_id.

Detection runs only where something is looked at (motion crops, checks of known objects, a
periodic full-frame pass), so "unseen" means little by itself. A track therefore ends only when
it is lost: looked at and not found (`LOSE_MISSES` times and for `end_delay_s`, a person for
PERSON_PATIENCE times that), or predicted out of the frame for `end_delay_s`. Until then a
detection near where it was heading (constant velocity, a gate that widens with the time unseen)
continues it as the same track and the same event, so a small person the model misses for a few
seconds stays one event. The event's end waits for that loss; `ended_at` is when the object was
last seen. A person's new track that began where an event track was heading as that track went
unseen, or is there now moving the same way, hands its boxes over to it (`_hand_over`): the
event goes on.

Person boxes of one body (centres within half a width, most of the height shared) are first
made one box. Association: greedy one-to-one on the predicted box: same label group first (car,
bus and truck are one group; a track keeps a score-weighted label vote, so one frame calling a
person a bicycle changes nothing), then overlap, then centre distance in the track's own box
diagonals (an odd, large box must not widen the reach), never beyond MAX_GATE_FRAME. Another
group joins a track only with a large overlap. A track that has not moved yet predicts only a
frame or two on: its velocity may be the detector's jitter.

Stationary objects: an event starts only for a track that has moved (its box left where it first
stood for MOVE_HITS detections in a row; a box shrunk inside the old one is an occluded view,
and a vehicle box of another size is a change of shape, not a move, unless the first box was the
odd one: `_reshaped`), so objects present at the start, seen in a crop because someone walked
past, raise nothing. A track that stays put for `stationary_s`, or goes unseen without anything
looking at it for `stationary_s`, is stationary where the median of its last boxes is: its event
ends and the track stays, re-checked every `stationary_check_s` (`due_checks`) and kept through
misses for `stationary_s` (people stand in front of parked cars). It takes only boxes where it
stands. The detector's other boxes on it (half of it beside a passer-by, it and the passer-by
together) start no track and continue no other track except by overlap; one box inside or around
another of the same frame is one object. A parked object that drives off is one event once it
moves: edging out, its boxes leave where it stands as a mover's do (MOVE_HITS in a row) and the
track moves on, its event starting when it was last seen standing; gone between two looks, it is
a new track. No event starts before its track is `min_duration_s` old (a person's track
`person_min_duration_s`, if longer), nor while it overlaps an older track of its group as two
boxes of one object do (the model's second box on a person). Stationary tracks can be saved to a
file and restored at the next start (`state_path`), still stationary.

Not thread-safe: one owner (the camera's pipeline) calls `update` with each detection result and
`tick` regularly. The best frame is kept by reference: frames given to `update` must not be
modified afterwards (those in a `DetectionResult` are the service's private copies).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import statistics
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.analysis.events import EventPhase
from agent.capture.source import Frame, Image
from agent.clock import iso
from agent.config import DetectionSettings
from agent.contract.messages import DetectedObject, Event
from agent.files import LinkRefused, open_read, set_aside, state_dir, write_atomic

log = logging.getLogger(__name__)

NormBox = tuple[float, float, float, float]  # x, y, w, h normalised
Phase = Literal["start", "update", "end"]
CheckReason = Literal["stationary", "recheck"]

MATCH_IOU = 0.2  # overlap with the predicted box that continues a track
MATCH_DISTANCE = 0.6  # ...or centre distance, in box diagonals, for fast or sparse movers
GATE_GROWTH = 0.5  # the distance gate grows by this many diagonals per second unseen
MAX_GATE = 2.0  # ...up to this many
MAX_GATE_FRAME = 0.3  # ...and never beyond this centre distance in frame widths/heights
CROSS_LABEL_IOU = 0.5  # a detection of another label group continues a track only at this overlap
STATIONARY_IOU = 0.5  # overlap with the anchor box below which the object may be away from it
OCCLUDED = 0.8  # share of a box inside the anchor above which it is the same object, partly hidden
PERSON_PATIENCE = 2.0  # a person still in view is lost after this many end delays unseen
MOVE_HITS = 2  # consecutive hits away from the anchor that make an object a mover
MOVE_DISTANCE = 0.25  # ...each with its centre this many box diagonals from the anchor's
MOVE_FRAME = 0.03  # ...and this far in frame units (half-car boxes of a far car jitter less)
SIZE_RATIO = 2.0  # ...and a box at most this much larger or smaller than the anchor's
RESHAPE_HITS = 3  # boxes of one size, all unlike a new vehicle's first box, that make it an odd one
STILL_DISTANCE = 0.1  # a stationary object's box this near its anchor (diagonals) sees it standing
EDGE = 0.01  # a box this near the frame's edge may be cut by it
RECENT = 5  # boxes a track remembers; it stands where their median is
SHADOW_INSIDE = 0.5  # a new box this much inside a stationary box of its group is that object
SHADOW_IOU = 0.3  # ...and so is one overlapping it this much
SHADOW_HOLDS = 0.6  # ...and one holding this much of it (the object and someone in front of it)
TWIN_IOU = 0.5  # a track overlapping an older one (or one with its event open) this much: one object
SAME_BODY_HEIGHT = 0.7  # two person boxes this much of one height, centres close: one body
PART_OF = 0.8  # a new box this much inside a larger box of its group in the same frame is part of it
LOSE_MISSES = 2  # looks that did not find a track before it can be lost
SCORE_ALPHA = 0.3  # weight of a new detection in the smoothed score
HANDOVER_S = 1.0  # a person's old track seen this long beside its new one may still hand over
PREDICT_S = 1.0  # longest gap bridged by the constant-velocity guess (objects stop, too)
PREDICT_STILL_S = 0.25  # ...for a track that has not moved yet
MAX_TRACKS = 32  # per camera; each may hold a full frame as its best, so memory stays bounded
MAX_SAVED = 64  # stationary tracks written to the state file
STATE_VERSION = 1

LABEL_GROUPS = {"car": "vehicle", "bus": "vehicle", "truck": "vehicle"}


def label_group(label: str) -> str:
    """Labels the model confuses for one object (car, bus, truck) share a group."""
    return LABEL_GROUPS.get(label, label)


def iou(a: NormBox, b: NormBox) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def inside(a: NormBox, b: NormBox) -> float:
    """Share of box `a` inside box `b`."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    area = a[2] * a[3]
    return ix * iy / area if area > 0 else 0.0


def _centre(b: NormBox) -> tuple[float, float]:
    return b[0] + b[2] / 2, b[1] + b[3] / 2


def _distance(a: NormBox, b: NormBox, *, own: bool = False) -> float:
    """Centre distance in units of the larger box diagonal, or of `a`'s with `own` (a track's
    reach must not grow with the size of an odd box around it and its neighbours)."""
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    unit = math.hypot(a[2], a[3]) if own else max(math.hypot(a[2], a[3]), math.hypot(b[2], b[3]))
    return math.hypot(ax - bx, ay - by) / max(unit, 1e-6)


def _offset(a: NormBox, b: NormBox) -> float:
    """Centre distance in frame units."""
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    return math.hypot(ax - bx, ay - by)


def _similar(a: NormBox, b: NormBox) -> bool:
    """Boxes of about the same size: one object seen again, not one box of it and another of
    it with something beside it. A box cut by the frame's edge (entering or leaving the view)
    is compared only along that edge."""
    cut_x = _cut(a[0], a[2]) or _cut(b[0], b[2])  # by the left or right edge: its width is cut
    cut_y = _cut(a[1], a[3]) or _cut(b[1], b[3])
    if cut_x and cut_y:
        return True
    if cut_x:
        return _within(a[3], b[3], SIZE_RATIO**0.5)
    if cut_y:
        return _within(a[2], b[2], SIZE_RATIO**0.5)
    return _within(a[2] * a[3], b[2] * b[3], SIZE_RATIO)


def _reshaped(track: _Track) -> bool:
    """A new vehicle track whose first box was never seen again: every box since is of another
    size, and the last RESHAPE_HITS agree with each other. That first box was an odd one (the
    car and its neighbour, a box over the lane), which the car's true boxes would never leave as
    a move. A car seen whole and then partly hidden has had boxes like its first: not this."""
    if track.moved or label_group(track.label) != "vehicle" or track.anchor != track.first_box:
        return False
    if len(track.recent) < RESHAPE_HITS or track.hits > len(track.recent) + 1:  # not all boxes since
        return False
    last = list(track.recent)[-RESHAPE_HITS:]
    unlike_first = all(not _similar(track.anchor, b) for b in track.recent)
    return unlike_first and all(_similar(b, last[-1]) for b in last)


def _cut(start: float, extent: float) -> bool:
    return start <= EDGE or start + extent >= 1 - EDGE


def _reach(unseen_s: float) -> float:
    """How far (in its own box diagonals) a mover unseen this long may have gone."""
    return min(MATCH_DISTANCE + GATE_GROWTH * max(unseen_s - 0.5, 0.0), MAX_GATE)


def _reached(heading: NormBox, box: NormBox, unseen_s: float) -> float | None:
    """How far `box` is from `heading` (in its own box diagonals), if it is where a mover heading
    there, unseen this long, may be; None if it is beyond reach."""
    dist = _distance(heading, box, own=True)
    return dist if dist <= _reach(unseen_s) and _offset(heading, box) <= MAX_GATE_FRAME else None


def _overlaps(track: _Track, box: NormBox, ts: float) -> bool:
    return max(iou(track.predicted(ts), box), iou(track.box, box)) >= MATCH_IOU


def _within(a: float, b: float, ratio: float) -> bool:
    return a > 0 and b > 0 and 1 / ratio <= b / a <= ratio


def _covered(box: NormBox, areas: Sequence[NormBox]) -> bool:
    cx, cy = _centre(box)
    return any(x <= cx <= x + w and y <= cy <= y + h for x, y, w, h in areas)


def _one_box_a_body(objects: Sequence[DetectedObject]) -> list[DetectedObject]:
    """`objects` less the model's second boxes on one person: a person box whose centre is
    within half the narrower width of a better-scoring one's and which shares most of its
    height (SAME_BODY_HEIGHT) is the same body. The SSD's own suppression keeps such pairs at an
    overlap of 0.4; two people cannot stand that close at one depth, and one behind the other
    is hidden."""
    kept: list[DetectedObject] = []
    for obj in sorted(objects, key=lambda o: -o.score):
        if label_group(obj.label) == "person" and any(
            label_group(o.label) == "person" and _same_body(o.box, obj.box) for o in kept
        ):
            continue
        kept.append(obj)
    return kept


def _same_body(a: NormBox, b: NormBox) -> bool:
    apart = abs((a[0] + a[2] / 2) - (b[0] + b[2] / 2))
    shared = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return apart < 0.5 * min(a[2], b[2]) and shared >= SAME_BODY_HEIGHT * min(a[3], b[3])


def _part_of(
    obj: DetectedObject, objects: Sequence[DetectedObject], tracked: Sequence[DetectedObject]
) -> bool:
    """Whether `obj` is another box of an object in the same frame rather than a new object: it
    lies inside a larger box of its group (the front of a car), or it holds a box of its group
    that continues a track (the detector's box around that object and what stands beside it)."""
    group = label_group(obj.label)
    area = obj.box[2] * obj.box[3]
    return any(
        other is not obj
        and label_group(other.label) == group
        and other.box[2] * other.box[3] > area
        and inside(obj.box, other.box) >= PART_OF
        for other in objects
    ) or any(label_group(other.label) == group and inside(other.box, obj.box) >= PART_OF for other in tracked)


@dataclass(frozen=True, slots=True)
class TrackView:
    """What a tracked object looks like now, for pictures (`edge-agent replay --annotate`).

    `track_id` counts up per tracker from 1; `seen` says whether the last detection fed to the
    tracker found it; `event_id` is its open event, if any."""

    track_id: int
    label: str
    box: NormBox
    score: float
    stationary: bool
    seen: bool
    event_id: str | None


@dataclass(slots=True, eq=False)  # compared by identity: two tracks are never "equal"
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
    still_ts: float = 0.0  # when a stationary track was last seen where it stands
    misses: int = 0  # looks since the last hit that did not find it
    checked_ts: float = 0.0  # when a detection last looked at its box
    event_id: str | None = None
    started_ts: float = 0.0
    last_phase_ts: float = 0.0
    seen_since_phase: bool = False
    best_score: float = -1.0
    best_frame: Image | None = None
    best_pending: bool = False  # the best frame improved since the last phase
    track_id: int = 0
    recent: deque[NormBox] = field(default_factory=lambda: deque(maxlen=RECENT))  # last boxes
    first_box: NormBox | None = None  # where it began (None: restored from the state file)

    @property
    def label(self) -> str:
        return max(self.votes.items(), key=lambda kv: kv[1])[0]

    def predicted(self, ts: float) -> NormBox:
        if self.stationary:
            return self.box
        # Until it has moved, its velocity may be the detector's jitter: guess only a frame or two on.
        dt = min(max(ts - self.last_ts, 0.0), PREDICT_S if self.moved else PREDICT_STILL_S)
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
        state_path: Path | None = None,
    ) -> None:
        """`state_path`: where stationary tracks are kept across restarts (None: not kept)."""
        self.camera_id = camera_id
        self.settings = settings
        self._new_id = new_id
        self._tracks: list[_Track] = []
        self._ids = 0  # track ids handed out
        self._last_update_ts: float | None = None
        self._state_path = state_path
        self._restored: list[tuple[str, NormBox]] | None = self._load() if state_path else None
        self._saved: list[tuple[str, NormBox]] = list(self._restored or [])

    def update_settings(self, settings: DetectionSettings) -> None:
        self.settings = settings

    @property
    def open_events(self) -> int:
        return sum(1 for t in self._tracks if t.event_id is not None)

    @property
    def track_count(self) -> int:
        return len(self._tracks)

    def tracks(self) -> list[TrackView]:
        """Every live track, oldest first."""
        return [
            TrackView(
                t.track_id,
                t.label,
                t.box,
                round(t.score, 4),
                t.stationary,
                t.last_ts == self._last_update_ts,
                t.event_id,
            )
            for t in self._tracks
        ]

    def stationary_boxes(self) -> list[tuple[str, NormBox]]:
        """(label, box) of each stationary track."""
        return [(t.label, t.box) for t in self._tracks if t.stationary]

    # -- public steps ---------------------------------------------------------------------------

    def update(
        self, objects: Sequence[DetectedObject], frame: Frame, looked: Sequence[NormBox] | None = None
    ) -> list[EventPhase]:
        """Feed the (already filtered) objects detected in `frame`; return the phases to publish.

        `looked` is where the detector looked (normalised crops); None means the whole frame. A
        track it covered and did not find counts a miss.
        """
        ts = frame.ts
        self._last_update_ts = ts
        phases = self.tick(ts, frame.pts)
        objects = _one_box_a_body(objects)
        matched = self._match(objects, ts)
        for ti, oi in matched:
            self._hit(self._tracks[ti], objects[oi], frame)
        hit = {ti for ti, _ in matched}
        for ti, track in enumerate(self._tracks):
            if ti in hit:
                continue
            guess = track.predicted(ts)
            if looked is None or _covered(guess, looked):
                track.misses += 1
                track.checked_ts = ts
        taken = {oi for _, oi in matched}
        for oi, obj in enumerate(objects):
            if (
                oi not in taken
                and len(self._tracks) < MAX_TRACKS
                and not self._shadow(obj)
                and not _part_of(obj, objects, [objects[o] for o in taken])
            ):
                self._tracks.append(self._new_track(obj, frame))
        self._hand_over(ts)
        for track in self._tracks:
            phase = self._advance(track, ts, frame.pts)
            if phase is not None:
                phases.append(phase)
        return phases

    def tick(self, ts: float, offset_s: float = 0.0) -> list[EventPhase]:
        """End the events of lost tracks, make quiet ones stationary; call this regularly."""
        self._restore(ts)
        s = self.settings
        phases: list[EventPhase] = []
        alive: list[_Track] = []
        for track in self._tracks:
            unseen = ts - track.last_ts
            gone = self._gone(track, ts) and unseen >= min(s.end_delay_s, PREDICT_S)  # left the view
            # A parked car is hidden whenever someone stands in front of it: it is lost only
            # after missing for as long as it takes to become stationary.
            patience = max(s.end_delay_s, s.stationary_s) if track.stationary else s.end_delay_s
            if not track.stationary and label_group(track.label) == "person":
                patience *= PERSON_PATIENCE  # missed for longer; a lingering car takes the next one
            if gone or (unseen >= patience and track.misses >= LOSE_MISSES):
                if track.event_id is not None:
                    phases.append(self._phase(track, "end", ts, offset_s, ended_at=track.last_ts))
                continue
            alive.append(track)
            if not track.stationary and unseen >= s.stationary_s and track.misses == 0:
                # Nothing moved near it and nothing looked at it: it stands somewhere, unseen.
                self._stand(track)
                if track.event_id is not None:
                    phases.append(self._phase(track, "end", ts, offset_s, ended_at=track.last_ts))
        self._tracks = alive
        self._save_if_changed()
        return phases

    def due_checks(self, ts: float) -> list[NormBox]:
        """Boxes to look at now: stationary tracks every `stationary_check_s`, and tracks unseen
        for `end_delay_s` that nothing looked at since (so a vanished object is found lost)."""
        return [box for _, box in self.due(ts)]

    def due(self, ts: float) -> list[tuple[CheckReason, NormBox]]:
        """`due_checks` with why each box is due: "stationary" (the periodic look at a parked
        object) or "recheck" (a moving track unseen for `end_delay_s`)."""
        self._restore(ts)
        s = self.settings
        due: list[tuple[CheckReason, NormBox]] = []
        for t in self._tracks:
            since = ts - max(t.checked_ts, t.last_ts)
            if t.stationary and since >= s.stationary_check_s:
                due.append(("stationary", t.predicted(ts)))
            elif not t.stationary and since >= s.end_delay_s and not self._gone(t, ts):
                due.append(("recheck", t.predicted(ts)))
        return due

    def motion_cover(self, ts: float, within_s: float) -> tuple[list[NormBox], list[NormBox]]:
        """(known, pending) predicted boxes, to decide which motion needs a detection now.

        known: confirmed tracks (an open event, or stationary) seen or looked at within
        `within_s`: motion on them is that object, and prediction carries it to the next look.
        pending: tracks that may still start an event (not stationary, no event yet): an event
        needs `min_hits` detections and a move, so motion on them is looked at every time."""
        self._restore(ts)
        known: list[NormBox] = []
        pending: list[NormBox] = []
        for t in self._tracks:
            if t.stationary or t.event_id is not None:
                if ts - max(t.checked_ts, t.last_ts) < within_s - 1e-6:
                    known.append(t.predicted(ts))
            else:
                pending.append(t.predicted(ts))
        return known, pending

    def close(self, ts: float, offset_s: float = 0.0) -> list[EventPhase]:
        """End every open event (shutdown or detection switched off), keep the stationary tracks
        in the state file and forget all tracks."""
        self._save_if_changed()
        phases = [self._phase(t, "end", ts, offset_s, ended_at=t.last_ts) for t in self._tracks if t.event_id]
        self._tracks = []
        return phases

    # -- matching -------------------------------------------------------------------------------

    def _match(self, objects: Sequence[DetectedObject], ts: float) -> list[tuple[int, int]]:
        """Greedy one-to-one matching: same-group pairs first, best overlap first."""
        candidates: list[tuple[int, float, float, int, int]] = []
        # A box on a stationary object is that object's, or a mover's that overlaps it: never a
        # far track's (a half-car box must not pull another car's track over).
        parked = [self._shadow(obj) for obj in objects]
        own = [p and self._standing_at(obj) for p, obj in zip(parked, objects, strict=True)]
        # The tracks each vehicle box stands on (by overlap), which a far track may not take it from.
        on = [
            [ti for ti, t in enumerate(self._tracks) if _overlaps(t, o.box, ts)]
            if label_group(o.label) == "vehicle"
            else []
            for o in objects
        ]
        for ti, track in enumerate(self._tracks):
            guesses = (track.predicted(ts), track.box)  # moving on, or stopped
            group = label_group(track.label)
            gate = MATCH_DISTANCE  # a stationary object does not wander off
            if track.moved:  # a mover unseen for a while may be further on; a still one is not
                gate = _reach(min(ts - track.last_ts, self.settings.end_delay_s))
            for oi, obj in enumerate(objects):
                same = label_group(obj.label) == group
                if parked[oi] and not track.stationary:
                    # A box on a parked object continues a mover only where the mover is now,
                    # never by distance or where a velocity from jitter points, and never the
                    # parked object's own box: a car passing in front of a parked one goes on
                    # predicted, instead of staying behind on the parked car.
                    if own[oi]:
                        continue
                    overlap = iou(track.box, obj.box)
                    if overlap >= (MATCH_IOU if same else CROSS_LABEL_IOU):
                        candidates.append((0 if same else 1, -overlap, 0.0, ti, oi))
                    continue
                overlap = max(iou(g, obj.box) for g in guesses)
                if track.stationary:
                    # Only a box where it stands: a car pulling up beside it or someone in front
                    # of it is another object, not this one moving.
                    held = inside(obj.box, track.anchor)
                    if iou(obj.box, track.anchor) < SHADOW_IOU and held < SHADOW_INSIDE:
                        continue
                    overlap = max(overlap, 0.5 * held)
                dist = min(_distance(g, obj.box, own=True) for g in guesses)
                near = dist <= MATCH_DISTANCE or (
                    dist <= gate and min(_offset(g, obj.box) for g in guesses) <= MAX_GATE_FRAME
                )
                if near and overlap < MATCH_IOU and group == "vehicle":
                    # By distance, a vehicle takes only a box of its own size that no other
                    # vehicle stands on: the model's second box on a car beside it, or another car
                    # after a cut, is not this one moving.
                    near = _similar(track.box, obj.box) and not any(
                        o != ti and label_group(self._tracks[o].label) == group for o in on[oi]
                    )
                if (same and (overlap >= MATCH_IOU or near)) or overlap >= CROSS_LABEL_IOU:
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
        ts = frame.ts
        track = _Track(box=obj.box, first_ts=ts, last_ts=ts, anchor=obj.box, anchor_ts=ts, checked_ts=ts)
        track.first_box = obj.box
        track.votes[obj.label] += obj.score
        track.score = obj.score
        self._ids += 1
        track.track_id = self._ids
        self._remember_best(track, obj.score, frame)
        return track

    def _hit(self, track: _Track, obj: DetectedObject, frame: Frame) -> None:
        ts = frame.ts
        dt = ts - track.last_ts
        track.last_ts = track.checked_ts = ts
        track.misses = 0
        track.hits += 1
        track.votes[obj.label] += obj.score
        track.score += SCORE_ALPHA * (obj.score - track.score)
        track.seen_since_phase = True
        self._remember_best(track, obj.score, frame)
        away = (
            iou(track.anchor, obj.box) < STATIONARY_IOU
            and inside(obj.box, track.anchor) < OCCLUDED
            and _distance(track.anchor, obj.box) >= MOVE_DISTANCE
            and _offset(track.anchor, obj.box) >= MOVE_FRAME
            # A vehicle keeps its shape: an odd box (half a car, a car and a passer-by) is a change
            # of shape, not a move. A person's box changes with each step and each railing.
            and (label_group(obj.label) != "vehicle" or _similar(track.anchor, obj.box))
        )
        if track.stationary:
            # It stays where it stands: its box follows only the detector's jitter, never a box
            # around it and someone in front. Edging out, it leaves its box in the same way as a
            # mover MOVE_HITS times in a row, and drives off as this track.
            if away:
                track.away_hits += 1
                if track.away_hits >= MOVE_HITS:
                    self._depart(track, obj.box, ts)
                    self._remember_best(track, obj.score, frame)
            else:
                track.away_hits = 0
                if _distance(track.anchor, obj.box) < STILL_DISTANCE:
                    track.still_ts = ts
            if track.stationary:
                if iou(obj.box, track.anchor) >= STATIONARY_IOU and inside(obj.box, track.anchor) < OCCLUDED:
                    track.box = obj.box
                return
        occluded = not away and inside(obj.box, track.anchor) >= OCCLUDED and iou(track.anchor, obj.box) < 0.7
        if dt > 0 and not occluded:
            (cx, cy), (ox, oy) = _centre(track.box), _centre(obj.box)
            vx, vy = (ox - cx) / dt, (oy - cy) / dt
            track.velocity = (0.5 * track.velocity[0] + 0.5 * vx, 0.5 * track.velocity[1] + 0.5 * vy)
        track.box = obj.box
        track.recent.append(obj.box)
        if not away:  # still where it was
            track.away_hits = 0
            if _reshaped(track):
                track.anchor, track.anchor_ts = track.recent[-RESHAPE_HITS], ts
            if ts - track.anchor_ts >= self.settings.stationary_s:
                self._stand(track)
            return
        track.away_hits += 1
        if track.away_hits >= MOVE_HITS:
            track.moved, track.away_hits = True, 0
            track.anchor, track.anchor_ts = obj.box, ts

    @staticmethod
    def _depart(track: _Track, box: NormBox, ts: float) -> None:
        """Make stationary `track` a mover again. Its event, if it comes, starts when it was
        last seen standing, not when it was first seen (hours ago, perhaps), and its snapshot is
        a frame of it leaving, not the best one of it parked."""
        track.first_ts = max(track.still_ts, track.anchor_ts)
        track.best_score, track.best_frame = -1.0, None
        track.stationary, track.moved, track.away_hits = False, True, 0
        track.anchor, track.anchor_ts = box, ts
        track.recent.clear()

    @staticmethod
    def _stand(track: _Track) -> None:
        """Make `track` stationary where it stands: the median of its last boxes, so that one
        odd box (the object and someone in front of it) is not what it is matched with."""
        if track.recent:
            x, y, w, h = (statistics.median(b[i] for b in track.recent) for i in range(4))
            track.box = (x, y, w, h)
        track.stationary, track.moved, track.away_hits = True, False, 0
        track.anchor, track.anchor_ts = track.box, track.last_ts
        track.still_ts = track.last_ts
        track.velocity = (0.0, 0.0)

    def _shadow(self, obj: DetectedObject) -> bool:
        """A second box on a stationary object: the part of it beside someone in front of it, or
        the detector's box around it and that someone together."""
        group = label_group(obj.label)
        return any(
            t.stationary
            and label_group(t.label) == group
            and (
                inside(obj.box, t.anchor) >= SHADOW_INSIDE
                or iou(obj.box, t.anchor) >= SHADOW_IOU
                or inside(t.anchor, obj.box) >= SHADOW_HOLDS
            )
            for t in self._tracks
        )

    def _hand_over(self, ts: float) -> None:
        """A person's new track, about to start its event, that is an unseen event track's
        person found again (`_found_again`) hands over: the old track takes its boxes and its
        event goes on.

        In a group the model's boxes shift from frame to frame; the old track misses a few, a
        new one starts on the shifted box, and the old one, starved, would end while the person
        raised a second event."""
        s = self.settings
        merged: list[_Track] = []
        for new in self._tracks:
            if (
                new.event_id is not None
                or new.stationary
                or not new.moved
                or new.hits < s.min_hits
                or new.last_ts != ts
                or label_group(new.label) != "person"
            ):
                continue
            best: tuple[float, _Track] | None = None
            for old in self._tracks:
                if (
                    old is new
                    or old in merged
                    or old.event_id is None
                    or old.stationary
                    or old.last_ts == ts  # seen now: another person
                    or label_group(old.label) != "person"
                ):
                    continue
                dist = self._found_again(old, new, ts)
                if dist is not None and (best is None or dist < best[0]):
                    best = (dist, old)
            if best is not None:
                self._take_over(best[1], new)
                merged.append(new)
        if merged:
            self._tracks = [t for t in self._tracks if t not in merged]

    @staticmethod
    def _found_again(old: _Track, new: _Track, ts: float) -> float | None:
        """How far (in `old`'s box diagonals) `new` is from where `old` was heading, if `new` may
        be `old`'s person found again: it began there as `old` went unseen (seen at most
        HANDOVER_S after), or it is there now and moves the same way. The second is a person
        whose box a neighbour's track took by overlap for a while, starving the old track; two
        people crossing move opposite ways."""
        if old.last_ts <= new.first_ts + HANDOVER_S:
            heading = old.predicted(new.first_ts)
            began = _reached(heading, new.first_box or new.box, new.first_ts - old.last_ts)
            if began is not None:
                return began
        same_way = old.velocity[0] * new.velocity[0] + old.velocity[1] * new.velocity[1] > 0
        return _reached(old.predicted(ts), new.box, ts - old.last_ts) if same_way else None

    @staticmethod
    def _take_over(old: _Track, new: _Track) -> None:
        """`old` goes on with where `new` has seen the object since."""
        old.box, old.last_ts, old.checked_ts, old.misses = new.box, new.last_ts, new.checked_ts, 0
        old.velocity, old.hits, old.seen_since_phase = new.velocity, old.hits + new.hits, True
        old.recent.extend(new.recent)
        for label, votes in new.votes.items():
            old.votes[label] += votes
        if new.best_score > old.best_score:
            old.best_score, old.best_frame, old.best_pending = new.best_score, new.best_frame, True

    def _twin(self, track: _Track) -> bool:
        """An older track of its group that is not parked (or one with its event open) overlaps
        it as much as two boxes of one object do (the model's second box on a person): no event
        of its own while so. Two people who walk in together part, and the second event starts
        then."""
        group = label_group(track.label)
        return any(
            other is not track
            and not other.stationary
            and (other.event_id is not None or other.track_id < track.track_id)
            and label_group(other.label) == group
            and (
                iou(other.box, track.box) >= TWIN_IOU
                or inside(track.box, other.box) >= PART_OF
                or inside(other.box, track.box) >= PART_OF
            )
            for other in self._tracks
        )

    def _standing_at(self, obj: DetectedObject) -> bool:
        """`obj` is where a stationary object of its group stands: that object's box."""
        group = label_group(obj.label)
        return any(
            t.stationary and label_group(t.label) == group and iou(obj.box, t.anchor) >= STATIONARY_IOU
            for t in self._tracks
        )

    @staticmethod
    def _gone(track: _Track, ts: float) -> bool:
        """Predicted to have left the frame."""
        cx, cy = _centre(track.predicted(ts))
        return not (0.0 <= cx <= 1.0 and 0.0 <= cy <= 1.0)

    @staticmethod
    def _remember_best(track: _Track, score: float, frame: Frame) -> None:
        if score > track.best_score:
            track.best_score, track.best_frame = score, frame.image
            track.best_pending = True

    # -- events ---------------------------------------------------------------------------------

    def _advance(self, track: _Track, ts: float, offset_s: float) -> EventPhase | None:
        """The phase this track owes now, if any: start, update, or end on becoming stationary."""
        if track.event_id is None:
            if (
                not track.moved
                or track.stationary
                or track.hits < self.settings.min_hits
                or ts - track.first_ts < self._min_duration(track)
                or track.last_ts != ts
                or self._twin(track)
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

    def _min_duration(self, track: _Track) -> float:
        """How long `track` must have been tracked before its event starts."""
        s = self.settings
        if label_group(track.label) == "person":
            return max(s.min_duration_s, s.person_min_duration_s)
        return s.min_duration_s

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
            ended_at=iso(max(ended_at, track.started_ts)) if ended_at is not None else None,
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

    # -- state across restarts ------------------------------------------------------------------

    def _load(self) -> list[tuple[str, NormBox]]:
        path = self._state_path
        assert path is not None
        try:
            out: list[tuple[str, NormBox]] = []
            with os.fdopen(open_read(path), "rb") as handle:  # never through a link
                raw = json.loads(handle.read())
            if raw.get("version") != STATE_VERSION:
                raise ValueError(f"unknown version {raw.get('version')!r}")
            for item in raw["stationary"][:MAX_SAVED]:
                x, y, w, h = (float(v) for v in item["box"])
                if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0 and 0.0 < w <= 1.0 and 0.0 < h <= 1.0):
                    raise ValueError(f"box {item['box']} is not normalised")
                out.append((str(item["label"]), (x, y, w, h)))
        except FileNotFoundError:
            return []
        except NotADirectoryError:  # a file where the state folder goes: set aside (logged there)
            with contextlib.suppress(OSError):
                state_dir(path.parent)
            return []
        except LinkRefused as exc:
            why = exc.strerror or "refused"
            if path.is_dir() and not path.is_symlink():  # the saves would fail for as long as it is there
                try:
                    why += f"; moved to {set_aside(path).name}"
                except OSError as stuck:
                    why += f"; cannot be moved aside: {stuck.strerror or stuck}"
            log.warning("camera %s: ignoring stationary objects in %s: %s", self.camera_id, path, why)
            return []
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("camera %s: ignoring stationary objects in %s: %s", self.camera_id, path, exc)
            return []
        return out

    def _restore(self, ts: float) -> None:
        """Bring back saved stationary tracks at the first frame; each is checked soon after."""
        if not self._restored:
            self._restored = None
            return
        for label, box in self._restored:
            track = _Track(box=box, first_ts=ts, last_ts=ts, anchor=box, anchor_ts=ts, stationary=True)
            track.checked_ts = ts - self.settings.stationary_check_s  # due for a look at once
            track.votes[label] = 1.0
            self._ids += 1
            track.track_id = self._ids
            self._tracks.append(track)
        self._restored = None

    def _save_if_changed(self) -> None:
        if self._state_path is None or self._restored:
            return
        now = [(t.label, tuple(round(v, 4) for v in t.anchor)) for t in self._tracks if t.stationary][
            :MAX_SAVED
        ]
        if now == self._saved:
            return
        self._saved = now  # type: ignore[assignment]
        body = {
            "version": STATE_VERSION,
            "camera": self.camera_id,
            "stationary": [{"label": label, "box": list(box)} for label, box in now],
        }
        try:
            state_dir(self._state_path.parent)  # a file in its place is set aside
            write_atomic(self._state_path, json.dumps(body).encode())
        except OSError as exc:  # a full disk costs the memory of parked objects, nothing else
            log.warning(
                "camera %s: cannot save stationary objects to %s: %s", self.camera_id, self._state_path, exc
            )
