"""OpenCV capture backend: HTTP (MJPEG) cameras, V4L2 devices and video files.

RTSP cameras go through agent.capture.pyav (packets kept, no process-wide open lock);
`open_source` sends rtsp:// there. This backend still accepts rtsp:// URLs (benches compare the
two), forced over TCP: UDP drops packets on busy district links and the decoder then smears whole
frames. Network streams go through OpenCV's FFmpeg backend with open and read timeouts, so that a
dead camera raises SourceError instead of hanging its capture thread. A file plays at
its own frame rate and loops so that it can stand in for a camera; replay reads it once, flat out.

Sources are read by one thread. `close()` may come from another thread: it interrupts a read that
is waiting for a file frame's due time and otherwise waits for the read in progress to return
(bounded by the read timeout) before releasing the capture.

OpenCV opens every capture (and every VideoWriter) under one process-wide lock, held for the whole
FFmpeg open: a camera that accepts the connection and then never answers would hold every other
camera's open and reconnect (and a looping file's restart) for the full open timeout. So a network
stream is first asked one request of its own protocol (RTSP OPTIONS, HTTP GET) outside that lock;
a camera that does not answer fails alone. A camera that answers that and hangs later in the open
still holds the lock; see docs/scaling.md.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from agent.capture.source import EndOfStream, Frame, Image
from agent.capture.video_file import VideoFile, open_video_file
from agent.config.redact import redact as redact  # noqa: PLC0414 - re-exported (PEP 484)
from agent.config.urls import file_path, url_problem
from agent.errors import SourceError

log = logging.getLogger(__name__)

FALLBACK_FPS = 25.0  # what FFmpeg itself assumes for a stream that declares no rate
MAX_PLAUSIBLE_FPS = 240.0  # above this a backend is reporting a timebase (1000, 90000), not a rate
LATE_RESET_S = 0.5  # a file reader this far behind the clock restarts the clock instead of bursting
PROBE_TIMEOUT_S = 5.0  # longest wait for a network camera's first answer, outside OpenCV's open lock
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
_FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"

Kind = Literal["network", "file", "usb"]


def _force_rtsp_over_tcp() -> None:
    """Make OpenCV's FFmpeg backend use RTSP over TCP unless the operator chose a transport.

    OpenCV reads this variable on every open. It is set once, at import, because setenv is not
    thread-safe and every OpenCV source imports this module before its first open.
    """
    options = os.environ.get(_FFMPEG_OPTIONS_ENV, "")
    if "rtsp_transport" not in options:
        os.environ[_FFMPEG_OPTIONS_ENV] = f"{options}|rtsp_transport;tcp" if options else "rtsp_transport;tcp"


_force_rtsp_over_tcp()


def sane_fps(value: float) -> float:
    """The reported rate, or FALLBACK_FPS when a backend reports 0, NaN or a timebase such as 1000."""
    if math.isfinite(value) and 0.0 < value <= MAX_PLAUSIBLE_FPS:
        return float(value)
    return FALLBACK_FPS


def parse_uri(uri: str) -> tuple[Kind, str | int]:
    """Split a source URI into its kind and target (URL, absolute path or device index)."""
    scheme = uri.partition(":")[0].lower()
    if scheme in DEFAULT_PORTS:
        problem = url_problem(uri)
        if problem is not None:
            raise SourceError(f"{redact(uri)!r}: {problem}")
        return "network", uri
    if scheme == "file":
        try:
            return "file", file_path(uri)
        except ValueError as exc:
            raise SourceError(f"{redact(uri)!r}: {exc}") from None
    if scheme == "usb":
        index = uri.partition(":")[2]
        if not re.fullmatch(r"[0-9]{1,3}", index):
            raise SourceError(f"{uri!r}: expected usb:N with N the V4L2 device number, e.g. usb:0")
        return "usb", int(index)
    raise SourceError(
        f"unsupported source {redact(uri)!r}: "
        "expected rtsp://, rtsps://, http://, https://, file:///path or usb:N"
    )


SKIP_STEPS = (1, 2, 4, 8, 16, 32, 64)  # frames tried past one that will not decode, in turn


def skip_damage(cap: VideoFile, index: int, count: float) -> int:
    """After `grab()` failed at frame `index` of a file whose header gives `count` frames: seek
    past the frames that will not decode (a damaged stretch in the middle of a recording) and
    grab the first that does; how many frames were skipped, 0 when none further on decodes (then
    the file really ends here). FFmpeg stops at such damage, and all after it would be lost."""
    for step in SKIP_STEPS:
        if not index + step < count:
            break
        if cap.set(cv2.CAP_PROP_POS_FRAMES, index + step) and cap.grab():
            return step
    return 0


def _why_unreachable(url: str, timeout_s: float) -> str:
    """A readable reason a stream failed to open, found by trying a plain TCP connection."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS[parts.scheme.lower()]
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {timeout_s:g} s"
        return f"cannot connect to {host}:{port}: {reason}"
    return f"{host}:{port} accepts connections but no video stream opened (wrong path, credentials or codec?)"


