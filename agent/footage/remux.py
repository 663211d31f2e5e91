"""Clips by remux: the camera's packets copied into an MP4, never decoded or re-encoded.

A 60 s clip of a 1080p25 camera is written in milliseconds instead of seconds of libx264, and it
is the camera's own footage: its codec, resolution, frame rate and timestamps (bench/remux_bench.py).
FFmpeg's mp4 muxer (through PyAV) does the writing; packets may come Annex-B (RTSP, with the
parameter sets in the extradata or only in-band) or AVCC (read back from MP4 files): the muxer
stores both as AVCC. We never change a packet's bytes inside `ClipWriter`.

The output is deterministic (`+bitexact`: no library version or creation time in the file), so
the same packets give the same bytes, which `clip.export` relies on. Timestamps are rebased so a
clip starts at 0 at its first keyframe. A new session of the stream (reconnect, camera restart)
with the same format continues the track right after the previous packet: the outage is cut out,
not shown as frozen time, and listed in `RemuxResult.gaps` in wall time. A packet of another
format (a new resolution) cannot join the track: `FormatChanged`, and the caller starts a clip.

`ClipWriter` belongs to one thread at a time (the recorder's or an export's).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import math
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from agent.capture import h26x
from agent.capture.packets import StreamInfo, StreamPacket
from agent.files import create_private, is_regular, open_read
from agent.footage.clips import ClipError

__all__ = [
    "ClipWriter",
    "FormatChanged",
    "FormatKey",
    "RemuxResult",
    "annexb_packet",
    "canonical",
    "format_key",
    "normalised",
    "parameter_sets",
    "probe_info",
    "read_clip_packets",
    "remux_span",
    "splice",
]

log = logging.getLogger(__name__)

RAW_DEMUXER = {"h264": "h264", "hevc": "hevc", "mpeg4": "m4v"}
"""FFmpeg's raw demuxer per codec: an empty one gives a stream of that codec to copy into."""
GAP_FRAMES = 1.5
"""A session change whose wall-clock hole exceeds this many frame intervals is listed as a gap."""

FormatKey = tuple[str, int, int, tuple[bytes, ...]]


class FormatChanged(Exception):  # noqa: N818 - an event the caller expects, not a failure
    """A packet's stream format (codec, size, parameter sets) differs from the clip's track."""

    def __init__(self, track: StreamInfo, packet: StreamInfo) -> None:
        self.track = track
        self.packet = packet
        super().__init__(
            f"stream changed from {track.codec} {track.width}x{track.height} to"
            f" {packet.codec} {packet.width}x{packet.height} (session {packet.session}):"
            " a new clip must start"
        )


@dataclass(frozen=True, slots=True)
class RemuxResult:
    """What a finished clip holds. first_ts/last_ts are the wall times of its first and last
    packets; gaps are (start, end) wall times cut out where the stream's session changed."""

    frames: int
    duration_s: float
    width: int
    height: int
    fps: float
    codec: str
    first_ts: float
    last_ts: float
    gaps: tuple[tuple[float, float], ...]


# -- parameter sets -------------------------------------------------------------------------------


def _nal_length_size(codec: str, extradata: bytes | None) -> int | None:
    """Bytes of each NAL's length prefix in AVCC/HVCC packets, or None for Annex-B."""
    return h26x.nal_length_size(codec, extradata) or None


def parameter_sets(info: StreamInfo, keyframe: bytes | None = None) -> tuple[bytes, ...]:
    """The stream's parameter sets (SPS/PPS, and VPS for HEVC), in a canonical order: from the
    extradata (Annex-B, avcC or hvcC) or, when it has none, from `keyframe`'s in-band NALs."""
    if info.codec not in ("h264", "hevc"):
        return ()
    found: list[bytes] = []
    data = info.extradata or b""
    if h26x.is_annexb(data):
        found = [n for n in h26x.split_annexb(data) if h26x.is_parameter_set(info.codec, n)]
    elif data:
        found = (h26x.config_record(info.codec, data) or (0, []))[1]
    if not found and keyframe is not None:
        size = _nal_length_size(info.codec, info.extradata)
        nals = h26x.split_annexb(keyframe) if size is None else _split_lengths(keyframe, size)
        found = [n for n in nals or () if h26x.is_parameter_set(info.codec, n)]
    # A parameter set never ends in a zero byte (its stop bit ends it): zeros after one are padding.
    unique = dict.fromkeys(n.rstrip(b"\x00") for n in found if n.rstrip(b"\x00"))
    return tuple(sorted(unique, key=lambda n: (h26x.nal_type(info.codec, n), n)))


