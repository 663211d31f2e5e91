"""Fragmented MP4 (ISO BMFF) for live H.264: an init segment, then fragments, each a complete unit.

Written here rather than through FFmpeg's mp4 muxer because a live stream needs each fragment the
moment its frames exist: FFmpeg's muxer holds a fragment back until the next packet arrives (it
needs that packet's time for the last frame's duration) and builds its track from an encoder or
an input stream, while a kept camera packet comes with neither. The boxes are the minimum a
player needs (ISO/IEC 14496-12 and -15; what Media Source Extensions' "ISO BMFF byte stream
format" accepts): `ftyp`+`moov` (one `avc1` track, `avcC` from the SPS/PPS, `mvex`), then per
fragment `moof` (`mfhd`, `traf` with `tfhd` default-base-is-moof, `tfdt`, `trun`) and `mdat`.

Packets may be Annex B (start codes: RTSP, encoders) or length-prefixed (MP4 files); samples are
always written with 4-byte lengths. Timestamps are the muxer's own continuous timeline in
`TIMESCALE` ticks, so a camera reconnecting (its timestamps restart) never makes the stream jump.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.capture import h26x

__all__ = [
    "TIMESCALE",
    "AvcConfig",
    "Sample",
    "avc_config",
    "fragment",
    "init_segment",
    "to_sample_data",
]

TIMESCALE = 90_000  # ticks per second of the track (RTP's video clock)
_NAL_SPS, _NAL_PPS = 7, 8
_SYNC_FLAGS = 0x02000000  # sample_depends_on = 2: an IDR picture, decodable on its own
_NON_SYNC_FLAGS = 0x01010000  # depends on others; sample_is_non_sync_sample
_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)


@dataclass(frozen=True, slots=True)
class AvcConfig:
    """What the init segment describes: picture size and the parameter sets."""

    width: int
    height: int
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]

    @property
    def codec(self) -> str:
        """RFC 6381 codecs parameter, e.g. avc1.64001f (profile, constraint flags, level)."""
        return "avc1." + self.sps[0][1:4].hex()

    @property
    def mime(self) -> str:
        """What a browser's MediaSource.isTypeSupported is asked."""
        return f'video/mp4; codecs="{self.codec}"'


@dataclass(frozen=True, slots=True)
class Sample:
    """One frame: length-prefixed NAL units, its duration and pts - dts, in TIMESCALE ticks."""

    data: bytes
    duration: int
    cts_offset: int
    sync: bool


def _units(data: bytes, length_size: int) -> list[bytes]:
    """NAL units of Annex-B data (`length_size` 0) or of length-prefixed data (what was read
    stands when a length is cut short)."""
    return h26x.split_lengths(data, length_size)[0] if length_size else h26x.split_annexb(data)


def avc_config(width: int, height: int, extradata: bytes | None, keyframe: bytes) -> AvcConfig | None:
    """The track's configuration from the stream's extradata (Annex B or avcC), else from the
    keyframe's in-band parameter sets; None when neither carries an SPS and a PPS."""
    units: list[bytes] = []
    size = 0
    if extradata:
        if extradata[0] == 1:
            size, units = h26x.config_record("h264", extradata) or (4, [])
        else:
            units = h26x.split_annexb(extradata)
    sps = tuple(u for u in units if u and u[0] & 0x1F == _NAL_SPS)
    pps = tuple(u for u in units if u and u[0] & 0x1F == _NAL_PPS)
    if not (sps and pps):
        inband = _units(keyframe, 0 if h26x.is_annexb(keyframe) else size or 4)
        sps = tuple(u for u in inband if u[0] & 0x1F == _NAL_SPS)
        pps = tuple(u for u in inband if u[0] & 0x1F == _NAL_PPS)
    if not (sps and pps) or len(sps[0]) < 4:
        return None
    return AvcConfig(width, height, sps, pps)


def to_sample_data(data: bytes, length_size: int) -> bytes:
    """A packet as an MP4 sample: NAL units with 4-byte lengths (copied as is when already so)."""
    if length_size == 4 and not h26x.is_annexb(data):
        return data
    units = _units(data, 0 if h26x.is_annexb(data) else length_size)
    return b"".join(len(u).to_bytes(4, "big") + u for u in units)


