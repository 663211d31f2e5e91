"""PicameraSource against a fake picamera2 (tests/fakes/picamera2.py), and on a real Pi when present.

The fake covers the source's own logic everywhere. The last test, marked `hardware`, runs only on a
Raspberry Pi with picamera2 and a camera attached: `scripts/test` and CI deselect that mark, so on
any other machine it never runs (run it on a Pi with `pytest -m hardware`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import pytest

from agent.capture.picamera import NOT_INSTALLED, PicameraSource, parse_picamera_uri
from agent.capture.source import open_source
from agent.errors import SourceError
from tests.fakes import picamera2 as fake


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> Iterator[fake.Rig]:
    """The fake installed as `picamera2`, with one imx708 attached and no faults."""
    fake.rig.reset()
    monkeypatch.setitem(sys.modules, "picamera2", fake)
    yield fake.rig
    fake.rig.reset()


def test_frames_have_the_asked_size_and_bgr_order(rig: fake.Rig) -> None:
    source = open_source("picamera:0?width=640&height=480&fps=15")
    assert isinstance(source, PicameraSource)
    source.open()
    try:
        frames = [source.read() for _ in range(3)]
    finally:
        source.close()
    assert source.size == (640, 480)
    for frame in frames:
        assert frame.image.shape == (480, 640, 3)
        assert frame.image.dtype == np.uint8
        assert tuple(frame.image[0, 0]) == fake.SCENE_BGR  # channel 0 is blue, as OpenCV expects
    assert [f.seq for f in frames] == [0, 1, 2]
    assert frames[0].pts <= frames[1].pts <= frames[2].pts


def test_configuration_asks_bgr_format_and_frame_duration_for_fps(rig: fake.Rig) -> None:
    source = PicameraSource("picamera:0?width=1920&height=1080&fps=12.5")
    source.open()
    source.close()
    config = rig.opened[0].camera_config
    assert config is not None
    assert config["main"] == {"format": "RGB888", "size": (1920, 1080)}
    assert config["controls"]["FrameDurationLimits"] == (80000, 80000)  # 1 / 12.5 fps in µs
    assert source.fps == 12.5


def test_defaults_to_720p_at_15_fps(rig: fake.Rig) -> None:
    source = PicameraSource("picamera:0")
    source.open()
    frame = source.read()
    source.close()
    assert frame.image.shape == (720, 1280, 3)
    assert rig.opened[0].camera_config is not None
    assert rig.opened[0].camera_config["controls"]["FrameDurationLimits"] == (66667, 66667)


def test_close_stops_and_releases_the_camera_and_is_idempotent(rig: fake.Rig) -> None:
    source = PicameraSource("picamera:0")
    source.open()
    source.close()
    source.close()
    camera = rig.opened[0]
    assert camera.closed
    assert not camera.started
    with pytest.raises(SourceError, match="not open"):
        source.read()


def test_missing_picamera2_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes the import fail like a missing package
    source = PicameraSource("picamera:0")
    with pytest.raises(SourceError) as info:
        source.open()
    assert str(info.value) == NOT_INSTALLED
    assert "apt install python3-picamera2" in str(info.value)


def test_missing_camera_index_names_the_cameras_found(rig: fake.Rig) -> None:
    with pytest.raises(SourceError, match=r"no camera 1 \(cameras found: 0: imx708\)"):
        PicameraSource("picamera:1").open()
    rig.cameras = []
    with pytest.raises(SourceError, match=r"no camera 0 \(cameras found: none\)"):
        PicameraSource("picamera:0").open()


def test_busy_camera_is_a_source_error(rig: fake.Rig) -> None:
    rig.busy.add(0)
    with pytest.raises(SourceError, match=r"cannot acquire camera 0 \(imx708\)"):
        PicameraSource("picamera:0").open()


def test_capture_failure_raises_source_error(rig: fake.Rig) -> None:
    source = PicameraSource("picamera:0?width=320&height=240")
    source.open()
    source.read()
    rig.capture_error = RuntimeError("Device timeout detected")
    with pytest.raises(SourceError, match="capture failed: Device timeout detected"):
        source.read()
    source.close()
    assert rig.opened[0].closed


def test_capture_failure_during_open_releases_the_camera(rig: fake.Rig) -> None:
    rig.capture_error = RuntimeError("dequeue timer expired")
    with pytest.raises(SourceError, match="dequeue timer expired"):
        PicameraSource("picamera:0").open()
    assert rig.opened[0].closed


def test_stalled_capture_raises_after_stall_timeout(rig: fake.Rig) -> None:
    source = PicameraSource("picamera:0?width=320&height=240", stall_timeout_s=0.2)
    source.open()
    source.read()  # the frame open() captured as a probe
    rig.stall = True
    with pytest.raises(SourceError, match=r"stalled: no frame for 0\.2 s"):
        source.read()
    source.close()


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("picamera:", "expected picamera:N"),
        ("picamera:x", "expected picamera:N"),
        ("picamera:0?width=abc", "width='abc' must be an even number"),
        ("picamera:0?height=479", "height='479' must be an even number"),
        ("picamera:0?width=99999", "width='99999' must be an even number"),
        ("picamera:0?fps=0", "fps='0' must be a number from 0.1 to 120"),
        ("picamera:0?fps=nan", "fps='nan' must be a number"),
        ("picamera:0?zoom=2", "unknown parameter zoom"),
        ("picamera:0?fps=10&fps=20", "repeated"),
        ("picamera:0?width", "malformed query"),
    ],
)
def test_bad_uri_names_the_problem(uri: str, problem: str) -> None:
    with pytest.raises(SourceError) as info:
        parse_picamera_uri(uri)
    assert problem in str(info.value)
    assert uri in str(info.value)


@pytest.mark.hardware
def test_real_camera_delivers_bgr_frames_of_the_asked_size() -> None:
    """Raspberry Pi only (picamera2 + a camera): never run by scripts/test or CI."""
    picamera2 = pytest.importorskip("picamera2", reason="needs picamera2 on Raspberry Pi OS")
    if not picamera2.Picamera2.global_camera_info():
        pytest.skip("no camera attached")
    source = PicameraSource("picamera:0?width=640&height=480&fps=10")
    source.open()
    try:
        frames = [source.read() for _ in range(5)]
    finally:
        source.close()
    assert all(f.image.shape == (480, 640, 3) for f in frames)
    assert [f.seq for f in frames] == list(range(5))
