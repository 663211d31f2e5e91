"""The reply store at its edges: exact window and capacity bounds, counts after expiry and restart,
and the file-level faults (corrupt, foreign, damaged, symlinked, locked) seen through what a caller
gets.

Written to close the mutation-testing survivors of agent/commands/idempotency.py (docs/mutants.md):
each test asserts what the dispatcher relies on, a stored reply given back or a key refused."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import stat
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.commands.idempotency import IdempotencyCache


class Clock:
    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def stored_after_restart(path: Path, key: str, clock: Clock) -> bytes | None:
    """What a restarted agent finds for `key` in the file."""
    cache = IdempotencyCache(path, clock=clock)
    try:
        return cache.lookup(key)
    finally:
        cache.close()


def fill(cache: IdempotencyCache, window: str, *keys: str) -> None:
    for key in keys:
        assert cache.claim(window, key).granted, key
        cache.complete(key, f"reply-{key}".encode())


# -- the window ---------------------------------------------------------------------------------


def test_a_key_is_replayed_until_exactly_window_s_after_its_claim(tmp_path: Path, clock: Clock) -> None:
    cache = IdempotencyCache(tmp_path / "replies.db", window_s=10.0, clock=clock)
    try:
        assert cache.claim("w", "k").granted
        clock.now += 5.0  # the window counts from the claim, not from the reply
        cache.complete("k", b"r")
        clock.now += 4.999
        assert cache.lookup("k") == b"r"
        assert cache.claim("w", "k").replay == b"r"
        clock.now += 0.001
        assert cache.lookup("k") is None
        assert cache.claim("w", "k").granted
    finally:
        cache.close()


def test_an_expired_key_dropped_by_lookup_frees_exactly_one_place(clock: Clock) -> None:
    cache = IdempotencyCache(window_s=10.0, capacity=2, clock=clock)
    fill(cache, "w", "a")
    clock.now += 5.0
    fill(cache, "w", "b")
    clock.now += 5.5  # a has expired, b has not; the periodic purge has not run since
    assert cache.lookup("a") is None
    assert len(cache) == 1
    assert cache.claim("w", "c").granted
    assert cache.claim("w", "d").full  # b and c: the window counts a once, not twice
    assert cache.lookup("b") == b"reply-b"


def test_expired_keys_are_purged_once_a_second_exactly(clock: Clock) -> None:
    cache = IdempotencyCache(window_s=10.0, capacity=1, clock=clock)
    fill(cache, "w", "a")  # purged last at t0: next purge due at t0 + 1
    clock.now += 9.5
    assert cache.claim("other", "x").granted  # purges (nothing expired): next due at t0 + 10.5
    clock.now += 0.75  # a expired at t0 + 10, not yet purged
    assert cache.claim("w", "b").full
    clock.now += 0.25  # t0 + 10.5: the purge is due and forgets a
    assert cache.claim("w", "b").granted


def test_a_key_expiring_exactly_now_is_purged(clock: Clock) -> None:
    cache = IdempotencyCache(window_s=10.0, capacity=1, clock=clock)
    fill(cache, "w", "a")
    clock.now += 10.0
    assert cache.claim("w", "b").granted  # a's place is free the instant it expires
    assert len(cache) == 1


def test_purging_one_window_leaves_the_others_counts(clock: Clock) -> None:
    cache = IdempotencyCache(window_s=10.0, capacity=2, clock=clock)
    fill(cache, "police", "p1")
    clock.now += 5.0
    fill(cache, "police", "p2")
    fill(cache, "fire", "f1", "f2")
    clock.now += 5.0  # p1 expires; p2, f1 and f2 stay
    assert cache.claim("police", "p3").granted
    assert cache.claim("police", "p4").full
    assert cache.claim("fire", "f3").full
    assert len(cache) == 4


# -- capacity -----------------------------------------------------------------------------------


def test_a_capacity_of_one_holds_one_key() -> None:
    cache = IdempotencyCache(capacity=1, clock=Clock())
    fill(cache, "w", "a")
    assert cache.claim("w", "b").full
    assert cache.claim("w", "a").replay == b"reply-a"


def test_completed_keys_count_once_each(clock: Clock) -> None:
    cache = IdempotencyCache(capacity=3, clock=clock)
    fill(cache, "w", "a", "b")
    assert len(cache) == 2
    assert cache.claim("w", "c").granted
    assert len(cache) == 3  # two stored, one in flight
    assert cache.claim("w", "d").full
    cache.complete("c", b"c")
    assert cache.claim("w", "d").full


def test_in_flight_keys_of_another_window_do_not_count(clock: Clock) -> None:
    cache = IdempotencyCache(capacity=1, clock=clock)
    assert cache.claim("fire", "f").granted  # in flight, never completed
    assert cache.claim("police", "p").granted


def test_a_second_complete_or_a_stray_release_changes_nothing(clock: Clock) -> None:
    cache = IdempotencyCache(capacity=2, clock=clock)
    fill(cache, "w", "a")
    cache.complete("a", b"other")  # not claimed any more: ignored
    cache.complete("never-claimed", b"x")
    cache.release("never-claimed")
    assert cache.lookup("a") == b"reply-a"
    assert cache.lookup("never-claimed") is None
    assert len(cache) == 1
    assert cache.claim("w", "b").granted


def test_a_waiting_duplicate_of_a_released_key_gets_busy_at_once_not_a_reply(clock: Clock) -> None:
    cache = IdempotencyCache(wait_s=30.0, clock=clock)
    assert cache.claim("w", "a").granted
    got: list[tuple[bytes | None, bool]] = []

    def duplicate() -> None:
        claim = cache.claim("w", "a")
        got.append((claim.replay, claim.timed_out))

    waiter = threading.Thread(target=duplicate)
    waiter.start()
    time.sleep(0.5)  # the duplicate is waiting for the first request's reply
    cache.release("a")  # the first one failed: the duplicate must neither run nor get a reply
    waiter.join(5)
    assert got == [(None, True)]
    assert cache.claim("w", "a").granted


def test_capacity_and_window_bounds(clock: Clock) -> None:
    IdempotencyCache(window_s=0.001, capacity=1, clock=clock).close()
    for bad in ({"window_s": -1.0}, {"capacity": -1}, {"window_s": 0.0, "capacity": 0}):
        with pytest.raises(ValueError, match=r"^window_s and capacity must be positive$"):
            IdempotencyCache(**bad)


# -- the file -----------------------------------------------------------------------------------

STAMP = re.compile(r"replies\.db\.corrupt-(\d{8}T\d{12})Z")


def set_aside(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if ".corrupt-" in p.name)


def test_a_reply_is_committed_before_complete_returns(tmp_path: Path, clock: Clock) -> None:
    """What a crash right after sending leaves behind: a second connection already sees it."""
    path = tmp_path / "replies.db"
    first = IdempotencyCache(path, clock=clock)
    fill(first, "w", "a")
    second = IdempotencyCache(path, clock=clock)  # the first is still open, nothing closed
    try:
        assert second.lookup("a") == b"reply-a"
        assert len(second) == 1
    finally:
        second.close()
        first.close()


def test_the_file_is_kept_in_wal_mode(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "replies.db"
    cache = IdempotencyCache(path, clock=clock)
    fill(cache, "w", "a")
    cache.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_replies_stored_from_one_thread_are_read_from_another(tmp_path: Path, clock: Clock) -> None:
    cache = IdempotencyCache(tmp_path / "replies.db", clock=clock)
    try:
        fill(cache, "w", "a")
        got: list[bytes | None] = []
        reader = threading.Thread(target=lambda: got.append(cache.lookup("a")))
        reader.start()
        reader.join(10)
        assert got == [b"reply-a"]
        assert set_aside(tmp_path) == []
        assert cache.durable
    finally:
        cache.close()


def test_missing_folders_are_created_private(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "a" / "b" / "replies.db"
    cache = IdempotencyCache(path, clock=clock)
    fill(cache, "w", "a")
    cache.close()
    assert cache.durable
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = IdempotencyCache(path, clock=clock)
    assert again.lookup("a") == b"reply-a"
    again.close()


def test_an_existing_file_and_folder_are_made_private(tmp_path: Path, clock: Clock) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    path = state / "replies.db"
    cache = IdempotencyCache(path, clock=clock)
    fill(cache, "w", "a")
    cache.close()
    os.chmod(path, 0o644)
    os.chmod(state, 0o755)
    again = IdempotencyCache(path, clock=clock)
    try:
        assert again.lookup("a") == b"reply-a"
    finally:
        again.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_a_new_file_is_private_whatever_the_umask(tmp_path: Path, clock: Clock) -> None:
    old = os.umask(0o000)
    try:
        cache = IdempotencyCache(tmp_path / "replies.db", clock=clock)
    finally:
        os.umask(old)
    fill(cache, "w", "a")
    cache.close()
    assert stat.S_IMODE((tmp_path / "replies.db").stat().st_mode) == 0o600


def test_a_symlinked_folder_is_refused_not_followed_and_not_fatal(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chmod(elsewhere, 0o755)
    (tmp_path / "state").symlink_to(elsewhere)
    with caplog.at_level(logging.ERROR):
        cache = IdempotencyCache(tmp_path / "state" / "replies.db", clock=clock)
    try:
        assert not cache.durable
        assert "symbolic link" in caplog.text
        fill(cache, "w", "a")
        assert cache.lookup("a") == b"reply-a"
    finally:
        cache.close()
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755
    assert list(elsewhere.iterdir()) == []


def test_a_folder_in_place_of_the_file_is_set_aside(tmp_path: Path, clock: Clock) -> None:
    (tmp_path / "replies.db").mkdir()
    (tmp_path / "replies.db" / "inside").write_bytes(b"kept")
    cache = IdempotencyCache(tmp_path / "replies.db", clock=clock)
    fill(cache, "w", "a")
    cache.close()
    assert cache.durable
    (moved,) = set_aside(tmp_path)
    assert (moved / "inside").read_bytes() == b"kept"
    assert stored_after_restart(tmp_path / "replies.db", "a", clock) == b"reply-a"


def test_a_corrupt_file_is_set_aside_under_a_utc_stamp(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "Asia/Seoul")
    time.tzset()
    try:
        path = tmp_path / "replies.db"
        path.write_bytes(b"\x00garbage" * 1000)
        cache = IdempotencyCache(path, clock=clock)
        fill(cache, "w", "a")
        cache.close()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert cache.durable
    (moved,) = set_aside(tmp_path)
    match = STAMP.fullmatch(moved.name)
    assert match, moved.name
    stamp = datetime.strptime(match[1], "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60
    assert moved.read_bytes() == b"\x00garbage" * 1000
    assert stored_after_restart(path, "a", clock) == b"reply-a"


def test_a_database_of_another_schema_is_set_aside_untouched(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "replies.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE replies (key TEXT PRIMARY KEY, answer TEXT)")
        conn.execute("INSERT INTO replies VALUES ('x', 'someone else''s')")
    conn.close()
    cache = IdempotencyCache(path, clock=clock)
    try:
        assert cache.durable
        assert cache.lookup("x") is None
        fill(cache, "w", "a")
        assert cache.lookup("a") == b"reply-a"
    finally:
        cache.close()
    (moved, *_) = set_aside(tmp_path)
    with sqlite3.connect(moved) as conn:
        assert conn.execute("SELECT * FROM replies").fetchall() == [("x", "someone else's")]
    conn.close()


def test_a_file_that_goes_bad_while_running_is_set_aside_and_a_fresh_one_used(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "replies.db"
    keys = [f"k{i}" for i in range(3000)]
    cache = IdempotencyCache(path, capacity=3000, clock=clock)
    for key in keys:
        assert cache.claim("w", key).granted
        cache.complete(key, b"x" * 1000)  # 3 MB: more than SQLite's page cache
    cache.close()
    cache = IdempotencyCache(path, capacity=3000, clock=clock)
    try:
        assert cache.claim("w", "one-more").full
        with path.open("r+b") as f:  # the SD card loses everything past the first page
            f.seek(4096)
            f.write(b"\xff" * (path.stat().st_size - 4096))
        assert cache.lookup("k5") is None
        assert cache.durable
        assert len(set_aside(tmp_path)) == 1
        assert len(cache) == 0
        fill(cache, "w", "one-more")  # a fresh, empty window
        assert cache.lookup("one-more") == b"reply-one-more"
    finally:
        cache.close()
    again = IdempotencyCache(path, clock=clock)
    try:
        assert again.lookup("one-more") == b"reply-one-more"
        assert len(again) == 1
    finally:
        again.close()


def test_closing_twice_is_harmless(tmp_path: Path, clock: Clock) -> None:
    cache = IdempotencyCache(tmp_path / "replies.db", clock=clock)
    fill(cache, "w", "a")
    cache.close()
    cache.close()
    assert stored_after_restart(tmp_path / "replies.db", "a", clock) == b"reply-a"


def test_a_file_with_a_damaged_key_index_is_set_aside_at_open(tmp_path: Path, clock: Clock) -> None:
    """The table and the expiry index read fine: only SQLite's quick_check finds the damage."""
    path = tmp_path / "replies.db"
    cache = IdempotencyCache(path, capacity=1000, clock=clock)
    for i in range(300):
        fill(cache, "w", f"key-{i:04}")
    cache.close()
    with sqlite3.connect(path) as conn:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_replies_1'"
        ).fetchone()
        (page,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    with path.open("r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\xff" * page)
    damaged = path.read_bytes()
    cache = IdempotencyCache(path, capacity=1000, clock=clock)
    try:
        assert len(cache) == 0  # nothing trusted from the damaged file
        assert cache.durable
        moved = min(set_aside(tmp_path))  # with its -wal and -shm when SQLite left them
        assert moved.read_bytes() == damaged
        fill(cache, "w", "key-0001")
    finally:
        cache.close()


def test_a_locked_file_is_waited_for_not_set_aside(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "replies.db"
    cache = IdempotencyCache(path, clock=clock)
    try:
        fill(cache, "w", "a")
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")  # e.g. a backup tool holding the file for a while
            assert cache.claim("w", "b").granted
            cache.complete("b", b"lost")  # cannot be written within the busy timeout
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert set_aside(tmp_path) == []
        assert cache.durable
        assert cache.lookup("a") == b"reply-a"
        assert cache.lookup("b") is None
        fill(cache, "w", "c")
    finally:
        cache.close()
    assert stored_after_restart(path, "c", clock) == b"reply-c"


def test_a_restart_after_the_window_forgets_every_reply(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "replies.db"
    cache = IdempotencyCache(path, window_s=10.0, capacity=2, clock=clock)
    fill(cache, "w", "a", "b")
    cache.close()
    clock.now += 10.0
    again = IdempotencyCache(path, window_s=10.0, capacity=2, clock=clock)
    try:
        assert len(again) == 0
        assert again.lookup("a") is None
        fill(again, "w", "c", "d")  # the whole window is free again
    finally:
        again.close()
