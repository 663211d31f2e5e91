"""Retention around evidence holds: held clips are skipped, never a reason to stop early.

These close mutants that survived tests/test_retention.py (docs/mutants.md): what is deleted and
what telemetry reports, with holds in the middle of the store's history.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.footage.retention import Retention
from agent.footage.store import ClipStore
from tests.test_retention import T0, make_clips


@pytest.fixture
def store(tmp_path: Path) -> ClipStore:
    return ClipStore(tmp_path / "clips", encoder="opencv")


def test_older_unheld_clips_go_past_held_ones_until_within_quota(store: ClipStore) -> None:
    clips = make_clips(store, 6)
    until = time.time() + 3600
    for held in (clips[1], clips[3]):
        store.hold("cam-1", held.start, held.end, until)
    quota = clips[1].bytes + clips[3].bytes + clips[5].bytes
    report = Retention(store, quota).enforce()
    assert report.deleted == (clips[0].clip_id, clips[2].clip_id, clips[4].clip_id)
    assert [c.clip_id for c in store.clips()] == [clips[1].clip_id, clips[3].clip_id, clips[5].clip_id]
    assert report.held_bytes == clips[1].bytes + clips[3].bytes
    assert report.freed_bytes == clips[0].bytes + clips[2].bytes + clips[4].bytes
    assert report.telemetry() == {
        "clips_bytes": quota,
        "clips_held_bytes": clips[1].bytes + clips[3].bytes,
        "clips_quota_bytes": quota,
        "disk_free_bytes": report.free_bytes,
        "disk_full": False,
        "disk_full_reason": None,
    }


def test_held_footage_exactly_at_the_quota_is_not_disk_full(store: ClipStore) -> None:
    clips = make_clips(store, 2)
    store.hold("cam-1", T0 - 1, T0 + 100, time.time() + 3600)
    held = clips[0].bytes + clips[1].bytes
    at_quota = Retention(store, held).enforce()
    assert (at_quota.disk_full, at_quota.deleted) == (False, ())
    over = Retention(store, held - 1).enforce()
    assert over.disk_full
    assert over.reason == f"held footage ({held} bytes) exceeds the clip quota ({held - 1} bytes)"
    assert over.telemetry()["disk_full_reason"] == over.reason


def test_free_space_exactly_at_the_floor_is_enough(store: ClipStore) -> None:
    make_clips(store, 1)
    at_floor = Retention(store, 10**9, min_free_bytes=5000, free_bytes=lambda: 5000).enforce()
    assert (at_floor.disk_full, at_floor.free_bytes, at_floor.min_free_bytes) == (False, 5000, 5000)
    below = Retention(store, 10**9, min_free_bytes=5001, free_bytes=lambda: 5000).enforce()
    assert below.reason == "free disk space 5000 bytes is below the floor of 5001 bytes"


def test_negative_bounds_are_refused(store: ClipStore) -> None:
    for quota, floor in ((-1, 0), (0, -1)):
        with pytest.raises(ValueError, match=r"^quota_bytes and min_free_bytes must be >= 0$"):
            Retention(store, quota, floor)