def _split_lengths(data: bytes, size: int) -> list[bytes] | None:
    """The NALs of a length-prefixed (AVCC) packet, or None when the lengths do not add up."""
    units, exact = h26x.split_lengths(data, size)
    return units if exact else None


def format_key(info: StreamInfo, keyframe: bytes | None = None) -> FormatKey:
    """What must match for packets to share one track, whatever their packaging: codec, size
    and parameter sets (the whole extradata for codecs other than H.264/HEVC)."""
    sets = parameter_sets(info, keyframe)
    if info.codec not in ("h264", "hevc"):
        sets = (info.extradata or b"",)
    return (info.codec, info.width, info.height, sets)


def canonical(info: StreamInfo, sets: tuple[bytes, ...]) -> StreamInfo:
    """`info` with its parameter sets as Annex-B extradata: equal for every packaging of one
    format, so packets read back from an MP4 and packets from the camera make one track."""
    if info.codec not in ("h264", "hevc") or not sets:
        return info
    return replace(info, extradata=b"".join(b"\x00\x00\x00\x01" + s for s in sets))


def annexb_packet(packet: StreamPacket, info: StreamInfo) -> StreamPacket:
    """`packet` in Annex-B with `info` (canonical): length prefixes become start codes; the
    NALs themselves are unchanged. Annex-B packets (and other codecs) only get `info`."""
    size = _nal_length_size(packet.info.codec, packet.info.extradata)
    if size is None or packet.info.codec not in ("h264", "hevc"):
        return replace(packet, info=info)
    nals = _split_lengths(packet.data, size)
    if nals is None:
        return replace(packet, info=info)  # not AVCC after all: left as it is
    return replace(packet, data=b"".join(b"\x00\x00\x00\x01" + n for n in nals), info=info)


# -- writing --------------------------------------------------------------------------------------


def _template(codec: str) -> tuple[Any, Any]:
    """An input container and its stream of `codec`, as a template for a copied output stream."""
    demuxer = RAW_DEMUXER.get(codec)
    if demuxer is None:
        raise ClipError("internal", f"cannot remux {codec!r} video (h264, hevc or mpeg4 only)")
    container = av.open(io.BytesIO(b""), format=demuxer)
    return container, container.streams.video[0]


