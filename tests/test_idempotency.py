"""The reply cache: replays within the window, forgets after it, stays bounded, serialises duplicates."""

from __future__ import annotations

import threading

from agent.commands.idempotency import IdempotencyCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_claim_executes_then_replays() -> None:
    cache = IdempotencyCache(clock=Clock())
    assert cache.claim("a").replay is None
    cache.complete("a", b"reply-a")
    assert cache.claim("a").replay == b"reply-a"
    assert cache.claim("a").replay == b"reply-a"


def test_entries_expire_after_the_window_not_extended_by_repeats() -> None:
    clock = Clock()
    cache = IdempotencyCache(ttl_s=600, clock=clock)
    cache.claim("a")
    cache.complete("a", b"x")
    clock.now += 599
    assert cache.claim("a").replay == b"x"
    clock.now += 2
    assert cache.claim("a").replay is None  # forgotten: the caller executes again


def test_bounded_under_20000_distinct_ids() -> None:
    cache = IdempotencyCache(max_entries=10_000, clock=Clock())
    for i in range(20_000):
        key = f"id-{i}"
        assert cache.claim(key).replay is None
        cache.complete(key, b"r" * 10)
        assert len(cache) <= 10_000
    assert len(cache) == 10_000
    assert cache.claim("id-19999").replay == b"r" * 10  # newest kept
    assert cache.claim("id-0").replay is None  # oldest evicted


def test_bounded_in_bytes() -> None:
    cache = IdempotencyCache(max_bytes=1000, clock=Clock())
    for i in range(50):
        cache.claim(str(i))
        cache.complete(str(i), b"x" * 100)
    assert len(cache) == 10
    assert cache.claim("49").replay is not None
    assert cache.claim("0").replay is None


def test_released_key_runs_again() -> None:
    cache = IdempotencyCache(clock=Clock())
    cache.claim("a")
    cache.release("a")
    assert cache.claim("a").replay is None


def test_duplicate_during_execution_waits_for_the_first_reply() -> None:
    cache = IdempotencyCache(wait_s=10, clock=Clock())
    assert cache.claim("a").replay is None
    got: list[bytes | None] = []
    waiter = threading.Thread(target=lambda: got.append(cache.claim("a").replay))
    waiter.start()
    cache.complete("a", b"first")
    waiter.join(10)
    assert got == [b"first"]


def test_duplicate_gives_up_after_wait_s() -> None:
    cache = IdempotencyCache(wait_s=0.01, clock=Clock())
    cache.claim("a")
    claim = cache.claim("a")
    assert claim.replay is None
    assert claim.timed_out
