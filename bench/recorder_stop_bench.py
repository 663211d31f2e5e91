"""Pixel-path clip recorder at a stop: how long keeping 8 unwritten 10 s clips takes, and what
finishing them at the next start costs.

Eight events at once (the recorder's admission limit) on four cameras fed the synthetic street
(10 fps, JPEG q75 as the pre-event buffer keeps it): three ended and queued for the encoder, three
ended and waiting for post-roll, two still running. `stop(timeout_s=1.0)` (the agent's budget for
the recorder) keeps them all in clips-pending; a new recorder on the same folder then writes them.
Masked cameras' frames are masked before they are kept (decode, blank, JPEG), which is what the
"masked" rows cost. Figures are wall time on this machine, in a temporary folder.

    .venv/bin/python bench/recorder_stop_bench.py [--sizes 640x360,1280x720,1920x1080]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.analysis.events import EventPhase
from agent.capture.source import Frame
from agent.capture.synthetic import Scene, SceneOptions
from agent.clock import iso
from agent.contract.messages import Event
from agent.footage.prebuffer import PreEventBuffer
from agent.footage.recorder import ClipRecorder, ClipSettings
from agent.footage.store import ClipStore

FPS = 10.0
SECONDS = 12.0
MASK = ((0.0, 0.0), (0.4, 0.0), (0.4, 0.5), (0.0, 0.5))


def phase(camera: str, t0: float, event_id: str, name: str, start: float, at: float) -> EventPhase:
    event = Event(
        event_id=event_id,
        camera=camera,
        kind="motion",
        phase=name,  # type: ignore[arg-type]
        started_at=iso(t0 + start),
        ts=iso(t0 + at),
        ended_at=iso(t0 + at) if name == "end" else None,
        score=0.6,
    )
    return EventPhase(event=event, frame=None, offset_s=at)


def run(size: tuple[int, int], masked: bool) -> dict[str, float]:
    scene = Scene(SceneOptions(kind="street", seed=1, fps=FPS, width=size[0], height=size[1]))
    images = [scene.render(i) for i in range(int(SECONDS * FPS) + 1)]
    t0 = time.time() - 600.0
    buffers: dict[str, PreEventBuffer] = {}
    for n in range(1, 5):
        buf = PreEventBuffer(seconds=30.0, max_bytes=512 << 20, jpeg_quality=75)
        for i, img in enumerate(images):
            buf.push(Frame(img, ts=t0 + i / FPS, pts=i / FPS, seq=i))
        buffers[f"cam-{n}"] = buf
    settings = ClipSettings(pre_roll_s=2.0, post_roll_s=3.0, masks=(MASK,) if masked else ())
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        recorder = ClipRecorder(ClipStore(data / "clips"), buffers, lambda _c: settings)
        for n in range(8):
            cam, eid = f"cam-{n % 4 + 1}", str(uuid.uuid4())
            recorder.on_phase(phase(cam, t0, eid, "start", 2.0, 2.0))
            if n < 6:  # 10 s events; the first three have their post-roll, the next three wait
                recorder.on_phase(phase(cam, t0, eid, "end", 2.0, 8.0 if n < 3 else 10.0))
        recorder.collect()
        recorder.start()
        t = time.perf_counter()
        recorder.stop(timeout_s=1.0)
        stop_s = time.perf_counter() - t
        pending = data / "clips-pending"
        kept = [p for p in pending.iterdir() if p.is_dir()] if pending.is_dir() else []
        kept_bytes = sum(f.stat().st_size for p in kept for f in p.iterdir())
        lost = recorder.stats().failed

        before = os.times()
        t = time.perf_counter()
        again = ClipRecorder(ClipStore(data / "clips"), buffers, lambda _c: settings)
        again.start()
        while pending.is_dir() and any(pending.iterdir()) and time.perf_counter() - t < 300:
            time.sleep(0.02)
        finish_s = time.perf_counter() - t
        after = os.times()
        again.stop()
        written = len(again.store.clips())
    cpu = (after.user + after.system + after.children_user + after.children_system) - (
        before.user + before.system + before.children_user + before.children_system
    )
    return {
        "stop_ms": 1000 * stop_s,
        "kept": len(kept),
        "kept_mb": kept_bytes / 1e6,
        "lost": lost,
        "written": written,
        "finish_s": finish_s,
        "cpu_s": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="640x360,1280x720,1920x1080")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    print(f"8 clips of ~13 s (10 s event + rolls) at {FPS:g} fps, stop budget 1.0 s, {os.cpu_count()} cores")
    print()
    print(
        "| size | masks | stop ms | pending | pending MB | lost | written after restart | restart s / CPU s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for w, h in sizes:
        for masked in (False, True):
            r = run((w, h), masked)
            print(
                f"| {w}x{h} | {'yes' if masked else 'no'} | {r['stop_ms']:.0f} | {r['kept']:.0f} | "
                f"{r['kept_mb']:.1f} | {r['lost']:.0f} | {r['written']:.0f} | "
                f"{r['finish_s']:.1f} / {r['cpu_s']:.1f} |"
            )


if __name__ == "__main__":
    main()
