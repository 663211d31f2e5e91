"""Raspberry Pi camera backend: libcamera through picamera2, for `picamera:N?width=&height=&fps=`.

picamera2 exists only on Raspberry Pi OS (it is packaged with libcamera's Python bindings), so it is
imported inside open(): this module imports, and the agent runs, on every gateway.

One thread reads. `close()` may come from another thread; it waits for a capture in progress,
which is bounded by `stall_timeout_s`.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import parse_qsl

import numpy as np

from agent.capture.source import Frame, Image
from agent.errors import SourceError

log = logging.getLogger(__name__)

NOT_INSTALLED = "picamera2 is not installed; it ships with Raspberry Pi OS (apt install python3-picamera2)"
DEFAULT_WIDTH, DEFAULT_HEIGHT, DEFAULT_FPS = 1280, 720, 15.0
MAX_SIDE = 4608  # Camera Module 3's full width; nothing larger exists for the Pi
# picamera2 names formats as libcamera/DRM fourccs, which list channels from the most significant
# byte: "RGB888" is stored B, G, R in memory, which is OpenCV's BGR. No conversion needed.
MAIN_FORMAT = "RGB888"


class _Job(Protocol):
    """A capture queued on picamera2's event loop (capture_array with wait=False)."""


class _Camera(Protocol):
    """The slice of picamera2's `Picamera2` this backend uses (tests/fakes/picamera2.py fakes it)."""

    def create_video_configuration(
        self, main: dict[str, Any] = ..., controls: dict[str, Any] = ...
    ) -> dict[str, Any]: ...
    def configure(self, camera_config: dict[str, Any]) -> None: ...
    def start(self) -> None: ...
    def capture_array(self, name: str = ..., wait: bool | None = ...) -> _Job: ...
    def wait(self, job: _Job, timeout: float | None = ...) -> Any: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PicameraSpec:
    """What a `picamera:` URI asks for."""

    index: int
    width: int = DEFAULT_WIDTH
    height: int = DEFAULT_HEIGHT
    fps: float = DEFAULT_FPS


def parse_picamera_uri(uri: str) -> PicameraSpec:
    """Parse `picamera:N[?width=W&height=H&fps=F]`; SourceError names the bad part."""
    example = "e.g. picamera:0?width=1280&height=720&fps=15"
    scheme, _, rest = uri.partition(":")
    index, _, query = rest.partition("?")
    if scheme != "picamera" or not re.fullmatch(r"[0-9]{1,2}", index):
        raise SourceError(f"{uri!r}: expected picamera:N with N the camera number, {example}")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise SourceError(f"{uri!r}: malformed query, {example}") from None
    params = dict(pairs)
    if len(params) != len(pairs):
        raise SourceError(f"{uri!r}: a query parameter is repeated")
    unknown = sorted(set(params) - {"width", "height", "fps"})
    if unknown:
        raise SourceError(f"{uri!r}: unknown parameter {', '.join(unknown)} (known: width, height, fps)")
    sides: dict[str, int] = {}
    for key, default in (("width", DEFAULT_WIDTH), ("height", DEFAULT_HEIGHT)):
        text = params.get(key, str(default))
        if not re.fullmatch(r"[0-9]{1,5}", text) or not 64 <= int(text) <= MAX_SIDE or int(text) % 2:
            raise SourceError(f"{uri!r}: {key}={text!r} must be an even number of pixels, 64 to {MAX_SIDE}")
        sides[key] = int(text)
    fps_text = params.get("fps", str(DEFAULT_FPS))
    try:
        fps = float(fps_text)
    except ValueError:
        fps = math.nan
    if not (math.isfinite(fps) and 0.1 <= fps <= 120.0):
        raise SourceError(f"{uri!r}: fps={fps_text!r} must be a number from 0.1 to 120")
    return PicameraSpec(int(index), sides["width"], sides["height"], fps)


