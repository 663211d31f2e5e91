"""A synthetic camera: a rendered street scene with known movers, for the demo, tests and benches.

`synthetic:KIND?seed=1&fps=15&width=1280&height=720` selects a scene; the kinds, what each draws and
its ground truth (when a person or car is in view) are agent.capture.synthetic_scene's. This module
is what turns a scene into frames: the URI, a paced `FrameSource`, and a video file on disk.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from urllib.parse import parse_qsl

import cv2

from agent.capture.source import Frame
from agent.capture.synthetic_scene import KINDS, Scene, SceneOptions
from agent.errors import SourceError

# Re-exported: a URI is parsed into SceneOptions, and tests and benches build their scenes from here.
__all__ = ["KINDS", "Scene", "SceneOptions", "SyntheticSource", "parse_uri", "write_scene_video"]

_MAX_SIDE = 4096


def parse_uri(uri: str) -> SceneOptions:
    """Parse `synthetic:KIND?key=value&…`; raise SourceError naming the bad part."""
    if not uri.startswith("synthetic:"):
        raise SourceError(f"not a synthetic source: {uri!r}")
    body = uri[len("synthetic:") :]
    kind, _, query = body.partition("?")
    kind = kind or "street"
    if kind not in KINDS:
        raise SourceError(f"unknown synthetic scene {kind!r} in {uri!r}; choose one of {', '.join(KINDS)}")
    values: dict[str, float] = {}
    for key, raw in parse_qsl(query, keep_blank_values=True):
        if key not in ("seed", "fps", "width", "height"):
            raise SourceError(f"unknown option {key!r} in {uri!r}; use seed, fps, width or height")
        try:
            values[key] = float(raw)
        except ValueError:
            raise SourceError(f"option {key}={raw!r} in {uri!r} is not a number") from None
    opts = SceneOptions(
        kind=kind,
        seed=int(values.get("seed", 0)),
        fps=values.get("fps", 10.0),
        width=int(values.get("width", 640)),
        height=int(values.get("height", 360)),
    )
    if not 0.5 <= opts.fps <= 120 or not math.isfinite(opts.fps):
        raise SourceError(f"fps must be within 0.5..120 in {uri!r}")
    if not (32 <= opts.width <= _MAX_SIDE and 32 <= opts.height <= _MAX_SIDE):
        raise SourceError(f"width and height must be within 32..{_MAX_SIDE} in {uri!r}")
    return opts


class SyntheticSource:
    """A `FrameSource` rendering a synthetic scene; paced at its fps when `realtime`."""

    def __init__(self, uri: str, realtime: bool = True) -> None:
        self.uri = uri
        self.realtime = realtime
        self._opts = parse_uri(uri)
        self._scene: Scene | None = None
        self._seq = 0
        self._t0 = 0.0

    def open(self) -> None:
        self._scene = Scene(self._opts)
        self._seq = 0
        self._t0 = time.monotonic()

    def read(self) -> Frame:
        if self._scene is None:
            raise SourceError(f"{self.uri}: read() before open()")
        seq = self._seq
        pts = seq / self._opts.fps
        if self.realtime:
            delay = self._t0 + pts - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, 2.0 / self._opts.fps))
        self._scene.seed_noise(seq)
        image = self._scene.render(seq).copy()
        self._seq += 1
        return Frame(image=image, ts=time.time(), pts=pts, seq=seq)

    def close(self) -> None:
        self._scene = None

    def truth(self, until: float) -> list[tuple[float, float]]:
        """Ground truth of the open scene: intervals (s) with a person or car in view."""
        if self._scene is None:
            raise SourceError(f"{self.uri}: truth() before open()")
        return self._scene.truth(until)

    @property
    def fps(self) -> float:
        return self._opts.fps

    @property
    def size(self) -> tuple[int, int]:
        return (self._opts.width, self._opts.height)


def write_scene_video(
    path: Path,
    kind: str,
    seconds: float,
    fps: float = 10,
    size: tuple[int, int] = (640, 360),
    seed: int = 0,
) -> list[tuple[float, float]]:
    """Write `seconds` of scene `kind` as an mp4 (mp4v); return the ground-truth mover intervals."""
    if kind not in KINDS:
        raise SourceError(f"unknown synthetic scene {kind!r}; choose one of {', '.join(KINDS)}")
    if not 0 < seconds <= 24 * 3600:
        raise SourceError(f"seconds must be positive and at most a day, got {seconds}")
    opts = SceneOptions(kind=kind, seed=seed, fps=float(fps), width=size[0], height=size[1])
    scene = Scene(opts)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), float(fps), size)
    if not writer.isOpened():
        raise SourceError(f"cannot write video {path}")
    count = round(seconds * fps)
    try:
        for i in range(count):
            scene.seed_noise(i)
            writer.write(scene.render(i))
    finally:
        writer.release()
    return scene.truth(count / fps)
