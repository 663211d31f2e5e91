"""Object events on footage with no ground truth: what an operator would count; print a table.

For real footage you may not commit (a dataset's licence, a district's own camera). Each video is
replayed with detection on, as `edge-agent replay` runs it, once per `--set` variant given (and
once with defaults), and its object events are counted per label with two signs of trouble that
need no annotation:

| column | meaning |
|---|---|
| events | object events of the label |
| resumed | events starting within RESUME_S of another's end, near its last box: one track broken |
| short | events shorter than --min-duration |
| inferences | model runs, against analysed frames |

Compare the counts with the people and vehicles you count by eye: a parked vehicle should raise
nothing, a person crossing once one event.

    .venv/bin/python bench/object_events_footage.py VIDEO [VIDEO ...] [--variant detection.end_delay_s=6]
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

from object_events_score import replay_rows, table

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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("videos", nargs="+", type=Path)
    parser.add_argument(
        "--variant", action="append", default=[], help="a camera setting to compare with the defaults"
    )
    parser.add_argument("--min-duration", type=float, default=0.5)
    args = parser.parse_args()
    missing = [str(v) for v in args.videos if not v.is_file()]
    if missing:
        parser.error(f"no such video: {', '.join(missing)}")
    rows_out: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(prefix="object-footage-") as tmp:
        for video in args.videos:
            for variant in ["", *args.variant]:
                folder = Path(tmp) / f"{video.stem}-{len(rows_out)}"
                folder.mkdir()
                rows, _wall, stats = replay_rows(video.resolve(), folder, [variant] if variant else [])
                for label, (events, resumed, short) in summarise(rows, args.min_duration).items():
                    rows_out.append(
                        (video.name, variant or "defaults", label, str(events), str(resumed), str(short),
                         f"{stats['inferences']} / {stats['analysed']}")
                    )  # fmt: skip
    header = ["video", "settings", "label", "events", "resumed", "short", "inferences / analysed"]
    print(table(header, rows_out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
