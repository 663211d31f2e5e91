"""Object events on real footage, with or without ground truth; print tables.

For real footage you may not commit (a dataset's licence, a district's own camera). Each video is
replayed with detection on, as `edge-agent replay` runs it, once with defaults and once per
`--variant` given, and its object events are counted per label with two signs of trouble that
need no annotation:

| column | meaning |
|---|---|
| events | object events of the label |
| resumed | events starting within RESUME_S of another's end, near its last box: one track broken |
| short | events shorter than --min-duration |
| inferences | model runs, against analysed frames |

Compare the counts with the people and vehicles you count by eye: a parked vehicle should raise
nothing, a person crossing once one event. With `--mot-gt`, a MOTChallenge ground-truth file
(`frame,id,left,top,width,height,...` in pixels, frames from 1) for the one video given, each
annotated person counts as one object that should raise one event, and the runs are also scored
as `object_events_score.py` scores its scenes (missed, fragments, false events).

    .venv/bin/python bench/object_events_footage.py VIDEO [VIDEO ...] [--variant detection.end_delay_s=6]
    .venv/bin/python bench/object_events_footage.py VIDEO --mot-gt gt.txt [--mot-size 768x576]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/object_events_score.py

import av
from object_events_score import HEADER, replay_rows, rows_of, score, table

from agent.errors import AgentError

RESUME_S = 6.0  # the measure: an event starting this soon after another ended...
RESUME_DIST = 0.1  # ...this near (frame units) where that one was last seen


def _foot(box: Sequence[float]) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1] + box[3]


def summarise(rows: Sequence[dict[str, Any]], min_duration: float) -> dict[str, tuple[int, int, int]]:
    """(events, resumed, short) per label of the object events in replay rows."""
    spans: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("kind") != "object":
            continue
        e = spans.setdefault(r["event_id"], {"start": r["offset_s"], "end": None, "label": "", "boxes": []})
        if r["phase"] == "end":
            e["end"] = r["offset_s"]
        for o in r.get("objects") or []:
            e["label"] = e["label"] or o["label"]
            e["boxes"].append((r["offset_s"], o["box"]))
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in spans.values():
        if e["boxes"]:
            by_label[e["label"]].append(e)
    out: dict[str, tuple[int, int, int]] = {}
    for label, events in sorted(by_label.items()):
        resumed = sum(
            any(
                f is not e
                and f["end"] is not None
                and 0 <= e["start"] - f["end"] <= RESUME_S
                and math.dist(_foot(e["boxes"][0][1]), _foot(f["boxes"][-1][1])) <= RESUME_DIST
                for f in events
            )
            for e in events
        )
        short = sum(e["end"] is not None and e["end"] - e["start"] < min_duration for e in events)
        out[label] = (len(events), resumed, short)
    return out


def mot_truth(path: Path, video: Path, size: tuple[int, int] | None) -> dict[str, Any]:
    """Scorer ground truth from a MOTChallenge gt file: one person object per id, boxes scaled by
    the annotated frame `size` (default: the video's own) and timed by the video's frame rate."""
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        width, height = size or (stream.codec_context.width, stream.codec_context.height)
    if fps <= 0:
        raise ValueError(f"{video}: no frame rate to time the annotation by")
    keys: dict[str, list[list[float]]] = defaultdict(list)
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(",")
        try:
            frame, ident = int(float(fields[0])), int(float(fields[1]))
            left, top, w, h = (float(v) for v in fields[2:6])
        except (ValueError, IndexError):
            raise ValueError(f"{path}:{n}: not a MOT line (frame,id,left,top,width,height,...)") from None
        box = [max(left, 0.0) / width, max(top, 0.0) / height, w / width, h / height]
        keys[f"mot{ident}"].append([round((frame - 1) / fps, 3), *(round(v, 4) for v in box)])
    objects = [{"id": k, "label": "person", "expected": 1, "keys": sorted(v)} for k, v in keys.items()]
    return {"video": str(video), "labels": [], "objects": objects}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("videos", nargs="+", type=Path)
    parser.add_argument(
        "--variant", action="append", default=[], help="a camera setting to compare with the defaults"
    )
    parser.add_argument("--min-duration", type=float, default=0.5)
    parser.add_argument("--mot-gt", type=Path, help="MOTChallenge ground truth for the one video")
    parser.add_argument("--mot-size", help="WxH the annotation's pixels refer to (default: the video's)")
    args = parser.parse_args()
    missing = [str(v) for v in [*args.videos, *([args.mot_gt] if args.mot_gt else [])] if not v.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    for variant in args.variant:
        key, eq, value = variant.partition("=")
        section, _, name = key.partition(".")
        if section not in ("motion", "detection") or not name or not eq or not value:
            parser.error(f"--variant: expected motion.NAME=VALUE or detection.NAME=VALUE, got {variant!r}")
    truth = None
    if args.mot_gt:
        if len(args.videos) != 1:
            parser.error("--mot-gt goes with exactly one video")
        size = None
        if args.mot_size:
            w, _, h = args.mot_size.partition("x")
            if not (w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
                parser.error(f"--mot-size: expected WxH, got {args.mot_size!r}")
            size = (int(w), int(h))
        try:
            truth = mot_truth(args.mot_gt, args.videos[0], size)
        except ValueError as e:
            parser.error(str(e))
    rows_out: list[tuple[str, ...]] = []
    scored: list[tuple[str, ...]] = []
    runs = [(video, variant) for video in args.videos for variant in ["", *args.variant]]
    with tempfile.TemporaryDirectory(prefix="object-footage-") as tmp:
        for n, (video, variant) in enumerate(runs):
            folder = Path(tmp) / f"run-{n}"
            folder.mkdir()
            try:
                rows, _wall, stats = replay_rows(video.resolve(), folder, [variant] if variant else [])
            except (AgentError, ValueError) as e:  # a setting the config refuses, a file that is no video
                parser.error(f"{video.name} {variant or 'defaults'}: {e}")
            if truth is not None:
                scored += rows_of(variant or "defaults", score(truth, rows, args.min_duration))
            counts = summarise(rows, args.min_duration) or {"-": (0, 0, 0)}  # no object event at all
            for label, (events, resumed, short) in counts.items():
                rows_out.append(
                    (video.name, variant or "defaults", label, str(events), str(resumed), str(short),
                     f"{stats['inferences']} / {stats['analysed']}")
                )  # fmt: skip
    header = ["video", "settings", "label", "events", "resumed", "short", "inferences / analysed"]
    print(table(header, rows_out))
    if scored:
        print(f"\nAgainst {args.mot_gt.name} (one event expected per annotated person)\n")
        print(table(["settings", *HEADER[1:]], scored))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
