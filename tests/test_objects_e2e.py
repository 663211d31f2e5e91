"""End to end: object events from `edge-agent run` and `edge-agent replay` on real imagery.

The videos (tests/scenes.py) slide a photographed person and a photographed car across a still
frame of a real street, so the vendored TFLite model sees what it was trained on and the ground
truth is exact. The platform side is a subscriber on a real Mosquitto.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.analysis.objects import DEFAULT_LABELS, DetectionModel
from agent.analysis.objects.regions import extract, plan_crops
from agent.config import DetectionSettings
from tests.conftest import Broker
from tests.harness import GatewayRun, Subscriber, write_config
from tests.scenes import (
    VEHICLE_LABELS,
    Mover,
    Scene,
    street_background,
    write_crossing,
    write_lightswitch,
)

DISTRICT = "objdistrict"
MIN_HITS = 3
END_DELAY_S = 1.5
DETECTION = f"[cameras.detection]\nenabled = true\nmin_hits = {MIN_HITS}\nend_delay_s = {END_DELAY_S}\n"
NormBox = tuple[float, float, float, float]
Event = dict[str, Any]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Scene]:
    d = tmp_path_factory.mktemp("scenes")
    return {
        "crossing": write_crossing(d / "crossing.mp4"),
        "person": write_crossing(d / "person.mp4", vehicle=False),
        "lightswitch": write_lightswitch(d / "lightswitch.mp4"),
    }


def camera(cam_id: str, scene: Scene, extra: str = "") -> str:
    source = f"file://{scene.path}"
    return f'[[cameras]]\nid = "{cam_id}"\nsource = "{source}"\nallowed_agencies = ["police"]\n{extra}\n'


class Gateway(GatewayRun):
    """An agent subprocess on the session broker and the platform's subscriber on its root."""

    def __init__(self, tmp: Path, broker: Broker, gateway: str, cameras: str, extra: str = "") -> None:
        super().__init__(tmp, broker.host, broker.port, DISTRICT, gateway, cameras, extra)
        self.broker = broker

    def events(self, cam: str, kind: str | None = None) -> list[Event]:
        return [e for e in super().events(cam) if kind is None or e["kind"] == kind]

    def wait_event(self, cam: str, kind: str, phase: str, timeout: float, label: str | None = None) -> bool:
        def seen(_: object) -> bool:
            return any(
                e["phase"] == phase
                and (
                    label is None
                    or label_of(e) == label
                    or (label == "vehicle" and label_of(e) in VEHICLE_LABELS)
                )
                for e in self.events(cam, kind)
            )

        return self.sub.wait_for(seen, timeout)

    def stop_cleanly(self) -> None:
        code, took = self.agent.terminate()
        assert code == 0, self.agent.log()
        assert took < 5.0
        assert self.sub.wait_for(
            lambda ms: any(m.topic == self.root + "/status" and m.json()["state"] == "offline" for m in ms), 5
        )
        last = [m.json() for m in self.sub.on(self.root + "/status")][-1]
        assert (last["state"], last["reason"]) == ("offline", "shutdown")


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def gateway(tmp_path: Path, broker: Broker, unique_gateway: str) -> Iterator[GatewayFactory]:
    """Start an agent with these camera tables (and extra top-level TOML); closed after the test."""
    started: list[Gateway] = []

    def start(cameras: str, extra: str = "") -> Gateway:
        started.append(Gateway(tmp_path, broker, unique_gateway, cameras, extra))
        return started[-1]

    yield start
    for g in started:
        g.close()


# -- checks on what arrived ------------------------------------------------------------------------


def label_of(event: Event) -> str:
    objects = event["objects"]
    assert isinstance(objects, list), event
    assert len(objects) == 1, event
    return str(objects[0]["label"])


def box_of(event: Event) -> NormBox:
    x, y, w, h = event["objects"][0]["box"]
    return float(x), float(y), float(w), float(h)


def iou(a: NormBox, b: NormBox) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - ix * iy
    return ix * iy / union if union > 0 else 0.0


def best_overlap(scene: Scene, mover: Mover, box: NormBox) -> float:
    """How well `box` matches the mover anywhere along its path (for events without video time)."""
    steps = int((mover.t_exit - mover.t_enter) / 0.02)
    return max(iou(box, b) for i in range(steps) if (b := scene.box(mover, mover.t_enter + i * 0.02)))


