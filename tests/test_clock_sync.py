"""Clock trust: the kernel's synchronisation state read through adjtimex, and what the gateway
says about it: `clock_synced` in its status and telemetry, `clock_unsynced` on events stamped
while unsynchronised, the log, and the hint a refusal for time carries. Tests cannot change the
kernel's clock, so the reader is injected; one test reads the real adjtimex of this machine."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import clock
from agent.capture.synthetic import write_scene_video
from agent.clock import ClockSync, read_kernel_clock
from agent.config import load_config
from agent.contract.messages import Event, GatewayStatus
from agent.runtime import clock_sync
from agent.runtime.agent import Agent
from agent.runtime.clock_sync import ClockWatch
from agent.sdk.client import CommandFailed, PlatformClient
from tests.conftest import Broker
from tests.harness import Received, Subscriber, write_config

UNSYNCED = ClockSync(synced=False, max_error_s=16.0, est_error_s=16.0, unsync_flag=True)
SYNCED = ClockSync(synced=True, max_error_s=0.05, est_error_s=0.002, unsync_flag=False)


class Kernel:
    """What adjtimex would say, as a test sets it."""

    def __init__(self, state: ClockSync) -> None:
        self.state: ClockSync | OSError = state

    def __call__(self) -> ClockSync:
        if isinstance(self.state, OSError):
            raise self.state
        return self.state


@pytest.fixture(autouse=True)
def unknown_afterwards() -> Iterator[None]:
    yield
    clock.note_synced(None)


def event() -> Event:
    stamp = clock.iso()
    return Event(
        event_id="e", camera="c", kind="motion", phase="start", started_at=stamp, ts=stamp, score=0.5
    )


def status() -> dict[str, object]:
    raw = GatewayStatus(state="online", agent_version="1", started_at=clock.iso(), cameras=[]).to_json()
    return dict(json.loads(raw))


def test_the_real_adjtimex_of_this_machine_is_read() -> None:
    state = read_kernel_clock()
    assert state.synced == (state.max_error_s < 16.0)  # timedatectl's rule
    assert state.est_error_s >= 0.0 and state.max_error_s >= 0.0
    if state.unsync_flag:
        assert not state.synced or state.max_error_s < 16.0
    # The same read from a fresh process (adjtimex changes nothing): the same verdict.
    code = "from agent.clock import read_kernel_clock as r; print(r().synced)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == str(state.synced)


def test_an_unsynchronised_clock_marks_events_and_status_until_it_syncs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    kernel = Kernel(UNSYNCED)
    changes: list[bool] = []
    watch = ClockWatch(kernel, on_change=changes.append)
    # Nobody watching (replay, the simulator): nothing is marked, no field is added.
    assert "clock_unsynced" not in json.loads(event().to_json()) and "clock_synced" not in status()

    watch.check()
    watch.check()
    assert json.loads(event().to_json())["clock_unsynced"] is True
    assert status()["clock_synced"] is False
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warned) == 1 and "NOT synchronised" in warned[0] and "16.0 s" in warned[0]
    )  # once, not per check
    assert watch.telemetry() == {
        "synced": False, "est_error_s": 16.0, "max_error_s": 16.0, "first_sync_at": None, "error": None,
    }  # fmt: skip
    assert clock.skew_hint().startswith("; this gateway's clock is not synchronised")

    kernel.state = SYNCED
    watch.check()
    assert changes == [True]  # the agent republishes its retained status
    assert "clock_unsynced" not in json.loads(event().to_json())
    assert status()["clock_synced"] is True
    assert any("clock synchronised" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    sample = watch.telemetry()
    assert sample["synced"] is True and sample["est_error_s"] == 0.002 and sample["first_sync_at"] is not None
    assert clock.skew_hint() == ""
    # An event is valid per the contract either way.
    Event.model_validate_json(event().to_json())

    watch.close()
    assert clock.clock_synced() is None and "clock_synced" not in status()


def test_a_clock_that_cannot_be_read_is_said_once_and_marks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    kernel = Kernel(UNSYNCED)
    watch = ClockWatch(kernel)
    watch.check()
    kernel.state = OSError(38, "adjtimex is not available here")
    assert watch.check() is None and watch.check() is None
    warned = [r.getMessage() for r in caplog.records if "cannot read the clock" in r.getMessage()]
    assert len(warned) == 1 and "adjtimex is not available" in warned[0]
    assert "clock_unsynced" not in json.loads(event().to_json())
    assert watch.telemetry()["error"] is not None


@pytest.fixture(scope="module")
def crossing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("video") / "cross.mp4"
    write_scene_video(out, "cross", seconds=6.0, fps=10, size=(320, 180), seed=5)
    return out


@pytest.fixture
def unsynced_agent(
    tmp_path: Path, broker: Broker, unique_gateway: str, crossing: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Agent, Kernel]]:
    """A real agent in-process whose kernel says the clock is not synchronised."""
    kernel = Kernel(UNSYNCED)
    monkeypatch.setattr(clock_sync, "read_kernel_clock", kernel)
    cameras = (
        f'[[cameras]]\nid = "cam-1"\nsource = "file://{crossing}"\nallowed_agencies = ["police"]\n'
        "motion = { end_delay_s = 0.5, update_interval_s = 0.5 }\n"
    )
    path = write_config(
        tmp_path / "agent.toml",
        district="clock",
        gateway=unique_gateway,
        port=broker.port,
        data_dir=tmp_path / "data",
        cameras=cameras,
    )
    running = Agent(load_config(path))
    running.start()
    try:
        yield running, kernel
    finally:
        running.stop()


@pytest.mark.broker
def test_an_agent_says_its_clock_is_unsynced_in_status_telemetry_and_events(
    broker: Broker, unique_gateway: str, unsynced_agent: tuple[Agent, Kernel]
) -> None:
    running, kernel = unsynced_agent
    sub = Subscriber(broker.host, broker.port, f"cctv/v1/clock/{unique_gateway}/#")
    try:

        def seen(ms: list[Received]) -> bool:
            return any(m.topic.endswith("/event") for m in ms) and any(
                m.topic.endswith("/telemetry") for m in ms
            )

        assert sub.wait_for(seen, 40)
        online = [m.json() for m in sub.on(f"{unique_gateway}/status")]
        assert online[-1]["state"] == "online" and online[-1]["clock_synced"] is False
        assert all(m.json()["clock_unsynced"] is True for m in sub.on("/event"))
        telemetry = sub.on("/telemetry")[-1].json()
        assert telemetry["clock_synced"] is False and telemetry["clock"]["max_error_s"] == 16.0

        kernel.state = SYNCED
        running.clock.check()  # what the agent's `clock` ticker does every 10 s
        assert sub.wait_for(lambda ms: any(
            m.topic.endswith(f"{unique_gateway}/status") and m.json().get("clock_synced") is True for m in ms
        ), 10)  # fmt: skip
        running.stop()
        last = [m.json() for m in sub.on(f"{unique_gateway}/status")]

        def shut_down(_: list[Received]) -> bool:  # the gateway status only: snapshots are JPEG
            statuses = sub.on(f"{unique_gateway}/status")
            return bool(statuses) and statuses[-1].json().get("reason") == "shutdown"

        assert sub.wait_for(shut_down, 5), last
        assert sub.on(f"{unique_gateway}/status")[-1].json()["clock_synced"] is True, last
    finally:
        sub.close()


@pytest.mark.broker
def test_a_request_refused_for_time_names_the_gateways_clock(
    broker: Broker, unique_gateway: str, unsynced_agent: tuple[Agent, Kernel]
) -> None:
    root = f"cctv/v1/clock/{unique_gateway}"
    with PlatformClient(broker.host, broker.port, root, agency="police", operator="op") as pc:
        with pytest.raises(CommandFailed) as late:
            pc.request("ping", issued_at=time.time() - 3600)
        with pytest.raises(CommandFailed) as early:
            pc.request("ping", issued_at=time.time() + 3600)
    assert late.value.code == "expired" and "this gateway's clock" in late.value.message
    assert early.value.code == "bad_request" and "this gateway's clock" in early.value.message
