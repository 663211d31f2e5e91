"""Event clips on the packet path: the camera's own H.264 packets remuxed, judged by ffprobe and pixels."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from agent.analysis.events import EventPhase
from agent.capture.packets import StreamInfo, StreamPacket
from agent.clock import iso
from agent.contract.messages import Event
from agent.footage.packet_recorder import PacketRecorder
from agent.footage.packet_ring import PacketRing
from agent.footage.recorder import ClipSettings
from agent.footage.store import ClipStore

FPS = 25
GOP = 50  # a keyframe every 2 s, as IP cameras commonly send


def encode(path: Path, *, seconds: float, size: str = "320x180", pattern: str = "testsrc2") -> Path:
    """Real H.264 made by ffmpeg: fixed GOP, no B-frames (as cameras in zerolatency mode send)."""
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size={size}:rate={FPS}",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-g", str(GOP),
            "-keyint_min", str(GOP), "-sc_threshold", "0", "-bf", "0", "-pix_fmt", "yuv420p", str(path),
        ],
        check=True,
    )  # fmt: skip
    return path


def demux(path: Path, t0: float, session: int) -> list[StreamPacket]:
    """The file's packets as a camera session would deliver them, the first at wall time `t0`."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        assert stream.time_base is not None and stream.average_rate is not None
        info = StreamInfo(
            codec=ctx.name,
            width=ctx.width,
            height=ctx.height,
            fps=float(stream.average_rate),
            time_base=stream.time_base,
            extradata=ctx.extradata,
            session=session,
        )
        out = []
        for pkt in container.demux(stream):
            if pkt.size == 0 or pkt.pts is None:
                continue
            ts = t0 + float(pkt.pts * stream.time_base)
            out.append(StreamPacket(bytes(pkt), pkt.pts, pkt.dts, pkt.is_keyframe, ts, info))
    return out