def by_event_id(events: list[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for e in events:
        out.setdefault(str(e["event_id"]), []).append(e)
    return out


def assert_well_formed(phases: list[Event]) -> None:
    """One event_id: start, updates, exactly one end; protocol-shaped, boxes normalised."""
    kinds = [p["phase"] for p in phases]
    assert kinds[0] == "start", kinds
    assert kinds[-1] == "end", kinds
    assert kinds.count("start") == 1, kinds
    assert kinds.count("end") == 1, kinds
    assert phases[-1]["ended_at"] is not None
    assert len({p["started_at"] for p in phases}) == 1
    for p in phases:
        assert p["kind"] == "object"
        assert 0.0 <= p["score"] <= 1.0
        obj = p["objects"][0]
        assert 0.0 <= obj["score"] <= 1.0
        x, y, w, h = box_of(p)
        assert min(x, y) >= 0.0, obj
        assert min(w, h) > 0.0, obj
        assert max(x + w, y + h) <= 1.0 + 1e-6, obj


def centres(phases: list[Event]) -> list[float]:
    return [box_of(p)[0] + box_of(p)[2] / 2 for p in phases]


# -- the scenes are what the model knows -------------------------------------------------------------


def test_the_cutouts_are_recognised_by_the_vendored_model(scenes: dict[str, Scene]) -> None:
    """Precondition of everything below: a failure here means the scene, not the agent, broke."""
    model = DetectionModel.load(threads=1)
    for label, wanted in (("person", {"person"}), ("vehicle", VEHICLE_LABELS)):
        mover = scenes["crossing"].truth(label)
        sprite, top = mover.sprite, mover.top
        frame = street_background()
        h, w = sprite.shape[:2]
        frame[top : top + h, 220 : 220 + w] = sprite
        fh, fw = frame.shape[:2]
        (crop,) = plan_crops([(220 / fw, top / fh, w / fw, h / fh)], (fw, fh), 300)
        rgb = np.asarray(cv2.cvtColor(extract(frame, crop, 300), cv2.COLOR_BGR2RGB), np.uint8)
        found = model.detect(rgb, min_score=0.5)
        assert {d.label for d in found} & wanted, found


# -- edge-agent run ------------------------------------------------------------------------------------


@pytest.mark.broker
def test_run_publishes_one_object_event_per_crossing_and_none_for_light_switches(
    gateway: GatewayFactory, scenes: dict[str, Scene], broker: Broker
) -> None:
    crossing, lights = scenes["crossing"], scenes["lightswitch"]
    gw = gateway(camera("cam-1", crossing, DETECTION) + camera("cam-2", lights, DETECTION))
    # The car leaves at 9.5 s of the 13 s video; its event ends END_DELAY_S after it was last seen.
    assert gw.wait_event("cam-1", "object", "end", 45, label="vehicle"), gw.agent.log()
    gw.stop_cleanly()

    objects = gw.events("cam-1", "object")
    events = by_event_id(objects)
    person = [phases for phases in events.values() if label_of(phases[0]) == "person"]
    vehicle = [phases for phases in events.values() if label_of(phases[0]) in VEHICLE_LABELS]
    labels = {k: label_of(v[0]) for k, v in events.items()}
    assert len(person) == 1, labels
    assert len(vehicle) == 1, labels
    assert len(events) == 2, labels
    for phases, mover, rightwards in (
        (person[0], crossing.truth("person"), True),
        (vehicle[0], crossing.truth("vehicle"), False),
    ):
        assert_well_formed(phases)
        assert {label_of(p) for p in phases} == {label_of(phases[0])}
        for p in phases:
            assert p["camera"] == "cam-1"
            assert best_overlap(crossing, mover, box_of(p)) >= 0.5, (p, mover.label)
        xs = centres(phases)
        steps = [b - a for a, b in itertools.pairwise(xs)]
        assert all(s >= -0.02 if rightwards else s <= 0.02 for s in steps), xs
        assert abs(xs[-1] - xs[0]) >= 0.3, xs  # it was followed across, not seen once
    # The person's event ended before the car's began: two objects, two separate events.
    assert person[0][-1]["ended_at"] <= vehicle[0][0]["ts"]

    # Motion events carry on beside object events.
    motion = by_event_id(gw.events("cam-1", "motion"))
    assert motion
    assert all(p[0]["phase"] == "start" for p in motion.values())

    # Each object event's best frame became the camera's snapshot, as a full-size JPEG.
    snaps = gw.sub.on("/cam/cam-1/snapshot")
    snap_ids = [s.user_properties.get("event_id") for s in snaps]
    assert person[0][0]["event_id"] in snap_ids
    assert vehicle[0][0]["event_id"] in snap_ids
    for s in snaps:
        image = cv2.imdecode(np.frombuffer(s.payload, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None
        assert image.shape == (272, 640, 3)
    late = Subscriber(broker.host, broker.port, gw.root + "/cam/cam-1/snapshot")
    try:
        assert late.wait_for(lambda ms: any(m.retain for m in ms), 5)
        assert late.messages[-1].user_properties.get("event_id") == snap_ids[-1]
    finally:
        late.close()

    # Telemetry says what detection ran, and whether the cameras were over the budget.
    detection = [t["detection"] for t in (m.json() for m in gw.sub.on("/telemetry")) if "detection" in t]
    assert detection, "no telemetry with a detection section"
    assert detection[-1]["inferences"] > 0
    assert all(isinstance(d["pressed"], bool) for d in detection), detection

    # Light switches on a street with the same detector on: nothing at all.
    cam2 = [m.json() for m in gw.sub.on("/cam/cam-2/status")]
    assert any(s["state"] == "ok" for s in cam2), cam2
    assert gw.events("cam-2") == []
    assert gw.sub.on("/cam/cam-2/snapshot") == []


# -- edge-agent replay ---------------------------------------------------------------------------------


def test_replay_prints_object_events_at_the_right_offsets(scenes: dict[str, Scene], tmp_path: Path) -> None:
    crossing = scenes["crossing"]
    cfg = write_config(
        tmp_path / "agent.toml",
        district=DISTRICT,
        gateway="gw-replay",
        port=1883,
        data_dir=tmp_path / "data",
        cameras=camera("cam-1", crossing, DETECTION),
    )
    out = subprocess.run(
        [sys.executable, "-m", "agent", "replay", str(crossing.path), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert any(r["kind"] == "motion" for r in rows), rows
    objects = [r for r in rows if r["kind"] == "object"]
    events = by_event_id(objects)
    labels = sorted(label_of(phases[0]) for phases in events.values())
    assert len(events) == 2, labels
    assert labels[-1] == "person", labels
    assert labels[0] in VEHICLE_LABELS, labels

    frame_s = 1.0 / crossing.fps
    for phases in events.values():
        assert_well_formed(phases)
        mover = crossing.truth("person" if label_of(phases[0]) == "person" else "vehicle")
        start, end = phases[0], phases[-1]
        # It starts while the object is in view, at most a second after min_hits detections
        # could first have been made (a person's track waits person_min_duration_s first), and
        # ends within end_delay_s of it leaving (plus a frame).
        settle = DetectionSettings().person_min_duration_s if label_of(start) == "person" else 0.0
        earliest = mover.t_enter + max((MIN_HITS - 1) * frame_s, settle)
        assert earliest <= start["offset_s"] <= mover.t_enter + settle + 1.5, start
        assert end["offset_s"] <= mover.t_exit + END_DELAY_S + frame_s, end
        for p in phases[:-1]:  # start and updates report where the object is at offset_s
            truth = crossing.box(mover, p["offset_s"])
            assert truth is not None, p
            assert iou(box_of(p), truth) >= 0.5, (p, truth)
        # The end reports where it was last seen, at ended_at (replay's clock is EPOCH + offset).
        assert best_overlap(crossing, mover, box_of(end)) >= 0.5, end


# -- failures that must not take motion down -------------------------------------------------------------


def stub_packages(where: Path) -> Path:
    """Packages named like both TFLite interpreters whose import fails, shadowing the real ones."""
    for name in ("ai_edge_litert", "tflite_runtime"):
        pkg = where / name
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(
            f'raise ImportError("{name} is not installed on this test gateway")\n', encoding="utf-8"
        )
    return where


def assert_motion_carries_on(gw: Gateway) -> None:
    assert gw.wait_event("cam-1", "motion", "end", 30), gw.agent.log()
    for phases in by_event_id(gw.events("cam-1", "motion")).values():
        if phases[-1]["phase"] == "end":
            assert [p["phase"] for p in phases].count("start") == 1
    assert gw.events("cam-1", "object") == []


MOTION_QUICK = "[cameras.motion]\nend_delay_s = 0.5\n"


@pytest.mark.broker
def test_run_without_an_interpreter_logs_both_packages_and_keeps_motion(
    gateway: GatewayFactory, scenes: dict[str, Scene], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stubs = stub_packages(tmp_path / "stubs")
    inherited = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(stubs), inherited] if inherited else [str(stubs)]))
    gw = gateway(camera("cam-1", scenes["person"], MOTION_QUICK + DETECTION))
    assert_motion_carries_on(gw)
    gw.stop_cleanly()
    errors = [line for line in gw.agent.log().splitlines() if " ERROR " in line]
    assert any("ai_edge_litert" in line and "tflite_runtime" in line for line in errors), errors
    assert "Traceback" not in gw.agent.log()


@pytest.mark.broker
def test_run_with_a_missing_model_file_logs_it_and_keeps_motion(
    gateway: GatewayFactory, scenes: dict[str, Scene], tmp_path: Path
) -> None:
    missing = tmp_path / "models" / "missing.tflite"
    detector = f'[detector]\nmodel_path = "{missing}"\nlabels_path = "{DEFAULT_LABELS}"\n'
    gw = gateway(camera("cam-1", scenes["person"], MOTION_QUICK + DETECTION), extra=detector)
    assert_motion_carries_on(gw)
    gw.stop_cleanly()
    errors = [line for line in gw.agent.log().splitlines() if " ERROR " in line]
    assert any(str(missing) in line and "cannot read model" in line for line in errors), errors
    assert "Traceback" not in gw.agent.log()


def test_check_config_reports_a_missing_model_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.tflite"
    cfg = write_config(
        tmp_path / "agent.toml",
        district=DISTRICT,
        gateway="gw-check",
        port=1883,
        data_dir=tmp_path / "data",
        cameras='[[cameras]]\nid = "cam-1"\nsource = "synthetic:street"\n' + DETECTION,
        extra=f'[detector]\nmodel_path = "{missing}"\nlabels_path = "{DEFAULT_LABELS}"\n',
    )
    out = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "detector.model_path" in out.stderr
    assert str(missing) in out.stderr
