"""FFmpeg's own log lines, as OpenCV's FFmpeg backend lets them through.

libavcodec writes a line to stderr for each damaged slice or macroblock ("error while decoding
MB 27 14"): a damaged file camera or an MJPEG camera on a lossy link writes hundreds a minute
into the journal, past the agent's own log and its levels, and a replay's terminal fills with
them. The agent reports damage in its own terms (replay's `skipped`, a camera's status and
reconnects), so OpenCV's FFmpeg log is silenced unless the operator sets OPENCV_FFMPEG_LOGLEVEL
to debug a source (OpenCV then prints FFmpeg's lines on stdout, among a replay's JSON lines).
PyAV, which reads RTSP cameras, keeps FFmpeg's log off unless asked.
"""

from __future__ import annotations

import os

LEVEL_ENV = "OPENCV_FFMPEG_LOGLEVEL"
QUIET = "-8"  # AV_LOG_QUIET


def silence() -> None:
    """Silence FFmpeg's log in OpenCV unless the operator chose a level.

    OpenCV reads the variable once, at the process's first FFmpeg open, so this runs at import of
    every module that opens a video through OpenCV, before any open and any second thread.
    """
    os.environ.setdefault(LEVEL_ENV, QUIET)
