"""PyAVSource on real H.264 files and a real RTSP server (GStreamer's, run by the system python3).

The media are made here with ffmpeg (testsrc2, a GOP of 25 frames at 25 fps). The RTSP server
serves a file's H.264 as it is (no encoding: cheap on a shared machine), optionally behind Basic
authentication, so 401 and 404 are the server's own answers. A TCP relay between the client and
the server stands in for a camera that stops sending (the relay freezes).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.capture.packets import StreamPacket
from agent.capture.pyav import DecodeMode, PyAVSource, parameter_sets
from agent.capture.source import EndOfStream, open_source
from agent.errors import SourceError
from tests.rtsp_camera.fixture import RtspCamera

GOP = 25
FPS = 25
SYSTEM_PYTHON = "/usr/bin/python3"

SERVER_SCRIPT = r"""
import signal, sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer

Gst.init(None)
port, path, user, password = sys.argv[1:5]
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
demux = "qtdemux" if path.endswith(".mp4") else "tsdemux"
factory.set_launch(
    f"( filesrc location=\"{path}\" ! {demux} ! h264parse config-interval=-1"
    " ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
)
if user:
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "viewer")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    server.set_auth(auth)
    permissions = GstRtspServer.RTSPPermissions()
    permissions.add_permission_for_role("viewer", "media.factory.access", True)
    permissions.add_permission_for_role("viewer", "media.factory.construct", True)
    factory.set_permissions(permissions)
server.get_mount_points().add_factory("/cam", factory)
if server.attach(None) == 0:
    sys.exit("cannot listen on port " + port)
loop = GLib.MainLoop()
signal.signal(signal.SIGTERM, lambda *_: loop.quit())
print("ready", flush=True)
loop.run()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_h264(path: Path, *, seconds: float, size: str = "320x240", fmt: str | None = None) -> Path:
    """A real H.264 file of ffmpeg's testsrc2: 25 fps, a keyframe every 25 frames, no B-frames."""
    command = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={FPS}"]
    command += ["-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-g", str(GOP)]
    command += ["-keyint_min", str(GOP), "-sc_threshold", "0", "-pix_fmt", "yuv420p"]
    command += ["-f", fmt, str(path)] if fmt else [str(path)]
    subprocess.run(command, check=True, timeout=60)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is not installed: run scripts/test, which installs it")
    root = tmp_path_factory.mktemp("pyav-media")
    first = make_h264(root / "first.ts", seconds=2, fmt="mpegts")
    second = make_h264(root / "second.ts", seconds=2, size="160x120", fmt="mpegts")
    change = root / "change.ts"  # a camera that switches from 320x240 to 160x120 after 2 s
    change.write_bytes(first.read_bytes() + second.read_bytes())
    return {
        "4s": make_h264(root / "four seconds.mp4", seconds=4),
        "30s": make_h264(root / "thirty seconds.mp4", seconds=30),
        "change": change,
    }


