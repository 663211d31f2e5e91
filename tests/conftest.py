"""Shared fixtures: a real Mosquitto broker on a free loopback port, unique topic roots."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# The RTSP test camera's fixtures: rtsp_camera, rtsp_camera_factory, rtsp_camera_module.
pytest_plugins = ["tests.rtsp_camera.fixture"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    conf: Path


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on port {port}")


def start_mosquitto(workdir: Path, port: int | None = None, extra: str = "") -> Broker:
    """Start Debian's mosquitto with a minimal config on loopback; the caller stops it."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        pytest.fail("mosquitto is not installed: run scripts/test, which installs it")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / f"mosquitto-{port}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"max_inflight_messages 100\nmax_queued_messages 10000\nset_tcp_nodelay true\n{extra}",
        encoding="utf-8",
    )
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(port)
    return Broker("127.0.0.1", port, proc, conf)


def stop_mosquitto(broker: Broker) -> None:
    broker.process.terminate()
    try:
        broker.process.wait(5)
    except subprocess.TimeoutExpired:
        broker.process.kill()
        broker.process.wait(5)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One Mosquitto for the whole session; tests isolate themselves by topic root."""
    b = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield b
    stop_mosquitto(b)


@pytest.fixture
def unique_gateway() -> str:
    """A gateway id no other test uses, so topic roots never collide (retained messages!)."""
    return "gw-" + uuid.uuid4().hex[:12]