class PicameraSource:
    """A Raspberry Pi camera module read with picamera2, delivering BGR frames at the asked rate."""

    def __init__(self, uri: str, *, stall_timeout_s: float = 10.0) -> None:
        if not stall_timeout_s > 0:
            raise ValueError("stall_timeout_s must be positive")
        self.uri = uri
        self.spec = parse_picamera_uri(uri)
        self._stall_timeout_s = stall_timeout_s
        # _lock covers _camera, _pending and _seq: held by a capture and by open()/close().
        self._lock = threading.Lock()
        self._camera: _Camera | None = None
        self._pending: Image | None = None  # the frame open() captured as a probe
        self._seq = 0
        self._opened_at = time.monotonic()
        self._size = (0, 0)

    @property
    def fps(self) -> float:
        """The frame rate asked of the sensor (FrameDurationLimits)."""
        return self.spec.fps

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the latest frame; (0, 0) before open()."""
        return self._size

    def open(self) -> None:
        """Acquire, configure and start the camera, then capture a first frame to prove it works."""
        self.close()
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError(NOT_INSTALLED) from None
        spec = self.spec
        try:
            cameras: list[dict[str, Any]] = list(Picamera2.global_camera_info())
        except Exception as exc:
            raise SourceError(f"{self.uri}: libcamera cannot list cameras: {exc}") from None
        if spec.index >= len(cameras):
            found = ", ".join(f"{i}: {c.get('Model', '?')}" for i, c in enumerate(cameras)) or "none"
            raise SourceError(f"{self.uri}: no camera {spec.index} (cameras found: {found})")
        model = cameras[spec.index].get("Model", "?")
        try:
            camera = cast(_Camera, Picamera2(spec.index))
        except Exception as exc:
            raise SourceError(
                f"{self.uri}: cannot acquire camera {spec.index} ({model}), in use by another process? {exc}"
            ) from None
        frame_us = round(1_000_000 / spec.fps)
        try:
            config = camera.create_video_configuration(
                main={"size": (spec.width, spec.height), "format": MAIN_FORMAT},
                controls={"FrameDurationLimits": (frame_us, frame_us)},
            )
            camera.configure(config)
            camera.start()
        except Exception as exc:
            _shut(camera)
            raise SourceError(
                f"{self.uri}: cannot start camera {spec.index} ({model}) "
                f"at {spec.width}x{spec.height}, {spec.fps:g} fps: {exc}"
            ) from None
        with self._lock:
            self._camera = camera
            self._seq = 0
            self._opened_at = time.monotonic()
            try:
                self._pending = self._capture(camera)
            except SourceError:
                self._camera = None
                _shut(camera)
                raise
        log.info("opened %s (%s): %dx%d at %g fps", self.uri, model, *self._size, spec.fps)

    def read(self) -> Frame:
        """Return the next frame; raise SourceError when capture fails or stalls."""
        with self._lock:
            if self._camera is None:
                raise SourceError(f"{self.uri}: not open")
            image, self._pending = self._pending, None
            if image is None:
                image = self._capture(self._camera)
            seq = self._seq
            self._seq += 1
        return Frame(image=image, ts=time.time(), pts=time.monotonic() - self._opened_at, seq=seq)

    def close(self) -> None:
        """Stop and release the camera; safe to call twice."""
        with self._lock:
            camera, self._camera = self._camera, None
            self._pending = None
        if camera is not None:
            _shut(camera)

    def _capture(self, camera: _Camera) -> Image:
        try:
            job = camera.capture_array("main", wait=False)
            array = camera.wait(job, timeout=self._stall_timeout_s)
        except TimeoutError:
            raise SourceError(f"{self.uri}: stalled: no frame for {self._stall_timeout_s:g} s") from None
        except Exception as exc:
            raise SourceError(f"{self.uri}: capture failed: {exc}") from None
        image = np.asarray(array)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise SourceError(f"{self.uri}: expected {MAIN_FORMAT} frames, got {image.shape} {image.dtype}")
        self._size = (int(image.shape[1]), int(image.shape[0]))
        return cast(Image, image)


def _shut(camera: _Camera) -> None:
    """Stop then close, each even if the other fails: a half-closed camera blocks the next open."""
    for step in (camera.stop, camera.close):
        try:
            step()
        except Exception:
            log.warning("picamera2 %s failed", step.__name__, exc_info=True)
