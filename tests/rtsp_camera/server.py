"""A test IP camera: a real RTSP server (GStreamer's gst-rtsp-server) with a main and a substream.

Run by the SYSTEM Python (`/usr/bin/python3`): only it can `import gi`; the venv cannot. The
fixture in `tests/rtsp_camera/fixture.py` drives it; `scripts/bootstrap` installs its Debian
packages (`--check-packages` prints the ones missing).

Two mounts show the same scene at the same wall time, each encoded by its own x264enc the way a
camera's two encoders work: `/main` (1280x720 at 25 fps, an IDR every 2 s; H.265 by x265enc with
`--main-codec h265`; with `--audio`, a G.711 A-law track first, as many cameras send their
microphone) and `/sub` (640x360 at 10 fps). The scene is a pure function of the "scene clock"
(seconds of motion so far): a textured street (buildings, windows, a road: not flat, so encoders
and motion detectors have texture to work with) and a car driving across it, or frames of a video
file (`--scene`) looped. `motion off` stops the scene clock: the car (or the video) freezes and the
picture stays still until `motion on`. Frames go into a live `appsrc` stamped with the pipeline's
running time on a fixed grid of 1/fps (as a camera's hardware clock stamps them): real time,
without a thread's wake-up jitter, which would make FFmpeg guess 50 fps for a 25 fps stream.

Commands on stdin, one a line; each is answered on stdout with `ok <command>` once its effect
has begun, or `error <command>: <why>`:

    drop             close every client connection and remove every RTSP session
    stall <seconds>  keep the connections and sessions but send no video for that long
    restart [<s>]    close the listening port and every client, wait <s> (default 1), listen
                     again on the same port with fresh encoders (a camera reboot); the answer comes
                     when the port accepts again
    resize <W>x<H>   the main stream changes resolution: its encoder restarts with an IDR carrying
                     the new SPS/PPS in-band; a client that stays connected keeps its session (its SDP
                     still names the old parameter sets) and decodes frames of the new size from that
                     IDR on; new clients get an SDP for the new size
    motion on|off    start or freeze the scene
    quit             stop serving and exit 0

On startup it prints `ready rtsp://127.0.0.1:<port>` once it listens. It exits 0 on stdin EOF, on
SIGTERM or SIGINT, and after `--max-seconds`; it exits 3 with `error missing packages: ...` when a
Debian package it needs is not installed. Unknown mounts get RTSP 404; with `--user` and
`--password`, a request without valid credentials gets 401 (Digest, or Basic with `--auth basic`).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from typing import Any

# GStreamer elements this script uses and the Debian package that ships each.
ELEMENTS = {
    "appsrc": "gstreamer1.0-plugins-base",
    "videoconvert": "gstreamer1.0-plugins-base",
    "videoscale": "gstreamer1.0-plugins-base",
    "appsink": "gstreamer1.0-plugins-base",
    "x264enc": "gstreamer1.0-plugins-ugly",
    "rtph264pay": "gstreamer1.0-plugins-good",
    "rtpbin": "gstreamer1.0-plugins-good",
}
# Only for `--scene FILE`: MP4 demuxing and decoding (bikes.mp4 is H.264).
SCENE_ELEMENTS = {
    "decodebin": "gstreamer1.0-plugins-base",
    "qtdemux": "gstreamer1.0-plugins-good",
    "avdec_h264": "gstreamer1.0-libav",
}
# Only for `--main-codec h265`: many cameras sold now stream H.265 on their main stream.
H265_ELEMENTS = {
    "x265enc": "gstreamer1.0-plugins-bad",
    "rtph265pay": "gstreamer1.0-plugins-good",
}
# Only for `--audio`: a tone as the camera's microphone, G.711 A-law.
AUDIO_ELEMENTS = {
    "audiotestsrc": "gstreamer1.0-plugins-base",
    "audioconvert": "gstreamer1.0-plugins-base",
    "audioresample": "gstreamer1.0-plugins-base",
    "alawenc": "gstreamer1.0-plugins-good",
    "rtppcmapay": "gstreamer1.0-plugins-good",
}
GI_PACKAGES = ["python3-gi", "gir1.2-gst-rtsp-server-1.0"]
EXIT_MISSING = 3

Gst: Any = None
GLib: Any = None
GstRtsp: Any = None
GstRtspServer: Any = None


def missing_packages(with_scene: bool = True, with_h265: bool = True) -> list[str]:
    """Debian packages that must be installed before the camera can run (empty when none)."""
    global Gst, GLib, GstRtsp, GstRtspServer  # set once, for the whole script
    extra = {
        **(SCENE_ELEMENTS if with_scene else {}),
        **(H265_ELEMENTS if with_h265 else {}),
        **AUDIO_ELEMENTS,
    }
    plugins = set(ELEMENTS.values()) | set(extra.values())
    try:
        import gi  # type: ignore[import-not-found]
    except ImportError:
        return [*GI_PACKAGES, *sorted(plugins)]
    try:
        gi.require_version("Gst", "1.0")
        from gi.repository import GLib as _GLib  # type: ignore[import-not-found]
        from gi.repository import Gst as _Gst
    except (ImportError, ValueError):  # GStreamer's typelib comes with the RTSP server's
        return ["gir1.2-gst-rtsp-server-1.0", *sorted(plugins)]
    Gst, GLib = _Gst, _GLib
    Gst.init(None)
    wanted = {**ELEMENTS, **extra}
    missing = {pkg for element, pkg in wanted.items() if Gst.ElementFactory.find(element) is None}
    try:
        gi.require_version("GstRtsp", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GstRtsp as _GstRtsp
        from gi.repository import GstRtspServer as _GstRtspServer
    except (ImportError, ValueError):
        missing.add("gir1.2-gst-rtsp-server-1.0")
    else:
        GstRtsp, GstRtspServer = _GstRtsp, _GstRtspServer
    return sorted(missing)


def say(line: str) -> None:
    """One protocol line on stdout, flushed: the fixture waits for it."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def log(message: str) -> None:
    sys.stderr.write(f"rtsp-camera: {message}\n")
    sys.stderr.flush()


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    width, height = int(w), int(h)
    if width < 16 or height < 16 or width % 2 or height % 2 or width > 4096 or height > 4096:
        raise ValueError(f"size {text!r}: width and height must be even, 16..4096")
    return width, height


