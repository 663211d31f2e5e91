"""The `FrameSource` protocol and the factory that maps a camera's `source` URI to a backend.

RTSP cameras go through PyAV (their packets can be kept as sent, no process-wide open lock);
HTTP/MJPEG cameras, files and USB devices through OpenCV, where that is simpler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from agent.capture import ffmpeg_log
from agent.config.redact import redact
from agent.errors import SourceError

Image = npt.NDArray[np.uint8]

ffmpeg_log.silence()  # every OpenCV reader and writer imports this module before its first open


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame: BGR pixels, wall-clock capture time and position in the source."""

    image: Image  # HxWx3 uint8, BGR (OpenCV's order)
    ts: float  # wall-clock epoch seconds when captured
    pts: float  # seconds since the source started (for files: position in the video)
    seq: int  # frame counter since open()


class EndOfStream(SourceError):  # noqa: N818 - names the condition, as StopIteration does
    """A finite source (a file read with loop=False) has delivered its last frame."""


class FrameSource(Protocol):
    """A camera-like source. `read` blocks until the next frame, paced like a live camera."""

    uri: str

    def open(self) -> None:
        """Connect; raise SourceError with a readable reason on failure."""

    def read(self) -> Frame:
        """Return the next frame; raise SourceError when the source fails or stalls."""

    def close(self) -> None:
        """Release the device or connection; safe to call twice."""

    @property
    def fps(self) -> float:
        """Nominal frames per second of the source."""

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames, valid after open()."""


def open_source(
    uri: str, *, realtime: bool = True, loop: bool = True, decoder: str | None = None
) -> FrameSource:
    """Return an unopened source for `uri`. `realtime`/`loop` apply to files (replay sets both
    False); `decoder` names an FFmpeg decoder for RTSP streams (e.g. "h264_v4l2m2m")."""
    if uri.startswith("synthetic:"):
        from agent.capture.synthetic import SyntheticSource

        return SyntheticSource(uri, realtime=realtime)
    if uri.startswith("picamera:"):
        from agent.capture.picamera import PicameraSource

        return PicameraSource(uri)
    if uri.startswith(("rtsp://", "rtsps://")):
        from agent.capture.pyav import PyAVSource

        return PyAVSource(uri, decoder=decoder)
    if uri.startswith(("http://", "https://", "file://", "usb:")):
        from agent.capture.opencv import OpenCVSource

        return OpenCVSource(uri, realtime=realtime, loop=loop)
    raise SourceError(f"unsupported source {redact(uri)!r}")
