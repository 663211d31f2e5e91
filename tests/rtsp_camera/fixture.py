"""Start and command the test IP camera (`server.py`, a real GStreamer RTSP server) from tests.

`RtspCamera.start` runs the server under the system Python and returns once it listens; every
command waits for the server's `ok` line, so when `drop_clients()` or `resize()` returns the effect
has begun. The fixtures below stop the camera at teardown, whatever the test did.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

import pytest

__all__ = [
    "RtspCamera",
    "RtspCameraError",
    "RtspCameraUnavailableError",
    "rtsp_camera",
    "rtsp_camera_factory",
    "rtsp_camera_module",
]

SERVER = Path(__file__).with_name("server.py")
SYSTEM_PYTHON = Path("/usr/bin/python3")  # the only Python that can `import gi`
PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-ugly gstreamer1.0-libav"
)
EXIT_MISSING = 3  # server.py's exit code when a package is missing
COMMAND_TIMEOUT_S = 10.0
START_TIMEOUT_S = 30.0  # the first GStreamer start on a machine scans its plugins


class RtspCameraError(RuntimeError):
    """The test camera did not start, died, or did not answer a command in time."""


class RtspCameraUnavailableError(RtspCameraError):
    """GStreamer's RTSP server or a plugin the camera needs is not installed."""


