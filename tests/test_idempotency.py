"""The reply store: replays within the window, never forgets early, stays bounded per window,
survives a restart on disk, serialises duplicates, and shrugs off a bad file."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from agent.commands.idempotency import IdempotencyCache


class Clock:
    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now


def test_first_claim_executes_then_replays() -> None:
    cache = IdempotencyCache(clock=Clock())
    assert cache.claim("w", "a").granted
    cache.complete("a", b"reply-a")
    assert cache.claim("w", "a").replay == b"reply-a"
    assert cache.lookup("a") == b"reply-a"
    assert cache.lookup("b") is None


def test_entries_expire_after_the_window_not_extended_by_repeats() -> None:
    clock = Clock()
    cache = IdempotencyCache(window_s=600, clock=clock)
    cache.claim("w", "a")
    cache.complete("a", b"x")
    clock.now += 599.9
    assert cache.claim("w", "a").replay == b"x"
    clock.now += 0.1  # 600 s after it was first seen
    assert cache.claim("w", "a").granted  # forgotten: the caller executes again


def test_a_full_window_refuses_new_keys_and_forgets_none() -> None:
    clock = Clock()
    cache = IdempotencyCache(window_s=600, capacity=100, clock=clock)
    for i in range(100):
        assert cache.claim("police", f"id-{i}").granted
        cache.complete(f"id-{i}", b"r")
    for i in range(100, 200):
        claim = cache.claim("police", f"id-{i}")
        assert claim.full
        assert not claim.granted
    assert len(cache) == 100
    assert all(cache.lookup(f"id-{i}") == b"r" for i in range(100))
    assert cache.claim("fire", "id-x").granted  # another window is untouched
    clock.now += 600  # the window moves on: room again
    assert cache.claim("police", "id-200").granted


def test_in_flight_keys_count_towards_the_window() -> None:
    cache = IdempotencyCache(capacity=2, clock=Clock())
    assert cache.claim("w", "a").granted
    assert cache.claim("w", "b").granted
    assert cache.claim("w", "c").full
    cache.release("a")
    assert cache.claim("w", "c").granted


def test_released_key_runs_again() -> None:
    cache = IdempotencyCache(clock=Clock())
    cache.claim("w", "a")
    cache.release("a")
    assert cache.claim("w", "a").granted
    assert len(cache) == 1


def test_duplicate_during_execution_waits_for_the_first_reply() -> None:
    cache = IdempotencyCache(wait_s=10, clock=Clock())
    assert cache.claim("w", "a").granted
    got: list[bytes | None] = []
    waiter = threading.Thread(target=lambda: got.append(cache.claim("w", "a").replay))
    waiter.start()
    cache.complete("a", b"first")
    waiter.join(10)
    assert got == [b"first"]


def test_duplicate_gives_up_after_wait_s() -> None:
    cache = IdempotencyCache(wait_s=0.01, clock=Clock())
    cache.claim("w", "a")
    claim = cache.claim("w", "a")
    assert claim.replay is None
    assert claim.timed_out


def test_replies_survive_a_restart_with_their_window(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "state" / "replies.db"
    first = IdempotencyCache(path, window_s=600, capacity=2, clock=clock)
    assert first.durable
    first.claim("police", "police/a")
    first.complete("police/a", b"reply-a")
    first.claim("police", "police/b")
    first.complete("police/b", b"reply-b")
    first.close()
    clock.now += 300
    again = IdempotencyCache(path, window_s=600, capacity=2, clock=clock)
    try:
        assert again.claim("police", "police/a").replay == b"reply-a"
        assert again.claim("police", "police/c").full  # the window's count came back too
        clock.now += 300  # both first seen 600 s ago
        assert again.claim("police", "police/a").granted
    finally:
        again.close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_a_symlink_in_place_of_the_file_is_set_aside_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_bytes(b"keep me")
    state = tmp_path / "state"
    state.mkdir()
    os.symlink(target, state / "replies.db")
    cache = IdempotencyCache(state / "replies.db", clock=Clock())
    try:
        cache.claim("w", "a")
        cache.complete("a", b"r")
        assert cache.durable
        assert not (state / "replies.db").is_symlink()
    finally:
        cache.close()
    assert target.read_bytes() == b"keep me"


def test_a_corrupt_file_is_set_aside_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "replies.db"
    path.write_bytes(b"\x00garbage" * 1000)
    with caplog.at_level(logging.WARNING):
        cache = IdempotencyCache(path, clock=Clock())
    try:
        assert "unusable" in caplog.text
        assert cache.durable
        cache.claim("w", "a")
        cache.complete("a", b"r")
        assert cache.lookup("a") == b"r"
    finally:
        cache.close()
    assert [p.read_bytes()[:8] for p in tmp_path.glob("replies.db.corrupt-*")] == [b"\x00garbage"]


def test_an_impossible_path_means_memory_and_an_error_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with caplog.at_level(logging.ERROR):
        cache = IdempotencyCache(blocker / "commands" / "replies.db", clock=Clock())  # under a file
    try:
        assert not cache.durable
        assert "in memory only" in caplog.text
        cache.claim("w", "a")
        cache.complete("a", b"r")
        assert cache.lookup("a") == b"r"
    finally:
        cache.close()
    assert blocker.read_bytes() == b""


def test_a_file_where_its_folder_goes_is_set_aside_and_the_store_stays_durable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "commands"
    blocker.write_bytes(b"an operator's notes")
    with caplog.at_level(logging.WARNING):
        cache = IdempotencyCache(blocker / "replies.db", clock=Clock())
    try:
        assert cache.durable
        assert "commands is a file, not a folder; moved to commands.corrupt-" in caplog.text
    finally:
        cache.close()
    (aside,) = tmp_path.glob("commands.corrupt-*")
    assert aside.read_bytes() == b"an operator's notes"
    assert (blocker / "replies.db").is_file()


def test_bounds_must_be_positive() -> None:
    for bad in ({"window_s": 0.0}, {"capacity": 0}):
        with pytest.raises(ValueError, match="must be positive"):
            IdempotencyCache(**bad)
