"""End to end: `edge-agent run` as a subprocess, the platform's view of it on a real broker."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.capture.synthetic import write_scene_video
from tests.conftest import Broker, free_port, start_mosquitto, stop_mosquitto
from tests.harness import AgentProcess, GatewayRun, Received, Subscriber, write_config
from tests.mqtt_proxy import NoMqtt5Proxy

pytestmark = pytest.mark.broker

DISTRICT = "testdistrict"


def camera_block(cam_id: str, source: str, extra: str = "") -> str:
    return f'[[cameras]]\nid = "{cam_id}"\nsource = "{source}"\nallowed_agencies = ["police"]\n{extra}\n'


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    out = {}
    for kind in ("cross", "lightswitch", "noise"):
        out[kind] = d / f"{kind}.mp4"
        write_scene_video(out[kind], kind, seconds=12.0, fps=10, size=(320, 180), seed=3)
    return out


class Run(GatewayRun):
    """One agent against the session broker, with a subscriber on its topic root."""

    def __init__(self, tmp: Path, broker: Broker, gateway: str, cameras: str) -> None:
        super().__init__(tmp, broker.host, broker.port, DISTRICT, gateway, cameras)


RunFactory = Callable[[str], Run]


@pytest.fixture
def run_factory(tmp_path: Path, broker: Broker, unique_gateway: str) -> Iterator[RunFactory]:
    runs: list[Run] = []

    def make(cameras: str) -> Run:
        run = Run(tmp_path, broker, unique_gateway, cameras)
        runs.append(run)
        return run

    yield make
    for r in runs:
        r.close()


def complete_events(events: list[dict[str, object]]) -> dict[str, list[str]]:
    by_id: dict[str, list[str]] = {}
    for e in events:
        by_id.setdefault(str(e["event_id"]), []).append(str(e["phase"]))
    return by_id


def test_online_camera_status_and_a_crossing_gives_one_event(
    run_factory: RunFactory, videos: dict[str, Path], broker: Broker
) -> None:
    run = run_factory(camera_block("cam-1", f"file://{videos['cross']}"))
    assert run.sub.wait_for(
        lambda ms: any(m.topic.endswith("/cam/cam-1/event") and m.json()["phase"] == "end" for m in ms), 40
    ), run.agent.log()
    online = [s for s in run.statuses() if s["state"] == "online"]
    assert online and online[0]["cameras"] == ["cam-1"]
    cam_status = [m.json() for m in run.sub.on("/cam/cam-1/status")]
    assert any(s["state"] == "ok" and s["width"] == 320 and s["height"] == 180 for s in cam_status)
    # The ok status is published at the first frame and kept by the broker: its fps is the rate
    # the file declares (10) until a change of state publishes a measured one, never null.
    assert all(s["fps"] == 10.0 for s in cam_status if s["state"] == "ok"), cam_status

    events = run.events("cam-1")
    phases = complete_events(events)
    first_id = str(events[0]["event_id"])
    assert events[0]["phase"] == "start"
    assert phases[first_id][0] == "start" and phases[first_id][-1] == "end"
    assert phases[first_id].count("end") == 1
    end = next(e for e in events if e["event_id"] == first_id and e["phase"] == "end")
    assert end["ended_at"] is not None and end["kind"] == "motion" and end["camera"] == "cam-1"
    regions = end["regions"]
    assert isinstance(regions, list) and regions
    for x, y, w, h in regions:
        assert 0 <= x <= 1 and 0 <= y <= 1 and 0 < w <= 1 and 0 < h <= 1

    # The newest event's best frame is a retained JPEG with its event_id.
    snaps = run.sub.on("/cam/cam-1/snapshot")
    assert snaps and snaps[-1].payload[:2] == b"\xff\xd8"
    assert snaps[-1].user_properties.get("event_id") in phases

    # A platform that subscribes later still gets the retained status and snapshot.
    late = Subscriber(broker.host, broker.port, run.root + "/#")
    try:
        assert late.wait_for(
            lambda ms: (
                any(m.retain and m.topic.endswith("/snapshot") for m in ms)
                and any(m.retain and m.topic == run.root + "/status" for m in ms)
            ),
            5,
        )
    finally:
        late.close()

    code, took = run.agent.terminate()
    assert code == 0 and took < 5.0
    assert run.sub.wait_for(
        lambda ms: any(m.topic == run.root + "/status" and m.json()["state"] == "offline" for m in ms), 5
    )
    last = run.statuses()[-1]
    assert last["state"] == "offline" and last["reason"] == "shutdown"
    # Every event that started also ended, exactly once, before the agent went away.
    for seq in complete_events(run.events("cam-1")).values():
        assert seq[0] == "start" and seq[-1] == "end" and seq.count("end") == 1


@pytest.mark.parametrize("kind", ["lightswitch", "noise"])
def test_no_event_for_light_switch_or_noise(
    run_factory: RunFactory, videos: dict[str, Path], kind: str
) -> None:
    run = run_factory(camera_block("cam-1", f"file://{videos[kind]}"))
    assert run.sub.wait_for(
        lambda ms: any(m.topic.endswith("/cam/cam-1/status") and m.json()["state"] == "ok" for m in ms), 20
    ), run.agent.log()
    # Two passes of the looping 12 s video, light switches or noise all along.
    run.sub.wait_for(lambda ms: False, 20)
    assert run.events("cam-1") == []
    assert run.agent.terminate()[0] == 0


def test_sigkill_leaves_the_last_will(run_factory: RunFactory, videos: dict[str, Path]) -> None:
    run = run_factory(camera_block("cam-1", "synthetic:street"))
    assert run.sub.wait_for(
        lambda ms: any(m.topic == run.root + "/status" and m.json()["state"] == "online" for m in ms), 20
    ), run.agent.log()
    run.agent.kill()
    assert run.sub.wait_for(
        lambda ms: any(m.topic == run.root + "/status" and m.json()["state"] == "offline" for m in ms), 10
    )
    last = run.statuses()[-1]
    assert last == {**last, "state": "offline", "reason": "lost"}


def test_a_failing_camera_does_not_disturb_the_other(
    run_factory: RunFactory, videos: dict[str, Path], tmp_path: Path
) -> None:
    run = run_factory(
        camera_block("cam-bad", f"file://{tmp_path}/missing.mp4")
        + camera_block("cam-ok", f"file://{videos['cross']}")
    )
    assert run.sub.wait_for(lambda ms: any(m.topic.endswith("/cam/cam-ok/event") for m in ms), 30), (
        run.agent.log()
    )
    bad = [m.json() for m in run.sub.on("/cam/cam-bad/status")]
    assert bad[-1]["state"] == "failed"
    assert "missing.mp4" in str(bad[-1]["error"])
    assert run.sub.wait_for(lambda ms: any(m.topic.endswith("/telemetry") for m in ms), 5)
    tele: Received = run.sub.on("/telemetry")[-1]
    body = tele.json()
    assert body["cameras"]["cam-ok"]["fps"] > 5
    assert body["cameras"]["cam-bad"]["reconnects"] >= 1
    for key in ("uptime_s", "cpu_percent", "process_rss_bytes", "disk_free_bytes", "outbox_depth"):
        assert key in body


def test_mqtt_311_and_a_broker_that_comes_later(
    tmp_path: Path, unique_gateway: str, videos: dict[str, Path]
) -> None:
    port = free_port()
    cfg = write_config(
        tmp_path / "agent.toml",
        district=DISTRICT,
        gateway=unique_gateway,
        port=port,
        data_dir=tmp_path / "data",
        cameras=camera_block("cam-1", f"file://{videos['cross']}"),
        protocol="3.1.1",
    )
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    root = f"cctv/v1/{DISTRICT}/{unique_gateway}"
    late: Broker | None = None
    sub: Subscriber | None = None
    way_in: NoMqtt5Proxy | None = None
    try:
        # No broker for a while: the agent keeps capturing and detecting.
        time.sleep(6)
        assert agent.proc.poll() is None, agent.log()
        # The platform subscribes before the agent can reach the broker: the agent's port opens
        # only then, so its first messages cannot slip past the subscription.
        late = start_mosquitto(tmp_path / "late", port=free_port())
        sub = Subscriber(late.host, late.port, root + "/#")
        way_in = NoMqtt5Proxy(late.port, port=port)
        # Events made while the broker was away are delivered once it is there.
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/event") for m in ms), 30), agent.log()
        assert sub.wait_for(
            lambda ms: any(m.topic == root + "/status" and m.json()["state"] == "online" for m in ms), 10
        )
        first = next(m.json() for m in sub.on("/cam/cam-1/event"))
        assert first["phase"] == "start"
        code = agent.terminate()[0]
        assert code == 0
    finally:
        agent.close()
        if way_in is not None:
            way_in.stop()
        if sub is not None:
            sub.close()
        if late is not None:
            stop_mosquitto(late)


def refused_start(tmp_path: Path, data_dir: Path, extra: str = "") -> str:
    """Run an agent whose start must fail: exit code 1, no traceback; return its stderr."""
    cfg = write_config(
        tmp_path / "agent.toml",
        district=DISTRICT,
        gateway="gw-x",
        port=free_port(),
        data_dir=data_dir,
        cameras=camera_block("cam-1", "synthetic:street"),
        extra=extra,
    )
    out = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    return out.stderr


def test_an_unusable_data_dir_stops_with_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory", encoding="utf-8")
    stderr = refused_start(tmp_path, blocker / "data")
    assert "gateway.data_dir" in stderr
    assert str(blocker / "data") in stderr


def test_missing_tls_files_stop_with_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "ca.crt"
    stderr = refused_start(tmp_path, tmp_path / "data", extra=f'[mqtt.tls]\nca_file = "{missing}"\n')
    assert "mqtt.tls" in stderr
    assert str(missing) in stderr
