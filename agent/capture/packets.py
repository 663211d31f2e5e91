"""A camera's compressed video as it arrived: packets and the stream they belong to.

A network camera already sends H.264 (or H.265). Keeping its packets, rather than decoded and
re-encoded frames, is what lets a clip be the camera's own footage at its full rate, written in
milliseconds by a remux (agent.footage.remux). A source that can hand packets out (the PyAV
backend) calls a `PacketSink` with every video packet of the stream, in decode order, on its read
thread, before any decoding.

`StreamInfo` describes one session of a stream: it changes whenever the source is reopened (a
reconnect, a camera restart) or the camera starts sending other parameters (a new resolution).
Packets of different sessions never share one decoder or one MP4 track without a check that the
two infos are compatible (`same_format`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["PacketSink", "StreamInfo", "StreamPacket"]


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """One session of a camera's video stream: what a decoder or a muxer needs to know."""

    codec: str  # FFmpeg's codec name: "h264", "hevc"
    width: int
    height: int
    fps: float  # nominal frame rate the stream declares (or FFmpeg guessed)
    time_base: Fraction  # unit of the packets' pts and dts
    extradata: bytes | None  # parameter sets (SPS/PPS) as the demuxer gave them, if any
    session: int  # counts (re)opens of the source since the agent started

    def same_format(self, other: StreamInfo) -> bool:
        """Whether packets of `other` may continue a track begun with this info (same codec,
        picture size and parameter sets; the session and the time base may differ)."""
        return (
            self.codec == other.codec
            and (self.width, self.height) == (other.width, other.height)
            and self.extradata == other.extradata
        )


@dataclass(frozen=True, slots=True)
class StreamPacket:
    """One compressed video packet: its bytes, timestamps in `info.time_base`, and wall time.

    `ts` is the wall-clock time (epoch seconds) of the packet's presentation, on the same clock as
    the `Frame.ts` of the frames decoded from the same source, so that footage selected by time
    lines up with events found in frames.
    """

    data: bytes
    pts: int | None
    dts: int | None
    keyframe: bool
    ts: float
    info: StreamInfo

    @property
    def size(self) -> int:
        return len(self.data)


PacketSink = Callable[[StreamPacket], object]  # what it returns is ignored
