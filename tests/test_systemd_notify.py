"""sd_notify without systemd: a datagram socket stands in for PID 1 and records what arrives."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.harness import write_config

pytestmark = pytest.mark.broker


class Notified:
    """An agent subprocess whose NOTIFY_SOCKET is a datagram socket of the test's."""

    def __init__(self, tmp_path: Path, broker: Broker, gateway: str, cameras: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(tmp_path / "notify.sock"))
        self.sock.settimeout(0.3)
        cfg = write_config(
            tmp_path / "agent.toml",
            district="notify",
            gateway=gateway,
            port=broker.port,
            data_dir=tmp_path / "data",
            cameras=cameras,
        )
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.got: list[str] = []

    def collect_until(self, done: Callable[[list[str]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done(self.got):
            with contextlib.suppress(TimeoutError):
                self.got.append(self.sock.recv(256).decode())

    def drain(self) -> None:
        with contextlib.suppress(TimeoutError):
            while True:
                self.sock.recv(256)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.sock.close()


@pytest.fixture
def notified(tmp_path: Path, broker: Broker, unique_gateway: str) -> Iterator[Callable[[str], Notified]]:
    agents: list[Notified] = []

    def start(cameras: str) -> Notified:
        agents.append(Notified(tmp_path, broker, unique_gateway, cameras))
        return agents[-1]

    yield start
    for a in agents:
        a.close()


def test_ready_watchdog_and_stopping_reach_the_notify_socket(notified: Callable[[str], Notified]) -> None:
    agent = notified('[[cameras]]\nid = "cam-1"\nsource = "synthetic:street"\n')
    agent.collect_until(lambda got: got.count("WATCHDOG=1") >= 3, 20)
    assert "READY=1" in agent.got
    assert agent.got.count("WATCHDOG=1") >= 3
    assert agent.got.index("READY=1") < agent.got.index("WATCHDOG=1")
    agent.proc.send_signal(signal.SIGTERM)
    agent.collect_until(lambda got: "STOPPING=1" in got, 5)
    assert "STOPPING=1" in agent.got
    assert agent.proc.wait(5) == 0


def test_a_stopped_main_loop_starves_the_watchdog(notified: Callable[[str], Notified]) -> None:
    """SIGSTOP freezes the loop: no WATCHDOG=1 arrives, which is what lets systemd restart it."""
    agent = notified("")
    agent.collect_until(lambda got: "WATCHDOG=1" in got, 20)
    assert "WATCHDOG=1" in agent.got
    agent.proc.send_signal(signal.SIGSTOP)
    time.sleep(0.3)
    agent.drain()  # what was sent before the stop took effect
    agent.got.clear()
    agent.collect_until(lambda got: False, 2.0)
    assert agent.got == []
    agent.proc.send_signal(signal.SIGCONT)
    agent.collect_until(lambda got: "WATCHDOG=1" in got, 3)
    assert "WATCHDOG=1" in agent.got
