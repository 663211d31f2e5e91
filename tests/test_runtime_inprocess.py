"""The runtime built in-process (no subprocess): the real Agent, cameras, link, outbox and files.

Two paths, asserted on what the platform and an operator see:
- frame in → event out: a recorded crossing gives one start..end on the broker, a retained
  snapshot blank inside the privacy mask, and the end phase's clip as an MP4 on disk;
- message in → reply and audit out: a command on `{root}/cmd` gets its reply, a refused one its
  error, and both leave records in the hash-chained audit log that `verify` accepts.
The subprocess end-to-end tests (test_run_e2e, test_commands_e2e) stay beside these.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture.synthetic import write_scene_video
from agent.commands.audit import verify
from agent.config import load_config
from agent.runtime.agent import Agent
from agent.sdk.client import CommandFailed, PlatformClient
from tests.conftest import Broker
from tests.harness import Received, Subscriber, wait_answering, write_config

pytestmark = pytest.mark.broker

DISTRICT = "inproc"
MASK = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]  # the left half of the picture


@pytest.fixture(scope="module")
def crossing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("video") / "cross.mp4"
    write_scene_video(out, "cross", seconds=10.0, fps=10, size=(320, 180), seed=5)
    return out


@pytest.fixture
def sub(broker: Broker, unique_gateway: str) -> Iterator[Subscriber]:
    """The platform's subscription, made before the agent starts (its first event comes early)."""
    listening = Subscriber(broker.host, broker.port, f"cctv/v1/{DISTRICT}/{unique_gateway}/#")
    yield listening
    listening.close()


@pytest.fixture
def agent(
    tmp_path: Path, broker: Broker, unique_gateway: str, crossing: Path, sub: Subscriber
) -> Iterator[Agent]:
    cameras = (
        f'[[cameras]]\nid = "cam-1"\nsource = "file://{crossing}"\nallowed_agencies = ["police"]\n'
        f"privacy_masks = [{json.dumps(MASK)}]\n"
        "motion = { end_delay_s = 0.5, update_interval_s = 0.5 }\n"
        "clips = { enabled = true, pre_roll_s = 1.0, post_roll_s = 0.5 }\n"
    )
    path = write_config(
        tmp_path / "agent.toml",
        district=DISTRICT,
        gateway=unique_gateway,
        port=broker.port,
        data_dir=tmp_path / "data",
        cameras=cameras,
    )
    running = Agent(load_config(path))
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_frame_in_event_snapshot_and_clip_out(agent: Agent, sub: Subscriber) -> None:
    def ended(ms: list[Received]) -> bool:
        return any(m.topic.endswith("/cam/cam-1/event") and m.json()["phase"] == "end" for m in ms)

    assert sub.wait_for(ended, 40)
    events = [m.json() for m in sub.on("/cam/cam-1/event")]
    end = next(e for e in events if e["phase"] == "end")
    ids = [e["event_id"] for e in events if e["event_id"] == end["event_id"]]
    assert events[[e["event_id"] for e in events].index(end["event_id"])]["phase"] == "start"
    assert len(ids) >= 2 and end["kind"] == "motion"

    snaps = [m for m in sub.on("/cam/cam-1/snapshot") if m.retain or m.user_properties.get("event_id")]
    assert snaps, "no event snapshot"
    image = cv2.imdecode(np.frombuffer(snaps[-1].payload, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image is not None
    w = image.shape[1]
    assert int(image[:, : w // 2 - 4].max()) <= 16, "pixels inside the privacy mask left the gateway"
    assert float(image[:, w // 2 + 4 :].mean()) > 20, "the unmasked half should show the scene"

    clip_id = end["clip_id"]
    assert clip_id, end
    clip = agent.cfg.gateway.data_dir / "clips" / f"{clip_id}.mp4"
    deadline = time.monotonic() + 20
    while not clip.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert clip.exists() and clip.stat().st_size > 1000
    sidecar = json.loads(clip.with_suffix(".json").read_text())
    assert sidecar["camera"] == "cam-1" and sidecar["event_id"] == end["event_id"]


def test_message_in_reply_and_audit_out(agent: Agent, broker: Broker) -> None:
    root = agent.topics.root
    admin = PlatformClient(broker.host, broker.port, root, agency="admin", operator="a-1").connect()
    police = PlatformClient(broker.host, broker.port, root, agency="police", operator="p-1").connect()
    fire = PlatformClient(broker.host, broker.port, root, agency="fire", operator="f-1").connect()
    try:
        assert wait_answering(police)["agent_version"]
        settings = admin.request("config.set", {"cameras": {"cam-1": {"motion": {"threshold": 33}}}})
        assert settings["cameras"]["cam-1"]["motion"]["threshold"] == 33
        # A label the model lacks is refused before anything is persisted or handed to the camera.
        unicorn = {"cameras": {"cam-1": {"detection": {"enabled": True, "labels": ["unicorn"]}}}}
        with pytest.raises(CommandFailed) as bad_label:
            admin.request("config.set", unicorn, timeout=20.0)
        assert bad_label.value.code == "bad_request" and "unicorn" in bad_label.value.message
        with pytest.raises(CommandFailed) as refused:
            fire.snapshot("cam-1", timeout=5.0)
        assert refused.value.code == "forbidden"
    finally:
        admin.close()
        police.close()
        fire.close()
    audit = agent.cfg.gateway.data_dir / "audit" / "audit.log"
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    outcomes = {(r["cmd"], r["requester"]["agency"], r["outcome"]) for r in records}
    assert ("config.set", "admin", "ok") in outcomes
    assert any(cmd == "snapshot" and agency == "fire" and out != "ok" for cmd, agency, out in outcomes)
    assert verify(audit).ok
    # The change is persisted and reported retained, as the platform sees it.
    saved = json.loads((agent.cfg.gateway.data_dir / "settings.json").read_text())
    assert saved["cameras"]["cam-1"]["motion"]["threshold"] == 33
    assert saved["cameras"]["cam-1"]["detection"]["enabled"] is False


def test_retention_runs_on_its_own_timer(
    tmp_path: Path, broker: Broker, unique_gateway: str, crossing: Path
) -> None:
    """A full disk shows on the camera at start, though telemetry is an hour away."""
    path = write_config(
        tmp_path / "agent.toml",
        district=DISTRICT,
        gateway=unique_gateway,
        port=broker.port,
        data_dir=tmp_path / "data",
        cameras=f'[[cameras]]\nid = "cam-1"\nsource = "file://{crossing}"\n',
        extra=f"\n[storage]\nmin_free_bytes = {10**15}\n",
    )
    text = path.read_text().replace("telemetry_interval_s = 1", "telemetry_interval_s = 3600")
    path.write_text(text)
    sub = Subscriber(broker.host, broker.port, f"cctv/v1/{DISTRICT}/{unique_gateway}/#")
    running = Agent(load_config(path))
    running.start()
    try:
        assert sub.wait_for(
            lambda ms: any(
                m.topic.endswith("/cam/cam-1/status")
                and (m.json().get("error") or "").startswith("disk full: clips paused")
                for m in ms
            ),
            30,  # a bound, not a speed: on a loaded CI machine the first status came after 10 s
        ), [m.payload for m in sub.on("/status")]
        assert not sub.on("/telemetry")
    finally:
        running.stop()
        sub.close()