class ClipWriter:
    """Copies packets into one MP4 (faststart) or fragmented MP4 at `path`, packet by packet.

    The file is created (0600, not through a link) at once, so an unwritable folder fails here
    with ClipError internal; the muxer opens at the first keyframe. `close()` finalises and
    returns what was written; `abort()` removes the file. Not thread-safe: one owner.
    """

    def __init__(self, path: Path, *, fragmented: bool = False) -> None:
        self.path = Path(path)
        self.fragmented = fragmented
        self._out: Any = None
        self._stream: Any = None
        self._template: Any = None
        self._info: StreamInfo | None = None  # the track's format (its first packet's)
        self._current: StreamInfo | None = None  # the last packet's info
        self._tb = Fraction(1, 90000)
        self._offset = 0  # added to a packet's (converted) timestamps
        self._step = 0  # the last dts step, in track units: next session starts this far on
        self._last_dts: int | None = None
        self._end_pts = 0  # largest pts + duration written
        self._frames = 0
        self._first_ts = 0.0
        self._last_ts: float | None = None
        self._gaps: list[tuple[float, float]] = []
        self._done = False
        try:
            if not is_regular(self.path):
                os.close(create_private(self.path))
        except OSError as exc:
            raise ClipError("internal", f"cannot create {self.path.name}: {exc.strerror or exc}") from None

    @property
    def frames(self) -> int:
        """Packets written so far."""
        return self._frames

    @property
    def last_ts(self) -> float | None:
        """Wall time of the last packet written, None before the first."""
        return self._last_ts

    def add(self, packet: StreamPacket) -> bool:  # noqa: PLR0911 - one return per reason to skip
        """Write `packet`; False when skipped (before the first keyframe, or a new session's,
        no usable timestamps, dts not increasing within the session, empty data). Raises
        FormatChanged for a packet of another format, ClipError internal when writing fails
        (the file is removed)."""
        if self._done:
            raise ClipError("internal", f"clip {self.path.name} is already closed")
        if (packet.pts is None and packet.dts is None) or not packet.data:
            return False
        if self._info is None:
            if not packet.keyframe:
                return False
            self._open(packet)
        elif packet.info is not self._current and packet.info != self._current:
            if not self._info.same_format(packet.info):
                raise FormatChanged(self._info, packet.info)
            if self._current is not None and packet.info.session != self._current.session:
                if not packet.keyframe:
                    return False
                self._new_session(packet)
            self._current = packet.info
        pts, dts = self._times(packet)
        if self._last_dts is not None and dts <= self._last_dts:
            return False
        if pts < dts:
            return False
        if self._last_dts is not None:
            self._step = dts - self._last_dts
        out = av.Packet(packet.data)
        out.pts = pts
        out.dts = dts
        out.time_base = self._tb
        out.duration = self._step
        out.is_keyframe = packet.keyframe
        out.stream = self._stream
        try:
            self._out.mux(out)
        except OSError as exc:
            self.abort()
            raise self._failed(exc) from None
        except av.FFmpegError as exc:
            log.warning("clip %s: packet at %.3f refused by the muxer: %s", self.path.name, packet.ts, exc)
            return False
        self._last_dts = dts
        self._end_pts = max(self._end_pts, pts + self._step)
        if self._frames == 0:
            self._first_ts = packet.ts
        self._frames += 1
        self._last_ts = packet.ts
        return True

    def _failed(self, exc: OSError) -> ClipError:
        return ClipError("internal", f"cannot write clip {self.path.name}: {exc.strerror or exc}")

    def _times(self, packet: StreamPacket) -> tuple[int, int]:
        """(pts, dts) of `packet` in track units, rebased; a missing one copies the other."""
        pts = packet.pts if packet.pts is not None else packet.dts
        dts = packet.dts if packet.dts is not None else packet.pts
        assert pts is not None
        assert dts is not None
        tb = packet.info.time_base
        if tb != self._tb:
            pts = round(Fraction(pts) * tb / self._tb)
            dts = round(Fraction(dts) * tb / self._tb)
        return pts + self._offset, dts + self._offset

    def _nominal_step(self, info: StreamInfo) -> int:
        fps = info.fps if info.fps > 0 and math.isfinite(info.fps) else 25.0
        return max(1, round(1 / (Fraction(fps).limit_denominator(1001) * self._tb)))

    def _open(self, packet: StreamPacket) -> None:
        info = packet.info
        self._info = self._current = info
        self._tb = Fraction(info.time_base)
        self._step = self._nominal_step(info)
        flags = "+frag_keyframe+empty_moov+default_base_moof" if self.fragmented else "+faststart"
        try:
            self._template, template_stream = _template(info.codec)
            self._out = av.open(
                str(self.path), "w", format="mp4", options={"movflags": flags, "fflags": "+bitexact"}
            )
            stream = self._out.add_stream_from_template(template_stream, opaque=True)
            stream.time_base = self._tb
            ctx = stream.codec_context
            ctx.width = info.width
            ctx.height = info.height
            ctx.extradata = info.extradata or None
            if info.fps > 0 and math.isfinite(info.fps):
                ctx.framerate = Fraction(info.fps).limit_denominator(1001)
            self._stream = stream
        except OSError as exc:
            self.abort()
            raise self._failed(exc) from None
        first = packet.pts if packet.pts is not None else packet.dts
        assert first is not None
        self._offset = -first  # the first keyframe is shown at 0

    def _new_session(self, packet: StreamPacket) -> None:
        """Continue the track one frame after the last packet; list the hole if there is one."""
        assert self._last_dts is not None
        assert self._last_ts is not None
        assert self._info is not None
        self._offset = 0
        _, dts = self._times(packet)
        self._offset = self._last_dts + max(1, self._step) - dts
        interval = 1 / self._info.fps if self._info.fps > 0 else 0.04
        if packet.ts - self._last_ts > GAP_FRAMES * interval:
            self._gaps.append((self._last_ts, packet.ts))

    def close(self) -> RemuxResult:
        """Finalise the file (trailer, faststart pass, fsync) and describe it. ClipError
        not_found when nothing was written (the file is removed), internal when the disk
        refuses the end of the file."""
        if self._done:
            raise ClipError("internal", f"clip {self.path.name} is already closed")
        if self._frames == 0 or self._info is None:
            self.abort()
            raise ClipError("not_found", f"no keyframe to start clip {self.path.name} from")
        try:
            self._out.close()
            self._release()
            fd = open_read(self.path)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except (OSError, av.FFmpegError) as exc:
            self.abort()
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ClipError("internal", f"cannot finish clip {self.path.name}: {detail}") from None
        self._done = True
        info = self._info
        duration = float(self._end_pts * self._tb)
        fps = info.fps if info.fps > 0 else (self._frames / duration if duration > 0 else 1.0)
        return RemuxResult(
            frames=self._frames,
            duration_s=duration,
            width=info.width,
            height=info.height,
            fps=fps,
            codec=info.codec,
            first_ts=self._first_ts,
            last_ts=self._last_ts if self._last_ts is not None else self._first_ts,
            gaps=tuple(self._gaps),
        )

    def _release(self) -> None:
        if self._template is not None:
            self._template.close()
        self._out = self._stream = self._template = None

    def abort(self) -> None:
        """Close without keeping anything: the file is removed. Safe at any time, repeatedly."""
        self._done = True
        with contextlib.suppress(Exception):
            if self._out is not None:
                self._out.close()
        with contextlib.suppress(Exception):
            self._release()
        self._out = self._stream = self._template = None
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


