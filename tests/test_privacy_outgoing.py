"""Privacy masks in the imagery the platform receives from a running agent, checked in decoded pixels.

One `edge-agent run` (subprocess, real broker, real ffmpeg) with a synthetic street whose left
third is masked: the retained event snapshot and every frame of an exported clip must be black
there (within JPEG / H.264 tolerance) and show the street elsewhere. Snapshots on demand and
stream frames are checked the same way in test_commands_e2e.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.clock import iso
from agent.sdk.client import PlatformClient
from tests.conftest import Broker
from tests.harness import GatewayRun, Received, Subscriber, wait_answering, wait_frames

pytestmark = pytest.mark.broker

Pixels = np.ndarray[Any, np.dtype[np.uint8]]

MASK_RIGHT = 1 / 3  # the mask covers x in [0, 1/3] of every frame
CAMERA = f"""
[[cameras]]
id = "cam-1"
source = "synthetic:street?fps=10&seed=5&width=480&height=270"
allowed_agencies = ["police"]
privacy_masks = [[[0.0, 0.0], [{MASK_RIGHT}, 0.0], [{MASK_RIGHT}, 1.0], [0.0, 1.0]]]
buffer = {{ pre_event_s = 6.0, fps = 10.0 }}
clips = {{ pre_roll_s = 1.0, post_roll_s = 1.0 }}
"""


def assert_masked(img: Pixels, what: str) -> None:
    """Black inside the mask (a margin off its edge for compression ringing), the street outside."""
    _h, w = img.shape[:2]
    edge = round(w * MASK_RIGHT)
    margin = max(4, w // 48)
    inside = img[:, : edge - margin]
    outside = img[:, edge + margin :]
    assert inside.max() <= 32 and inside.mean() < 2.0, f"{what}: the masked area shows content"
    assert outside.mean() > 20 and outside.std() > 10, f"{what}: the unmasked area should show the street"


def decode_jpeg(data: bytes) -> Pixels:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "not a JPEG"
    return np.asarray(img, np.uint8)


def decode_mp4(path: Path) -> list[Pixels]:
    cap = cv2.VideoCapture(str(path))
    frames: list[Pixels] = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(np.asarray(frame, np.uint8))
    finally:
        cap.release()
    return frames


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[GatewayRun]:
    gateway = "gw-privacy-" + str(time.time_ns())[-8:]
    r = GatewayRun(tmp_path_factory.mktemp("privacy"), broker.host, broker.port, "privacy", gateway, CAMERA)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def police(run: GatewayRun, broker: Broker) -> Iterator[PlatformClient]:
    client = PlatformClient(broker.host, broker.port, run.root, agency="police", operator="op-1")
    with client.connect() as c:
        wait_answering(c)
        wait_frames(c, "cam-1")
        yield c


def test_retained_event_snapshot_is_masked(run: GatewayRun, broker: Broker) -> None:
    topic = f"{run.root}/cam/cam-1/snapshot"

    def snapshots(ms: list[Received]) -> list[Received]:
        return [m for m in ms if m.topic == topic]

    assert run.sub.wait_for(lambda ms: len(snapshots(ms)) >= 2, 45), run.agent.log()[-3000:]
    for i, snap in enumerate(snapshots(run.sub.messages)):
        assert snap.user_properties.get("event_id"), "an event snapshot names its event"
        assert_masked(decode_jpeg(snap.payload), f"event snapshot {i}")
    late = Subscriber(broker.host, broker.port, topic)  # what a platform connecting now is given
    try:
        assert late.wait_for(bool, 5)
        retained = late.messages[0]
    finally:
        late.close()
    assert retained.retain
    assert_masked(decode_jpeg(retained.payload), "retained event snapshot")


def test_exported_clip_frames_are_masked(police: PlatformClient, tmp_path: Path) -> None:
    time.sleep(max(0.0, 4.0 - police.ping()["uptime_s"]))  # let the pre-event buffer fill
    now = time.time()
    exported = police.clip_export("cam-1", iso(now - 3.0), iso(now - 0.5))
    out = tmp_path / "clip.mp4"
    fetched = police.clip_fetch(exported["clip_id"], out)
    assert fetched["sha256"] == exported["sha256"]
    frames = decode_mp4(out)
    assert len(frames) >= 10, f"expected ~2.5 s of video, decoded {len(frames)} frames"
    assert frames[0].shape == (270, 480, 3)
    for i, frame in enumerate(frames):
        assert_masked(frame, f"clip frame {i}")
