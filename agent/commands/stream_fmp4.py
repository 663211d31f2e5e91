"""Live fragmented-MP4 streams: the camera's own packets remuxed, or masked pixels encoded.

Two feeds produce a session's segments (an init segment, then fragments), each polled by the
stream worker at the stream's frame rate:

- `PacketFeed`: a packet-path camera (rtsp://, no privacy masks) already sends H.264. Its
  packets are read from the camera's `PacketRing` and copied into fragments: no decode, no
  encode, the camera's size and rate. The first fragment carries the GOP so far (from the newest
  keyframe in the ring), so the first picture goes out at once rather than at the next keyframe.
- `EncodeFeed`: every other camera (privacy masks, USB, synthetic, H.265, or a `max_width`
  below the camera's width). Privacy masks are blanked at full size, the picture is scaled and
  encoded with libx264 (ultrafast, zerolatency, one thread, a keyframe every second, VBV capped
  at the rate the session was admitted for). Unmasked pixels never reach the encoder.

`Fmp4Track` turns packets into segments: it starts at a keyframe, converts timestamps to one
continuous timeline, and, when the camera starts sending another format (a new resolution),
emits a new init segment before the next keyframe's fragment.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import av.video.codeccontext
import av.video.stream

from agent.capture import h26x
from agent.capture.packets import StreamInfo, StreamPacket
from agent.capture.source import Frame
from agent.commands import fmp4
from agent.footage.packet_ring import PacketRing
from agent.footage.privacy import PolygonLike, apply_privacy_masks

__all__ = [
    "EncodeFeed",
    "Fmp4Track",
    "PacketFeed",
    "Segment",
    "crf_for_quality",
    "encoded_size",
    "estimate_h264_bytes_per_s",
]

log = logging.getLogger(__name__)

Part = Literal["init", "fragment"]
_MAX_STEP_S = 2.0  # a timestamp step larger than this (or backwards) is a reconnect: one frame
_ENCODE_TB = Fraction(1, fmp4.TIMESCALE)


@dataclass(frozen=True, slots=True)
class Segment:
    """One message of a session: `part`, its bytes, the wall time of its first frame."""

    part: Part
    data: bytes
    ts: float


def estimate_h264_bytes_per_s(width: int, height: int, fps: float) -> float:
    """A coarse guess of a street scene's H.264 rate (~0.1 bit per pixel per frame), used only
    until a session has sent a few seconds."""
    return width * height * fps * 0.1 / 8


def encoded_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """The encoded size of a `width` x `height` picture: at most max_width wide, even sides."""
    w = min(width, max_width)
    h = round(height * w / width)
    return max(2, w - w % 2), max(2, h - h % 2)


def crf_for_quality(quality: int) -> int:
    """stream.start's `quality` (1..100, JPEG-like) as x264's CRF: 75 -> 28, 100 -> 18, 1 -> 51."""
    return max(18, min(51, round(18 + (100 - quality) * 0.4)))


class Fmp4Track:
    """Packets of one camera, in decode order, as fMP4 segments on one continuous timeline."""

    def __init__(self) -> None:
        self.config: fmp4.AvcConfig | None = None
        self._info: StreamInfo | None = None
        self._length_size = 0
        self._sequence = 0  # fragments written
        self._time = 0  # decode time of the next sample, in fmp4.TIMESCALE ticks
        self._need_key = True
        self._warned = False

    def resync(self) -> None:
        """Packets were lost: continue at the next keyframe."""
        self._need_key = True

    def add(self, packets: Sequence[StreamPacket]) -> list[Segment]:
        """Segments for `packets` (a new init first when the format changed); [] while waiting
        for a keyframe. Every packet given goes into one fragment, so nothing is held back."""
        out: list[Segment] = []
        run: list[StreamPacket] = []
        for packet in packets:
            if packet.info.codec != "h264":
                if not self._warned:
                    self._warned = True
                    log.warning("fmp4 stream: the camera sends %s, not h264; nothing sent", packet.info.codec)
                continue
            if self._info is None or not self._info.same_format(packet.info):
                if not packet.keyframe:
                    self._need_key = True
                    continue
                cfg = fmp4.avc_config(
                    packet.info.width, packet.info.height, packet.info.extradata, packet.data
                )
                if cfg is None:
                    continue  # no SPS/PPS yet: wait for a keyframe that carries them
                out += self._fragment(run)
                run = []
                self._info, self.config = packet.info, cfg
                self._length_size = h26x.nal_length_size("h264", packet.info.extradata)
                self._need_key = False
                out.append(Segment("init", fmp4.init_segment(cfg), packet.ts))
            elif self._need_key:
                if not packet.keyframe:
                    continue
                self._need_key = False
            self._info = packet.info  # same format; a new session's time base is taken up
            run.append(packet)
        out += self._fragment(run)
        return out

    def _fragment(self, run: list[StreamPacket]) -> list[Segment]:
        if not run:
            return []
        samples = []
        for i, p in enumerate(run):
            tb = p.info.time_base
            nominal = round(fmp4.TIMESCALE / (p.info.fps or 25.0))
            duration = nominal
            if i + 1 < len(run):
                nxt = run[i + 1]
                a, b = _decode_time(p), _decode_time(nxt)
                if a is not None and b is not None and nxt.info.session == p.info.session:
                    step = (b - a) * tb
                    if 0 < step <= _MAX_STEP_S:
                        duration = max(1, round(step * fmp4.TIMESCALE))
            cts = 0
            if p.pts is not None and p.dts is not None:
                cts = round((p.pts - p.dts) * tb * fmp4.TIMESCALE)
            data = fmp4.to_sample_data(p.data, self._length_size)
            samples.append(fmp4.Sample(data, duration, cts, p.keyframe))
        self._sequence += 1
        data = fmp4.fragment(self._sequence, self._time, samples)
        self._time += sum(s.duration for s in samples)
        return [Segment("fragment", data, run[0].ts)]


def _decode_time(p: StreamPacket) -> int | None:
    return p.dts if p.dts is not None else p.pts


class PacketFeed:
    """A packet-path camera's stream: its ring's packets from the newest keyframe on, copied."""

    copied = True  # the camera's own packets, no encode

    def __init__(self, ring: PacketRing) -> None:
        self._ring = ring
        self._track = Fmp4Track()
        self._last_seq: int | None = None
        self.backlog: list[StreamPacket] = []
        newest = ring.newest()
        if newest is not None:
            self._take(ring.since(newest.ts))

    def _take(self, items: list[tuple[int, StreamPacket]]) -> list[StreamPacket]:
        if not items:
            return []
        if self._last_seq is not None and items[0][0] != self._last_seq + 1:
            log.info("fmp4 stream: %d packets left the ring unsent; resuming at a keyframe",
                     items[0][0] - self._last_seq - 1)  # fmt: skip
            self._track.resync()
        self._last_seq = items[-1][0]
        packets = [p for _, p in items]
        if not self.backlog and self._track.config is None:
            self.backlog = packets
        return packets

    @property
    def info(self) -> StreamInfo | None:
        """The stream the session starts with (None while the camera has sent nothing)."""
        return self.backlog[0].info if self.backlog else None

    @property
    def config(self) -> fmp4.AvcConfig | None:
        """Size and parameter sets of what is being sent, once known."""
        if self._track.config is None and self.backlog:
            first = self.backlog[0]
            return fmp4.avc_config(first.info.width, first.info.height, first.info.extradata, first.data)
        return self._track.config

    def poll(self) -> list[Segment]:
        if self._last_seq is None:
            newest = self._ring.newest()
            packets = self._take(self._ring.since(newest.ts)) if newest is not None else []
        elif self.backlog and self._track.config is None:
            packets = self.backlog + self._take(self._ring.after(self._last_seq))
        else:
            packets = self._take(self._ring.after(self._last_seq))
        return self._track.add(packets)


class EncodeFeed:
    """A pixel-path stream: the newest frames, masked at full size, scaled, encoded to H.264."""

    copied = False

    def __init__(self, *, max_width: int, fps: float, quality: int, max_bytes_per_s: float) -> None:
        self._max_width = max_width
        self._fps = fps
        self._crf = crf_for_quality(quality)
        self._kbit = max(64, round(max_bytes_per_s * 8 / 1000))
        self._codec: av.video.codeccontext.VideoCodecContext | None = None
        self._size: tuple[int, int] | None = None
        self._t0: float | None = None
        self._last_pts = -1
        self._last: tuple[float, int] | None = None
        self._track = Fmp4Track()
        self._session = 0
        self._info: StreamInfo | None = None

    @property
    def config(self) -> fmp4.AvcConfig | None:
        return self._track.config

    def poll(self, frame: Frame | None, masks: Sequence[PolygonLike]) -> list[Segment]:
        """Encode `frame` unless it was encoded already; masks are applied before anything else."""
        if frame is None or (frame.ts, frame.seq) == self._last:
            return []
        self._last = (frame.ts, frame.seq)
        masked = apply_privacy_masks(frame.image, masks)
        height, width = masked.shape[:2]
        size = encoded_size(width, height, self._max_width)
        if size != self._size:
            self._open(size)
        if self._t0 is None:
            self._t0 = frame.ts
        codec = self._codec
        assert codec is not None
        assert self._t0 is not None
        pts = max(self._last_pts + 1, round((frame.ts - self._t0) * fmp4.TIMESCALE))
        self._last_pts = pts
        picture = av.VideoFrame.from_ndarray(masked, format="bgr24").reformat(
            width=size[0], height=size[1], format="yuv420p"
        )
        picture.pts = pts
        picture.time_base = _ENCODE_TB
        packets = codec.encode(picture)
        return self._track.add([self._packet(p, frame.ts) for p in packets])

    def _open(self, size: tuple[int, int]) -> None:
        """(Re)open the encoder for a new picture size; the track then sends a new init."""
        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height = size
        codec.pix_fmt = "yuv420p"
        codec.time_base = _ENCODE_TB
        codec.framerate = Fraction(round(self._fps * 1000), 1000)
        codec.gop_size = max(1, round(self._fps))
        codec.max_b_frames = 0
        codec.thread_count = 1
        codec.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "crf": str(self._crf),
            "x264-params": f"vbv-maxrate={self._kbit}:vbv-bufsize={self._kbit}:repeat-headers=1",
        }
        codec.open()
        self._codec = codec
        self._size = size
        self._session += 1
        self._info = StreamInfo("h264", size[0], size[1], self._fps, _ENCODE_TB, None, self._session)

    def _packet(self, p: av.Packet[av.video.stream.VideoStream], ts: float) -> StreamPacket:
        assert self._info is not None
        return StreamPacket(bytes(p), p.pts, p.dts, bool(p.is_keyframe), ts, self._info)