# -- reading --------------------------------------------------------------------------------------


def _file_session(path: Path) -> int:
    """A session number for the packets of one stored file: negative (never a live session's)
    and fixed by the file's name, so each recording is its own session and repeats agree."""
    return -1 - zlib.crc32(path.name.encode())


def _info_of(stream: Any, path: Path) -> StreamInfo:
    ctx = stream.codec_context
    rate = stream.average_rate or stream.guessed_rate or 0
    return StreamInfo(
        codec=ctx.name,
        width=ctx.width,
        height=ctx.height,
        fps=float(rate),
        time_base=Fraction(stream.time_base),
        extradata=ctx.extradata or None,
        session=_file_session(path),
    )


def probe_info(path: Path) -> StreamInfo:
    """The video stream of a stored clip, without reading its packets (LinkRefused for a link,
    ClipError internal when it is not a video)."""
    with os.fdopen(open_read(path), "rb") as fh:
        try:
            with av.open(fh, "r") as container:
                if not container.streams.video:
                    raise ClipError("internal", f"{path.name} has no video stream")
                return _info_of(container.streams.video[0], path)
        except av.FFmpegError as exc:
            raise ClipError("internal", f"{path.name} cannot be read: {exc}") from None


def read_clip_packets(path: Path, start_ts: float) -> Iterator[StreamPacket]:
    """The video packets of a stored MP4 clip in decode order, `ts` = start_ts + pts seconds.

    The file is opened without following links (LinkRefused); a file that cannot be demuxed
    raises ClipError internal. The packets are AVCC, as MP4 stores them.
    """
    with os.fdopen(open_read(path), "rb") as fh:
        try:
            with av.open(fh, "r") as container:
                if not container.streams.video:
                    raise ClipError("internal", f"{path.name} has no video stream")
                stream = container.streams.video[0]
                info = _info_of(stream, path)
                tb = info.time_base
                for p in container.demux(stream):
                    if not p.size or (p.pts is None and p.dts is None):
                        continue
                    pts = p.pts if p.pts is not None else p.dts
                    assert pts is not None
                    yield StreamPacket(
                        data=bytes(p),
                        pts=p.pts,
                        dts=p.dts,
                        keyframe=p.is_keyframe,
                        ts=start_ts + float(pts * tb),
                        info=info,
                    )
        except av.FFmpegError as exc:
            raise ClipError("internal", f"{path.name} cannot be read: {exc}") from None