class RtspServer:
    """GStreamer's RTSP server serving one file at rtsp://127.0.0.1:PORT/cam, in real time."""

    def __init__(self, workdir: Path, media: Path, user: str = "", password: str = "") -> None:
        script = workdir / "rtsp_server.py"
        script.write_text(SERVER_SCRIPT, encoding="utf-8")
        self.port = free_port()
        self.process = subprocess.Popen(
            [SYSTEM_PYTHON, str(script), str(self.port), str(media), user, password],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "ready" once listening, "" if it died
        if line.strip() != "ready":
            self.stop()
            pytest.fail(f"the GStreamer RTSP server did not start: {self.process.stderr.read()[-2000:]}")  # type: ignore[union-attr]

    def url(self, credentials: str = "", path: str = "/cam") -> str:
        return f"rtsp://{credentials}{'@' if credentials else ''}127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def rtsp_long(tmp_path: Path, media: dict[str, Path]) -> Iterator[RtspServer]:
    if not Path(SYSTEM_PYTHON).exists():
        pytest.fail("no system python3: run scripts/test, which installs GStreamer's RTSP server")
    server = RtspServer(tmp_path, media["30s"], "admin", "hunter2")
    yield server
    server.stop()


class FreezingRelay:
    """A TCP relay to `port` whose `freeze()` stops passing bytes, as a camera that goes silent."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.frozen = threading.Event()
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._accept = threading.Thread(target=self._serve, name="test.relay")

    def __enter__(self) -> FreezingRelay:
        self._accept.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._accept.join(5)
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in self._threads:
            t.join(5)
        self._server.close()

    def freeze(self) -> None:
        self.frozen.set()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pipe, args=(a, b), name="test.relay-pipe")
                self._threads.append(t)
                t.start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            while self.frozen.is_set() and not self._stop.is_set():
                time.sleep(0.05)  # hold the bytes: the connection stays up, nothing arrives
            with contextlib.suppress(OSError):
                dst.sendall(data)


def collect(source: PyAVSource) -> list[StreamPacket]:
    packets: list[StreamPacket] = []
    source.set_packet_sink(packets.append)
    return packets


def until_error(step: Callable[[], object]) -> tuple[int, SourceError]:
    """Call `step` until it raises SourceError: how many calls succeeded, and the error."""
    count = 0
    while True:
        try:
            step()
        except SourceError as exc:
            return count, exc
        count += 1


def ffmpeg_frame(path: Path, index: int, width: int, height: int) -> np.ndarray:
    """Frame `index` of `path` as ffmpeg itself decodes it, BGR."""
    out = subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-i", str(path), "-vf", f"select=eq(n\\,{index})"),
            *("-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "bgr24", "-"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    return np.frombuffer(out, np.uint8).reshape(height, width, 3)


# -- files ---------------------------------------------------------------------------------


def test_file_packets_reach_the_sink_with_the_gop_keyframes(media: dict[str, Path]) -> None:
    source = PyAVSource(media["4s"].as_uri(), realtime=False)
    packets = collect(source)
    source.open()
    try:
        frames = [source.read() for _ in range(60)]
    finally:
        source.close()
    info = packets[0].info
    assert (info.codec, info.width, info.height, info.fps) == ("h264", 320, 240, 25.0)
    assert info.extradata  # the avcC record a muxer needs
    assert source.size == (320, 240) and source.fps == 25.0
    assert len(packets) >= 60
    assert [i for i, p in enumerate(packets[:60]) if p.keyframe] == [0, 25, 50]
    assert all(p.info is info and p.data for p in packets)
    assert [f.seq for f in frames] == list(range(60))
    assert [f.pts for f in frames] == pytest.approx([i / FPS for i in range(60)], abs=1e-6)
    by_pts = {p.pts: p.ts for p in packets}
    for frame in frames:  # a frame and its packet carry one time
        assert by_pts[round(frame.pts / info.time_base)] == pytest.approx(frame.ts, abs=1e-6)


def test_decoded_pixels_match_ffmpeg_and_skip_keeps_position(media: dict[str, Path]) -> None:
    source = PyAVSource(str(media["4s"]), realtime=False)  # a plain path works too
    source.open()
    try:
        for _ in range(7):
            source.skip()
        frame = source.read()
    finally:
        source.close()
    assert frame.seq == 7
    assert frame.pts == pytest.approx(7 / FPS)
    assert frame.image.shape == (240, 320, 3) and frame.image.dtype == np.uint8
    expected = ffmpeg_frame(media["4s"], 7, 320, 240)
    assert float(np.abs(frame.image.astype(int) - expected.astype(int)).mean()) < 2.0


def test_keyframes_mode_returns_one_picture_per_gop_and_every_packet(media: dict[str, Path]) -> None:
    source = PyAVSource(media["4s"].as_uri(), realtime=False)
    packets = collect(source)
    source.set_decode("keyframes")
    source.open()
    try:
        frames = [source.read() for _ in range(4)]
        with pytest.raises(EndOfStream):
            source.read()
    finally:
        source.close()
    assert [f.pts for f in frames] == pytest.approx([0.0, 1.0, 2.0, 3.0])
    assert [f.seq for f in frames] == [0, 1, 2, 3]
    assert len(packets) == 4 * FPS  # the frames between keyframes were demuxed, not decoded
    expected = ffmpeg_frame(media["4s"], 50, 320, 240)
    assert float(np.abs(frames[2].image.astype(int) - expected.astype(int)).mean()) < 2.0


def test_none_mode_decodes_nothing_and_still_feeds_packets(media: dict[str, Path]) -> None:
    source = PyAVSource(media["4s"].as_uri(), realtime=False)
    packets = collect(source)
    source.set_decode("none")
    source.open()
    try:
        positions = [source.skip() for _ in range(30)]
        with pytest.raises(RuntimeError, match="decode mode 'none'"):
            source.read()
        source.set_decode("all")  # the decoder starts at the next keyframe
        frame = source.read()
    finally:
        source.close()
    assert positions == pytest.approx([i / FPS for i in range(30)])
    assert len(packets) >= 50
    assert frame.pts == pytest.approx(2 * GOP / FPS)


def test_a_looping_file_keeps_time_going_up(media: dict[str, Path]) -> None:
    source = PyAVSource(media["4s"].as_uri(), realtime=False, loop=True)
    packets = collect(source)
    source.set_decode("none")
    source.open()
    try:
        positions = [source.skip() for _ in range(2 * 4 * FPS + 5)]
    finally:
        source.close()
    assert positions == pytest.approx([i / FPS for i in range(len(positions))], abs=1e-6)
    pts = [p.pts for p in packets]
    assert all(a is not None and b is not None and a < b for a, b in itertools.pairwise(pts))
    assert [i for i, p in enumerate(packets) if p.keyframe] == list(range(0, len(packets), GOP))


def test_a_paced_file_plays_in_real_time(media: dict[str, Path]) -> None:
    source = PyAVSource(media["4s"].as_uri())
    source.set_decode("none")
    source.open()
    try:
        started = time.monotonic()
        for _ in range(26):
            source.skip()
        elapsed = time.monotonic() - started
    finally:
        source.close()
    assert elapsed >= 0.9  # packet 25 is due 1 s after packet 0


def test_each_open_is_a_new_session_and_close_is_idempotent(media: dict[str, Path]) -> None:
    source = PyAVSource(media["4s"].as_uri(), realtime=False)
    packets = collect(source)
    source.open()
    source.read()
    source.close()
    source.close()
    assert source.info is None
    with pytest.raises(SourceError, match="not open"):
        source.read()
    source.open()
    frame = source.read()
    source.close()
    assert (frame.seq, frame.pts) == (0, 0.0)
    sessions = sorted({p.info.session for p in packets})
    assert len(sessions) == 2 and sessions[1] > sessions[0]


def test_file_errors_are_named(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="file not found"):
        PyAVSource(str(tmp_path / "gone.mp4")).open()
    with pytest.raises(SourceError, match="not a regular file"):
        PyAVSource(tmp_path.as_uri()).open()
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n", encoding="utf-8")
    with pytest.raises(SourceError, match="not a video file FFmpeg can read"):
        PyAVSource(fake.as_uri()).open()
    audio = tmp_path / "tone.m4a"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(audio)],
        check=True,
        timeout=60,
    )
    with pytest.raises(SourceError, match="has no video track"):
        PyAVSource(audio.as_uri()).open()
    with pytest.raises(SourceError, match="the URL has no host"):
        PyAVSource("rtsp:///cam")
    with pytest.raises(SourceError, match="PyAV sources take"):
        PyAVSource("http://camera/video")


def test_a_resolution_change_reopens_after_the_earlier_frames(media: dict[str, Path]) -> None:
    modes: tuple[DecodeMode, ...] = ("all", "none")
    for mode in modes:
        source = PyAVSource(media["change"].as_uri(), realtime=False)
        packets = collect(source)
        source.set_decode(mode)
        source.open()
        try:
            delivered, error = until_error(source.read if mode == "all" else source.skip)
            assert "changed resolution/parameters" in str(error) and "reopening" in str(error)
            assert delivered == 2 * FPS  # every frame of the first 2 s, none of the new size
            assert len(packets) == 2 * FPS
            assert {(p.info.width, p.info.height) for p in packets} == {(320, 240)}
        finally:
            source.close()


def test_parameter_sets_are_found_in_annexb_and_avcc(media: dict[str, Path]) -> None:
    source = PyAVSource(media["4s"].as_uri(), realtime=False)
    source.open()
    info = source.info
    source.close()
    assert info is not None and info.extradata is not None
    sets = parameter_sets("h264", info.extradata)  # avcC record
    assert sorted(s[0] & 0x1F for s in sets) == [7, 8]
    annexb = b"".join(b"\x00\x00\x00\x01" + s for s in sorted(sets)) + b"\x00\x00\x01\x65\x88"
    assert parameter_sets("h264", annexb) == sets
    assert parameter_sets("mjpeg", annexb) == frozenset()


@pytest.mark.parametrize(("name", "why"), [("h264_nosuch", "no decoder by that name")])
def test_an_unknown_decoder_falls_back_to_software_with_one_warning(
    media: dict[str, Path], name: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    source = PyAVSource(media["4s"].as_uri(), decoder=name, realtime=False)
    with caplog.at_level(logging.WARNING, logger="agent.capture.pyav"):
        for _ in range(2):
            source.open()
            frame = source.read()
            source.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert name in warnings[0] and why in warnings[0] and "software" in warnings[0]
    assert source.decoder_in_use == "h264"
    assert frame.image.shape == (240, 320, 3)


def test_a_hardware_decoder_that_cannot_open_here_falls_back(
    media: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    import av

    name = next((n for n in ("h264_v4l2m2m", "h264_cuvid") if n in av.codecs_available), None)
    if name is None:
        pytest.skip("this FFmpeg build has neither h264_v4l2m2m nor h264_cuvid")
    source = PyAVSource(media["4s"].as_uri(), decoder=name, realtime=False)
    with caplog.at_level(logging.WARNING, logger="agent.capture.pyav"):
        source.open()
        frame = source.read()
        source.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and name in warnings[0] and "failed to open" in warnings[0], warnings
    assert source.decoder_in_use == "h264"
    assert frame.image.shape == (240, 320, 3)


def test_the_software_decoder_by_name_is_used_without_a_warning(
    media: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    source = PyAVSource(media["4s"].as_uri(), decoder="h264", realtime=False)
    with caplog.at_level(logging.WARNING, logger="agent.capture.pyav"):
        source.open()
        source.read()
        source.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert source.decoder_in_use == "h264"


# -- RTSP ----------------------------------------------------------------------------------


def test_rtsp_sources_are_pyav_with_the_configured_decoder() -> None:
    source = open_source("rtsp://admin:pw@127.0.0.1:8554/cam", decoder="h264_v4l2m2m")
    assert isinstance(source, PyAVSource)
    assert isinstance(open_source("rtsps://127.0.0.1/cam"), PyAVSource)


def test_rtsp_packets_and_frames_arrive_live(rtsp_long: RtspServer) -> None:
    source = PyAVSource(rtsp_long.url("admin:hunter2"), open_timeout_s=5.0)
    arrivals: list[tuple[StreamPacket, float]] = []
    source.set_packet_sink(lambda p: arrivals.append((p, time.time())))
    source.open()
    try:
        frames = [source.read() for _ in range(60)]
    finally:
        source.close()
    packets = [p for p, _ in arrivals]
    info = packets[0].info
    assert (info.codec, info.width, info.height, info.fps) == ("h264", 320, 240, 25.0)
    assert [i for i, p in enumerate(packets[:60]) if p.keyframe] == [0, 25, 50]
    stamps = [p.ts for p in packets]
    assert all(a <= b for a, b in itertools.pairwise(stamps))
    late = [arrived - p.ts for p, arrived in arrivals[40:]]  # past the open's backlog
    assert all(-0.01 <= d < 0.5 for d in late), late
    assert [f.seq for f in frames] == list(range(60))
    assert frames[0].pts == 0.0
    assert frames[59].pts == pytest.approx(59 / FPS, abs=1e-3)
    for frame, packet in zip(frames, packets, strict=False):  # no B-frames: packet i is frame i
        assert frame.ts == pytest.approx(packet.ts, abs=1e-6)


def test_rtsp_asks_for_tcp_and_bounds_the_socket_wait(rtsp_long: RtspServer) -> None:
    with FreezingRelay(rtsp_long.port) as relay:
        source = PyAVSource(
            f"rtsp://admin:hunter2@127.0.0.1:{relay.port}/cam", open_timeout_s=5.0, read_timeout_s=1.0
        )
        source.set_decode("none")
        source.open()
        try:
            for _ in range(10):
                source.skip()
            relay.freeze()  # the camera stops sending; the connection stays up
            started = time.monotonic()
            _, error = until_error(source.skip)
            waited = time.monotonic() - started
        finally:
            source.close()
    message = str(error)
    assert "stalled: no data for" in message, message
    assert "hunter2" not in message and "admin:***@" in message
    assert waited < 4.0  # the backlog drains, then the 1 s read timeout ends it


def reply(status: str, cseq: str, headers: str = "", body: bytes = b"") -> bytes:
    """One RTSP response."""
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return f"RTSP/1.0 {status}\r\nCSeq: {cseq}\r\n{headers}{length}\r\n".encode() + body


class RtspProbe:
    """A minimal RTSP server that answers OPTIONS and DESCRIBE, records SETUP's Transport, then refuses."""

    SDP = (
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=probe\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
        "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\n"
        "a=control:track1\r\n"
    )

    def __init__(self) -> None:
        self.transports: list[str] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test.rtsp-probe")

    def __enter__(self) -> RtspProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(0.5)
                with contextlib.suppress(OSError):  # the client hung up: nothing left to record
                    self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        buffer = b""
        deadline = time.monotonic() + 5.0
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                return
            buffer += chunk
            while b"\r\n\r\n" in buffer:
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
                }
                method, url = lines[0].split(" ")[:2]
                cseq = headers.get("cseq", "0")
                if method == "OPTIONS":
                    conn.sendall(reply("200 OK", cseq, "Public: OPTIONS, DESCRIBE, SETUP, PLAY\r\n"))
                elif method == "DESCRIBE":
                    described = f"Content-Base: {url}/\r\nContent-Type: application/sdp\r\n"
                    conn.sendall(reply("200 OK", cseq, described, self.SDP.encode()))
                elif method == "SETUP":
                    self.transports.append(headers.get("transport", ""))
                    conn.sendall(reply("461 Unsupported Transport", cseq))
                else:
                    conn.sendall(reply("405 Method Not Allowed", cseq))


