"""Retention: the quota holds, oldest unheld clips go first, held footage never goes."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from agent.capture.source import Frame
from agent.footage.clips import ClipInfo
from agent.footage.prebuffer import PreEventBuffer
from agent.footage.retention import Retention
from agent.footage.store import ClipStore

T0 = time.time() - 7200.0


def make_clips(store: ClipStore, n: int, camera: str = "cam-1") -> list[ClipInfo]:
    """n one-second clips, 10 s apart, oldest first."""
    rng = np.random.default_rng(3)
    out = []
    for k in range(n):
        buf = PreEventBuffer(seconds=5, max_bytes=8 << 20, jpeg_quality=80)
        frames = []
        for i in range(6):
            img = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
            kept = buf.push(Frame(img, ts=T0 + 10 * k + i * 0.2, pts=0.0, seq=i))
            assert kept is not None
            frames.append(kept)
        out.append(store.export(camera, T0 + 10 * k, T0 + 10 * k + 1, frames))
    return out


@pytest.fixture
def store(tmp_path: Path) -> ClipStore:
    return ClipStore(tmp_path / "clips", encoder="opencv")  # retention does not care about the codec


def test_oldest_clips_go_first_until_within_quota(store: ClipStore) -> None:
    clips = make_clips(store, 5)
    quota = sum(c.bytes for c in clips[2:])
    report = Retention(store, quota).enforce()
    assert report.deleted == (clips[0].clip_id, clips[1].clip_id)
    assert report.usage_bytes == quota <= report.quota_bytes
    assert [c.clip_id for c in store.clips()] == [c.clip_id for c in clips[2:]]
    assert not store.path(clips[0].clip_id).exists()
    assert not (store.root / f"{clips[0].clip_id}.json").exists()
    assert not report.disk_full


def test_within_quota_nothing_is_deleted(store: ClipStore) -> None:
    clips = make_clips(store, 2)
    report = Retention(store, 10 << 20).enforce()
    assert report.deleted == ()
    assert len(store.clips()) == len(clips)


def test_held_clips_survive_and_the_next_oldest_go(store: ClipStore) -> None:
    clips = make_clips(store, 4)
    store.hold("cam-1", T0, T0 + 1, time.time() + 3600)
    quota = clips[0].bytes + clips[3].bytes
    report = Retention(store, quota).enforce()
    assert report.deleted == (clips[1].clip_id, clips[2].clip_id)
    assert [c.clip_id for c in store.clips()] == [clips[0].clip_id, clips[3].clip_id]
    assert report.held_bytes == clips[0].bytes


def test_held_footage_alone_over_quota_is_disk_full(store: ClipStore) -> None:
    clips = make_clips(store, 3)
    store.hold("cam-1", T0 - 1, T0 + 30, time.time() + 3600)
    retention = Retention(store, clips[0].bytes)
    report = retention.enforce()
    assert report.deleted == ()
    assert len(store.clips()) == 3, "held footage is never deleted"
    assert report.disk_full
    assert retention.disk_full
    assert report.reason is not None
    assert "held footage" in report.reason
    assert report.telemetry()["disk_full"] is True


def test_expired_hold_no_longer_protects(store: ClipStore) -> None:
    clips = make_clips(store, 2)
    store.hold("cam-1", T0, T0 + 1, time.time() + 60)
    report = Retention(store, 0).enforce(now=time.time() + 120)
    assert set(report.deleted) == {c.clip_id for c in clips}


def test_free_space_floor_deletes_more_and_reports_disk_full(store: ClipStore) -> None:
    clips = make_clips(store, 3)
    store.hold("cam-1", T0 + 20, T0 + 21, time.time() + 3600)
    floor = shutil.disk_usage(store.root).free * 2  # no real disk can satisfy this
    report = Retention(store, 1 << 30, floor).enforce()
    assert report.deleted == (clips[0].clip_id, clips[1].clip_id)
    assert [c.clip_id for c in store.clips()] == [clips[2].clip_id]
    assert report.disk_full
    assert report.reason is not None
    assert "free disk space" in report.reason


def test_set_aside_files_are_reclaimed_first(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    store = ClipStore(root, encoder="opencv")
    clips = make_clips(store, 2)
    store.path(clips[0].clip_id).write_bytes(b"garbage")  # the next scan sets it aside
    store = ClipStore(root, encoder="opencv")
    assert store.discarded_files()
    report = Retention(store, 0).enforce()
    assert not store.discarded_files()
    assert report.deleted == (clips[1].clip_id,)
    assert report.freed_bytes >= clips[1].bytes


def test_bad_quota_is_refused(store: ClipStore) -> None:
    with pytest.raises(ValueError, match="quota_bytes"):
        Retention(store, -1)
