"""Pre-event buffer: bounded by time and bytes, rate-capped, and frames come back decodable."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agent.capture.source import Frame
from agent.footage.prebuffer import PreEventBuffer

T0 = 1_800_000_000.0


def scene(i: int, w: int = 320, h: int = 180) -> np.ndarray:
    """A textured frame with a moving box: compresses like a camera image, not like a flat fill."""
    rng = np.random.default_rng(i)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    x = (i * 7) % (w - 40)
    cv2.rectangle(img, (x, h // 3), (x + 40, h // 3 + 40), (255, 255, 255), -1)
    return img


def frame(i: int, fps: float = 10.0, **kw: int) -> Frame:
    return Frame(image=scene(i, **kw), ts=T0 + i / fps, pts=i / fps, seq=i)


def test_ring_keeps_the_last_seconds_only() -> None:
    buf = PreEventBuffer(seconds=10, max_bytes=64 << 20, jpeg_quality=75, max_width=None)
    for i in range(150):  # 15 s at 10 fps
        buf.push(frame(i))
    newest = buf.newest()
    assert newest is not None
    assert newest.seq == 149
    kept = buf.frames_between(0, float("inf"))
    assert kept[0].ts >= newest.ts - 10
    assert 99 <= len(kept) <= 101
    assert [f.seq for f in kept] == sorted(f.seq for f in kept)
    assert buf.bytes_used() == sum(len(f.jpeg) for f in kept)


def test_byte_budget_bites_before_time() -> None:
    budget = 40_000
    buf = PreEventBuffer(seconds=10, max_bytes=budget, jpeg_quality=90, max_width=None)
    for i in range(100):
        buf.push(frame(i))
    assert buf.bytes_used() <= budget
    stats = buf.stats()
    assert stats.evicted_for_bytes > 0
    assert stats.span_s < 10


def test_rate_cap_keeps_about_fps_frames_per_second() -> None:
    buf = PreEventBuffer(seconds=10, max_bytes=64 << 20, jpeg_quality=75, fps=5)
    stored = [buf.push(frame(i, fps=30)) for i in range(90)]  # 3 s at 30 fps
    kept = [f for f in stored if f is not None]
    assert 14 <= len(kept) <= 17
    assert buf.stats().skipped_for_rate == 90 - len(kept)


def test_downscale_to_max_width_and_decode() -> None:
    buf = PreEventBuffer(seconds=5, max_bytes=64 << 20, jpeg_quality=80, max_width=160)
    kept = buf.push(frame(0, w=640, h=360))
    assert kept is not None
    assert (kept.width, kept.height) == (160, 90)
    assert kept.decode().shape == (90, 160, 3)


def test_nearest_respects_the_gap() -> None:
    buf = PreEventBuffer(seconds=10, max_bytes=64 << 20, jpeg_quality=75)
    for i in range(20):
        buf.push(frame(i))
    hit = buf.nearest(T0 + 0.52, max_gap_s=0.2)
    assert hit is not None
    assert hit.seq == 5
    assert buf.nearest(T0 + 30, max_gap_s=1.0) is None
    first = buf.nearest(T0 - 0.05, max_gap_s=0.1)
    assert first is not None
    assert first.seq == 0


def test_frames_between_is_inclusive_and_ordered() -> None:
    buf = PreEventBuffer(seconds=10, max_bytes=64 << 20, jpeg_quality=75)
    for i in range(30):
        buf.push(frame(i))
    got = buf.frames_between(T0 + 1.0, T0 + 2.0)
    assert [f.seq for f in got] == list(range(10, 21))


def test_clock_stepping_back_starts_over() -> None:
    buf = PreEventBuffer(seconds=10, max_bytes=64 << 20, jpeg_quality=75)
    for i in range(10):
        buf.push(frame(i))
    buf.push(Frame(image=scene(99), ts=T0 - 100, pts=0, seq=99))
    assert len(buf) == 1
    newest = buf.newest()
    assert newest is not None
    assert newest.seq == 99


@pytest.mark.parametrize(
    "kwargs",
    [{"seconds": 0}, {"max_bytes": 0}, {"jpeg_quality": 0}, {"max_width": 4}, {"fps": 0}],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        PreEventBuffer(**kwargs)  # type: ignore[arg-type]


def test_a_masked_cameras_frames_are_kept_masked() -> None:
    """Unmasked pixels of a masked camera never enter the buffer (nor a clip kept from it at a stop)."""
    from agent.config import CameraConfig

    cam = CameraConfig(
        id="cam-1", source="usb:0", privacy_masks=[[(0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5)]]
    )
    bright = Frame(image=np.full((180, 320, 3), 200, np.uint8), ts=T0, pts=0.0, seq=0)
    kept = PreEventBuffer.for_camera(cam).push(bright)
    assert kept is not None
    img = kept.decode()
    assert img[4:86, 4:156].max() <= 12, "the masked quarter was kept unmasked"
    assert img[100:, 170:].min() > 180, "the rest of the picture is kept"
    unmasked = PreEventBuffer.for_camera(CameraConfig(id="cam-2", source="usb:0")).push(bright)
    assert unmasked is not None and unmasked.decode()[4:86, 4:156].min() > 180