def test_rtsp_asks_for_tcp_transport_only() -> None:
    with RtspProbe() as probe, pytest.raises(SourceError, match="cannot open stream"):
        PyAVSource(f"rtsp://127.0.0.1:{probe.port}/stream", open_timeout_s=2.0).open()
    assert probe.transports, "the client never sent SETUP"
    assert all("RTP/AVP/TCP" in t for t in probe.transports), probe.transports


def test_rtsp_401_names_the_credentials_without_the_password(rtsp_long: RtspServer) -> None:
    with pytest.raises(SourceError) as info:
        PyAVSource(rtsp_long.url("admin:wrong-secret")).open()
    message = str(info.value)
    assert "the camera refused the credentials (RTSP 401)" in message
    assert "wrong-secret" not in message and "admin:***@" in message


def test_rtsp_404_names_the_path(rtsp_long: RtspServer) -> None:
    with pytest.raises(SourceError) as info:
        PyAVSource(rtsp_long.url("admin:hunter2", "/nope")).open()
    message = str(info.value)
    assert "no such stream path on the camera (RTSP 404)" in message
    assert "hunter2" not in message


def test_rtsp_to_a_closed_port_is_refused_and_names_no_password() -> None:
    port = free_port()
    with pytest.raises(SourceError) as info:
        PyAVSource(f"rtsp://admin:hunter2@127.0.0.1:{port}/stream", open_timeout_s=2.0).open()
    message = str(info.value)
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in message
    assert "hunter2" not in message and "admin:***@" in message