class RtspCamera:
    """One running test camera: `/main` and `/sub` on 127.0.0.1, and the ways to make it misbehave."""

    def __init__(
        self,
        process: subprocess.Popen[str],
        log_path: Path,
        log_file: IO[str],
        user: str | None,
        password: str | None,
        main_size: tuple[int, int],
    ) -> None:
        self._process = process
        self._log_path = log_path
        self._log_file = log_file
        self._user = user
        self._password = password
        self._main_size = main_size
        self._lines: queue.Queue[str | None] = queue.Queue(maxsize=256)
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="rtsp-camera-stdout", daemon=True)
        self._reader.start()
        self._port = 0

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        main_size: tuple[int, int] = (1280, 720),
        fps: int = 25,
        sub_size: tuple[int, int] = (640, 360),
        sub_fps: int = 10,
        gop_s: float = 2.0,
        scene: Path | None = None,
        user: str | None = None,
        password: str | None = None,
        auth: str = "digest",
        motion: bool = True,
        main_kbps: int = 2048,
        sub_kbps: int = 512,
        max_seconds: float = 600.0,
        main_codec: str = "h264",
        audio: bool = False,
    ) -> RtspCamera:
        """Start a camera on a free loopback port; its log (stderr) goes to `workdir`.

        With `user` and `password`, requests need them (`auth`: "digest" or "basic"); the URLs
        carry them.

        Raises RtspCameraUnavailableError when the Debian packages are missing (naming them), and
        RtspCameraError when it does not come up.
        """
        if not SYSTEM_PYTHON.exists():
            raise RtspCameraUnavailableError(f"{SYSTEM_PYTHON} is missing: {_missing_message(PACKAGES)}")
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(SYSTEM_PYTHON),
            str(SERVER),
            f"--main-size={main_size[0]}x{main_size[1]}",
            f"--fps={fps}",
            f"--sub-size={sub_size[0]}x{sub_size[1]}",
            f"--sub-fps={sub_fps}",
            f"--gop-s={gop_s}",
            f"--main-kbps={main_kbps}",
            f"--sub-kbps={sub_kbps}",
            f"--motion={'on' if motion else 'off'}",
            f"--max-seconds={max_seconds}",
            f"--main-codec={main_codec}",
            *(["--audio"] if audio else []),
        ]
        if scene is not None:
            argv.append(f"--scene={scene}")
        if user is not None or password is not None:
            argv += [f"--user={user or ''}", f"--password={password or ''}", f"--auth={auth}"]
        log_path = workdir / f"rtsp-camera-{time.monotonic_ns()}.log"
        log_file = log_path.open("w", encoding="utf-8")
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            bufsize=1,
            env={**os.environ, "GST_DEBUG_NO_COLOR": "1"},
        )
        camera = cls(process, log_path, log_file, user, password, main_size)
        try:
            line = camera._next_line(START_TIMEOUT_S, "start")
            if line.startswith("error missing packages:"):
                raise RtspCameraUnavailableError(_missing_message(line.split(":", 1)[1].strip()))
            if not line.startswith("ready rtsp://127.0.0.1:"):
                raise RtspCameraError(f"test camera did not start: {line!r}{camera._tail()}")
            camera._port = int(line.rsplit(":", 1)[1])
        except BaseException:
            camera.stop()
            raise
        return camera

    # -- where it is
    @property
    def port(self) -> int:
        return self._port

    @property
    def main_url(self) -> str:
        return self.url("/main")

    @property
    def sub_url(self) -> str:
        return self.url("/sub")

    @property
    def main_size(self) -> tuple[int, int]:
        """The main stream's current picture size (after any `resize`)."""
        return self._main_size

    @property
    def log_path(self) -> Path:
        return self._log_path

    def url(self, mount: str, *, user: str | None = None, password: str | None = None) -> str:
        """The URL of a mount (any path: unknown ones get 404), with the camera's credentials
        embedded when it has some, or the ones given (to try wrong ones)."""
        user = self._user if user is None else user
        password = self._password if password is None else password
        auth = f"{quote(user, safe='')}:{quote(password or '', safe='')}@" if user else ""
        return f"rtsp://{auth}127.0.0.1:{self._port}{mount}"

    # -- misbehaviour
    def motion(self, on: bool) -> None:
        """Start (on) or freeze (off) the scene: the car drives, or stands still."""
        self._command(f"motion {'on' if on else 'off'}")

    def drop_clients(self) -> None:
        """Close every client connection and RTSP session; clients must reconnect."""
        self._command("drop")

    def stall(self, seconds: float) -> None:
        """Keep connections open but send no video for `seconds` (returns as the stall begins)."""
        self._command(f"stall {seconds:g}")

    def restart(self, down_s: float = 1.0) -> None:
        """A camera reboot: the port closes for `down_s`; returns once it accepts again."""
        self._command(f"restart {down_s:g}", timeout=down_s + COMMAND_TIMEOUT_S)

    def resize(self, width: int, height: int) -> None:
        """Change the main stream's resolution mid-stream (a new SPS/PPS in-band)."""
        self._command(f"resize {width}x{height}")
        self._main_size = (width, height)

    def stop(self) -> None:
        """Stop the server (quit, then SIGTERM, then SIGKILL); safe to call twice."""
        process = self._process
        if process.poll() is None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.write("quit\n")
                process.stdin.flush()
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(3)
        self._reader.join(5)
        if process.stdout is not None:
            process.stdout.close()
        self._log_file.close()

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def __enter__(self) -> RtspCamera:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the conversation with server.py
    def _read(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        with contextlib.suppress(ValueError, OSError):  # closed by stop()
            for line in stdout:
                self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _next_line(self, timeout: float, waiting_for: str) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise RtspCameraError(
                f"test camera: no answer to {waiting_for!r} within {timeout:g} s{self._tail()}"
            ) from None
        if line is None:
            self._lines.put(None)  # stays at end of file for the next caller
            code = self._process.wait(5)
            if code == EXIT_MISSING:
                raise RtspCameraUnavailableError(_missing_message(PACKAGES))
            raise RtspCameraError(
                f"test camera exited ({code}) while waiting for {waiting_for!r}{self._tail()}"
            )
        return line

    def _command(self, text: str, timeout: float = COMMAND_TIMEOUT_S) -> None:
        with self._lock:
            stdin = self._process.stdin
            if stdin is None or self._process.poll() is not None:
                raise RtspCameraError(f"test camera is not running: cannot {text!r}{self._tail()}")
            try:
                stdin.write(text + "\n")
                stdin.flush()
            except OSError as exc:
                raise RtspCameraError(f"test camera: cannot send {text!r}: {exc}{self._tail()}") from exc
            deadline = time.monotonic() + timeout
            while True:
                line = self._next_line(max(0.0, deadline - time.monotonic()), text)
                if line == f"ok {text}":
                    return
                if line.startswith(f"error {text}"):
                    raise RtspCameraError(f"test camera refused {text!r}: {line}{self._tail()}")

    def _tail(self, lines: int = 20) -> str:
        try:
            text = self._log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        tail = text.splitlines()[-lines:]
        return ("\n--- camera log " + str(self._log_path) + " ---\n" + "\n".join(tail)) if tail else ""


def _missing_message(packages: str) -> str:
    return (
        f"the RTSP test camera needs GStreamer's RTSP server; missing Debian packages: {packages}. "
        "scripts/bootstrap installs them (scripts/test runs it)."
    )


def _start_or_fail(workdir: Path, **options: Any) -> RtspCamera:
    try:
        return RtspCamera.start(workdir, **options)
    except RtspCameraUnavailableError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def rtsp_camera(tmp_path: Path) -> Iterator[RtspCamera]:
    """A camera with the default streams (1280x720 at 25 fps, 640x360 at 10 fps), for one test."""
    camera = _start_or_fail(tmp_path / "rtsp-camera")
    yield camera
    camera.stop()


@pytest.fixture
def rtsp_camera_factory(tmp_path: Path) -> Iterator[Callable[..., RtspCamera]]:
    """Start cameras with options (`RtspCamera.start`'s keywords); all stop after the test."""
    cameras: list[RtspCamera] = []

    def start(**options: Any) -> RtspCamera:
        camera = _start_or_fail(tmp_path / f"rtsp-camera-{len(cameras)}", **options)
        cameras.append(camera)
        return camera

    yield start
    for camera in cameras:
        camera.stop()


@pytest.fixture(scope="module")
def rtsp_camera_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtspCamera]:
    """One default camera shared by a module's tests: only for tests that leave it as it was
    (no resize, stall, restart; motion back on)."""
    camera = _start_or_fail(tmp_path_factory.mktemp("rtsp-camera"))
    yield camera
    camera.stop()
