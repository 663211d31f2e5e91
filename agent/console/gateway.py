"""The running agent as the console sees it; agent.runtime.console_bridge implements it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from agent.config import AgentConfig


class ConsoleGateway(Protocol):
    @property
    def label(self) -> str:
        """`district/gateway`, for the page's header."""

    def config(self) -> AgentConfig:
        """The configuration in force (masks included, as the console last saved them)."""

    def cameras(self) -> list[dict[str, Any]]:
        """Each camera's health as the page shows it: id, name, enabled, state, fps, error, width,
        height, footage, last_event (see docs/console.md)."""

    def frame_jpeg(self, camera: str, max_width: int) -> bytes | None:
        """The camera's newest frame with its privacy masks burnt in, as JPEG; None without one."""

    def overlay(self, camera: str) -> dict[str, Any] | None:
        """The newest motion regions and tracked objects of the camera, normalised; None if unknown."""

    def events(self, camera: str) -> list[dict[str, Any]]:
        """The camera's recent events, newest first."""

    def event_snapshot(self, event_id: str) -> tuple[str, bytes] | None:
        """(camera, the masked snapshot JPEG) published with a recent event, if still kept."""

    def config_problems(self, cfg: AgentConfig) -> list[str]:
        """What `edge-agent check-config` would say is wrong with `cfg` beyond its schema (the
        files it names, the detector)."""

    def apply_camera(self, new: AgentConfig, camera: str) -> None:
        """Put the camera's masks from `new` in force without restarting the agent; returns once
        outgoing images use the new privacy masks."""

    def audit(self, fields: Mapping[str, Any]) -> None:
        """Append one record to the gateway's audit log."""
