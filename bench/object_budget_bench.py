"""Object events of cameras that together ask for more inferences than the gateway's budget.

Two cameras (the scorer's traffic and crowd scenes, 10 fps) share one `DetectionService` capped at
`--budget` inferences a second, as `edge-agent run` shares it, and are fed in simulated real time:
the service's clock is the frames' time, and each round waits until the worker has run what it
admitted (a gateway whose model keeps up, limited by the cap only). Over the cap, the service drops
whole submissions; with `pressed` thinning (the default) cameras then look at motion already
followed at most twice a second, so that new objects and objects not yet sure keep their looks.
The `random` mode turns that off: submissions over the cap are dropped as they come.

    .venv/bin/python bench/object_budget_bench.py [--budget 8,12,20] [--seconds 90]

Prints, per budget and mode, each scene's object events scored against its ground truth
(bench/object_events_score.py's columns) and the service's submissions and drops.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/object_scenes.py, the scorer

import object_events_score as scorer
import object_scenes

from agent.analysis.objects.service import DetectionService, load_detection_service
from agent.analysis.pipeline import CameraPipeline
from agent.analysis.replay import EPOCH
from agent.capture.source import Frame
from agent.config import CameraConfig, DetectionSettings

SCENES = ("traffic", "crowd")
FPS = 10.0


class Clock:
    """The service's clock: the time of the frames being fed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def frames(video: Path) -> list[np.ndarray[Any, Any]]:
    cap = cv2.VideoCapture(str(video))
    out: list[np.ndarray[Any, Any]] = []
    try:
        while True:
            ok, image = cap.read()
            if not ok or image is None:
                return out
            out.append(np.asarray(image, np.uint8))
    finally:
        cap.release()


def settle(service: DetectionService, timeout_s: float = 10.0) -> None:
    """Wait until the worker has run every submission it admitted."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = service.stats()
        admitted = s.submitted - s.dropped_queue_full - s.dropped_rate_limit
        if s.frames_done + s.errors >= admitted:
            return
        time.sleep(0.001)
    raise TimeoutError("the detection worker did not keep up")


def run(
    videos: dict[str, list[np.ndarray[Any, Any]]], budget: float, mode: str, seconds: float
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    model = load_detection_service(None).model
    clock = Clock()
    service = DetectionService(model, max_inferences_per_s=budget, clock=clock)
    if mode == "random":
        service.pressed = lambda: False  # type: ignore[method-assign]
    pipelines = {
        name: CameraPipeline(
            CameraConfig(
                id=name,
                source=f"file:///{name}.mp4",
                detect_fps=FPS,
                detection=DetectionSettings(enabled=True),
            ),
            objects=service,
        )
        for name in videos
    }
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in videos}
    service.start()
    try:
        lengths = {name: min(len(v), round(seconds * FPS)) for name, v in videos.items()}
        for i in range(max(lengths.values())):
            pts = i / FPS
            clock.now = pts
            for name, pipeline in pipelines.items():
                if i < lengths[name]:
                    frame = Frame(image=videos[name][i], ts=EPOCH + pts, pts=pts, seq=i)
                    rows[name] += [scorer_row(p) for p in pipeline.process(frame)]
                if i == lengths[name] - 1:  # its video ends: the camera stops
                    settle(service)
                    rows[name] += [scorer_row(p) for p in pipeline.close(EPOCH + pts, pts)]
            settle(service)
    finally:
        service.stop()
    s = service.stats()
    return rows, {
        "submitted": s.submitted,
        "dropped": s.dropped_rate_limit + s.dropped_queue_full,
        "inferences": s.inferences,
    }


def scorer_row(phase: Any) -> dict[str, Any]:
    row: dict[str, Any] = phase.event.model_dump(mode="json")
    row["offset_s"] = round(phase.offset_s, 3)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", default="8,12,20", help="inferences per second, comma separated")
    parser.add_argument("--seconds", type=float, default=90.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        videos: dict[str, list[np.ndarray[Any, Any]]] = {}
        truths: dict[str, dict[str, Any]] = {}
        for name in SCENES:
            video, truths[name] = object_scenes.write(name, Path(tmp))
            videos[name] = frames(video)
        table: list[tuple[str, ...]] = []
        for budget in (float(b) for b in args.budget.split(",")):
            for mode in ("random", "pressed"):
                rows, cost = run(videos, budget, mode, args.seconds)
                for name in SCENES:
                    result = scorer.score(truths[name], rows[name], 0.5)
                    for group in ("person", "vehicle"):
                        r = result.get(group)
                        if r is None or not r.objects:
                            continue
                        table.append(
                            (f"{budget:g}", mode, name, group, str(r.expected), str(r.events), str(r.missed),
                             str(r.fragments), str(r.reraised), str(r.false), str(cost["submitted"]),
                             str(cost["dropped"]), str(cost["inferences"]))
                        )  # fmt: skip
    header = (
        "budget/s", "mode", "scene", "group", "expected", "events", "missed", "fragments", "re-raised",
        "false", "submitted", "dropped", "inferences",
    )  # fmt: skip
    print("Two cameras sharing one detection budget, simulated real time\n")
    print(scorer.table(header, table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