def decode_all(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def probe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [
            "ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
            "stream=codec_name,width,height,r_frame_rate,nb_read_frames:format=duration", "-of", "json",
            str(path),
        ],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    data = json.loads(out.stdout)
    return {**data["streams"][0], "duration": float(data["format"]["duration"])}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is not installed: run scripts/bootstrap")
    d = tmp_path_factory.mktemp("packets")
    return {
        "a": encode(d / "a.mp4", seconds=12),
        "b": encode(d / "b.mp4", seconds=6, pattern="smptehdbars"),
        "wide": encode(d / "wide.mp4", seconds=6, size="480x270"),
    }


class Camera:
    """Pushes packets into a real ring as time passes (time is the packets' own wall clock)."""

    def __init__(self, packets: list[StreamPacket], seconds: float = 10.0) -> None:
        self.ring = PacketRing(seconds=seconds, max_bytes=64 << 20)
        self.queue = list(packets)
        self.now = 0.0

    def run_until(self, ts: float) -> None:
        while self.queue and self.queue[0].ts <= ts:
            self.ring.push(self.queue.pop(0))

    def then(self, packets: list[StreamPacket]) -> None:
        self.queue.extend(packets)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def phase(event_id: str, name: str, started: float, at: float) -> EventPhase:
    event = Event(
        event_id=event_id,
        camera="cam-1",
        kind="motion",
        phase=name,  # type: ignore[arg-type]
        started_at=iso(started),
        ts=iso(at),
        ended_at=iso(at) if name == "end" else None,
        score=0.6,
    )
    return EventPhase(event=event, frame=None, offset_s=0.0)


def recorder_for(
    tmp_path: Path, cam: Camera, *, pre: float = 1.5, post: float = 1.0, **kw: object
) -> tuple[PacketRecorder, ClipStore, Clock]:
    store = ClipStore(tmp_path / "clips")
    clock = Clock()
    settings = ClipSettings(pre_roll_s=pre, post_roll_s=post)
    rec = PacketRecorder(store, {"cam-1": cam.ring}, lambda _c: settings, clock=clock, **kw)  # type: ignore[arg-type]
    return rec, store, clock


T0 = 1_750_000_000.0


def test_an_event_clip_is_the_cameras_own_video_from_the_keyframe_before_its_pre_roll(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    packets = demux(media["a"], T0, session=1)
    cam = Camera(packets)
    rec, store, _ = recorder_for(tmp_path, cam, pre=1.5, post=1.0)
    eid = str(uuid.uuid4())
    cam.run_until(T0 + 5.0)
    rec.on_phase(phase(eid, "start", T0 + 4.5, T0 + 5.0))  # pre-roll from 3.0: keyframe at 2.0
    rec.collect()
    cam.run_until(T0 + 7.0)
    rec.collect()
    end = rec.on_phase(phase(eid, "end", T0 + 4.5, T0 + 7.0))
    clip_id = end.event.clip_id
    assert clip_id is not None
    cam.run_until(T0 + 8.2)  # past end + post-roll
    rec.collect()

    info = store.get(clip_id)
    path = store.path(clip_id)
    meta = probe(path)
    seen = (meta["codec_name"], meta["width"], meta["height"], meta["r_frame_rate"])
    assert seen == ("h264", 320, 180, "25/1")
    assert info.start == pytest.approx(T0 + 2.0, abs=1e-3)  # one keyframe interval at most before 3.0
    assert info.end == pytest.approx(T0 + 8.0, abs=0.05)
    frames = int(str(meta["nb_read_frames"]))
    expected = float(meta["duration"]) * FPS
    assert abs(frames - expected) <= 0.02 * expected, (frames, expected)
    assert frames == pytest.approx(6.0 * FPS, abs=2)

    # The same pixels the camera sent: the clip's frames are the source's frames 50.. (t = 2.0 s).
    source = decode_all(media["a"])
    clip = decode_all(path)
    for i in (0, 1, len(clip) // 2, len(clip) - 1):
        assert np.array_equal(clip[i], source[50 + i]), f"frame {i} differs from the camera's"
    assert rec.stats().written == 1 and rec.stats().failed == 0
    assert not list((tmp_path / "clips").glob("*.part*"))


def test_a_stop_in_the_middle_of_an_event_keeps_its_clip_up_to_the_stop(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    cam = Camera(demux(media["a"], T0, session=1))
    rec, store, _ = recorder_for(tmp_path, cam)
    rec.start()
    promised = str(uuid.uuid4())
    unended = str(uuid.uuid4())
    cam.run_until(T0 + 4.0)
    rec.on_phase(phase(promised, "start", T0 + 3.0, T0 + 3.0))
    rec.on_phase(phase(unended, "start", T0 + 3.5, T0 + 3.5))
    cam.run_until(T0 + 6.0)
    end = rec.on_phase(phase(promised, "end", T0 + 3.0, T0 + 5.5))  # post-roll never comes
    t = time.monotonic()
    rec.stop(timeout_s=2.0)
    assert time.monotonic() - t < 2.0

    clip = store.get(str(end.event.clip_id))
    assert clip.event_id == promised and clip.end == pytest.approx(T0 + 6.0, abs=0.05)
    kept = [c for c in store.clips("cam-1") if c.event_id == unended]
    assert len(kept) == 1, "an event the camera could not end still keeps its footage"
    for c in (clip, kept[0]):
        meta = probe(store.path(c.clip_id))
        assert meta["codec_name"] == "h264" and int(str(meta["nb_read_frames"])) > 50
    assert not list((tmp_path / "clips").glob("*.part*"))


def test_a_camera_restart_mid_clip_continues_the_clip(tmp_path: Path, media: dict[str, Path]) -> None:
    first = [p for p in demux(media["a"], T0, session=1) if p.ts < T0 + 4.0]
    second = demux(media["a"], T0 + 6.0, session=2)  # back after 2 s, timestamps from zero again
    cam = Camera(first)
    rec, store, _ = recorder_for(tmp_path, cam, pre=1.0, post=1.0)
    eid = str(uuid.uuid4())
    cam.run_until(T0 + 3.0)
    rec.on_phase(phase(eid, "start", T0 + 3.0, T0 + 3.0))  # pre-roll from 2.0
    cam.run_until(T0 + 4.0)
    rec.collect()
    cam.then(second)
    cam.run_until(T0 + 8.5)
    rec.collect()
    end = rec.on_phase(phase(eid, "end", T0 + 3.0, T0 + 8.0))
    cam.run_until(T0 + 9.5)
    rec.collect()

    path = store.path(str(end.event.clip_id))
    meta = probe(path)
    frames = int(str(meta["nb_read_frames"]))
    expected = float(meta["duration"]) * FPS
    assert abs(frames - expected) <= 0.02 * expected, (frames, expected)
    assert frames == pytest.approx((2.0 + 3.0) * FPS, abs=3)  # 2.0-4.0, then 6.0-9.0
    assert meta["width"] == 320


def test_a_resolution_change_ends_the_clip_where_it_happened(tmp_path: Path, media: dict[str, Path]) -> None:
    first = [p for p in demux(media["a"], T0, session=1) if p.ts < T0 + 4.0]
    cam = Camera(first + demux(media["wide"], T0 + 4.5, session=2))
    rec, store, _ = recorder_for(tmp_path, cam, pre=1.0, post=1.0)
    eid = str(uuid.uuid4())
    cam.run_until(T0 + 3.0)
    rec.on_phase(phase(eid, "start", T0 + 3.0, T0 + 3.0))
    cam.run_until(T0 + 7.0)
    rec.collect()
    end = rec.on_phase(phase(eid, "end", T0 + 3.0, T0 + 6.0))
    cam.run_until(T0 + 8.0)
    rec.collect()

    clip = store.get(str(end.event.clip_id))
    meta = probe(store.path(clip.clip_id))
    assert (meta["width"], meta["height"]) == (320, 180)
    frames = int(str(meta["nb_read_frames"]))
    assert frames == pytest.approx(2.0 * FPS, abs=2)  # 2.0 up to the change at 4.0
    assert abs(frames - float(meta["duration"]) * FPS) <= 0.02 * frames


def test_an_event_with_no_packets_publishes_a_clip_id_that_answers_not_found(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    cam = Camera([])
    rec, store, clock = recorder_for(tmp_path, cam, grace_s=1.0)
    eid = str(uuid.uuid4())
    rec.on_phase(phase(eid, "start", T0 + 1.0, T0 + 1.0))
    end = rec.on_phase(phase(eid, "end", T0 + 1.0, T0 + 2.0))
    clock.t += 5.0
    rec.collect()
    assert rec.stats().failed == 1 and rec.stats().written == 0
    assert "no packets" in str(rec.stats().last_error)
    with pytest.raises(Exception, match="no clip"):
        store.get(str(end.event.clip_id))


def test_jobs_beyond_max_jobs_get_no_clip_and_are_counted(tmp_path: Path, media: dict[str, Path]) -> None:
    cam = Camera(demux(media["b"], T0, session=1))
    rec, _, _ = recorder_for(tmp_path, cam, max_jobs=1)
    cam.run_until(T0 + 2.0)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    rec.on_phase(phase(a, "start", T0 + 2.0, T0 + 2.0))
    rec.on_phase(phase(b, "start", T0 + 2.0, T0 + 2.0))
    assert rec.on_phase(phase(b, "end", T0 + 2.0, T0 + 3.0)).event.clip_id is None
    assert rec.stats().skipped_busy == 1


def test_phases_of_cameras_it_does_not_own_pass_untouched(tmp_path: Path, media: dict[str, Path]) -> None:
    cam = Camera([])
    store = ClipStore(tmp_path / "clips")
    rec = PacketRecorder(store, {"other": cam.ring}, lambda _c: ClipSettings())
    end = phase(str(uuid.uuid4()), "end", T0, T0 + 1.0)
    assert rec.on_phase(end) is end
