"""Clips on disk: real MP4s that decode, masks burnt in, chunked fetch, holds, a scan that heals."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture.source import Frame
from agent.footage.clips import ClipError
from agent.footage.prebuffer import BufferedFrame, PreEventBuffer
from agent.footage.store import ClipStore

T0 = time.time() - 3600.0
MASK = [[(0.0, 0.0), (0.4, 0.0), (0.4, 0.5), (0.0, 0.5)]]  # top-left block


def scene(i: int, w: int = 320, h: int = 180) -> np.ndarray:
    """Bright texture with a moving dark box: the masked corner is far from black unless masked."""
    rng = np.random.default_rng(i)
    img = rng.integers(120, 256, (h, w, 3), dtype=np.uint8)
    blurred = np.asarray(cv2.GaussianBlur(img, (5, 5), 0), dtype=np.uint8)
    x = (i * 5) % (w - 30)
    cv2.rectangle(blurred, (x, h - 50), (x + 30, h - 20), (20, 20, 20), -1)
    return blurred


def buffered(seconds: float, fps: float = 10.0, start: float = T0, **size: int) -> list[BufferedFrame]:
    buf = PreEventBuffer(seconds=seconds + 1, max_bytes=64 << 20, jpeg_quality=85)
    out = []
    for i in range(round(seconds * fps) + 1):
        kept = buf.push(Frame(scene(i, **size), ts=start + i / fps, pts=i / fps, seq=i))
        assert kept is not None
        out.append(kept)
    return out


def decode_all(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    for _ in range(10_000):
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


def assert_masked(frames: list[np.ndarray]) -> None:
    h, w = frames[0].shape[:2]
    inner = (slice(2, int(h * 0.5) - 8), slice(2, int(w * 0.4) - 8))  # away from codec blur at the edge
    for img in frames:
        assert img[inner].max() <= 12, "masked pixels must be black in every frame"
        assert img[:, int(w * 0.5) :].mean() > 100, "unmasked pixels keep the picture"


@pytest.fixture(params=["ffmpeg", "opencv"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ClipStore:
    return ClipStore(tmp_path / "clips", encoder=request.param)


def test_export_writes_a_decodable_masked_mp4(store: ClipStore) -> None:
    frames = buffered(3.0)
    info = store.export("cam-1", T0, T0 + 3.0, frames, masks=MASK, event_id="ev-1")
    path = store.path(info.clip_id)
    video = decode_all(path)
    assert 29 <= len(video) <= 33  # 3 s at 10 fps, both ends included
    assert video[0].shape == (180, 320, 3)
    assert_masked(video)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.bytes == path.stat().st_size
    assert info.duration_s == pytest.approx(3.1, abs=0.15)
    sidecar = json.loads((store.root / f"{info.clip_id}.json").read_text())
    assert sidecar["camera"] == "cam-1"
    assert sidecar["event_id"] == "ev-1"
    assert sidecar["sha256"] == info.sha256
    assert sidecar["held_until"] is None
    assert not list(store.root.glob("*.part*")), "no partial files are left behind"
    assert info.codec == ("h264" if store.encoder == "ffmpeg" else "mp4v")


def test_export_keeps_true_speed_with_irregular_frames(tmp_path: Path) -> None:
    store = ClipStore(tmp_path / "clips")
    frames = buffered(4.0)
    sparse = frames[:10] + frames[10:30:4] + frames[30:]  # a stretch where the buffer kept fewer
    info = store.export("cam-1", T0, T0 + 4.0, sparse)
    assert info.fps == 10
    assert 39 <= len(decode_all(store.path(info.clip_id))) <= 43


def test_odd_frame_sizes_are_encoded(tmp_path: Path) -> None:
    store = ClipStore(tmp_path / "clips")
    info = store.export("cam-1", T0, T0 + 1.0, buffered(1.0, w=161, h=91))
    assert (info.width, info.height) == (160, 90)
    assert len(decode_all(store.path(info.clip_id))) >= 10


def test_chunks_reassemble_and_resume(tmp_path: Path) -> None:
    store = ClipStore(tmp_path / "clips")
    info = store.export("cam-1", T0, T0 + 2.0, buffered(2.0))
    data = store.path(info.clip_id).read_bytes()
    chunk = 4096
    parts = list(store.chunks(info.clip_id, chunk))
    count = info.chunk_count(chunk)
    assert (count, info.bytes) == (-(-len(data) // chunk), len(data))
    assert [i for i, _, _ in parts] == list(range(count))
    assert {c for _, c, _ in parts} == {count}
    assert b"".join(p for _, _, p in parts) == data
    resumed = list(store.chunks(info.clip_id, chunk, start_index=count - 2))
    assert [i for i, _, _ in resumed] == [count - 2, count - 1]
    whole = b"".join(p for _, _, p in parts[: count - 2]) + b"".join(p for _, _, p in resumed)
    assert hashlib.sha256(whole).hexdigest() == info.sha256


@pytest.mark.parametrize(
    ("chunk_bytes", "start_index", "message"),
    [
        (10, 0, "chunk_bytes"),
        (1 << 30, 0, "chunk_bytes"),
        (4096, -1, "chunk index"),
        (4096, 10_000, "chunk index"),
    ],
)
def test_bad_fetch_arguments_are_bad_requests(
    tmp_path: Path, chunk_bytes: int, start_index: int, message: str
) -> None:
    store = ClipStore(tmp_path / "clips")
    info = store.export("cam-1", T0, T0 + 1.0, buffered(1.0))
    with pytest.raises(ClipError, match=message) as err:
        store.chunks(info.clip_id, chunk_bytes, start_index)
    assert err.value.code == "bad_request"


@pytest.mark.parametrize(
    "clip_id",
    [
        "../../etc/passwd",
        "a/b",
        "",
        "ABCDEF00-0000-4000-8000-000000000000",
        "x" * 36,
        "12345678123412341234123456789012",
    ],
)
def test_path_like_or_malformed_ids_are_refused(tmp_path: Path, clip_id: str) -> None:
    store = ClipStore(tmp_path / "clips")
    with pytest.raises(ClipError, match="not a clip id") as err:
        store.get(clip_id)
    assert err.value.code == "bad_request"
    with pytest.raises(ClipError, match="not a clip id"):
        store.chunks(clip_id, 4096)


def test_unknown_clip_is_not_found(tmp_path: Path) -> None:
    store = ClipStore(tmp_path / "clips")
    with pytest.raises(ClipError) as err:
        store.get("0b7e9a3c-1f2d-4e5f-8a9b-0c1d2e3f4a5b")
    assert err.value.code == "not_found"


@pytest.mark.parametrize(
    ("camera", "start", "end", "code", "message"),
    [
        ("cam-1", T0 + 5, T0 + 1, "bad_request", "not after start"),
        ("cam-1", T0, T0 + 3600, "bad_request", "exceeds"),
        ("../cam", T0, T0 + 1, "bad_request", "camera"),
        ("cam-1", T0 + 100, T0 + 101, "not_found", "nothing buffered or recorded"),
        ("cam-1", float("nan"), T0 + 1, "bad_request", "finite"),
    ],
)
def test_bad_exports_are_named(
    tmp_path: Path, camera: str, start: float, end: float, code: str, message: str
) -> None:
    store = ClipStore(tmp_path / "clips")
    with pytest.raises(ClipError, match=message) as err:
        store.export(camera, start, end, buffered(1.0))
    assert err.value.code == code


def test_export_of_a_span_that_left_the_buffer_uses_recorded_clips(tmp_path: Path) -> None:
    store = ClipStore(tmp_path / "clips")
    store.export("cam-1", T0, T0 + 4.0, buffered(4.0), masks=MASK, event_id="ev-1", source="event")
    later = buffered(2.0, start=T0 + 4.1)  # what the buffer holds now: after the recorded clip
    info = store.export("cam-1", T0 + 1.0, T0 + 5.0, later, masks=MASK)
    video = decode_all(store.path(info.clip_id))
    assert 38 <= len(video) <= 43
    assert info.start == pytest.approx(T0 + 1.0, abs=0.11)
    assert info.end == pytest.approx(T0 + 5.0, abs=0.11)
    assert_masked(video)


def test_hold_marks_overlapping_clips_and_survives_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    store = ClipStore(root)
    a = store.export("cam-1", T0, T0 + 1.0, buffered(1.0))
    b = store.export("cam-1", T0 + 10, T0 + 11.0, buffered(1.0, start=T0 + 10))
    other = store.export("cam-2", T0, T0 + 1.0, buffered(1.0))
    until = time.time() + 86400
    result = store.hold("cam-1", T0 + 0.5, T0 + 2.0, until)
    assert result.clip_ids == (a.clip_id,)
    assert result.result()["clip_ids"] == [a.clip_id]
    reopened = ClipStore(root)
    assert reopened.held_until(reopened.get(a.clip_id)) == pytest.approx(until, abs=0.01)
    assert reopened.held_until(reopened.get(b.clip_id)) is None
    assert reopened.held_until(reopened.get(other.clip_id)) is None
    assert json.loads((root / f"{a.clip_id}.json").read_text())["held_until"] is not None
    late = reopened.export("cam-1", T0 + 1.2, T0 + 1.8, buffered(0.6, start=T0 + 1.2))
    assert late.held_until == pytest.approx(until, abs=0.01), "a clip written later inside a hold is held"


def test_hold_in_the_past_is_a_bad_request(tmp_path: Path) -> None:
    store = ClipStore(tmp_path / "clips")
    with pytest.raises(ClipError, match="not in the future") as err:
        store.hold("cam-1", T0, T0 + 1, time.time() - 1)
    assert err.value.code == "bad_request"


def test_startup_scan_sets_aside_what_does_not_add_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "clips"
    store = ClipStore(root)
    good, truncated, flipped, garbled, no_video, no_sidecar = (
        store.export("cam-1", T0 + 10 * k, T0 + 10 * k + 1, buffered(1.0, start=T0 + 10 * k))
        for k in range(6)
    )
    path = store.path(truncated.clip_id)
    path.write_bytes(path.read_bytes()[: truncated.bytes // 2])
    path = store.path(flipped.clip_id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    (root / f"{garbled.clip_id}.json").write_text('{"clip_id": "trunc')
    store.path(no_video.clip_id).unlink()
    (root / f"{no_sidecar.clip_id}.json").unlink()
    (root / "0b7e9a3c-1f2d-4e5f-8a9b-0c1d2e3f4a5b.part.mp4").write_bytes(b"half")
    (root / "holds.json").write_text("not json")
    (root / "README.txt").write_text("left alone")

    with caplog.at_level(logging.WARNING, logger="agent.footage.store"):
        reopened = ClipStore(root)
    assert [c.clip_id for c in reopened.clips()] == [good.clip_id]
    reasons = " | ".join(d.reason for d in reopened.discarded)
    for expected in (
        "truncated video",
        "sha256 does not match",
        "garbled sidecar",
        "sidecar without its video",
        "video without a sidecar",
        "unfinished write",
        "garbled holds file",
    ):
        assert expected in reasons
    assert "moved" in caplog.text
    set_aside = {p.name.split(".")[0] for p in (root / "discarded").iterdir()}
    assert {truncated.clip_id, flipped.clip_id, garbled.clip_id, no_sidecar.clip_id} <= set_aside
    assert (root / "README.txt").exists()
    assert not list(root.glob("*.part.mp4"))
    assert len(decode_all(reopened.path(good.clip_id))) >= 10
