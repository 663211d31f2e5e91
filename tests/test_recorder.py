"""The clip recorder: an MP4 per event spanning pre-roll to post-roll, clip_id on the end phase."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.analysis.events import EventPhase
from agent.capture.source import Frame
from agent.clock import iso
from agent.config import CameraConfig
from agent.contract.messages import Event
from agent.footage.clips import ClipError
from agent.footage.prebuffer import PreEventBuffer
from agent.footage.recorder import ClipRecorder, ClipSettings
from agent.footage.retention import Retention
from agent.footage.store import ClipStore

FPS = 10.0
MASK = ((0.0, 0.0), (0.4, 0.0), (0.4, 0.5), (0.0, 0.5))


def scene(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    img = np.asarray(cv2.GaussianBlur(rng.integers(120, 256, (180, 320, 3), dtype=np.uint8), (5, 5), 0))
    return img.astype(np.uint8)


class Camera:
    """Feeds a PreEventBuffer with frames whose clock starts in the past, as fast as asked."""

    def __init__(self, seconds: float = 10.0) -> None:
        self.t0 = time.time() - 600.0
        self.buffer = PreEventBuffer(seconds=seconds, max_bytes=64 << 20, jpeg_quality=85)
        self.i = 0

    def run_until(self, t: float) -> None:
        while self.t0 + self.i / FPS <= self.t0 + t + 1e-9:
            ts = self.t0 + self.i / FPS
            self.buffer.push(Frame(scene(self.i), ts=ts, pts=self.i / FPS, seq=self.i))
            self.i += 1


def phase(cam: Camera, event_id: str, name: str, start: float, at: float) -> EventPhase:
    event = Event(
        event_id=event_id,
        camera="cam-1",
        kind="motion",
        phase=name,  # type: ignore[arg-type]
        started_at=iso(cam.t0 + start),
        ts=iso(cam.t0 + at),
        ended_at=iso(cam.t0 + at) if name == "end" else None,
        score=0.6,
    )
    return EventPhase(event=event, frame=None, offset_s=at)


def make(
    tmp_path: Path, cam: Camera, settings: ClipSettings | None = None, **kw: object
) -> tuple[ClipRecorder, ClipStore]:
    store = ClipStore(tmp_path / "clips")
    chosen = settings or ClipSettings(pre_roll_s=2.0, post_roll_s=1.0, masks=(MASK,))
    recorder = ClipRecorder(store, {"cam-1": cam.buffer}, lambda _cam: chosen, **kw)  # type: ignore[arg-type]
    return recorder, store


def frame_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    for _ in range(10_000):
        ok, img = cap.read()
        if not ok:
            break
        h, w = img.shape[:2]
        assert img[2 : h // 2 - 8, 2 : int(w * 0.4) - 8].max() <= 12, "privacy mask missing"
        n += 1
    cap.release()
    return n


def wait_for_clip(store: ClipStore, clip_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            store.get(clip_id)
        except ClipError:
            time.sleep(0.05)
        else:
            return
    pytest.fail(f"clip {clip_id} was not written within {timeout} s")


def test_end_phase_carries_the_clip_id_and_the_clip_spans_pre_to_post_roll(tmp_path: Path) -> None:
    cam = Camera()
    recorder, store = make(tmp_path, cam, poll_s=0.05)
    recorder.start()
    try:
        eid = str(uuid.uuid4())
        cam.run_until(6.0)
        start = phase(cam, eid, "start", 6.0, 6.0)
        assert recorder.on_phase(start) is start
        cam.run_until(7.0)
        recorder.on_phase(phase(cam, eid, "update", 6.0, 7.0))
        cam.run_until(8.0)
        end = recorder.on_phase(phase(cam, eid, "end", 6.0, 8.0))
        clip_id = end.event.clip_id
        assert clip_id is not None
        assert end.event.phase == "end"
        cam.run_until(10.0)  # post-roll frames arrive after the end phase
        wait_for_clip(store, clip_id)
    finally:
        recorder.stop()
    info = store.get(clip_id)
    assert info.event_id == eid
    assert info.start == pytest.approx(cam.t0 + 4.0, abs=0.11)  # start - pre_roll
    assert info.end == pytest.approx(cam.t0 + 9.0, abs=0.11)  # end + post_roll
    assert 49 <= frame_count(store.path(clip_id)) <= 53
    assert recorder.stats().written == 1


def test_event_longer_than_the_buffer_keeps_its_beginning(tmp_path: Path) -> None:
    cam = Camera(seconds=2.0)
    recorder, store = make(tmp_path, cam)
    eid = str(uuid.uuid4())
    cam.run_until(3.0)
    recorder.on_phase(phase(cam, eid, "start", 3.0, 3.0))
    for t in np.arange(3.5, 12.01, 0.5):  # the collector's polls, done by hand here
        cam.run_until(float(t))
        recorder.collect()
    end = recorder.on_phase(phase(cam, eid, "end", 3.0, 11.0))
    assert end.event.clip_id is not None
    recorder.collect()
    recorder.start()
    recorder.stop()  # writes what was handed over
    info = store.get(end.event.clip_id)
    assert info.start == pytest.approx(cam.t0 + 1.0, abs=0.11)
    assert info.end == pytest.approx(cam.t0 + 12.0, abs=0.11)
    assert 108 <= frame_count(store.path(info.clip_id)) <= 113
    # The recording is footage a later export reads (an export is not, issue 13).
    gone = cam.buffer.frames_between(cam.t0 + 1.0, cam.t0 + 5.0)
    assert gone == [], "the span has left the buffer"
    exported = store.export("cam-1", cam.t0 + 1.0, cam.t0 + 5.0, gone)
    assert (exported.fps, exported.source) == (10.0, "export")
    assert 39 <= frame_count(store.path(exported.clip_id)) <= 42


def test_memory_budget_thins_frames_but_keeps_the_span(tmp_path: Path) -> None:
    cam = Camera()
    recorder, store = make(tmp_path, cam, max_job_bytes=200_000)
    eid = str(uuid.uuid4())
    cam.run_until(5.0)
    recorder.on_phase(phase(cam, eid, "start", 4.0, 4.0))
    for t in range(6, 13):
        cam.run_until(float(t))
        recorder.collect()
    end = recorder.on_phase(phase(cam, eid, "end", 4.0, 11.0))
    cam.run_until(13.0)
    recorder.collect()
    recorder.start()
    recorder.stop()
    assert end.event.clip_id is not None
    info = store.get(end.event.clip_id)
    assert recorder.stats().thinned > 0
    assert info.start == pytest.approx(cam.t0 + 2.0, abs=0.11)
    assert info.end == pytest.approx(cam.t0 + 12.0, abs=0.5)
    assert info.fps < FPS  # fewer frames kept, still played at true speed
    assert info.duration_s == pytest.approx(10.0, abs=1.5)


def test_stop_writes_ended_and_running_events_without_waiting_for_post_roll(tmp_path: Path) -> None:
    cam = Camera()
    recorder, store = make(tmp_path, cam, settings=ClipSettings(pre_roll_s=1.0, post_roll_s=60.0))
    recorder.start()
    eid, running = str(uuid.uuid4()), str(uuid.uuid4())
    cam.run_until(3.0)
    recorder.on_phase(phase(cam, eid, "start", 2.0, 2.0))
    end = recorder.on_phase(phase(cam, eid, "end", 2.0, 3.0))
    other = recorder.on_phase(phase(cam, running, "start", 2.5, 2.5))
    recorder.stop()
    assert end.event.clip_id is not None
    assert store.get(end.event.clip_id).end == pytest.approx(cam.t0 + 3.0, abs=0.11)
    assert other.event.clip_id is None
    # An event that never ended still gets its footage (evidence), found by its event_id.
    (kept,) = [c for c in store.clips() if c.event_id == running]
    assert kept.start == pytest.approx(cam.t0 + 1.5, abs=0.11)
    assert kept.end == pytest.approx(cam.t0 + 3.0, abs=0.11)
    assert len(store.clips()) == 2


def test_too_many_events_at_once_get_no_clip_and_are_counted(tmp_path: Path) -> None:
    cam = Camera()
    recorder, _ = make(tmp_path, cam, max_jobs=1)
    cam.run_until(3.0)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    recorder.on_phase(phase(cam, a, "start", 2.0, 2.0))
    recorder.on_phase(phase(cam, b, "start", 2.5, 2.5))
    assert recorder.on_phase(phase(cam, b, "end", 2.5, 3.0)).event.clip_id is None
    assert recorder.on_phase(phase(cam, a, "end", 2.0, 3.0)).event.clip_id is not None
    assert recorder.stats().skipped_busy == 1


def test_disabled_camera_gets_no_clip(tmp_path: Path) -> None:
    cam = Camera()
    recorder, _ = make(tmp_path, cam, settings=ClipSettings(enabled=False))
    cam.run_until(3.0)
    eid = str(uuid.uuid4())
    recorder.on_phase(phase(cam, eid, "start", 2.0, 2.0))
    assert recorder.on_phase(phase(cam, eid, "end", 2.0, 3.0)).event.clip_id is None
    assert recorder.stats().active == 0


def test_disk_full_skips_the_clip_and_events_carry_on(tmp_path: Path) -> None:
    cam = Camera()
    store = ClipStore(tmp_path / "clips")
    retention = Retention(store, 1 << 30, min_free_bytes=1 << 62)
    recorder = ClipRecorder(
        store,
        {"cam-1": cam.buffer},
        lambda _c: ClipSettings(pre_roll_s=1, post_roll_s=0.5),
        retention=retention,
    )
    recorder.start()
    cam.run_until(4.0)
    eid = str(uuid.uuid4())
    recorder.on_phase(phase(cam, eid, "start", 2.0, 2.0))
    end = recorder.on_phase(phase(cam, eid, "end", 2.0, 3.0))
    recorder.collect()
    recorder.stop()
    assert end.event.clip_id is not None
    assert recorder.stats().skipped_disk_full == 1
    assert retention.disk_full
    with pytest.raises(ClipError) as err:
        store.get(end.event.clip_id)
    assert err.value.code == "not_found"


def test_settings_from_camera_config() -> None:
    cam = CameraConfig.model_validate(
        {
            "id": "cam-1",
            "source": "synthetic:street",
            "privacy_masks": [[[0, 0], [0.5, 0], [0.5, 0.5]]],
            "clips": {"pre_roll_s": 3, "post_roll_s": 4},
        }
    )
    settings = ClipSettings.from_camera(cam)
    assert settings == ClipSettings(
        enabled=True, pre_roll_s=3.0, post_roll_s=4.0, masks=(((0.0, 0.0), (0.5, 0.0), (0.5, 0.5)),)
    )


def test_stalled_camera_still_gets_its_clip_after_the_grace(tmp_path: Path) -> None:
    cam = Camera()
    recorder, store = make(tmp_path, cam, poll_s=0.05, grace_s=0.3)
    recorder.start()
    try:
        eid = str(uuid.uuid4())
        cam.run_until(4.0)
        recorder.on_phase(phase(cam, eid, "start", 3.0, 3.0))
        end = recorder.on_phase(phase(cam, eid, "end", 3.0, 4.0))
        assert end.event.clip_id is not None
        wait_for_clip(store, end.event.clip_id)  # no post-roll frame ever arrives
    finally:
        recorder.stop()
    assert store.get(end.event.clip_id).end == pytest.approx(cam.t0 + 4.0, abs=0.11)


def test_masks_added_while_the_event_runs_are_applied(tmp_path: Path) -> None:
    cam = Camera()
    current = {"settings": ClipSettings(pre_roll_s=1.0, post_roll_s=0.0)}
    store = ClipStore(tmp_path / "clips")
    recorder = ClipRecorder(store, {"cam-1": cam.buffer}, lambda _c: current["settings"])
    cam.run_until(3.0)
    eid = str(uuid.uuid4())
    recorder.on_phase(phase(cam, eid, "start", 2.0, 2.0))
    current["settings"] = ClipSettings(pre_roll_s=1.0, post_roll_s=0.0, masks=(MASK,))  # config.set
    end = recorder.on_phase(phase(cam, eid, "end", 2.0, 3.0))
    recorder.start()
    recorder.stop()
    assert end.event.clip_id is not None
    assert frame_count(store.path(end.event.clip_id)) >= 10  # checks the mask in every frame
