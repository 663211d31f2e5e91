"""Frame capture: one `FrameSource` protocol, several backends, one factory choosing among them.

rtsp:// cameras go through PyAV (`pyav`), which also hands out the camera's packets (`packets`,
read with `h26x`); HTTP/MJPEG, USB and files through OpenCV (`opencv`); the Pi camera through
picamera2 (`picamera`); `synthetic` scenes stand in for cameras; `cadence` is the frame-rate grid.
"""

from __future__ import annotations

from agent.capture.source import Frame, FrameSource, open_source

__all__ = ["Frame", "FrameSource", "open_source"]