def _probe_answers(url: str, timeout_s: float) -> str | None:
    """None if the server behind `url` answers one request within `timeout_s`, else why not.

    Any bytes back count as an answer (a 401 too: the camera lives, OpenCV will report the rest).
    No credentials are sent. TLS schemes are probed through the handshake, unverified: this only
    asks whether the camera is alive; FFmpeg does the real connection.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS[scheme]
    hostport = parts.netloc.rpartition("@")[2]
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if scheme.startswith("rtsp"):
        target = urlunsplit((scheme, hostport, parts.path, parts.query, ""))
        request = f"OPTIONS {target} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: edge-agent\r\n\r\n"
    else:
        request = f"GET {path} HTTP/1.0\r\nHost: {hostport}\r\nUser-Agent: edge-agent\r\n\r\n"
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            raw.settimeout(timeout_s)
            conn: socket.socket = raw
            if scheme in ("rtsps", "https"):
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE  # liveness only; nothing secret is sent
                conn = ctx.wrap_socket(raw, server_hostname=host)
            conn.sendall(request.encode("latin-1", "replace"))
            if not conn.recv(16):
                return f"{host}:{port} accepts connections but no video stream opened (it hung up unasked)"
    except TimeoutError:
        return (
            f"{host}:{port} accepts connections but no video stream opened"
            f" (no answer to a request within {timeout_s:g} s: the camera hangs)"
        )
    except (OSError, ssl.SSLError) as exc:
        return f"cannot connect to {host}:{port}: {exc.strerror or exc}"
    return None


class OpenCVSource:
    """A camera, stream, device or file read through OpenCV; see the module docstring.

    `realtime` and `loop` apply to files: with both True a file behaves like a camera (paced at its
    own frame rate, restarting at the end with `pts` still increasing); with `loop=False` the read
    after the last frame raises EndOfStream. `stall_timeout_s` bounds each network read.
    """

    def __init__(
        self,
        uri: str,
        *,
        realtime: bool = True,
        loop: bool = True,
        open_timeout_s: float = 10.0,
        stall_timeout_s: float = 10.0,
    ) -> None:
        if not (open_timeout_s > 0 and stall_timeout_s > 0):
            raise ValueError("open_timeout_s and stall_timeout_s must be positive")
        self.uri = uri
        self._kind, self._target = parse_uri(uri)
        self._label = redact(uri)
        self._realtime = realtime
        self._loop = loop
        self._open_timeout_s = open_timeout_s
        self._stall_timeout_s = stall_timeout_s
        # _lock covers _cap and the read position (_seq, _pending, _pass_*, _loop_offset): held by
        # the reader while it grabs a frame and by open()/close(), never across a pacing wait.
        self._lock = threading.Lock()
        self._closed = threading.Event()  # set by close(): wakes a read waiting for a frame's due time
        self._cap: VideoFile | None = None
        self._fps = FALLBACK_FPS
        self._size = (0, 0)
        self._reset_position()

    def _reset_position(self) -> None:
        self._seq = 0
        self._pending: tuple[Image | None, float] | None = None  # the frame open() read as a probe
        self._pass_frames = 0  # frames read in the current pass over a file
        self._pass_pts = 0.0  # position in the file of the last frame read
        self._loop_offset = 0.0  # timeline position at which the current pass started
        self._anchor: float | None = None  # monotonic time of timeline position 0, for pacing
        self._opened_at = time.monotonic()

    @property
    def fps(self) -> float:
        """Frames per second the source declares (FALLBACK_FPS when it declares nothing usable)."""
        return self._fps

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the latest frame; (0, 0) before open()."""
        return self._size

    def open(self) -> None:
        """Connect and read a first frame, so that a source that cannot deliver fails here."""
        self.close()
        self._closed.clear()
        with self._lock:
            self._reset_position()
            self._cap = self._connect()
            self._fps = sane_fps(self._cap.get(cv2.CAP_PROP_FPS))
            try:
                self._pending = self._grab(decode=True)
            except SourceError:
                self._cap.release()
                self._cap = None
                raise
        log.info("opened %s: %dx%d at %.3g fps", self._label, *self._size, self._fps)

    def read(self) -> Frame:
        """Return the next frame; raise SourceError on failure or stall, EndOfStream after a file's end."""
        image, pts, seq = self._advance(decode=True)
        assert image is not None  # decode=True always converts
        return Frame(image=image, ts=time.time(), pts=pts, seq=seq)

    def skip(self) -> float:
        """Advance one frame without converting it to BGR, for a reader that wants fewer frames.

        The frame is still decoded (later frames reference it); only the conversion to BGR and the
        copy are saved, about a third of read()'s cost for 720p H.264 on an x86 test machine. It is
        paced like read(), counts in `seq` and raises the same errors. Returns the frame's `pts`,
        so that a reader can tell which frame comes next.
        """
        return self._advance(decode=False)[1]

    def close(self) -> None:
        """Release the capture; safe to call twice and from another thread."""
        self._closed.set()
        with self._lock:
            if self._cap is not None:
                self._cap.release()
                self._cap = None
            self._pending = None

    # -- internals -------------------------------------------------------------------------

    def _advance(self, *, decode: bool) -> tuple[Image | None, float, int]:
        with self._lock:
            if self._cap is None:
                raise SourceError(f"{self._label}: not open")
            if self._pending is not None:
                (image, pts), self._pending = self._pending, None
            else:
                image, pts = self._grab(decode=decode)
            seq = self._seq
            self._seq += 1
        if self._kind == "file" and self._realtime:
            self._pace(pts)
        return image, pts, seq

    def _pace(self, pts: float) -> None:
        """Wait until the frame at timeline position `pts` is due, as a camera would deliver it."""
        now = time.monotonic()
        if self._anchor is None or now - (self._anchor + pts) > LATE_RESET_S:
            self._anchor = now - pts  # first frame, or the reader fell behind: no catch-up burst
            return
        delay = self._anchor + pts - now
        if delay > 0 and self._closed.wait(delay):
            raise SourceError(f"{self._label}: closed while waiting for the next frame")

    def _connect(self) -> VideoFile:
        if self._kind == "file":
            return self._open_file()
        if self._kind == "usb":
            return self._open_device(cast(int, self._target))
        url = cast(str, self._target)
        started = time.monotonic()
        why = _probe_answers(url, min(self._open_timeout_s, PROBE_TIMEOUT_S))
        if why is not None:
            waited = time.monotonic() - started
            raise SourceError(f"{self._label}: cannot open stream after {waited:.1f} s: {why}")
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            round(self._open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            round(self._stall_timeout_s * 1000),
        ]
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            waited = time.monotonic() - started
            why = _why_unreachable(url, min(self._open_timeout_s, 3.0))
            raise SourceError(f"{self._label}: cannot open stream after {waited:.1f} s: {why}")
        return cap

    def _open_file(self) -> VideoFile:
        path = Path(cast(str, self._target))
        if not path.exists():
            raise SourceError(f"{self._label}: file not found: {path}")
        if not path.is_file():
            raise SourceError(f"{self._label}: not a regular file: {path}")
        if not os.access(path, os.R_OK):
            raise SourceError(f"{self._label}: file not readable (permissions): {path}")
        cap = open_video_file(str(path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self._label}: not a video file FFmpeg can read: {path}")
        return cap

    def _open_device(self, index: int) -> cv2.VideoCapture:
        device = f"/dev/video{index}"
        if sys.platform.startswith("linux") and not Path(device).exists():
            raise SourceError(f"{self._label}: no such V4L2 device {device}")
        cap = cv2.VideoCapture(index, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self._label}: cannot open {device} (busy, or not a capture device?)")
        cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, round(self._stall_timeout_s * 1000))  # where supported
        return cap

    def _grab(self, *, decode: bool) -> tuple[Image | None, float]:
        if self._kind == "file":
            return self._grab_file(decode=decode)
        assert self._cap is not None
        started = time.monotonic()
        if not self._cap.grab():
            waited = time.monotonic() - started
            if waited >= 0.9 * self._stall_timeout_s:
                raise SourceError(f"{self._label}: stalled: no frame for {waited:.1f} s")
            raise SourceError(f"{self._label}: the stream ended or failed (no frame)")
        image = self._retrieve() if decode else None
        return image, time.monotonic() - self._opened_at

    def _grab_file(self, *, decode: bool) -> tuple[Image | None, float]:
        assert self._cap is not None
        if not self._cap.grab() and not self._past_damage():
            if self._pass_frames == 0:
                raise SourceError(f"{self._label}: the file has no decodable video frames")
            if not self._loop:
                raise EndOfStream(f"{self._label}: end of file after {self._pass_frames} frames")
            self._loop_offset += self._pass_pts + 1.0 / self._fps
            self._cap.release()
            self._cap = self._open_file()  # reopening works for files that cannot seek
            self._pass_frames = 0
            self._pass_pts = 0.0
            if not self._cap.grab():
                raise SourceError(f"{self._label}: no frame after restarting the file")
        image = self._retrieve() if decode else None
        position = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if not math.isfinite(position) or position < 0.0:
            position = self._pass_pts + 1.0 / self._fps
        elif self._pass_frames > 0 and position <= self._pass_pts:
            position = self._pass_pts + 1.0 / self._fps  # a backend without timestamps repeats them
        self._pass_pts = position
        self._pass_frames += 1
        return image, self._loop_offset + position

    def _past_damage(self) -> bool:
        """Skip a damaged stretch in the middle of the file (see `skip_damage`), with a warning;
        whether a frame after it was grabbed."""
        assert self._cap is not None
        if self._pass_frames == 0:
            return False
        skipped = skip_damage(
            self._cap, self._pass_frames, float(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        )
        if skipped:
            self._pass_frames += skipped
            log.warning("%s: skipped %d frame(s) that would not decode (damaged file)", self._label, skipped)
        return skipped > 0

    def _retrieve(self) -> Image:
        assert self._cap is not None
        ok, raw = self._cap.retrieve()
        if not ok or raw is None:
            raise SourceError(f"{self._label}: a frame could not be decoded")
        image = np.asarray(raw)
        if image.dtype != np.uint8:
            raise SourceError(f"{self._label}: unsupported pixel depth {image.dtype}")
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        elif image.ndim != 3 or image.shape[2] != 3:
            raise SourceError(f"{self._label}: unsupported frame shape {image.shape}")
        self._size = (int(image.shape[1]), int(image.shape[0]))
        return cast(Image, image)
