"""`edge-agent simulate` against the test Mosquitto, as a platform sees it: gateways that answer
ping and describe, events valid per the contract's schema, a Last Will on a kill, a clean
SIGTERM, and clear refusals of bad arguments."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commands import models
from agent.contract.messages import CameraStatus, Event, GatewayStatus
from agent.sdk.client import PlatformClient
from agent.sdk.errors import CommandFailed
from tests.conftest import Broker
from tests.harness import Received, Subscriber

pytestmark = pytest.mark.broker


def simulate(broker: Broker, district: str, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "agent", "simulate", "--host", broker.host, "--port", str(broker.port)]
    cmd += ["--district", district, "--telemetry-s", "1", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def statuses(sub: Subscriber) -> dict[str, dict[str, object]]:
    """The newest gateway status per topic."""
    out = {}
    for m in sub.on("/status"):
        if "/cam/" not in m.topic:
            out[m.topic] = json.loads(m.payload)
    return out


@pytest.fixture
def district() -> str:
    return "d" + uuid.uuid4().hex[:10]


@pytest.fixture
def fleet(broker: Broker, district: str) -> Iterator[tuple[subprocess.Popen[bytes], Subscriber]]:
    sub = Subscriber(broker.host, broker.port, f"cctv/v1/{district}/#")
    proc = simulate(broker, district, "--gateways", "3", "--events-per-min", "120", "--duration-s", "60")
    try:
        yield proc, sub
    finally:
        reap(proc)
        sub.close()


def test_simulated_gateways_answer_ping_and_describe(
    broker: Broker, district: str, fleet: tuple[subprocess.Popen[bytes], Subscriber]
) -> None:
    _, sub = fleet
    assert sub.wait_for(lambda ms: len(statuses(sub)) == 3, 20), statuses(sub)
    assert all(s["state"] == "online" for s in statuses(sub).values())
    for protocol in ("5", "3.1.1"):
        root = f"cctv/v1/{district}/sim-0002"
        with PlatformClient(
            broker.host, broker.port, root, agency="police", operator="op", protocol=protocol
        ) as pc:
            pong = pc.ping()
            described = pc.describe()
            with pytest.raises(CommandFailed) as refused:
                pc.request("snapshot", {"camera": "cam-1"})
    models.PingResult.model_validate(pong)  # the models `edge-agent schema` publishes: strict, no extra keys
    models.DescribeResult.model_validate(described)
    assert pong["agent_version"].endswith("+sim") and pong["uptime_s"] >= 0
    assert described["gateway"]["id"] == "sim-0002" and described["gateway"]["topic_root"] == root
    assert [c["id"] for c in described["cameras"]] == ["cam-1", "cam-2"]
    assert refused.value.code == "unknown_command" and "simulated" in str(refused.value)


def test_its_events_and_statuses_validate_against_the_contract(
    district: str, fleet: tuple[subprocess.Popen[bytes], Subscriber]
) -> None:
    _, sub = fleet

    def enough(ms: list[Received]) -> bool:
        ends = [m for m in ms if m.topic.endswith("/event") and json.loads(m.payload)["phase"] == "end"]
        return len(ends) >= 3 and any(m.topic.endswith("/telemetry") for m in ms)

    assert sub.wait_for(enough, 30)
    received = sub.on("/event")
    events = [json.loads(m.payload) for m in received]
    for event in events:
        Event.model_validate(event)
    by_id: dict[str, list[str]] = {}
    for event in events:
        by_id.setdefault(event["event_id"], []).append(event["phase"])
    assert any(phases == ["start", "end"] for phases in by_id.values())
    assert {m.user_properties.get("event_id") for m in received} == set(by_id)
    cams = [m for m in sub.on("/status") if "/cam/" in m.topic]
    assert len({c.topic for c in cams}) == 6  # 3 gateways x 2 cameras, retained
    for c in cams:
        CameraStatus.model_validate_json(c.payload)
    for status in statuses(sub).values():
        GatewayStatus.model_validate(status)
    telemetry = json.loads(sub.on("/telemetry")[0].payload)
    assert telemetry["simulated"] is True and telemetry["mqtt"]["connected"] is True


def test_its_will_fires_when_it_is_killed(
    broker: Broker, district: str, fleet: tuple[subprocess.Popen[bytes], Subscriber]
) -> None:
    proc, sub = fleet
    assert sub.wait_for(lambda ms: len(statuses(sub)) == 3, 20)
    proc.kill()
    proc.wait(10)
    assert sub.wait_for(lambda ms: all(s["state"] == "offline" for s in statuses(sub).values()), 60)
    assert {s["reason"] for s in statuses(sub).values()} == {"lost"}
    later = Subscriber(broker.host, broker.port, f"cctv/v1/{district}/+/status")  # retained
    try:
        assert later.wait_for(lambda ms: len(ms) == 3, 10)
        assert all(json.loads(m.payload)["reason"] == "lost" and m.retain for m in later.messages)
    finally:
        later.close()


def test_sigterm_stops_it_cleanly_within_5_s(
    broker: Broker, district: str, fleet: tuple[subprocess.Popen[bytes], Subscriber]
) -> None:
    proc, sub = fleet
    assert sub.wait_for(lambda ms: len(statuses(sub)) == 3, 20)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - t0 < 5
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out)
    assert summary["gateways"] == 3 and summary["connected"] == 3 and summary["outbox_depth"] == 0
    assert sub.wait_for(lambda ms: all(s["reason"] == "shutdown" for s in statuses(sub).values()), 5)
    assert b"ERROR" not in err and b"Traceback" not in err


def test_a_fleet_larger_than_a_shard_runs_in_processes_and_stops_within_5_s(
    broker: Broker, district: str, tmp_path: Path
) -> None:
    sub = Subscriber(broker.host, broker.port, f"cctv/v1/{district}/+/status")
    report = tmp_path / "report.json"
    args = ["--gateways", "130", "--events-per-min", "0", "--data-dir", str(tmp_path / "data")]
    proc = simulate(broker, district, *args, "--report", str(report))
    try:
        assert sub.wait_for(lambda ms: len({m.topic for m in ms}) == 130, 60)
        assert len(list((tmp_path / "data").glob("shard-*/sim-*.db"))) == 130  # a durable outbox each
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 5 and proc.returncode == 0, err.decode()
        assert json.loads(out)["connected"] == 130
        detail = json.loads(report.read_text())
        assert sorted(detail) == [f"sim-{i:04d}" for i in range(1, 131)]
        assert all(d["connects"] == 1 and d["offline_events"] == [] for d in detail.values())
        assert sub.wait_for(
            lambda ms: sum(json.loads(m.payload)["reason"] == "shutdown" for m in ms) == 130, 5
        )
    finally:
        reap(proc)
        sub.close()


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--gateways", "0"], 2, "--gateways must be"),
        (["--district", "Bad District"], 2, "--district"),
        (["--reconnect-min-s", "5", "--reconnect-max-s", "1"], 1, "reconnect_min_s must not exceed"),
        (["--protocol", "4"], 2, "invalid choice"),
    ],
)
def test_bad_arguments_are_refused_clearly(broker: Broker, args: list[str], code: int, says: str) -> None:
    proc = simulate(broker, "dx", *args, "--duration-s", "1")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code and says in err.decode(), err.decode()