def _box(kind: bytes, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _full(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *parts)


def _avcc(cfg: AvcConfig) -> bytes:
    sps = cfg.sps[0]
    out = bytearray([1, sps[1], sps[2], sps[3], 0xFF, 0xE0 | len(cfg.sps)])
    for unit in cfg.sps:
        out += len(unit).to_bytes(2, "big") + unit
    out.append(len(cfg.pps))
    for unit in cfg.pps:
        out += len(unit).to_bytes(2, "big") + unit
    return _box(b"avcC", bytes(out))


def init_segment(cfg: AvcConfig) -> bytes:
    """`ftyp` + `moov` for one H.264 track of `cfg`'s size; fragments follow."""
    ftyp = _box(b"ftyp", b"iso5", struct.pack(">I", 512), b"iso5iso6avc1mp41")
    mvhd = _full(
        b"mvhd", 0, 0,
        struct.pack(">IIII", 0, 0, 1000, 0), struct.pack(">IH", 0x00010000, 0x0100), bytes(10),
        _MATRIX, bytes(24), struct.pack(">I", 2),
    )  # fmt: skip
    tkhd = _full(
        b"tkhd", 0, 3,
        struct.pack(">IIIII", 0, 0, 1, 0, 0), bytes(8), struct.pack(">hhhH", 0, 0, 0, 0), _MATRIX,
        struct.pack(">II", cfg.width << 16, cfg.height << 16),
    )  # fmt: skip
    mdhd = _full(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, TIMESCALE, 0, 0x55C4, 0))  # 'und'
    hdlr = _full(b"hdlr", 0, 0, struct.pack(">I", 0), b"vide", bytes(12), b"VideoHandler\x00")
    avc1 = _box(
        b"avc1",
        bytes(6), struct.pack(">H", 1), bytes(16),
        struct.pack(">HHIIIH", cfg.width, cfg.height, 0x00480000, 0x00480000, 0, 1),
        bytes(32), struct.pack(">Hh", 0x18, -1), _avcc(cfg),
    )  # fmt: skip
    stbl = _box(
        b"stbl",
        _full(b"stsd", 0, 0, struct.pack(">I", 1), avc1),
        _full(b"stts", 0, 0, struct.pack(">I", 0)),
        _full(b"stsc", 0, 0, struct.pack(">I", 0)),
        _full(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
        _full(b"stco", 0, 0, struct.pack(">I", 0)),
    )
    dinf = _box(b"dinf", _full(b"dref", 0, 0, struct.pack(">I", 1), _full(b"url ", 0, 1)))
    minf = _box(b"minf", _full(b"vmhd", 0, 1, bytes(8)), dinf, stbl)
    trak = _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, minf))
    mvex = _box(b"mvex", _full(b"trex", 0, 0, struct.pack(">IIIII", 1, 1, 0, 0, 0)))
    return ftyp + _box(b"moov", mvhd, trak, mvex)


def fragment(sequence: int, base_time: int, samples: Sequence[Sample]) -> bytes:
    """`moof` + `mdat` of `samples`, decoding from `base_time` (TIMESCALE ticks); `sequence`
    counts fragments from 1."""
    if not samples:
        raise ValueError("a fragment needs at least one sample")

    def moof(data_offset: int) -> bytes:
        rows = b"".join(
            struct.pack(
                ">IIIi", s.duration, len(s.data), _SYNC_FLAGS if s.sync else _NON_SYNC_FLAGS, s.cts_offset
            )
            for s in samples
        )
        trun = _full(b"trun", 1, 0x000F01, struct.pack(">Ii", len(samples), data_offset), rows)
        traf = _box(
            b"traf",
            _full(b"tfhd", 0, 0x020000, struct.pack(">I", 1)),  # default-base-is-moof
            _full(b"tfdt", 1, 0, struct.pack(">Q", base_time)),
            trun,
        )
        return _box(b"moof", _full(b"mfhd", 0, 0, struct.pack(">I", sequence)), traf)

    size = len(moof(0))
    mdat = _box(b"mdat", *(s.data for s in samples))
    return moof(size + 8) + mdat


def top_level_boxes(data: bytes) -> Iterable[tuple[bytes, int]]:
    """(type, size) of each top-level box, for checks and tools; stops at a truncated box."""
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size < 8 or pos + size > len(data):
            return
        yield kind, size
        pos += size
