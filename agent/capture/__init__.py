"""Frame capture: one `FrameSource` protocol, several backends, one factory choosing among them."""

from __future__ import annotations

from agent.capture.source import Frame, FrameSource, open_source

__all__ = ["Frame", "FrameSource", "open_source"]