# ---------------------------------------------------------------------------------------------
# The scene


class SceneClock:
    """Seconds of motion so far: the one time every mount renders, so both show the same scene."""

    def __init__(self, motion: bool) -> None:
        self._lock = threading.Lock()
        self._base = 0.0  # scene seconds accumulated before `_since`
        self._since: float | None = time.monotonic() if motion else None

    def now(self) -> float:
        with self._lock:
            if self._since is None:
                return self._base
            return self._base + time.monotonic() - self._since

    def set_motion(self, on: bool) -> None:
        with self._lock:
            if on and self._since is None:
                self._since = time.monotonic()
            elif not on and self._since is not None:
                self._base += time.monotonic() - self._since
                self._since = None


# A material: luma base, luma texture amplitude, U, V.
Material = tuple[int, int, int, int]
Plane = bytearray | memoryview


class Street:
    """The synthetic scene at one picture size, as I420 planes: a still street and a moving car.

    Everything is placed in fractions of the picture, so every size shows the same scene; the
    texture is seeded noise (streaks, like plaster and asphalt), so it is the same on every run.
    """

    CAR_SPEED = 0.2  # picture widths per scene second: the car crosses in 5 s

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        rng = random.Random(14)
        raw = rng.randbytes(1 << 16)
        # A 1-D box blur of the noise: coarser grain, the way real surfaces look to an encoder.
        smooth = bytearray(len(raw))
        acc = sum(raw[:4])
        for i in range(len(raw)):
            smooth[i] = acc >> 2
            acc += raw[(i + 4) % len(raw)] - raw[i]
        self._noise = bytes(smooth)
        self._tables: dict[tuple[int, int], bytes] = {}
        y = bytearray(width * height)
        u = bytearray((width // 2) * (height // 2))
        v = bytearray(len(u))
        self._planes = (y, u, v)
        for box, material in self._background(rng):
            self._paint(box, material)
        self.background = bytes(y + u + v)
        self._frame: tuple[int, bytes] | None = None

    @staticmethod
    def _background(rng: random.Random) -> list[tuple[tuple[float, float, float, float], Material]]:
        boxes: list[tuple[tuple[float, float, float, float], Material]] = [
            ((0.0, 0.0, 1.0, 0.4), (170, 24, 150, 110)),  # sky
        ]
        x = 0.0
        while x < 1.0:
            w = rng.uniform(0.08, 0.2)
            top = rng.uniform(0.08, 0.3)
            base = rng.randint(70, 150)
            boxes.append(((x, top, x + w, 0.62), (base, 40, rng.randint(110, 140), rng.randint(120, 150))))
            rows = int((0.58 - top) / 0.06)
            cols = max(1, int(w / 0.035))
            for r in range(rows):
                for c in range(cols):
                    lit = rng.random() < 0.4
                    wx = x + (c + 0.25) * w / cols
                    wy = top + 0.03 + r * 0.06
                    material = (215, 20, 110, 160) if lit else (35, 16, 128, 128)
                    boxes.append(((wx, wy, wx + 0.5 * w / cols, wy + 0.03), material))
            x += w
        boxes.append(((0.0, 0.62, 1.0, 0.68), (150, 30, 128, 128)))  # pavement
        boxes.append(((0.0, 0.68, 1.0, 1.0), (75, 30, 126, 130)))  # road
        boxes.extend(((d, 0.835, d + 0.06, 0.85), (220, 10, 128, 128)) for d in (0.05, 0.3, 0.55, 0.8))
        return boxes

    def _table(self, base: int, amplitude: int) -> bytes:
        key = (base, amplitude)
        if key not in self._tables:
            lo = base - amplitude // 2
            self._tables[key] = bytes(min(255, max(0, lo + n * amplitude // 256)) for n in range(256))
        return self._tables[key]

    def _paint(
        self,
        box: tuple[float, float, float, float],
        material: Material,
        planes: tuple[Plane, Plane, Plane] | None = None,
        shift: int = 0,
    ) -> None:
        """Fill a box (fractions of the picture), textured, into the planes; `shift` moves it
        right by that many pixels, wrapping around the picture's width."""
        y_plane, u_plane, v_plane = planes or self._planes
        w, h = self.width, self.height
        x0, y0 = int(box[0] * w) + shift, int(box[1] * h)
        x1, y1 = int(box[2] * w) + shift, int(box[3] * h)
        if x1 <= x0 or y1 <= y0:
            return
        table = self._table(material[0], material[1])
        for x_a, x_b in self._wrap(x0, x1, w):
            for row in range(y0, y1):
                offset = (row * 7919 + x_a * 13) % (len(self._noise) - w)
                y_plane[row * w + x_a : row * w + x_b] = self._noise[offset : offset + x_b - x_a].translate(
                    table
                )
        cw = w // 2
        for x_a, x_b in self._wrap(x0 // 2, x1 // 2, cw):
            for row in range(y0 // 2, y1 // 2):
                u_plane[row * cw + x_a : row * cw + x_b] = bytes([material[2]]) * (x_b - x_a)
                v_plane[row * cw + x_a : row * cw + x_b] = bytes([material[3]]) * (x_b - x_a)

    @staticmethod
    def _wrap(a: int, b: int, width: int) -> list[tuple[int, int]]:
        """The spans of [a, b) on a row `width` wide, wrapping past the right edge."""
        a, b = a % width, a % width + (b - a)
        if b <= width:
            return [(a, b)]
        return [(a, width), (0, min(b - width, width))]

    def frame(self, scene_s: float) -> bytes:
        """The picture at a scene time, as one I420 buffer."""
        shift = int(scene_s * self.CAR_SPEED * self.width) % self.width
        if self._frame is not None and self._frame[0] == shift:
            return self._frame[1]
        y_size = self.width * self.height
        c_size = y_size // 4
        buf = bytearray(self.background)
        planes = (
            memoryview(buf)[:y_size],
            memoryview(buf)[y_size : y_size + c_size],
            memoryview(buf)[y_size + c_size :],
        )
        car = [
            ((0.0, 0.72, 0.14, 0.82), (190, 40, 40, 160)),  # yellow body: bright on the road in grey too
            ((0.02, 0.735, 0.06, 0.77), (40, 20, 140, 120)),  # windows
            ((0.07, 0.735, 0.12, 0.77), (40, 20, 140, 120)),
            ((0.015, 0.81, 0.04, 0.845), (20, 10, 128, 128)),  # wheels
            ((0.10, 0.81, 0.125, 0.845), (20, 10, 128, 128)),
            ((0.13, 0.75, 0.14, 0.77), (235, 10, 100, 150)),  # headlight
        ]
        for box, material in car:
            self._paint(box, material, planes, shift)
        data = bytes(buf)
        self._frame = (shift, data)
        return data


class FileScene:
    """A video file at one picture size, looped: the frame shown at a scene time is the file's
    frame at that time modulo its length. Decoding runs only as fast as frames are asked for."""

    def __init__(self, path: str, width: int, height: int) -> None:
        self.width, self.height = width, height
        self._pipeline = Gst.parse_launch(
            f'filesrc location="{path}" ! decodebin ! videoconvert ! videoscale ! '
            f"video/x-raw,format=I420,width={width},height={height},pixel-aspect-ratio=1/1 ! "
            "appsink name=sink sync=false max-buffers=2"
        )
        self._sink = self._pipeline.get_by_name("sink")
        self._pipeline.set_state(Gst.State.PLAYING)
        self._current: tuple[float, bytes] | None = None  # (file seconds, I420)
        self._next: tuple[float, bytes] | None = None
        self._length: float | None = None
        self._frame_s = 0.04  # one frame's duration, from the decoder once it has said

    def _pull(self) -> tuple[float, bytes] | None:
        sample = self._sink.emit("try-pull-sample", 5 * Gst.SECOND)
        if sample is None:
            return None
        buffer = sample.get_buffer()
        ok, info = buffer.map(Gst.MapFlags.READ)
        if not ok:
            return None
        try:
            if buffer.duration != Gst.CLOCK_TIME_NONE:
                self._frame_s = buffer.duration / Gst.SECOND
            return buffer.pts / Gst.SECOND, bytes(info.data)
        finally:
            buffer.unmap(info)

    def _rewind(self) -> None:
        self._pipeline.seek_simple(Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0)
        self._current = self._next = None

    def frame(self, scene_s: float) -> bytes:
        at = scene_s % self._length if self._length else scene_s
        if self._current is not None and at < self._current[0]:
            self._rewind()
        while True:
            if self._next is None:
                self._next = self._pull()
                if self._next is None:  # end of the file: its length is known now
                    if self._current is None:
                        raise RuntimeError("the scene file has no video frames")
                    self._length = self._current[0] + self._frame_s
                    at = scene_s % self._length
                    self._rewind()
                    continue
            if self._current is not None and self._next[0] > at:
                return self._current[1]
            self._current, self._next = self._next, None

    def close(self) -> None:
        self._pipeline.set_state(Gst.State.NULL)


# ---------------------------------------------------------------------------------------------
# The camera


class Feed:
    """Pushes one mount's frames into its media's appsrc at the mount's rate, on a thread the
    media owns: started when the media is configured, stopped when it is unprepared."""

    def __init__(self, camera: Camera, mount: str, appsrc: Any, fps: int) -> None:
        self._camera = camera
        self._mount = mount
        self._appsrc = appsrc
        self._fps = fps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"feed{mount}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(2.0)

    def _run(self) -> None:
        scenes: dict[tuple[int, int], Street | FileScene] = {}
        size: tuple[int, int] | None = None
        start = time.monotonic()
        tick = 0  # frame slots since start, one every 1/fps of monotonic time
        anchor: tuple[int, int] | None = None  # (tick, running time in ns) of the first frame sent
        try:
            while not self._stop.is_set():
                tick += 1
                behind = int((time.monotonic() - start) * self._fps) - tick
                if behind > self._fps:  # more than a second behind: skip slots rather than burst
                    tick += behind
                # A little behind (a busy test machine): catch up by sending those frames late,
                # as a camera's encoder would, so the stream keeps one frame per 1/fps slot.
                self._stop.wait(max(0.0, start + tick / self._fps - time.monotonic()))
                if self._stop.is_set():
                    break
                _, state, _ = self._appsrc.get_state(0)
                clock = self._appsrc.get_clock()
                if state != Gst.State.PLAYING or clock is None or self._camera.stalled():
                    continue
                running = clock.get_time() - self._appsrc.get_base_time()
                if anchor is not None:
                    pts = anchor[1] + (tick - anchor[0]) * Gst.SECOND // self._fps
                if anchor is None or abs(pts - running) > Gst.SECOND // 5:  # first, or a restart
                    anchor, pts = (tick, running), running
                want = self._camera.size(self._mount)
                if want != size:
                    size = want
                    caps = Gst.Caps.from_string(
                        f"video/x-raw,format=I420,width={size[0]},height={size[1]},"
                        f"framerate={self._fps}/1,pixel-aspect-ratio=1/1"
                    )
                    self._appsrc.set_property("caps", caps)
                if size not in scenes:
                    scenes[size] = self._camera.make_scene(*size)
                buffer = Gst.Buffer.new_wrapped(scenes[size].frame(self._camera.clock.now()))
                buffer.pts = pts
                buffer.duration = Gst.SECOND // self._fps
                self._appsrc.emit("push-buffer", buffer)
        except Exception as exc:  # a thread that dies silently would look like a stall
            log(f"feed {self._mount} failed: {exc!r}")
        finally:
            for scene in scenes.values():
                if isinstance(scene, FileScene):
                    scene.close()


class Camera:
    """The RTSP server, its two mounts and the ways it misbehaves; runs on the GLib main loop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.clock = SceneClock(args.motion == "on")
        self.loop = GLib.MainLoop()
        self._sizes: dict[str, tuple[int, int]] = {"/main": args.main_size, "/sub": args.sub_size}
        self._fps = {"/main": args.fps, "/sub": args.sub_fps}
        self._kbps = {"/main": args.main_kbps, "/sub": args.sub_kbps}
        self._lock = threading.Lock()
        self._stall_until = 0.0
        self._feeds: set[Feed] = set()
        self._port = args.port
        self._server: Any = None
        self._source_id: int | None = None
        self._mounts = GstRtspServer.RTSPMountPoints()
        for mount in ("/main", "/sub"):
            self._mounts.add_factory(mount, self._factory(mount))
        self._stdin_buf = b""

    # -- state read by the feed threads
    def size(self, mount: str) -> tuple[int, int]:
        with self._lock:
            return self._sizes[mount]

    def stalled(self) -> bool:
        with self._lock:
            return time.monotonic() < self._stall_until

    def make_scene(self, width: int, height: int) -> Street | FileScene:
        if self.args.scene:
            return FileScene(self.args.scene, width, height)
        return Street(width, height)

    # -- media
    def _factory(self, mount: str) -> Any:
        camera = self

        class Factory(GstRtspServer.RTSPMediaFactory):  # type: ignore[misc]
            def do_create_element(self, url: Any) -> Any:
                return Gst.parse_launch(camera.launch(mount))

        factory = Factory()
        factory.set_shared(True)
        factory.connect("media-configure", self._configure, mount)
        if self.args.user:
            factory.add_role_from_structure(
                Gst.Structure.from_string(
                    "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
                )[0]
            )
        return factory

    def launch(self, mount: str) -> str:
        width, height = self.size(mount)
        fps = self._fps[mount]
        gop = max(1, round(self.args.gop_s * fps))
        return (
            # Never leaky: a camera's encoder does not drop frames when the machine is busy, and
            # the clip tests count frames against duration x fps. The feed catches up instead.
            "( appsrc name=src is-live=true format=time block=true "
            "max-buffers=25 "
            f"caps=video/x-raw,format=I420,width={width},height={height},framerate={fps}/1,"
            "pixel-aspect-ratio=1/1 "
            f"! {self._encoder(mount, gop)} {self._audio(mount)})"
        )

    def _audio(self, mount: str) -> str:
        """The microphone's track on /main with --audio: pay0, so that the SDP lists it first."""
        if mount != "/main" or not self.args.audio:
            return ""
        return (
            "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample "
            "! audio/x-raw,rate=8000,channels=1 ! alawenc ! rtppcmapay name=pay0 pt=8 "
        )

    def _encoder(self, mount: str, gop: int) -> str:
        kbps = self._kbps[mount]
        pay = "pay1" if self._audio(mount) else "pay0"
        if mount == "/main" and self.args.main_codec == "h265":
            return (
                f"x265enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate={kbps} "
                f"! rtph265pay name={pay} pt=96 config-interval=-1"
            )
        return (
            f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate={kbps} "
            f"threads={self.args.encoder_threads} ! rtph264pay name={pay} pt=96 config-interval=-1"
        )

    def _configure(self, _factory: Any, media: Any, mount: str) -> None:
        appsrc = media.get_element().get_by_name("src")
        feed = Feed(self, mount, appsrc, self._fps[mount])
        with self._lock:
            self._feeds.add(feed)
        media.connect("unprepared", self._unprepared, feed)
        feed.start()

    def _unprepared(self, _media: Any, feed: Feed) -> None:
        with self._lock:
            self._feeds.discard(feed)
        feed.stop()

    # -- serving
    def serve(self) -> None:
        server = GstRtspServer.RTSPServer()
        server.set_address("127.0.0.1")
        server.set_service(str(self._port))
        server.set_mount_points(self._mounts)
        if self.args.user:
            auth = GstRtspServer.RTSPAuth()
            token = GstRtspServer.RTSPToken()
            token.set_string("media.factory.role", "user")
            # One scheme at a time: PyGObject takes the methods as an enum, so BASIC | DIGEST is refused.
            if self.args.auth == "digest":
                auth.add_digest(self.args.user, self.args.password, token)
                auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
            else:
                auth.add_basic(GstRtspServer.RTSPAuth.make_basic(self.args.user, self.args.password), token)
                auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
            server.set_auth(auth)
        self._source_id = server.attach(None)
        self._port = server.get_bound_port()
        self._server = server

    def _close_all(self) -> None:
        """Close every client connection and end every session (their media stop with them)."""
        if self._server is None:
            return
        self._server.client_filter(lambda *_: GstRtspServer.RTSPFilterResult.REMOVE)
        self._server.get_session_pool().filter(lambda *_: GstRtspServer.RTSPFilterResult.REMOVE)

    def unserve(self) -> None:
        self._close_all()
        if self._source_id is not None:
            GLib.Source.remove(self._source_id)  # closes the listening socket
            self._source_id = None
        self._server = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self._port}"

    # -- commands
    def on_stdin(self, fd: int, condition: Any) -> bool:
        chunk = os.read(fd, 4096) if condition & GLib.IO_IN else b""
        if not chunk:
            log("stdin closed: stopping")
            self.quit()
            return False
        self._stdin_buf += chunk
        while b"\n" in self._stdin_buf:
            line, self._stdin_buf = self._stdin_buf.split(b"\n", 1)
            text = line.decode("utf-8", "replace").strip()
            if text:
                try:
                    self.command(text)
                except (ValueError, IndexError) as exc:
                    say(f"error {text}: {exc}")
        return True

    def command(self, text: str) -> None:
        verb, *rest = text.split()
        if verb == "drop":
            self._close_all()
            say(f"ok {text}")
        elif verb == "stall":
            seconds = float(rest[0])
            if not 0 < seconds <= 600:
                raise ValueError("seconds must be in (0, 600]")
            with self._lock:
                self._stall_until = time.monotonic() + seconds
            say(f"ok {text}")
        elif verb == "restart":
            down = float(rest[0]) if rest else 1.0
            if not 0 <= down <= 60:
                raise ValueError("seconds down must be in [0, 60]")
            self.unserve()
            log(f"restart: port {self._port} closed for {down} s")
            GLib.timeout_add(int(down * 1000), self._come_back, text)
        elif verb == "resize":
            size = parse_size(rest[0])
            with self._lock:
                self._sizes["/main"] = size
            say(f"ok {text}")
        elif verb == "motion":
            if rest not in (["on"], ["off"]):
                raise ValueError("say motion on or motion off")
            self.clock.set_motion(rest[0] == "on")
            say(f"ok {text}")
        elif verb == "quit":
            say(f"ok {text}")
            self.quit()
        else:
            say(f"error {text}: unknown command")

    def _come_back(self, text: str) -> bool:
        try:
            self.serve()
        except GLib.Error as exc:
            say(f"error {text}: cannot listen again on port {self._port}: {exc.message}")
            return False
        say(f"ok {text}")
        return False

    def quit(self) -> None:
        self.unserve()
        with self._lock:
            feeds = list(self._feeds)
            self._feeds.clear()
        for feed in feeds:
            feed.stop()
        self.loop.quit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed on the ready line)")
    parser.add_argument("--main-size", type=parse_size, default=(1280, 720))
    parser.add_argument("--fps", type=int, default=25, help="main stream frame rate")
    parser.add_argument("--sub-size", type=parse_size, default=(640, 360))
    parser.add_argument("--sub-fps", type=int, default=10)
    parser.add_argument("--gop-s", type=float, default=2.0, help="seconds between keyframes")
    parser.add_argument("--main-kbps", type=int, default=2048)
    parser.add_argument("--sub-kbps", type=int, default=512)
    parser.add_argument("--encoder-threads", type=int, default=1, help="x264 threads per stream (0: auto)")
    parser.add_argument("--scene", help="a video file to loop instead of the synthetic street")
    parser.add_argument("--main-codec", choices=("h264", "h265"), default="h264", help="of /main")
    parser.add_argument("--audio", action="store_true", help="a G.711 audio track on /main")
    parser.add_argument("--motion", choices=("on", "off"), default="on", help="at start")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--auth", choices=("digest", "basic"), default="digest", help="with --user")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="exit by itself after this")
    parser.add_argument(
        "--check-packages", action="store_true", help="print the missing Debian packages (if any), exit"
    )
    args = parser.parse_args(argv)

    missing = missing_packages(
        with_scene=args.check_packages or bool(args.scene),
        with_h265=args.check_packages or args.main_codec == "h265",
    )
    if args.check_packages:
        if missing:
            print(" ".join(missing))
        return 0
    if missing:
        say(f"error missing packages: {' '.join(missing)}")
        return EXIT_MISSING
    if bool(args.user) != bool(args.password):
        parser.error("--user and --password go together")
    if not 1 <= args.fps <= 120 or not 1 <= args.sub_fps <= 120 or args.gop_s <= 0:
        parser.error("frame rates must be 1..120 and --gop-s positive")
    if args.scene and not os.path.isfile(args.scene):
        parser.error(f"--scene {args.scene}: no such file")

    camera = Camera(args)
    try:
        camera.serve()
    except GLib.Error as exc:
        say(f"error cannot listen on 127.0.0.1:{args.port}: {exc.message}")
        return 1

    def on_signal() -> bool:
        log("signal: stopping")
        camera.quit()
        return False

    def on_max_seconds() -> bool:
        log("--max-seconds reached: stopping")
        camera.quit()
        return False

    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, on_signal)
    GLib.io_add_watch(sys.stdin.fileno(), GLib.PRIORITY_DEFAULT, GLib.IO_IN | GLib.IO_HUP, camera.on_stdin)
    GLib.timeout_add(int(args.max_seconds * 1000), on_max_seconds)
    say(f"ready {camera.url}")
    camera.loop.run()
    log("stopped")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown: finalising GStreamer objects from Python's GC at exit can
    # hang or crash after the pipelines are already stopped; every resource is released by now.
    os._exit(code)
