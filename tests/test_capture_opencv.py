"""OpenCVSource on real video files and a real MJPEG-over-HTTP server (RTSP: test_capture_pyav.py)."""

from __future__ import annotations

import http.server
import itertools
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pytest

from agent.capture.opencv import FALLBACK_FPS, OpenCVSource, redact, sane_fps
from agent.capture.source import EndOfStream, Frame, open_source
from agent.errors import SourceError

WIDTH, HEIGHT = 64, 48
STEP = 12  # frame i is a flat grey of i * STEP, so a frame's index survives compression


def make_video(path: Path, frames: int, fps: float) -> Path:
    """Write a real MPEG-4 file whose frame i has brightness i * STEP."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((HEIGHT, WIDTH, 3), i * STEP, np.uint8))
    writer.release()
    return path


def index_of(frame: Frame) -> int:
    return round(float(frame.image.mean()) / STEP)


def read_n(source: OpenCVSource, n: int) -> list[Frame]:
    return [source.read() for _ in range(n)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def video_2s(tmp_path: Path) -> Path:
    return make_video(tmp_path / "two seconds.mp4", frames=20, fps=10.0)


# -- files ---------------------------------------------------------------------------------


def test_file_plays_at_its_own_rate_and_loops_like_a_camera(tmp_path: Path) -> None:
    path = make_video(tmp_path / "one second.mp4", frames=10, fps=10.0)
    source = open_source(path.as_uri())  # realtime and looping by default
    assert isinstance(source, OpenCVSource)
    source.open()
    try:
        started = time.monotonic()
        frames = read_n(source, 15)
        elapsed = time.monotonic() - started
    finally:
        source.close()
    assert source.fps == 10.0
    assert source.size == (WIDTH, HEIGHT)
    assert [f.seq for f in frames] == list(range(15))
    assert [f.pts for f in frames] == pytest.approx([i / 10 for i in range(15)], abs=1e-6)
    assert [index_of(f) for f in frames] == [*range(10), *range(5)]  # restarted after frame 9
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(frames))
    assert elapsed >= 1.2  # frame 14 is due 1.4 s after frame 0; a file read flat out takes ms


def test_unpaced_file_reads_faster_than_real_time_and_ends(video_2s: Path) -> None:
    source = OpenCVSource(video_2s.as_uri(), realtime=False, loop=False)
    source.open()
    started = time.monotonic()
    frames = read_n(source, 20)
    elapsed = time.monotonic() - started
    with pytest.raises(EndOfStream, match="end of file after 20 frames") as info:
        source.read()
    source.close()
    assert isinstance(info.value, SourceError)  # callers that only know SourceError still stop
    assert [index_of(f) for f in frames] == list(range(20))
    assert [f.pts for f in frames] == pytest.approx([i / 10 for i in range(20)], abs=1e-6)
    assert elapsed < 2.0  # not paced: the 2 s video is read in far less than 2 s


def test_unpaced_loop_keeps_pts_increasing_across_restarts(video_2s: Path) -> None:
    source = OpenCVSource(video_2s.as_uri(), realtime=False, loop=True)
    source.open()
    frames = read_n(source, 45)
    source.close()
    pts = [f.pts for f in frames]
    assert all(a < b for a, b in itertools.pairwise(pts))
    assert pts[20] == pytest.approx(2.0)
    assert pts[44] == pytest.approx(4.4)
    assert [index_of(frames[i]) for i in (19, 20, 39, 40, 44)] == [19, 0, 19, 0, 4]


def test_skip_advances_position_without_returning_a_frame(video_2s: Path) -> None:
    source = OpenCVSource(video_2s.as_uri(), realtime=False, loop=False)
    source.open()
    for _ in range(3):
        source.skip()
    frame = source.read()
    assert (frame.seq, index_of(frame)) == (3, 3)
    assert frame.pts == pytest.approx(0.3)
    for _ in range(16):
        source.skip()
    with pytest.raises(EndOfStream):
        source.skip()
    source.close()


def test_close_is_idempotent_and_reopen_starts_over(video_2s: Path) -> None:
    source = OpenCVSource(video_2s.as_uri(), realtime=False)
    source.open()
    read_n(source, 5)
    source.close()
    source.close()
    with pytest.raises(SourceError, match="not open"):
        source.read()
    source.open()
    frame = source.read()
    source.close()
    assert (frame.seq, index_of(frame), frame.pts) == (0, 0, 0.0)


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "gone.mp4"
    with pytest.raises(SourceError, match=f"file not found: {missing}"):
        OpenCVSource(missing.as_uri()).open()


def test_text_file_named_mp4_is_not_a_video(tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n", encoding="utf-8")
    with pytest.raises(SourceError, match=f"not a video file FFmpeg can read: {fake}"):
        OpenCVSource(fake.as_uri()).open()


def test_directory_is_not_a_video(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a regular file"):
        OpenCVSource(tmp_path.as_uri()).open()


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("ftp://camera.local/stream", "unsupported source 'ftp://camera.local/stream'"),
        ("file://relative/video.mp4", "must be an absolute URI"),
        ("file:video.mp4", "must be an absolute URI"),
        ("file:///srv/a.mp4?x=1", "unexpected '?' or '#'"),
        ("usb:front", "expected usb:N"),
        ("usb:", "expected usb:N"),
        ("rtsp://", "has no host"),
        ("rtsp://cam:99999/stream", "malformed URL"),
    ],
)
def test_bad_uri_names_the_problem(uri: str, problem: str) -> None:
    with pytest.raises(SourceError) as info:
        OpenCVSource(uri)
    assert problem in str(info.value)


def test_factory_rejects_unknown_scheme() -> None:
    with pytest.raises(SourceError, match="unsupported source"):
        open_source("gopher://camera/1")


def test_absent_usb_device_is_named() -> None:
    if Path("/dev/video63").exists():
        pytest.skip("this machine has a /dev/video63")
    with pytest.raises(SourceError, match="no such V4L2 device /dev/video63"):
        OpenCVSource("usb:63").open()


@pytest.mark.parametrize(
    ("reported", "used"),
    [(0.0, FALLBACK_FPS), (math.nan, FALLBACK_FPS), (math.inf, FALLBACK_FPS), (-1.0, FALLBACK_FPS),
     (1000.0, FALLBACK_FPS), (90000.0, FALLBACK_FPS), (10.0, 10.0), (29.97, 29.97), (240.0, 240.0)],
)  # fmt: skip
def test_implausible_frame_rates_fall_back(reported: float, used: float) -> None:
    assert sane_fps(reported) == used


def test_redact_hides_passwords_and_secret_parameters() -> None:
    assert redact("rtsp://admin:hunter2@10.0.0.5:554/ch1") == "rtsp://admin:***@10.0.0.5:554/ch1"
    assert redact("http://cam/video.cgi?user=admin&pwd=hunter2&res=1") == (
        "http://cam/video.cgi?user=admin&pwd=***&res=1"
    )
    assert redact("file:///srv/a.mp4") == "file:///srv/a.mp4"


# -- MJPEG over HTTP -----------------------------------------------------------------------


class MjpegServer:
    """Serves `frames` JPEG frames as multipart MJPEG at 20 fps, then hangs up or goes silent."""

    def __init__(self, frames: int, then: Literal["hang up", "go silent"]) -> None:
        self.frames = frames
        self.then = then
        self.release = threading.Event()  # ends a silent response so that stop() can finish
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for i in range(outer.frames):
                        ok, jpeg = cv2.imencode(".jpg", np.full((HEIGHT, WIDTH, 3), i * STEP, np.uint8))
                        assert ok
                        data = jpeg.tobytes()
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\n"
                            + f"Content-Length: {len(data)}\r\n\r\n".encode()
                            + data
                            + b"\r\n"
                        )
                        self.wfile.flush()
                        if outer.release.wait(0.05):
                            return
                    if outer.then == "go silent":
                        outer.release.wait(30)
                except (BrokenPipeError, ConnectionResetError):
                    return

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="test.mjpeg-server")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def __enter__(self) -> MjpegServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()  # joins the request threads
        self._thread.join(5)


@pytest.fixture
def mjpeg_then_hang_up() -> Iterator[MjpegServer]:
    with MjpegServer(frames=5, then="hang up") as server:
        yield server


@pytest.fixture
def mjpeg_then_silent() -> Iterator[MjpegServer]:
    with MjpegServer(frames=5, then="go silent") as server:
        yield server


def test_http_mjpeg_frames_then_server_hangs_up(mjpeg_then_hang_up: MjpegServer) -> None:
    source = open_source(mjpeg_then_hang_up.url)
    source.open()
    try:
        frames = [source.read() for _ in range(5)]
        with pytest.raises(SourceError, match="the stream ended or failed"):
            source.read()
    finally:
        source.close()
    assert source.size == (WIDTH, HEIGHT)
    assert [index_of(f) for f in frames] == list(range(5))
    assert [f.seq for f in frames] == list(range(5))


def test_http_mjpeg_that_goes_silent_is_a_stall(mjpeg_then_silent: MjpegServer) -> None:
    source = OpenCVSource(mjpeg_then_silent.url, stall_timeout_s=1.0)
    source.open()
    try:
        for _ in range(5):
            source.read()
        with pytest.raises(SourceError, match=r"stalled: no frame for \d+\.\d s"):
            source.read()
    finally:
        source.close()


def test_closing_from_another_thread_ends_a_paced_read(tmp_path: Path) -> None:
    path = make_video(tmp_path / "slow.mp4", frames=3, fps=0.5)  # one frame every 2 s
    source = OpenCVSource(path.as_uri())
    source.open()
    source.read()
    closer = threading.Timer(0.2, source.close)
    closer.start()
    try:
        with pytest.raises(SourceError, match="closed while waiting"):
            source.read()
    finally:
        closer.join(5)
    with pytest.raises(SourceError, match="not open"):
        source.read()


@pytest.mark.parametrize(
    ("given", "kept"),
    [("rtsp_transport;udp", "rtsp_transport;udp"), ("stimeout;5", "stimeout;5|rtsp_transport;tcp")],
)
def test_an_operator_chosen_rtsp_transport_is_kept(given: str, kept: str) -> None:
    code = "import os, agent.capture.opencv; print(os.environ['OPENCV_FFMPEG_CAPTURE_OPTIONS'])"
    env = {**os.environ, "OPENCV_FFMPEG_CAPTURE_OPTIONS": given}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == kept
