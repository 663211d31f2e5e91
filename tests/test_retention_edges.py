"""Retention at its edges: files the start-up scan set aside are reclaimed only while needed and
only as many as needed, held clips are counted wherever they sit, and a disk exactly at its floor
is left alone (issue 19: each test kills mutants the broader retention tests let live).

The disk here is the clip folder's real bytes under a small capacity (`free_bytes`), so freeing a
file on disk is what makes room, as on a full SD card.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.footage.retention import Retention
from agent.footage.store import ClipStore
from tests.test_retention import make_clips


def bytes_under(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def small_disk(root: Path, capacity: int) -> Callable[[], int]:
    """Free bytes of a disk of `capacity` bytes holding only the clip folder."""
    return lambda: capacity - bytes_under(root)


def store_with_set_aside_files(tmp_path: Path) -> tuple[ClipStore, list[Path]]:
    """A store whose start-up scan set aside two garbled clips (the older first), and one good clip."""
    root = tmp_path / "clips"
    store = ClipStore(root, encoder="opencv")
    clips = make_clips(store, 3)
    store.path(clips[0].clip_id).write_bytes(b"x" * 5000)
    store.path(clips[1].clip_id).write_bytes(b"y" * 7000)
    store = ClipStore(root, encoder="opencv")
    aside = store.discarded_files()
    assert len(aside) >= 2
    now = time.time()
    for age, path in enumerate(reversed(aside)):
        os.utime(path, (now - 100 - age, now - 100 - age))
    return store, store.discarded_files()


def test_set_aside_files_stay_while_within_quota_and_floor(tmp_path: Path) -> None:
    store, aside = store_with_set_aside_files(tmp_path)
    report = Retention(store, 10**9, 0).enforce()
    assert (report.deleted, report.freed_bytes, report.disk_full) == ((), 0, False)
    assert store.discarded_files() == aside
    assert all(p.exists() for p in aside)


def test_only_as_many_set_aside_files_go_as_the_free_floor_needs(tmp_path: Path) -> None:
    store, aside = store_with_set_aside_files(tmp_path)
    first = aside[0].stat().st_size
    floor = 100_000
    capacity = bytes_under(store.root) + floor - first  # free is `first` bytes short of the floor
    report = Retention(store, 10**9, floor, free_bytes=small_disk(store.root, capacity)).enforce()
    assert not aside[0].exists()
    assert store.discarded_files() == aside[1:]
    assert (report.deleted, report.freed_bytes, report.free_bytes) == ((), first, floor)
    assert not report.disk_full


def test_freed_bytes_add_up_every_set_aside_file_and_clip(tmp_path: Path) -> None:
    store, aside = store_with_set_aside_files(tmp_path)
    expected = sum(p.stat().st_size for p in aside) + store.usage_bytes()
    report = Retention(store, 0).enforce()
    assert store.discarded_files() == []
    assert store.clips() == []
    assert report.freed_bytes == expected


def test_held_clips_after_the_quota_is_met_are_still_counted(tmp_path: Path) -> None:
    store = ClipStore(tmp_path / "clips", encoder="opencv")
    clips = make_clips(store, 3)
    store.hold("cam-1", clips[2].start, clips[2].end, time.time() + 3600)
    report = Retention(store, 10**9).enforce()
    assert report.deleted == ()
    assert report.held_bytes == clips[2].bytes
    assert report.telemetry()["clips_held_bytes"] == clips[2].bytes


def test_free_space_exactly_at_the_floor_deletes_nothing(tmp_path: Path) -> None:
    store = ClipStore(tmp_path / "clips", encoder="opencv")
    clips = make_clips(store, 2)
    report = Retention(store, 10**9, min_free_bytes=5000, free_bytes=lambda: 5000).enforce()
    assert (report.deleted, report.disk_full) == ((), False)
    assert [c.clip_id for c in store.clips()] == [c.clip_id for c in clips]


def test_without_a_floor_a_full_disk_is_not_a_reason_to_delete(tmp_path: Path) -> None:
    store = ClipStore(tmp_path / "clips", encoder="opencv")
    make_clips(store, 2)
    report = Retention(store, 10**9, free_bytes=lambda: 0).enforce()
    assert (report.deleted, report.disk_full, report.min_free_bytes) == ((), False, 0)
    assert len(store.clips()) == 2


@pytest.mark.parametrize("bounds", [(-1, 0), (0, -1)])
def test_negative_bounds_name_both(tmp_path: Path, bounds: tuple[int, int]) -> None:
    store = ClipStore(tmp_path / "clips", encoder="opencv")
    with pytest.raises(ValueError, match=r"^quota_bytes and min_free_bytes must be >= 0$"):
        Retention(store, *bounds)
