"""A small stand-in for picamera2, for tests on machines without libcamera.

It has only what agent.capture.picamera uses, with the real library's signatures and behaviour
(picamera2 manual and source): `Picamera2(camera_num)` raises RuntimeError for a missing or busy
camera, `global_camera_info()` lists one dict per camera, `create_video_configuration` defaults to
XBGR8888 at 1280x720, `configure` rejects odd sizes and unknown formats, `capture_array(wait=False)`
returns a job that `wait(job, timeout)` resolves or times out with TimeoutError.

Frames show one flat colour, SCENE_BGR, laid out in memory as the asked format specifies
("RGB888" is B, G, R in memory). Install with
`monkeypatch.setitem(sys.modules, "picamera2", fakes.picamera2)`, reset and tune `rig` per test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

SCENE_BGR = (200, 120, 40)  # a blue-dominant colour, so a swapped channel order shows
_B, _G, _R = SCENE_BGR
PIXELS = {  # bytes of one pixel in memory, per picamera2 format (manual, appendix A)
    "RGB888": (_B, _G, _R),
    "BGR888": (_R, _G, _B),
    "XBGR8888": (_R, _G, _B, 255),
    "XRGB8888": (_B, _G, _R, 255),
}


@dataclass
class Rig:
    """The simulated camera system: what is attached and which faults to inject."""

    cameras: list[dict[str, Any]] = field(default_factory=list)
    busy: set[int] = field(default_factory=set)  # camera numbers held by "another process"
    capture_error: Exception | None = None  # raised by the next captures
    stall: bool = False  # captures never complete
    opened: list[Picamera2] = field(default_factory=list)

    def reset(self) -> None:
        imx708 = {"Model": "imx708", "Location": 2, "Rotation": 180, "Id": "/base/i2c@88000/imx708@1a"}
        self.cameras = [imx708]
        self.busy = set()
        self.capture_error = None
        self.stall = False
        self.opened = []


rig = Rig()
rig.reset()


class Job:
    """A queued capture; like picamera2's Job, it is resolved with get_result(timeout)."""

    def __init__(self, make: Callable[[], npt.NDArray[np.uint8]]) -> None:
        self._make = make

    def get_result(self, timeout: float | None = None) -> npt.NDArray[np.uint8]:
        if rig.stall:
            if timeout is None:
                raise AssertionError("fake picamera2: a stalled capture with no timeout blocks forever")
            threading.Event().wait(timeout)
            raise TimeoutError
        return self._make()


class Picamera2:
    def __init__(self, camera_num: int = 0, tuning: object = None) -> None:
        if camera_num >= len(rig.cameras) or camera_num in rig.busy:
            raise RuntimeError("Camera __init__ sequence did not complete.")
        self.camera_num = camera_num
        self.camera_config: dict[str, Any] | None = None
        self.started = False
        self.closed = False
        self.captured = 0
        rig.opened.append(self)

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return [dict(camera) for camera in rig.cameras]

    def create_video_configuration(
        self, main: dict[str, Any] | None = None, controls: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return {
            "use_case": "video",
            "buffer_count": 6,
            "queue": True,
            "main": {"format": "XBGR8888", "size": (1280, 720)} | (main or {}),
            "controls": {"FrameDurationLimits": (33333, 33333)} | (controls or {}),
        }

    def configure(self, camera_config: dict[str, Any]) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        main = camera_config["main"]
        if main["format"] not in PIXELS:
            raise RuntimeError(f"Bad format {main['format']} in stream main")
        width, height = main["size"]
        if width % 2 or height % 2:
            raise RuntimeError("width and height should be even")
        self.camera_config = camera_config

    def start(self) -> None:
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def capture_array(self, name: str = "main", wait: bool | None = None) -> Any:
        job = Job(lambda: self._make_array(name))
        return job if wait is False else job.get_result()

    def wait(self, job: Job, timeout: float | None = None) -> npt.NDArray[np.uint8]:
        return job.get_result(timeout)

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.stop()
        self.closed = True

    def _make_array(self, name: str) -> npt.NDArray[np.uint8]:
        if not self.started or self.camera_config is None:
            raise RuntimeError("Camera is not running")
        if rig.capture_error is not None:
            raise rig.capture_error
        stream = self.camera_config[name]
        width, height = stream["size"]
        pixel = PIXELS[stream["format"]]
        self.captured += 1
        return np.tile(np.array(pixel, dtype=np.uint8), (height, width, 1))
