"""Debian's RabbitMQ 3.10 with its MQTT plugin, on free loopback ports, state in a temp dir.

A city may already run RabbitMQ as its central broker; its MQTT plugin speaks 3.1.1 only (it
closes the connection after an MQTT 5 CONNECT) and delivers retained messages to exact-topic
subscriptions only, never to a new wildcard subscriber. Start-up takes 10-30 s, so tests using
it belong to the slow tier. `scripts/bootstrap` installs it on CI (`apt-get install
rabbitmq-server`); elsewhere the fixture skips when it is missing.

As root the node runs as the `rabbitmq` user (the Erlang cookie and the node's files must be
its own) from a temp dir it owns; its own epmd runs on a free port and is stopped with it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
EPMD = shutil.which("epmd") or "/usr/bin/epmd"
START_TIMEOUT_S = 90.0


class RabbitMQ:
    """One RabbitMQ node; `stop()` and `start()` again keep its state (retained messages too)."""

    def __init__(self, workdir: Path) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()  # MQTT
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.dir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self._log = workdir / "server.out"
        self._user = _rabbitmq_user()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
            "mqtt.default_user = guest\n"
            "mqtt.default_pass = guest\n"
            "log.console = false\n"
            "log.file.level = info\n",
            encoding="utf-8",
        )
        (workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n", encoding="utf-8")
        if self._user is not None:
            for path in [workdir, *workdir.rglob("*")]:
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
            # The test's own temp folders are private (0700): let the node's user through.
            for parent in workdir.parents:
                if parent == Path("/tmp") or parent == parent.parent:
                    break
                with contextlib.suppress(OSError):
                    os.chmod(parent, os.stat(parent).st_mode | 0o711)

    def env(self) -> dict[str, str]:
        d = str(self.dir)
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": d,
            "LANG": "C.UTF-8",
            "RABBITMQ_MNESIA_BASE": f"{d}/mnesia",
            "RABBITMQ_LOG_BASE": f"{d}/log",
            "RABBITMQ_CONFIG_FILE": f"{d}/rabbitmq.conf",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{d}/enabled_plugins",
            "RABBITMQ_NODENAME": f"rabbit-test-{self.port}@localhost",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_PID_FILE": f"{d}/rabbit.pid",
        }
        if self._user is not None:
            env["USER"] = env["LOGNAME"] = self._user.pw_name
        return env

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the node and wait until its MQTT listener accepts connections."""
        out = self._log.open("ab")
        self.process = subprocess.Popen(
            [str(SERVER)],
            env=self.env(),
            cwd=self.dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            user=self._user.pw_uid if self._user else None,
            group=self._user.pw_gid if self._user else None,
            start_new_session=True,
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(
            f"rabbitmq did not listen on MQTT port {self.port} in {timeout:g} s:\n{self.log()}"
        )

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) the node's process group, the one `start` created."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        # Wait until the port is free again, so a restart on it does not race the old node.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    time.sleep(0.1)
            except OSError:
                return

    def close(self) -> None:
        self.stop()
        subprocess.run(
            [EPMD, "-port", str(self.epmd_port), "-kill"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            timeout=10,
        )

    def log(self) -> str:
        parts = [self._log.read_text(errors="replace")[-3000:] if self._log.exists() else ""]
        for f in sorted((self.dir / "log").glob("*.log")):
            parts.append(f.read_text(errors="replace")[-3000:])
        return "\n".join(parts)


def _rabbitmq_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("rabbitmq")
    except KeyError:
        return None


@pytest.fixture(scope="module", name="rabbitmq")
def rabbitmq_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    """`rabbitmq`: a node with the MQTT plugin for the module's tests (slow: 10-30 s to start).
    A test module imports `rabbitmq_fixture` to use it (or conftest.py lists this module in
    `pytest_plugins`)."""
    if not SERVER.exists():
        pytest.skip("rabbitmq-server is not installed (apt-get install rabbitmq-server; CI does)")
    node = RabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    node.start()
    try:
        yield node
    finally:
        node.close()
