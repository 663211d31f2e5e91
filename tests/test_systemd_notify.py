"""sd_notify without systemd: a datagram socket stands in for PID 1 and records what arrives."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.harness import write_config

pytestmark = pytest.mark.broker


def test_ready_watchdog_and_stopping_reach_the_notify_socket(
    tmp_path: Path, broker: Broker, unique_gateway: str
) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.5)
    cfg = write_config(
        tmp_path / "agent.toml",
        district="notify",
        gateway=unique_gateway,
        port=broker.port,
        data_dir=tmp_path / "data",
        cameras='[[cameras]]\nid = "cam-1"\nsource = "synthetic:street"\n',
    )
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    got: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and got.count("WATCHDOG=1") < 3:
            with contextlib.suppress(TimeoutError):
                got.append(sock.recv(256).decode())
        assert "READY=1" in got
        assert got.count("WATCHDOG=1") >= 3
        assert got.index("READY=1") < got.index("WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "STOPPING=1" not in got:
            with contextlib.suppress(TimeoutError):
                got.append(sock.recv(256).decode())
        assert "STOPPING=1" in got
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()


def test_a_stopped_main_loop_starves_the_watchdog(
    tmp_path: Path, broker: Broker, unique_gateway: str
) -> None:
    """SIGSTOP freezes the loop: no WATCHDOG=1 arrives, which is what lets systemd restart it."""
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.3)
    cfg = write_config(
        tmp_path / "agent.toml",
        district="notify",
        gateway=unique_gateway,
        port=broker.port,
        data_dir=tmp_path / "data",
        cameras="",
    )
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        seen = []
        while time.monotonic() < deadline and "WATCHDOG=1" not in seen:
            with contextlib.suppress(TimeoutError):
                seen.append(sock.recv(256).decode())
        assert "WATCHDOG=1" in seen
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.3)
        while True:  # drain what was sent before the stop took effect
            try:
                sock.recv(256)
            except TimeoutError:
                break
        frozen: list[bytes] = []
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                frozen.append(sock.recv(256))
        assert frozen == []
        proc.send_signal(signal.SIGCONT)
        try:
            assert sock.recv(256) == b"WATCHDOG=1"
        except TimeoutError:
            assert sock.recv(256) == b"WATCHDOG=1"
    finally:
        proc.kill()
        proc.wait(5)
        sock.close()
