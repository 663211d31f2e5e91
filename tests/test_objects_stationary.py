"""Object events a control room can trust: parked objects stay quiet, across restarts; a person
the detector misses for a while stays one event; motion events can be switched off."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest

from agent.analysis.events import EventPhase
from agent.analysis.objects.tracker import ObjectTracker
from agent.analysis.replay import replay
from agent.capture.source import Frame
from agent.clock import parse_iso
from agent.config import CameraConfig, DetectionSettings, MotionSettings
from agent.contract.messages import DetectedObject
from tests.scenes import write_crossing

T0 = 1_800_000_000.0
SETTINGS = DetectionSettings(enabled=True, min_hits=3, end_delay_s=3.0, stationary_s=5.0)
CAR = (0.6, 0.4, 0.2, 0.2)
WHOLE = [(0.0, 0.0, 1.0, 1.0)]


def frame(ts: float) -> Frame:
    return Frame(image=np.zeros((4, 4, 3), np.uint8), ts=ts, pts=ts - T0, seq=0)


def obj(label: str, box: tuple[float, float, float, float], score: float = 0.7) -> DetectedObject:
    return DetectedObject(label=label, score=score, box=box)


def tracker(state: Path | None = None) -> ObjectTracker:
    ids = itertools.count()
    return ObjectTracker("cam-1", SETTINGS, new_id=lambda: f"ev-{next(ids)}", state_path=state)


def starts(phases: list[EventPhase], label: str) -> int:
    return sum(p.event.phase == "start" and p.event.objects[0].label == label for p in phases)


def people_pass_the_car(t: ObjectTracker, t0: float) -> list[EventPhase]:
    """A person walks in front of the parked car for 4 s; crops see the car partly hidden."""
    phases: list[EventPhase] = []
    for i in range(40):
        x = 0.3 + 0.015 * i
        person = obj("person", (x, 0.35, 0.06, 0.4))
        car = (0.6, 0.4, min(max(0.02, x - 0.6), 0.2), 0.2)  # only the part left of the person shows
        crop = [(x - 0.15, 0.1, 0.4, 0.8)]
        phases += t.update([person, obj("car", car, 0.55)], frame(t0 + i * 0.1), crop)
    return phases


def test_a_car_parked_at_the_start_raises_nothing_while_people_pass_it() -> None:
    t = tracker()
    phases = t.update([obj("car", CAR)], frame(T0), WHOLE)  # the first full-frame pass
    for k in range(3):  # three passers-by, a minute apart, with nothing looking in between
        phases += people_pass_the_car(t, T0 + 5.0 + 60.0 * k)
    assert starts(phases, "car") == 0
    assert starts(phases, "person") == 3


def test_a_car_that_parks_is_one_event_and_its_driving_off_another(tmp_path: Path) -> None:
    t = tracker()
    phases: list[EventPhase] = []
    for i in range(30):  # drives in and stops at CAR
        x = max(0.6, 1.0 - 0.05 * i)
        phases += t.update([obj("car", (x, 0.4, 0.2, 0.2))], frame(T0 + i * 0.1), WHOLE)
    for i in range(8):  # parked; checked every second
        phases += t.update([obj("car", CAR)], frame(T0 + 3.0 + i), WHOLE)
    phases += people_pass_the_car(t, T0 + 20.0)
    assert starts(phases, "car") == 1
    assert [p.event.phase for p in phases if p.event.objects[0].label == "car"][-1] == "end"
    for i in range(10):  # drives off to the left
        phases += t.update([obj("car", (0.6 - 0.06 * i, 0.4, 0.2, 0.2))], frame(T0 + 30.0 + i * 0.1), WHOLE)
    assert starts(phases, "car") == 2


def test_stationary_objects_survive_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "objects-cam-1.json"
    first = tracker(state)
    for i in range(8):
        first.update([obj("car", CAR)], frame(T0 + i), WHOLE)
    first.close(T0 + 8.0)
    assert state.exists()

    second = tracker(state)  # the agent restarted: its first frame shows someone beside the car
    phases = people_pass_the_car(second, T0 + 100.0)
    assert starts(phases, "car") == 0
    assert second.stationary_boxes() == [("car", CAR)]
    assert second.due_checks(T0 + 200.0) == [CAR]  # and it is re-checked now and then


def test_a_car_parked_before_a_restart_that_then_drives_off_is_one_event_from_the_restart(
    tmp_path: Path,
) -> None:
    state = tmp_path / "objects-cam-1.json"
    first = tracker(state)
    for i in range(8):
        first.update([obj("car", CAR)], frame(T0 + i), WHOLE)
    first.close(T0 + 8.0)

    second = tracker(state)  # restarted an hour later; the car is still there, then pulls out
    restart = T0 + 3600.0
    phases: list[EventPhase] = []
    for i in range(10):
        phases += second.update([obj("car", CAR)], frame(restart + i * 0.1), WHOLE)
    for i in range(1, 20):
        box = (0.6 - 0.02 * i, 0.4, 0.2, 0.2)
        phases += second.update([obj("car", box)], frame(restart + 1.0 + i * 0.1), WHOLE)
    car_starts = [p for p in phases if p.event.phase == "start"]
    assert [p.event.objects[0].label for p in car_starts] == ["car"]
    started = car_starts[0].event.started_at
    assert parse_iso(started) >= restart  # not its first sighting an hour before
    assert second.stationary_boxes() == []


@pytest.mark.parametrize("body", ["{not json", '{"version": 99, "stationary": []}', '{"version": 1}'])
def test_a_damaged_state_file_is_named_and_ignored(
    tmp_path: Path, body: str, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "objects-cam-1.json"
    state.write_text(body, encoding="utf-8")
    caplog.set_level(logging.WARNING)
    t = tracker(state)
    assert t.update([obj("car", CAR)], frame(T0), WHOLE) == []
    assert any(str(state) in r.getMessage() for r in caplog.records)


def test_a_person_the_detector_misses_for_two_seconds_stays_one_event() -> None:
    t = tracker()
    phases: list[EventPhase] = []
    for i in range(80):
        x = 0.05 + 0.01 * i
        missed = 30 <= i < 52  # 2.2 s of looks that find nothing where the person walks
        seen = [] if missed else [obj("person", (x, 0.3, 0.05, 0.2))]
        phases += t.update(seen, frame(T0 + i * 0.1), [(x - 0.1, 0.1, 0.3, 0.6)])
    phases += t.close(T0 + 8.0)
    assert [p.event.phase for p in phases].count("start") == 1
    assert {p.event.event_id for p in phases} == {"ev-0"}


def test_a_camera_can_publish_objects_without_motion_events(tmp_path: Path) -> None:
    scene = write_crossing(tmp_path / "crossing.mp4")
    base = CameraConfig(id="cam", source=f"file://{scene.path}")
    quiet = base.model_copy(
        update={
            "motion": MotionSettings(publish_events=False),
            "detection": DetectionSettings(enabled=True),
        }
    )
    kinds = {row["kind"] for row in replay(scene.path, quiet)}
    assert kinds == {"object"}
    both = base.model_copy(update={"detection": DetectionSettings(enabled=True)})
    assert {row["kind"] for row in replay(scene.path, both)} == {"motion", "object"}
