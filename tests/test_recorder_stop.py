"""No clip lost at a stop (pixel path): jobs the stop cannot encode are kept as their frames in
`clips-pending/` and the next start writes them under the clip_id already published.

Real parts throughout: a real ClipStore in a tmp dir, a real PreEventBuffer fed the synthetic
street scene, real ffmpeg (libx264) encoding, ffprobe to count what was written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.analysis.events import EventPhase
from agent.capture.source import Frame
from agent.capture.synthetic import Scene, SceneOptions
from agent.clock import iso
from agent.contract.messages import Event
from agent.footage.clips import ClipError, ClipInfo
from agent.footage.prebuffer import PreEventBuffer
from agent.footage.recorder import ClipRecorder, ClipSettings
from agent.footage.store import ClipStore
from agent.sdk.client import PlatformClient
from tests.conftest import Broker
from tests.harness import AgentProcess, Subscriber, wait_answering
from tests.test_durability_e2e import DISTRICT, agent_config, camera, received, videos
from tests.test_durability_e2e import wait_until as e2e_wait

FPS = 10.0
MASK = ((0.0, 0.0), (0.4, 0.0), (0.4, 0.5), (0.0, 0.5))

pytestmark = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs ffmpeg/ffprobe")
__all__ = ["videos"]  # the fixture is used by name, not referenced


class Camera:
    """The synthetic street at 10 fps into a real PreEventBuffer, with a clock 10 min in the past."""

    def __init__(self, name: str = "cam-1", size: tuple[int, int] = (640, 360), seed: int = 3) -> None:
        self.name = name
        self.scene = Scene(SceneOptions(kind="street", seed=seed, fps=FPS, width=size[0], height=size[1]))
        self.t0 = time.time() - 600.0
        self.buffer = PreEventBuffer(seconds=60.0, max_bytes=512 << 20, jpeg_quality=85)
        self.i = 0

    def run_until(self, t: float) -> None:
        while self.i / FPS <= t + 1e-9:
            self.buffer.push(Frame(self.scene.render(self.i), ts=self.t0 + self.i / FPS, pts=0.0, seq=self.i))
            self.i += 1

    def phase(self, event_id: str, name: str, start: float, at: float) -> EventPhase:
        event = Event(
            event_id=event_id,
            camera=self.name,
            kind="motion",
            phase=name,  # type: ignore[arg-type]
            started_at=iso(self.t0 + start),
            ts=iso(self.t0 + at),
            ended_at=iso(self.t0 + at) if name == "end" else None,
            score=0.6,
        )
        return EventPhase(event=event, frame=None, offset_s=at)


def recorder_for(
    data: Path, cams: list[Camera], settings: ClipSettings, **kw: float
) -> tuple[ClipRecorder, ClipStore]:
    store = ClipStore(data / "clips")
    buffers = {c.name: c.buffer for c in cams}
    return ClipRecorder(store, buffers, lambda _c: settings, **kw), store  # type: ignore[arg-type]


def wait_for(store: ClipStore, clip_id: str, timeout: float = 60.0) -> ClipInfo:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return store.get(clip_id)
        except ClipError:
            time.sleep(0.05)
    pytest.fail(f"clip {clip_id} was not written within {timeout} s")


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.005)


def ffprobe(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-of", "json",
         "-show_entries", "stream=codec_name,width,height,nb_read_frames", str(path)],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    stream: dict[str, object] = json.loads(out)["streams"][0]
    return stream


def decoded(path: Path) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, img = cap.read()
            if not ok:
                return
            yield np.asarray(img, dtype=np.int16)
    finally:
        cap.release()


def pending_root(data: Path) -> Path:
    return data / "clips-pending"


def leftovers(data: Path) -> list[str]:
    return sorted(p.name for p in (data / "clips").iterdir() if p.name.endswith((".part.mp4", ".tmp")))


def test_stop_while_encoding_keeps_the_clip_and_the_next_start_writes_it(tmp_path: Path) -> None:
    cam = Camera()
    settings = ClipSettings(pre_roll_s=2.0, post_roll_s=1.0)
    cam.run_until(23.0)
    recorder, _ = recorder_for(tmp_path, [cam], settings, poll_s=0.05)
    recorder.start()
    eid = str(uuid.uuid4())
    recorder.on_phase(cam.phase(eid, "start", 2.0, 2.0))
    end = recorder.on_phase(cam.phase(eid, "end", 2.0, 22.0))  # 21 s: 210 frames to encode
    clip_id = end.event.clip_id
    assert clip_id is not None
    wait_until((tmp_path / "clips" / f"{clip_id}.part.mp4").exists)  # ffmpeg is running
    t = time.monotonic()
    recorder.stop(timeout_s=0.3)
    took = time.monotonic() - t
    # The frames kept for the next start are written (and synced) after the budget; a loaded
    # disk takes a while for that, and finishing the 21 s encode would take seconds more.
    assert took < 1.0, f"stop took {took:.2f} s for a 0.3 s budget"

    # The encode was cut short: no half-written MP4, no clip yet, the frames kept on disk (private).
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "clips" / f"{clip_id}.mp4").exists()
    entry = pending_root(tmp_path) / clip_id
    assert stat.S_IMODE(entry.stat().st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in entry.iterdir()} == {
        "job.json": 0o600,
        "frames.jpg": 0o600,
    }
    assert recorder.stats().failed == 0

    # A new recorder on the same data dir (the restarted agent) writes it under the promised id.
    again, store = recorder_for(tmp_path, [Camera()], settings)  # a fresh, empty buffer
    again.start()
    try:
        info = wait_for(store, clip_id)
    finally:
        again.stop()
    assert info.event_id == eid
    assert info.start == pytest.approx(cam.t0 + 0.0, abs=0.11)  # start - pre_roll
    assert info.end == pytest.approx(cam.t0 + 23.0, abs=0.11)  # the end + post_roll the buffer had
    probe = ffprobe(store.path(clip_id))
    assert (probe["codec_name"], probe["width"], probe["height"]) == ("h264", 640, 360)
    assert (
        probe["nb_read_frames"]
        == str(info.frames)
        == str(len(cam.buffer.frames_between(info.start, info.end)))
    )
    assert info.frames >= 229  # 23 s at 10 fps
    assert not entry.exists(), "the finished entry is removed"

    # Its pixels are the buffered frames, in order: at 64x36 (sensor noise averaged away) each
    # clip frame matches the buffered JPEG of its instant, and not the one half a second later.
    def small(img: np.ndarray) -> np.ndarray:
        return np.asarray(cv2.resize(img.astype(np.uint8), (64, 36), interpolation=cv2.INTER_AREA), np.int16)

    buffered = [small(f.decode()) for f in cam.buffer.frames_between(info.start, info.end)]
    assert len(buffered) == info.frames
    own: list[int] = []
    moved: list[int] = []
    for k, img in enumerate(decoded(store.path(clip_id))):
        own.append(int(np.abs(small(img) - buffered[k]).max()))
        moved.append(int(np.abs(small(img) - buffered[(k + 5) % len(buffered)]).max()))
    assert len(own) == info.frames
    assert max(own) < 24, f"a clip frame differs from its buffered frame by {max(own)}"
    scene_moved = [(o, m) for o, m in zip(own, moved, strict=True) if m >= 30]
    assert len(scene_moved) > 0.3 * len(own), "the street scene moves in most of the clip"
    assert all(m > 2 * o for o, m in scene_moved), "a clip frame is not the frame of its instant"


def test_events_queued_collecting_and_running_are_all_kept_within_the_budget(tmp_path: Path) -> None:
    """8 jobs of 10 s at once (the admission limit): 3 ended and queued, 3 ended and waiting for
    post-roll, 2 still running. A 1 s stop keeps them all; the next start writes all 8."""
    cams = [Camera(f"cam-{n}", seed=n) for n in range(1, 5)]
    for c in cams:
        c.run_until(12.0)
    settings = ClipSettings(pre_roll_s=2.0, post_roll_s=3.0)
    recorder, _ = recorder_for(tmp_path, cams, settings, max_jobs=8)
    promised: dict[str, str] = {}
    running: list[str] = []
    for n in range(8):
        cam = cams[n % 4]
        eid = str(uuid.uuid4())
        recorder.on_phase(cam.phase(eid, "start", 2.0 + n * 0.1, 2.0 + n * 0.1))
        if n < 6:
            at = 8.0 if n < 3 else 11.5  # the first three have their post-roll already
            clip_id = recorder.on_phase(cam.phase(eid, "end", 2.0 + n * 0.1, at)).event.clip_id
            assert clip_id is not None
            promised[clip_id] = eid
        else:
            running.append(eid)
    recorder.collect()  # the first three move to the encoder's queue
    assert recorder.stats().queued == 3
    recorder.start()
    t = time.monotonic()
    recorder.stop(timeout_s=1.0)
    took = time.monotonic() - t
    assert took < 1.5, f"stop took {took:.2f} s for a 1 s budget"  # plus keeping the frames, as above
    assert leftovers(tmp_path) == []
    assert recorder.stats().failed == 0

    again, store = recorder_for(tmp_path, cams, settings)
    again.start()
    try:
        for clip_id, eid in promised.items():
            assert wait_for(store, clip_id).event_id == eid
        wait_until(lambda: len(store.clips()) == 8, timeout=60.0)
    finally:
        again.stop()
    by_event = {c.event_id: c for c in store.clips()}
    assert set(by_event) == {*promised.values(), *running}
    for eid in running:  # never promised, still evidence: up to the last frame before the stop
        info = by_event[eid]
        assert info.end == pytest.approx(cams[0].t0 + 12.0, abs=0.2)
        assert ffprobe(store.path(info.clip_id))["nb_read_frames"] == str(info.frames)
    assert list(pending_root(tmp_path).iterdir()) == []


def test_a_masked_camera_never_writes_unmasked_pixels_to_the_pending_folder(tmp_path: Path) -> None:
    busy, masked = Camera("cam-1", seed=1), Camera("cam-2", seed=2)
    busy.run_until(40.0)
    masked.run_until(8.0)
    store = ClipStore(tmp_path / "clips")
    plain = ClipSettings(pre_roll_s=1.0, post_roll_s=0.0)
    with_mask = ClipSettings(pre_roll_s=1.0, post_roll_s=30.0, masks=(MASK,))
    buffers = {"cam-1": busy.buffer, "cam-2": masked.buffer}

    def settings(camera: str) -> ClipSettings:
        return with_mask if camera == "cam-2" else plain

    recorder = ClipRecorder(store, buffers, settings)
    long_one = str(uuid.uuid4())  # 39 s to encode first: the masked clip never gets the encoder
    recorder.on_phase(busy.phase(long_one, "start", 1.0, 1.0))
    recorder.on_phase(busy.phase(long_one, "end", 1.0, 40.0))
    recorder.collect()
    eid = str(uuid.uuid4())
    recorder.on_phase(masked.phase(eid, "start", 2.0, 2.0))
    clip_id = recorder.on_phase(masked.phase(eid, "end", 2.0, 7.0)).event.clip_id
    assert clip_id is not None
    recorder.start()
    recorder.stop(timeout_s=1.0)
    entry = pending_root(tmp_path) / clip_id
    job = json.loads((entry / "job.json").read_bytes())
    blob = (entry / "frames.jpg").read_bytes()
    offset = 0
    for _ts, size in job["frames"]:
        img = cv2.imdecode(np.frombuffer(blob[offset : offset + size], np.uint8), cv2.IMREAD_COLOR)
        offset += size
        assert img is not None, "a kept frame is not a JPEG"
        h, w = img.shape[:2]
        assert img[2 : h // 2 - 4, 2 : int(w * 0.4) - 4].max() <= 12, "an unmasked pixel on disk"
        assert img[h // 2 + 4 :, int(w * 0.4) + 4 :].mean() > 40, "the rest of the scene is kept"
    assert len(job["frames"]) == 71  # 1 s pre-roll to the last frame before the stop

    again = ClipRecorder(ClipStore(tmp_path / "clips"), buffers, settings)
    again.start()
    try:
        info = wait_for(again.store, clip_id)
    finally:
        again.stop()
    frames = list(decoded(again.store.path(clip_id)))
    assert len(frames) == info.frames == 71
    for img in frames:
        h, w = img.shape[:2]
        assert img[2 : h // 2 - 8, 2 : int(w * 0.4) - 8].max() <= 12


def write_good_entry(data: Path, cam: Camera) -> str:
    """A pending entry as a stop writes it, made by a real stop."""
    recorder, _ = recorder_for(data, [cam], ClipSettings(pre_roll_s=1.0, post_roll_s=30.0))
    recorder.start()
    eid = str(uuid.uuid4())
    recorder.on_phase(cam.phase(eid, "start", 1.0, 1.0))
    clip_id = recorder.on_phase(cam.phase(eid, "end", 1.0, 2.0)).event.clip_id
    assert clip_id is not None
    recorder.stop(timeout_s=0.01)
    assert (pending_root(data) / clip_id / "job.json").exists()
    return clip_id


def test_corrupt_pending_entries_are_set_aside_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cam = Camera()
    cam.run_until(3.0)
    ids = [write_good_entry(tmp_path, cam) for _ in range(6)]
    good, truncated, linked, no_frames, short, linked_dir = ids
    root = pending_root(tmp_path)
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((root / linked / "frames.jpg").read_bytes())
    raw = (root / truncated / "job.json").read_bytes()
    (root / truncated / "job.json").write_bytes(raw[: len(raw) // 2])
    (root / linked / "frames.jpg").unlink()
    (root / linked / "frames.jpg").symlink_to(outside)
    (root / no_frames / "frames.jpg").unlink()
    frames = (root / short / "frames.jpg").read_bytes()
    (root / short / "frames.jpg").write_bytes(frames[:-1000])
    shutil.rmtree(root / linked_dir)
    (root / linked_dir).symlink_to(root / good)
    (root / f".{uuid.uuid4()}.tmp").mkdir()  # a save cut short by a kill

    caplog.set_level(logging.INFO)
    recorder, store = recorder_for(tmp_path, [cam], ClipSettings())
    recorder.start()
    try:
        wait_for(store, good)
        wait_until(lambda: list(root.iterdir()) == [], timeout=10.0)
    finally:
        recorder.stop()
    text = caplog.text
    assert f"pending clip {truncated} set aside: job.json is not JSON" in text
    assert f"pending clip {linked} set aside: frames.jpg is a symbolic link, refused" in text
    assert f"pending clip {no_frames} set aside: frames.jpg is missing" in text
    assert f"pending clip {short} set aside: frames.jpg is" in text and "shorter than its" in text
    assert f"pending clip {linked_dir} set aside: not a folder" in text
    assert "a save cut short" in text
    assert outside.exists() and outside.stat().st_size > 0, "a link's target is never touched"
    discarded = sorted(p.name for p in store.discard_dir.iterdir())
    for clip_id in (truncated, no_frames, short):
        assert any(name.startswith(f"pending-{clip_id}-job.json.") for name in discarded)
    assert not any(linked_dir in name for name in discarded), "a link is removed, not kept"
    assert [c.clip_id for c in store.clips()] == [good]
    assert recorder.stats().failed == 4


def test_resumed_clip_that_already_exists_is_not_written_twice(tmp_path: Path) -> None:
    """A stop saved the entry while the encoder was finishing the same clip (or a kill came
    between the two): the next start finds the clip in the store and drops the entry."""
    cam = Camera()
    cam.run_until(3.0)
    clip_id = write_good_entry(tmp_path, cam)
    saved = pending_root(tmp_path) / clip_id
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    recorder, store = recorder_for(tmp_path, [cam], ClipSettings())
    recorder.start()
    wait_for(store, clip_id)
    recorder.stop()
    shutil.copytree(copy, saved)
    again, store = recorder_for(tmp_path, [cam], ClipSettings())
    again.start()
    wait_until(lambda: not saved.exists(), timeout=10.0)
    again.stop()
    assert [c.clip_id for c in store.clips()] == [clip_id]
    assert again.stats().failed == 0


def test_a_pending_folder_that_cannot_be_written_loses_the_clip_with_a_clear_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cam = Camera()
    cam.run_until(3.0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    recorder, _ = recorder_for(tmp_path, [cam], ClipSettings(pre_roll_s=1.0, post_roll_s=30.0))
    recorder.start()
    pending_root(tmp_path).symlink_to(elsewhere)  # planted while running: never written through
    eid = str(uuid.uuid4())
    recorder.on_phase(cam.phase(eid, "start", 1.0, 1.0))
    clip_id = recorder.on_phase(cam.phase(eid, "end", 1.0, 2.0)).event.clip_id
    caplog.set_level(logging.WARNING)
    t = time.monotonic()
    recorder.stop(timeout_s=0.01)
    assert time.monotonic() - t < 0.2
    assert list(elsewhere.iterdir()) == []
    assert f"clip {clip_id} for event {eid} lost at stop: it could not be kept in" in caplog.text
    assert "symbolic link" in caplog.text
    assert recorder.stats().failed == 1
    assert leftovers(tmp_path) == []


def test_a_long_stop_budget_still_writes_every_clip_before_returning(tmp_path: Path) -> None:
    """With time enough (a library user's default 30 s) nothing is left pending."""
    cam = Camera()
    cam.run_until(6.0)
    recorder, store = recorder_for(tmp_path, [cam], ClipSettings(pre_roll_s=1.0, post_roll_s=30.0))
    recorder.start()
    eid = str(uuid.uuid4())
    recorder.on_phase(cam.phase(eid, "start", 2.0, 2.0))
    clip_id = recorder.on_phase(cam.phase(eid, "end", 2.0, 5.0)).event.clip_id
    assert clip_id is not None
    recorder.stop()
    assert store.get(clip_id).end == pytest.approx(cam.t0 + 6.0, abs=0.11)
    assert list(pending_root(tmp_path).iterdir()) == []
    assert sorted(os.listdir(tmp_path / "clips")) == [f"{clip_id}.json", f"{clip_id}.mp4"]


@pytest.mark.broker
def test_sigterm_during_an_event_clip_then_restart_and_clip_fetch_gets_it(
    tmp_path: Path,
    videos: list[Path],  # the durability tests' fixture, imported above
    unique_gateway: str,
    broker: Broker,
) -> None:
    """`edge-agent run`: the end phase promises a clip_id, SIGTERM comes while its post-roll is
    still being recorded, the restarted agent writes it, and `clip.fetch` returns it."""
    root = f"cctv/v1/{DISTRICT}/{unique_gateway}"
    cfg = agent_config(tmp_path, unique_gateway, broker.port, camera("cam-1", videos[0], post_roll_s=20.0))
    sub = Subscriber(broker.host, broker.port, root + "/cam/+/event")
    first = AgentProcess(cfg, tmp_path / "first.log")
    try:
        assert e2e_wait(lambda: any(p.clip_id for p in received(sub)), 30), first.log()
        end = next(p for p in received(sub) if p.clip_id)
        code, took = first.terminate()
    finally:
        first.close()
    assert code == 0 and took < 5.0, (code, took, first.log())
    assert f"clip {end.clip_id}" not in first.log() or "lost at stop" not in first.log(), first.log()
    assert not list((tmp_path / "data" / "clips").glob("*.part.mp4"))

    second = AgentProcess(cfg, tmp_path / "second.log")
    out = tmp_path / "fetched.mp4"
    try:
        video = tmp_path / "data" / "clips" / f"{end.clip_id}.mp4"
        assert e2e_wait(video.exists, 30), second.log()
        with PlatformClient(broker.host, broker.port, root, agency="police", operator="officer-1") as police:
            wait_answering(police)
            result = police.clip_fetch(str(end.clip_id), out, timeout=15)
    finally:
        second.close()
        sub.close()
    assert result["bytes"] == out.stat().st_size > 0
    probe = ffprobe(out)
    assert probe["codec_name"] == "h264" and int(str(probe["nb_read_frames"])) >= 10
    sidecar = json.loads((tmp_path / "data" / "clips" / f"{end.clip_id}.json").read_text())
    assert sidecar["event_id"] == end.event_id
    assert not list((tmp_path / "data" / "clips-pending").glob("*-*"))
