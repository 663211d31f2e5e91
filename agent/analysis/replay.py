"""Replay a video file through a camera pipeline as fast as it decodes, yielding event phases.

Timestamps are a fixed epoch plus the frame's position in the video, so a replay of the same file
with the same settings prints the same events (except the random event ids). Frames the pipeline
would skip are only grabbed, not converted to BGR, which keeps replay close to bare decode speed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.analysis.events import EventPhase
from agent.analysis.pipeline import CameraPipeline
from agent.capture.source import Frame, Image
from agent.config import CameraConfig, DetectorConfig
from agent.errors import SourceError

EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z: wall clock of a replayed video's first frame
_DEFAULT_FPS = 10.0


def _open(video: Path) -> tuple[cv2.VideoCapture, float, Image]:
    """Open `video` and decode its first frame, so that any kind of bad file fails here."""
    if not video.exists():
        raise SourceError(f"video {video} does not exist")
    if not video.is_file():
        raise SourceError(f"video {video} is not a file")
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"cannot open {video}: not a video OpenCV can decode")
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise SourceError(f"cannot decode {video}: no video frames")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if not math.isfinite(fps) or not 0.1 <= fps <= 1000.0:
        fps = _DEFAULT_FPS
    return cap, fps, np.asarray(first, np.uint8)


def _row(phase: EventPhase) -> dict[str, Any]:
    row = phase.event.model_dump()
    row["offset_s"] = round(phase.offset_s, 3)
    return row


def replay(
    video: Path,
    camera: CameraConfig,
    *,
    detector: DetectorConfig | None = None,
    pipeline: CameraPipeline | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield each event phase found in `video` as the protocol's event fields plus `offset_s`.

    When the camera enables object detection, objects are detected on every analysed frame
    with motion, on this thread (no rate cap), with the TFLite model that `detector` (the
    config's `[detector]` section) names. `pipeline` replaces the default (benches pass one with
    another motion detector). Raises SourceError when the file is missing, unreadable or has no
    decodable frame, AgentError when the model cannot load.
    """
    video = Path(video)
    if pipeline is None:
        objects = None
        if camera.detection.enabled:
            from agent.analysis.objects.service import load_detection_service

            objects = load_detection_service(detector)
        pipeline = CameraPipeline(camera, objects=objects, objects_inline=True)
    cap, fps, first = _open(video)  # raise here, at the call, not at the first next()
    return _run(cap, fps, first, pipeline)


def _run(
    cap: cv2.VideoCapture, fps: float, first: Image, pipeline: CameraPipeline
) -> Iterator[dict[str, Any]]:
    try:
        index = 0
        last_pts = 0.0
        image: Image | None = first
        while True:
            pts = index / fps
            if image is not None or pipeline.wants(pts):
                if image is None:
                    ok, decoded = cap.read()
                    if not ok or decoded is None:
                        break
                    image = np.asarray(decoded, np.uint8)  # no copy: already uint8
                frame = Frame(image=image, ts=EPOCH + pts, pts=pts, seq=index)
                image = None
                for phase in pipeline.process(frame):
                    yield _row(phase)
            elif not cap.grab():
                break
            last_pts = pts
            index += 1
        for phase in pipeline.close(EPOCH + last_pts, last_pts):
            yield _row(phase)
    finally:
        cap.release()