def remux_span(packets: Iterable[StreamPacket], t0: float, t1: float, path: Path) -> RemuxResult:
    """A clip of [t0, t1] at `path`: from the last keyframe at or before t0 (the first keyframe
    when none is) to the last packet at or before t1, `packets` being in decode order.

    Raises ClipError not_found when no keyframe starts the span, FormatChanged when the format
    changes inside it (the file is removed in both cases).
    """
    writer = ClipWriter(path)
    try:
        gop: list[StreamPacket] = []  # from the latest keyframe at or before t0, not yet written
        started = False
        for p in packets:
            if p.ts > t1:
                break
            if not started:
                if p.keyframe and p.ts <= t0:
                    gop = [p]
                    continue
                if gop and p.ts <= t0:
                    gop.append(p)
                    continue
                if not gop and not p.keyframe:
                    continue
                started = True
                for held in gop:
                    writer.add(held)
                gop = []
            writer.add(p)
        # Footage that ends before t0 covers the span only if its last frame is still showing.
        if gop and gop[-1].ts >= t0 - 1.5 / (gop[-1].info.fps or 25.0):
            for held in gop:
                writer.add(held)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def normalised(packets: Iterable[StreamPacket], target: StreamInfo) -> Iterator[StreamPacket]:
    """`packets` in Annex-B, each with `target`'s format (codec, size, fps, extradata) and its
    own session and time base: packets of one format from any packaging, ready for one track."""
    infos: dict[StreamInfo, StreamInfo] = {}
    for p in packets:
        info = infos.get(p.info)
        if info is None:
            info = infos[p.info] = replace(target, session=p.info.session, time_base=p.info.time_base)
        yield annexb_packet(p, info)


def splice(sources: Iterable[Iterable[StreamPacket]]) -> Iterator[StreamPacket]:
    """One run of packets from `sources` (each in decode order, oldest source first), every
    instant once. Where a source overlaps the one before, the earlier one supplies the overlap
    up to a keyframe of the later one at or before its end (the switch is seamless); without
    such a keyframe the later one starts at its first keyframe after the earlier one's end.
    Only the last GOP of a source and the overlap are held in memory."""
    held: list[StreamPacket] = []  # the previous source's last GOP, not yet yielded
    for source in sources:
        it = iter(source)
        ahead: list[StreamPacket] = []
        if held:
            end = held[-1].ts
            eps = 0.6 / held[-1].info.fps if held[-1].info.fps > 0 else 0.02
            for p in it:
                if p.ts > end + eps:
                    ahead.append(p)
                    break
                ahead.append(p)
            keys = [i for i, p in enumerate(ahead) if p.keyframe and held[0].ts - eps <= p.ts <= end + eps]
            if keys:
                cut = ahead[keys[-1]].ts - eps
                yield from (p for p in held if p.ts < cut)
                ahead = ahead[keys[-1] :]
            else:
                yield from held
                ahead = [p for p in ahead if p.ts > end + eps]
            held = []
        for p in itertools.chain(ahead, it):
            if p.keyframe:
                yield from held
                held = [p]
            elif held:
                held.append(p)
    yield from held
