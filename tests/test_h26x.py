"""agent.capture.h26x on hand-made bitstreams: both packagings, records, and malformed input."""

from __future__ import annotations

from agent.capture import h26x

SPS = bytes([0x67, 0x42, 0xC0, 0x1E, 0xD9, 0x00, 0xA0])
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])
IDR = bytes([0x65, 0x88, 0x84, 0x00, 0x00])  # slice data may end in zero bytes (cabac_zero_word)


def avcc(sps: bytes, pps: bytes, size: int = 4) -> bytes:
    return (
        bytes([1, sps[1], sps[2], sps[3], 0xFC | (size - 1), 0xE1])
        + len(sps).to_bytes(2, "big")
        + sps
        + b"\x01"
        + len(pps).to_bytes(2, "big")
        + pps
    )


def test_annexb_units_drop_the_zeros_of_a_start_code_but_keep_the_last_units_own() -> None:
    stream = b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x00\x01" + PPS + b"\x00\x00\x01" + IDR
    assert h26x.split_annexb(stream) == [SPS, PPS, IDR]
    assert h26x.is_annexb(stream) and not h26x.is_annexb(SPS)
    assert h26x.split_annexb(b"no start code here") == []


def test_length_prefixed_units_say_whether_the_lengths_covered_the_data() -> None:
    data = b"".join(len(u).to_bytes(4, "big") + u for u in (SPS, PPS, IDR))
    assert h26x.split_lengths(data, 4) == ([SPS, PPS, IDR], True)
    assert h26x.split_lengths(data[:-2], 4) == ([SPS, PPS], False)  # the last unit is cut short
    assert h26x.split_lengths(data + b"\x00", 4) == ([SPS, PPS, IDR], False)  # a stray byte
    assert h26x.split_lengths(b"\x00\x00\x00\x00" + data, 4) == ([], False)  # a zero length


def test_an_avcc_record_gives_its_length_size_and_parameter_sets_and_none_when_cut() -> None:
    record = avcc(SPS, PPS, size=4)
    assert h26x.config_record("h264", record) == (4, [SPS, PPS])
    assert h26x.nal_length_size("h264", record) == 4
    assert h26x.nal_length_size("h264", avcc(SPS, PPS, size=2)) == 2
    assert h26x.config_record("h264", record[:-2]) is None  # the PPS overruns the record
    assert h26x.config_record("h264", b"\x00\x00\x00\x01" + SPS) is None  # Annex-B, not a record
    assert h26x.nal_length_size("h264", b"\x00\x00\x00\x01" + SPS) == 0
    assert h26x.nal_length_size("h264", None) == 0
    assert h26x.config_record("mjpeg", record) is None


def test_parameter_set_types_per_codec() -> None:
    assert [h26x.nal_type("h264", u) for u in (SPS, PPS, IDR)] == [7, 8, 5]
    assert h26x.is_parameter_set("h264", SPS) and not h26x.is_parameter_set("h264", IDR)
    hevc_vps = bytes([0x40, 0x01, 0x0C])  # type 32
    assert h26x.nal_type("hevc", hevc_vps) == 32 and h26x.is_parameter_set("hevc", hevc_vps)
    assert not h26x.is_parameter_set("h264", b"")