def test_a_silent_server_times_out_without_holding_up_other_cameras(rtsp_long: RtspServer) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # the kernel completes the handshake; nobody ever answers
        port = int(silent.getsockname()[1])
        # Long timeouts: the good opens below must finish while this one still hangs, with room
        # for a loaded machine.
        hung = PyAVSource(
            f"rtsp://admin:hunter2@127.0.0.1:{port}/cam", open_timeout_s=20.0, read_timeout_s=15.0
        )
        errors: list[SourceError] = []

        def open_hung() -> None:
            started = time.monotonic()
            try:
                hung.open()
            except SourceError as exc:
                errors.append(exc)
            errors[-1].args = (*errors[-1].args, time.monotonic() - started)

        thread = threading.Thread(target=open_hung, name="test.hung-open")
        thread.start()
        time.sleep(0.3)  # the hung open is under way
        opened: list[float] = []

        def open_good() -> None:
            started = time.monotonic()
            good = PyAVSource(rtsp_long.url("admin:hunter2"), open_timeout_s=10.0)
            good.open()
            good.read()
            opened.append(time.monotonic() - started)
            good.close()

        goods = [threading.Thread(target=open_good, name=f"test.good-{i}") for i in range(2)]
        started = time.monotonic()
        for t in goods:
            t.start()
        for t in goods:
            t.join(15)
        both_done = time.monotonic() - started
        still_hung = thread.is_alive()
        thread.join(30)
    assert len(opened) == 2
    # Both opened while the third was still hanging; 12 s: well below its 15 s, and an open
    # that waited for the hung one would take that long.
    assert still_hung and both_done < 12.0
    message, waited = errors[0].args
    assert "accepted but did not deliver a stream within" in message and "hunter2" not in message
    assert 14.0 < waited < 24.0  # the 15 s socket timeout (read_timeout_s) or the 20 s open timeout


