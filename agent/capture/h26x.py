"""H.264 and H.265 bitstream pieces the agent needs without decoding: NAL units in both packagings
(Annex-B start codes, as RTSP delivers them; length prefixes, as MP4 stores them), parameter sets,
and the avcC/hvcC configuration records that carry them in MP4 extradata.

One reading for the whole agent: the capture backend (a camera's new SPS/PPS), the clip remuxer
(which packets may share a track) and the fmp4 stream writer (samples and avcC) all use it.
Malformed input never raises: a unit list stops where the data stops making sense.
"""

from __future__ import annotations

__all__ = [
    "PARAMETER_NALS",
    "config_record",
    "is_annexb",
    "is_parameter_set",
    "nal_length_size",
    "nal_type",
    "split_annexb",
    "split_lengths",
]

PARAMETER_NALS = {"h264": frozenset({7, 8}), "hevc": frozenset({32, 33, 34})}
"""Parameter-set NAL unit types: H.264 SPS, PPS; HEVC VPS, SPS, PPS."""


def nal_type(codec: str, nal: bytes) -> int:
    """The NAL unit type of a (non-empty) unit."""
    return (nal[0] >> 1) & 0x3F if codec == "hevc" else nal[0] & 0x1F


def is_parameter_set(codec: str, nal: bytes) -> bool:
    return bool(nal) and nal_type(codec, nal) in PARAMETER_NALS.get(codec, frozenset())


def is_annexb(data: bytes) -> bool:
    """Whether `data` starts with a start code (00 00 01 or 00 00 00 01)."""
    return data.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01"))


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of Annex-B bytes, without their start codes.

    Zero bytes just before a start code belong to it (a 4-byte start code, trailing_zero_8bits)
    and are dropped; the last unit is kept whole, since zeros at its end may be its own data.
    """
    units: list[bytes] = []
    start = data.find(b"\x00\x00\x01")
    while start >= 0:
        begin = start + 3
        end = data.find(b"\x00\x00\x01", begin)
        unit = data[begin:] if end < 0 else data[begin:end].rstrip(b"\x00")
        if unit:
            units.append(unit)
        start = end
    return units


def split_lengths(data: bytes, size: int) -> tuple[list[bytes], bool]:
    """The NAL units of length-prefixed data (`size` big-endian bytes before each), and whether
    the lengths covered the data exactly; a truncated or zero length ends the list there."""
    units: list[bytes] = []
    pos = 0
    while pos + size <= len(data):
        length = int.from_bytes(data[pos : pos + size], "big")
        pos += size
        if length == 0 or pos + length > len(data):
            return units, False
        units.append(data[pos : pos + length])
        pos += length
    return units, pos == len(data)


def config_record(codec: str, data: bytes) -> tuple[int, list[bytes]] | None:
    """(NAL length size, parameter sets) of an avcC (h264) or hvcC (hevc) record; None when
    `data` is not one or is cut short."""
    if not data or data[0] != 1 or codec not in PARAMETER_NALS:
        return None
    units: list[bytes] = []

    def take(pos: int) -> int:
        length = int.from_bytes(data[pos : pos + 2], "big")
        if pos + 2 + length > len(data):
            raise IndexError("parameter set overruns the configuration record")
        units.append(data[pos + 2 : pos + 2 + length])
        return pos + 2 + length

    try:
        if codec == "hevc":
            size = (data[21] & 0x03) + 1
            pos = 23
            for _ in range(data[22]):
                count = int.from_bytes(data[pos + 1 : pos + 3], "big")
                pos += 3
                for _ in range(count):
                    pos = take(pos)
            return size, units
        size = (data[4] & 0x03) + 1
        pos = 6
        for _ in range(data[5] & 0x1F):  # SPS
            pos = take(pos)
        count = data[pos]
        pos += 1
        for _ in range(count):  # PPS
            pos = take(pos)
    except IndexError:
        return None
    return size, units


def nal_length_size(codec: str, extradata: bytes | None) -> int:
    """Bytes of each NAL's length prefix in packets that go with `extradata`: 0 for Annex-B
    packets (extradata Annex-B, or none)."""
    if not extradata or extradata[0] != 1:
        return 0
    index = 21 if codec == "hevc" else 4
    return (extradata[index] & 0x03) + 1 if len(extradata) > index else 0
