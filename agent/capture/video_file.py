"""Opening a video file for decoding: OpenCV's capture, or PyAV's for interlaced video.

OpenCV's FFmpeg backend turns interlaced H.264 and MPEG-2 into black frames: libswscale refuses to
convert an interlaced frame to a progressive BGR image, and `VideoCapture.retrieve()` still says
True (measured with OpenCV 4.14 and its FFmpeg 8; reported with FFmpeg 4.4 too). Interlaced video
is common in CCTV (analog cameras behind encoders, 1080i cameras, DVR exports), and black frames
hold no motion and no object: a replay or a file camera would silently see nothing. So a file whose
first frame is interlaced is decoded by PyAV (`InterlacedFile`), whose conversion weaves the two
fields into one picture. Everything else stays with OpenCV. RTSP cameras go through PyAV anyway
(agent.capture.pyav).

`InterlacedFile` offers the part of cv2.VideoCapture that the file readers use (replay, file
cameras, clip export). It does not seek: a packet that will not decode is skipped as it comes,
so reading goes on past a damaged stretch without `skip_damage`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

import cv2
import numpy as np

from agent.capture.source import Image

if TYPE_CHECKING:  # PyAV (~25 MB) is imported only when a file is probed
    import av
    import av.container
    import av.video

log = logging.getLogger(__name__)


class InterlacedFile:
    """A video file decoded by PyAV, read front to back by one thread (like a VideoCapture)."""

    def __init__(self, path: str) -> None:
        import av  # lazily: see TYPE_CHECKING above

        self._error = av.FFmpegError
        self._container: av.container.InputContainer | None = av.open(path)
        try:
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate
            self._fps = float(rate) if rate else 0.0
            self._count = float(stream.frames or 0)
            self._size = (float(stream.codec_context.width), float(stream.codec_context.height))
            self._packets: Iterator[av.Packet[av.video.VideoStream]] = self._container.demux(stream)
        except (IndexError, av.FFmpegError):
            self.release()
            raise
        self._decoded: deque[av.VideoFrame] = deque()
        self._frame: av.VideoFrame | None = None
        self._grabbed = 0

    def isOpened(self) -> bool:  # noqa: N802 - cv2.VideoCapture's name
        return self._container is not None

    def grab(self) -> bool:
        """Decode the next frame; False at the end of the file (or where it cannot be read on)."""
        if self._container is None:
            return False
        while not self._decoded:
            try:
                packet = next(self._packets)
            except StopIteration:
                return False
            except self._error as exc:
                log.debug("%s: cannot read on: %s", self._container.name, exc)
                return False
            try:
                self._decoded.extend(packet.decode())  # the last, empty packet flushes the decoder
            except self._error:
                continue  # its frame is lost; FFmpeg conceals most damage and decodes on
        self._frame = self._decoded.popleft()
        self._grabbed += 1
        return True

    def retrieve(self) -> tuple[bool, Image | None]:
        """The grabbed frame as BGR pixels."""
        if self._frame is None:
            return False, None
        return True, np.asarray(self._frame.to_ndarray(format="bgr24"), np.uint8)

    def read(self) -> tuple[bool, Image | None]:
        return self.retrieve() if self.grab() else (False, None)

    def get(self, prop: int) -> float:
        """The few properties the readers ask for; 0.0 for any other, as OpenCV answers."""
        if prop == cv2.CAP_PROP_POS_MSEC:
            when = self._frame.time if self._frame is not None else None
            if when is None:
                when = (self._grabbed - 1) / self._fps if self._fps and self._grabbed else 0.0
            return float(when) * 1000.0
        known = {
            cv2.CAP_PROP_FPS: self._fps,
            cv2.CAP_PROP_FRAME_COUNT: self._count,
            cv2.CAP_PROP_POS_FRAMES: float(self._grabbed),
            cv2.CAP_PROP_FRAME_WIDTH: self._size[0],
            cv2.CAP_PROP_FRAME_HEIGHT: self._size[1],
        }
        return known.get(prop, 0.0)

    def set(self, prop: int, value: float) -> bool:
        """No property can be set (no seeking): False, as OpenCV answers what it cannot do."""
        return False

    def release(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self._frame = None
        self._decoded.clear()


VideoFile = cv2.VideoCapture | InterlacedFile


def is_interlaced(path: str) -> bool:
    """Whether the first frame of `path`'s video is interlaced; False when PyAV cannot tell.

    The first frame decides, as it decides OpenCV's conversion: a file that starts progressive
    and turns interlaced (two recordings joined) decodes in colour with OpenCV throughout."""
    try:
        import av  # lazily: see TYPE_CHECKING above

        with av.open(path) as container:
            for frame in container.decode(video=0):
                return bool(frame.interlaced_frame)
    except Exception:  # any file PyAV cannot read is left to OpenCV, which reports it
        return False
    return False


def open_video_file(path: str, *, probe: bool = True) -> VideoFile:
    """A capture for the video file at `path`: PyAV's when its video is interlaced, else
    OpenCV's (whose `isOpened()` the caller checks, as before). `probe=False` skips the check
    (and PyAV) for a file known to be progressive."""
    if probe and is_interlaced(path):
        import av  # lazily: see TYPE_CHECKING above

        try:
            return InterlacedFile(path)
        except (IndexError, av.FFmpegError) as exc:
            log.warning("%s: interlaced, but PyAV cannot open it (%s); decoding with OpenCV", path, exc)
    return cv2.VideoCapture(path, cv2.CAP_FFMPEG)