def test_a_resolution_change_over_rtsp_reopens_with_the_new_size(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    server = RtspServer(tmp_path, media["change"])
    try:
        source = PyAVSource(server.url(), open_timeout_s=5.0)
        packets = collect(source)
        source.open()
        try:
            delivered, error = until_error(source.read)
        finally:
            source.close()
    finally:
        server.stop()
    assert "changed resolution/parameters" in str(error) and "reopening" in str(error)
    assert delivered == 2 * FPS
    assert {(p.info.width, p.info.height) for p in packets} == {(320, 240)}


def test_the_end_of_a_camera_stream_is_an_error(tmp_path: Path, media: dict[str, Path]) -> None:
    server = RtspServer(tmp_path, media["4s"])
    try:
        source = PyAVSource(server.url(), open_timeout_s=5.0, read_timeout_s=2.0)
        source.set_decode("none")
        source.open()
        try:
            count, error = until_error(source.skip)
        finally:
            source.close()
    finally:
        server.stop()
    assert not isinstance(error, EndOfStream)  # a camera never ends: the worker reconnects
    assert count >= 4 * FPS - 2
    assert "ended the stream" in str(error) or "stalled" in str(error), error


def test_a_live_camera_resize_gives_a_new_session_with_the_new_size(
    rtsp_camera_factory: Callable[..., RtspCamera],
) -> None:
    camera = rtsp_camera_factory(main_size=(320, 180), sub_size=(160, 90), main_kbps=256, sub_kbps=64)
    source = PyAVSource(camera.main_url, open_timeout_s=10.0, read_timeout_s=6.0)
    packets = collect(source)
    source.set_decode("keyframes")
    source.open()
    try:
        before = source.read()
        camera.resize(256, 144)
        delivered, error = until_error(source.read)
        source.close()
        source.open()
        after = source.read()
    finally:
        source.close()
    assert "changed resolution/parameters" in str(error) and "reopening" in str(error)
    assert before.image.shape == (180, 320, 3) and after.image.shape == (144, 256, 3)
    sizes = [(p.info.session, p.info.width, p.info.height) for p in packets]
    first, last = sizes[0], sizes[-1]
    assert (first[1:], last[1:]) == ((320, 180), (256, 144)) and last[0] > first[0]
    assert {s[1:] for s in sizes if s[0] == first[0]} == {(320, 180)}  # no new-size packet in the old session
    assert delivered >= 0


def test_a_camera_that_keeps_the_connection_but_stops_sending_is_reported_stalled(
    rtsp_camera_factory: Callable[..., RtspCamera],
) -> None:
    """FFmpeg's RTSP reader hands over its held-back packet at its socket timeout and waits again;
    the source must still fail within about its read timeout, so the camera is reconnected."""
    cam = rtsp_camera_factory(motion=False)
    source = PyAVSource(cam.main_url, read_timeout_s=2.0)
    source.set_decode("none")
    source.open()
    try:
        for _ in range(10):
            source.skip()
        cam.stall(6.0)
        started = time.monotonic()

        def read_until_it_fails() -> None:
            while time.monotonic() - started < 10:
                source.skip()

        with pytest.raises(SourceError, match="stalled"):
            read_until_it_fails()
        assert time.monotonic() - started < 4.0
    finally:
        source.close()
