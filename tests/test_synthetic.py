"""The synthetic camera: URI options, determinism, pacing and ground-truth videos."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture.source import open_source
from agent.capture.synthetic import SyntheticSource, parse_uri, write_scene_video
from agent.errors import SourceError


def _frames(uri: str, count: int) -> list[np.ndarray]:
    src = SyntheticSource(uri, realtime=False)
    src.open()
    try:
        return [src.read().image for _ in range(count)]
    finally:
        src.close()


def test_same_seed_same_frames_other_seed_other_frames() -> None:
    a = _frames("synthetic:street?seed=4", 5)
    b = _frames("synthetic:street?seed=4", 5)
    c = _frames("synthetic:street?seed=5", 5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_query_options_set_size_and_fps() -> None:
    src = open_source("synthetic:night?seed=1&fps=15&width=320&height=240", realtime=False)
    src.open()
    try:
        frames = [src.read() for _ in range(3)]
    finally:
        src.close()
    assert src.size == (320, 240)
    assert src.fps == 15
    assert frames[0].image.shape == (240, 320, 3)
    assert frames[0].image.dtype == np.uint8
    assert [f.seq for f in frames] == [0, 1, 2]
    assert [f.pts for f in frames] == pytest.approx([0.0, 1 / 15, 2 / 15])


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("synthetic:moon", "unknown synthetic scene"),
        ("synthetic:street?colour=red", "unknown option"),
        ("synthetic:street?fps=fast", "not a number"),
        ("synthetic:street?width=5", "width and height"),
        ("synthetic:street?fps=0", "fps"),
    ],
)
def test_bad_uri_names_the_problem(uri: str, words: str) -> None:
    with pytest.raises(SourceError, match=words):
        parse_uri(uri)


def test_realtime_paces_frames_and_offline_does_not_wait() -> None:
    fast = SyntheticSource("synthetic:street?fps=20&width=160&height=90", realtime=False)
    assert not fast.realtime
    paced = SyntheticSource("synthetic:street?fps=20&width=160&height=90", realtime=True)
    paced.open()
    try:
        t0 = time.monotonic()
        for _ in range(5):
            paced.read()
        took = time.monotonic() - t0
    finally:
        paced.close()
    assert took >= 4 / 20 * 0.95  # a lower bound only: pacing sleeps, it never hurries


def test_read_before_open_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match="before open"):
        SyntheticSource("synthetic:street").read()


def test_written_video_decodes_and_truth_matches_scene(tmp_path: Path) -> None:
    path = tmp_path / "cross.mp4"
    truth = write_scene_video(path, "cross", seconds=14, fps=10, size=(320, 180), seed=2)
    assert len(truth) == 1
    start, end = truth[0]
    assert 1.5 < start < 4
    assert start + 3 < end < 14
    cap = cv2.VideoCapture(str(path))
    count = 0
    while count < 1000:
        ok, img = cap.read()
        if not ok:
            break
        assert img.shape == (180, 320, 3)
        count += 1
    cap.release()
    assert count == 140


@pytest.mark.parametrize("kind", ["lightswitch", "ramp", "tiny", "noise"])
def test_scenes_without_movers_have_no_truth(tmp_path: Path, kind: str) -> None:
    assert write_scene_video(tmp_path / f"{kind}.mp4", kind, seconds=2, size=(160, 90)) == []


def test_street_has_movers_with_quiet_gaps(tmp_path: Path) -> None:
    truth = write_scene_video(tmp_path / "street.mp4", "street", seconds=60, size=(160, 90), seed=1)
    assert len(truth) >= 3
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(truth)]
    assert min(gaps) >= 5.0
    assert all(end - start <= 25 for start, end in truth)


def test_write_rejects_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="unknown synthetic scene"):
        write_scene_video(tmp_path / "x.mp4", "disco", seconds=1)
