"""What the gateway's cameras share: the one object detector (`detector`), the live stream
budget (`streams`) and the bounds on what is kept under data_dir (`storage`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from agent.config.base import Strict


class DetectorConfig(Strict):
    """The gateway's one object detector, shared by all cameras."""

    model_path: Path | None = Field(
        default=None, description="TFLite detection model; default the vendored SSD MobileNet v1 COCO"
    )
    labels_path: Path | None = Field(
        default=None, description="Label map, line N = class id N; required with model_path"
    )
    input_size: int | None = Field(
        default=None, ge=32, le=2048, description="Square input side in pixels; default the model's own"
    )
    layout: Literal["auto", "ssd", "yolo"] = Field(
        default="auto", description="Output layout: SSD post-processed boxes, or raw YOLO with NMS"
    )
    threads: int = Field(default=2, ge=1, le=16, description="Interpreter threads")
    max_inferences_per_s: float = Field(
        default=20.0, gt=0.0, le=1000.0, description="Gateway-wide cap on model invocations per second"
    )
    nms_iou: float = Field(
        default=0.45, gt=0.0, le=1.0, description="Overlap above which YOLO boxes of a class are merged"
    )

    @model_validator(mode="after")
    def _labels_with_model(self) -> DetectorConfig:
        if self.model_path is not None and self.labels_path is None:
            raise ValueError("labels_path is required when model_path is set")
        return self


class StreamSettings(Strict):
    """Limits on live streams, gateway-wide (runtime-adjustable)."""

    max_sessions: int = Field(default=4, ge=0, le=64, description="Concurrent stream sessions")
    max_bytes_per_s: int = Field(
        default=1_500_000, ge=10_000, le=1_000_000_000, description="Total stream bandwidth, bytes/s"
    )


class StorageConfig(Strict):
    """Disk and memory bounds of what the agent keeps under data_dir (outbox, clips)."""

    outbox_max_messages: int = Field(
        default=100_000, ge=100, le=10_000_000, description="Most messages the outbox holds awaiting PUBACK"
    )
    outbox_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024 * 1024,
        le=64 * 1024 * 1024 * 1024,
        description="Most bytes the outbox holds; past either bound telemetry is dropped first, events last",
    )
    clips_quota_bytes: int = Field(
        default=2 * 1024 * 1024 * 1024,
        ge=0,
        description="Disk quota of data_dir/clips; the oldest unheld clips are deleted beyond it",
    )
    min_free_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=0,
        description="Free space kept on data_dir's filesystem; below it clips pause, events continue",
    )
