"""The outbox at its edges, on real SQLite files: exact bounds, byte accounting, what comes back
from the file, errors that name the operation, a file that goes bad while running, and the files
left on disk (issue 19: each test here kills mutants the broader tests in test_outbox.py let live).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.mqtt.outbox import Kind, Outbox, OutboxError, OutboxMessage


def put(box: Outbox, n: int, *, kind: Kind = "event", size: int = 10, topic: str = "r/cam/c/x") -> list[int]:
    return [box.put(OutboxMessage(topic, f"{i:0{size}d}".encode(), kind=kind)) for i in range(n)]


def payloads(box: Outbox) -> list[bytes]:
    return [m.payload for m in box.next_batch(100_000)]


# -- messages -----------------------------------------------------------------------------------


def test_a_bad_message_is_refused_with_a_message_naming_the_fault() -> None:
    with pytest.raises(
        ValueError, match=r"expected one of event, status, snapshot, audit, config, clip, telemetry$"
    ):
        OutboxMessage("r/x", b"x", kind="gossip")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^payload must be bytes, got str$"):
        OutboxMessage("r/x", "text", kind="event")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^cannot publish to topic 'r/#'$"):
        OutboxMessage("r/#", b"x", kind="event")
    with pytest.raises(ValueError, match=r"^user properties must map str to str$"):
        OutboxMessage("r/x", b"x", kind="event", properties={"a": 1})  # type: ignore[dict-item]


def test_qos_0_is_a_valid_message() -> None:
    assert OutboxMessage("r/x", b"x", kind="telemetry", qos=0).qos == 0


@pytest.mark.parametrize("raw", [bytearray(b"frame"), memoryview(b"frame")], ids=["bytearray", "memoryview"])
def test_a_bytes_like_payload_is_kept_as_bytes(tmp_path: Path, raw: bytearray | memoryview) -> None:
    m = OutboxMessage("r/x", raw, kind="snapshot")  # type: ignore[arg-type]
    assert type(m.payload) is bytes
    assert m.payload == b"frame"
    box = Outbox(tmp_path / "outbox.db", 10, 1 << 20)
    box.put(m)
    assert payloads(box) == [b"frame"]
    box.close()


def test_every_field_comes_back_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, 10, 1 << 20)
    before = time.time()
    box.put(OutboxMessage("r/cam/a/event", b"e", kind="event", camera="a"))
    box.put(OutboxMessage("r/telemetry", b"t", kind="telemetry", qos=0, properties={"k": "v"}))
    after = time.time()
    box.close()
    box = Outbox(path, 10, 1 << 20)
    event, telemetry = box.next_batch(10)
    assert (event.qos, event.retain, event.kind, event.camera, event.properties) == (
        1,
        False,
        "event",
        "a",
        {},
    )
    assert (telemetry.qos, telemetry.retain, telemetry.kind, telemetry.camera) == (
        0,
        False,
        "telemetry",
        None,
    )
    assert telemetry.properties == {"k": "v"}
    assert before <= event.created_at <= telemetry.created_at <= after
    box.close()


# -- bounds and accounting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [((0, 10), "max_messages must be >= 1, got 0"), ((10, 0), "max_bytes must be >= 1, got 0")],
)
def test_bounds_below_1_are_refused(tmp_path: Path, args: tuple[int, int], message: str) -> None:
    with pytest.raises(ValueError, match=f"^outbox {message}$"):
        Outbox(tmp_path / "outbox.db", *args)


def test_bounds_of_1_hold_one_message(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 1, 1 << 20)
    put(box, 3)
    assert payloads(box) == [b"0000000002"]
    assert box.dropped() == {"event": 2}
    box.close()
    box = Outbox(tmp_path / "other.db", 100, 1)
    box.put(OutboxMessage("r", b"", kind="event"))
    assert box.bytes_used() == 1
    box.close()


def test_bytes_are_payload_topic_and_compact_properties(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, 100, 1 << 20)
    props = {"event_id": "e1", "phase": "start"}
    a = box.put(OutboxMessage("r/cam/a/event", b"12345", kind="event", properties=props))
    compact = len(json.dumps(props, separators=(",", ":")))
    assert box.bytes_used() == 5 + len("r/cam/a/event") + compact
    b = box.put(OutboxMessage("r/x", b"12", kind="event"))
    assert box.bytes_used() == 5 + len("r/cam/a/event") + compact + 2 + 3
    box.close()
    box = Outbox(path, 100, 1 << 20)
    assert (box.depth(), box.bytes_used()) == (2, 5 + len("r/cam/a/event") + compact + 5)
    box.mark_inflight([a])
    box.ack(a)
    assert (box.depth(), box.bytes_used()) == (1, 5)
    box.ack(b)  # acked without ever being marked in flight: still deleted
    assert (box.depth(), box.bytes_used()) == (0, 0)
    box.ack(b)  # twice: harmless
    assert payloads(box) == []
    box.close()


def test_a_message_of_exactly_max_bytes_is_stored(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 100, 13)
    box.put(OutboxMessage("r/x", b"0123456789", kind="event"))
    assert box.bytes_used() == 13
    with pytest.raises(ValueError, match="message of 14 bytes exceeds the outbox's max_bytes 13"):
        box.put(OutboxMessage("r/x", b"01234567890", kind="event"))
    box.close()


def test_the_byte_bound_is_met_exactly_not_undershot(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 100, 3 * 20)  # room for exactly three 20-byte messages
    put(box, 4, size=11, topic="r/cam/c/x")  # 11 + 9 = 20 bytes each
    assert box.bytes_used() == 60
    assert payloads(box) == [b"00000000001", b"00000000002", b"00000000003"]
    assert box.dropped() == {"event": 1}
    box.close()


def test_a_smaller_bound_after_a_restart_evicts_everything_over_it_at_the_next_put(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, 10_000, 1 << 24)
    put(box, 600, kind="telemetry")
    box.close()
    box = Outbox(path, 10, 1 << 24)
    assert box.depth() == 600
    put(box, 1, kind="telemetry")
    assert box.depth() == 10
    assert box.dropped() == {"telemetry": 591}
    assert payloads(box)[-1] == b"0000000000"  # the newest message, the one just put
    box.close()


def test_one_message_in_flight_lets_exactly_one_more_wait(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 1, 1 << 20)
    (t,) = put(box, 1, kind="telemetry")
    box.mark_inflight([t])
    (e,) = put(box, 1, kind="event")
    assert box.depth() == 2
    assert box.dropped() == {}
    assert [m.id for m in box.next_batch(10)] == [e]
    box.close()


def test_bytes_in_flight_let_exactly_as_many_bytes_more_wait(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 100, 20)
    (t,) = put(box, 1, kind="telemetry", size=11)  # 20 bytes: the whole bound
    box.mark_inflight([t])
    (e,) = put(box, 1, kind="event", size=11)
    assert box.bytes_used() == 40
    assert box.dropped() == {}
    assert [m.id for m in box.next_batch(10)] == [e]
    box.close()


def test_eviction_reaches_past_256_messages_in_flight(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 300, 1 << 24)
    box.mark_inflight(put(box, 256, kind="telemetry"))
    waiting = put(box, 44, kind="telemetry")
    put(box, 1, kind="event")
    assert box.dropped() == {"telemetry": 1}
    assert [m.id for m in box.next_batch(1)] == [waiting[1]]
    box.close()


def test_a_full_batch_skips_messages_in_flight(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 100, 1 << 20)
    all_ids = put(box, 10)
    box.mark_inflight(all_ids[:2])
    assert [m.id for m in box.next_batch(3)] == all_ids[2:5]
    box.close()


def test_more_than_500_ids_are_marked_in_flight(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 10_000, 1 << 24)
    all_ids = put(box, 1200)
    box.mark_inflight(all_ids)
    assert box.inflight() == 1200
    assert box.next_batch(10) == []
    box.close()


def test_superseded_status_leaves_the_counts_of_one_message(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 100, 1 << 20)
    for state in (b"connecting", b"offline", b"ok"):
        box.put(OutboxMessage("r/cam/a/status", state, kind="status", retain=True))
    assert (box.depth(), box.bytes_used()) == (1, 2 + len("r/cam/a/status"))
    assert box.superseded() == 2
    assert payloads(box) == [b"ok"]
    box.close()


def test_retained_messages_of_other_kinds_are_not_superseded(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 100, 1 << 20)
    box.put(OutboxMessage("r/cam/a/snapshot", b"one", kind="snapshot", retain=True))
    box.put(OutboxMessage("r/cam/a/snapshot", b"two", kind="snapshot", retain=True))
    assert payloads(box) == [b"one", b"two"]
    assert box.superseded() == 0
    box.close()


# -- errors ---------------------------------------------------------------------------------------


def test_a_closed_outbox_names_the_operation_that_failed(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 100, 1 << 20)
    box.close()
    calls: dict[str, Callable[[], object]] = {
        "put": lambda: box.put(OutboxMessage("r/x", b"x", kind="event")),
        "read": lambda: box.next_batch(1),
        "mark": lambda: box.mark_inflight([1]),
        "ack": lambda: box.ack(1),
    }
    for what, call in calls.items():
        with pytest.raises(OutboxError, match=f"^outbox {what} failed: the outbox .* is closed$"):
            call()
    with pytest.raises(OutboxError, match=r"^outbox read failed"):
        box.dropped()


def test_a_locked_file_fails_the_put_with_the_reason_and_keeps_the_counts(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, 100, 1 << 20, busy_timeout_s=0.1)
    put(box, 1)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(OutboxError, match=r"^outbox put failed: database is locked$"):
            put(box, 1)
        assert (box.depth(), box.bytes_used()) == (1, 19)
    finally:
        other.close()
    put(box, 1)
    assert box.depth() == 2
    box.close()


def test_a_file_that_goes_bad_while_running_is_set_aside_and_a_fresh_one_used(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, 10_000, 1 << 26)
    put(box, 2000, size=1000)
    box.close()
    box = Outbox(path, 10_000, 1 << 26)
    assert box.depth() == 2000
    with path.open("r+b") as f:  # the SD card loses everything past the first page
        f.seek(4096)
        f.write(b"\xff" * (path.stat().st_size - 4096))
    assert box.next_batch(5000) == []
    assert box.discarded is not None
    assert box.discarded.reason == "DatabaseError: database disk image is malformed"
    assert box.discarded.moved_to.exists()
    assert box.durable is True
    assert (box.depth(), box.bytes_used(), box.inflight()) == (0, 0, 0)
    put(box, 3)
    box.close()
    box = Outbox(path, 10_000, 1 << 26)
    assert box.discarded is None
    assert payloads(box) == [b"0000000000", b"0000000001", b"0000000002"]
    box.close()


# -- the file on disk -----------------------------------------------------------------------------


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "a" / "b" / "outbox.db", 100, 1 << 20)
    assert box.durable is True
    put(box, 1)
    box.close()
    assert Outbox(tmp_path / "a" / "b" / "outbox.db", 100, 1 << 20).depth() == 1


def test_the_queue_and_its_wal_are_private_to_the_agent(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    old = os.umask(0o022)
    try:
        box = Outbox(path, 100, 1 << 20)
        put(box, 1)
        for name in ("outbox.db", "outbox.db-wal", "outbox.db-shm"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
        box.close()
    finally:
        os.umask(old)


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm", "-journal"])
def test_a_planted_symbolic_link_is_removed_and_its_target_untouched(tmp_path: Path, suffix: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / f"outbox.db{suffix}"
    link.symlink_to(victim)
    box = Outbox(tmp_path / "outbox.db", 100, 1 << 20)
    put(box, 1)
    assert box.discarded is None, "the link is removed, not taken for a broken outbox"
    assert not link.is_symlink()
    assert victim.read_bytes() == b"precious"
    box.close()


def test_an_unusable_file_is_set_aside_under_a_utc_stamp_and_the_new_one_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "Asia/Seoul")
    time.tzset()
    try:
        path = tmp_path / "outbox.db"
        path.write_bytes(b"\x00garbage\xff" * 500)
        box = Outbox(path, 100, 1 << 20)
        assert box.durable is True
        assert box.discarded is not None
        assert box.discarded.reason.startswith("DatabaseError: ")
        moved = box.discarded.moved_to
        match = re.fullmatch(r"outbox\.db\.corrupt-(\d{8}T\d{6}\.\d{6})Z", moved.name)
        assert match, moved.name
        stamp = datetime.strptime(match[1], "%Y%m%dT%H%M%S.%f").replace(tzinfo=UTC)
        assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60
        assert moved.read_bytes() == b"\x00garbage\xff" * 500
        box.close()
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_file_of_another_schema_version_is_set_aside_with_its_unflushed_messages(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, 100, 1 << 20)
    put(box, 3)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    image = tmp_path / "image"  # the files as a power cut leaves them: commits still in the WAL
    image.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(f"{path}{suffix}", image / f"outbox.db{suffix}")
    other.close()
    box.close()
    assert (image / "outbox.db-wal").stat().st_size > 0
    box = Outbox(image / "outbox.db", 100, 1 << 20)
    assert box.discarded is not None
    assert box.discarded.reason == "DatabaseError: unknown outbox schema version '99'"
    kept = sqlite3.connect(box.discarded.moved_to)
    try:
        assert kept.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 3
    finally:
        kept.close()
    assert box.depth() == 0
    box.close()


def test_a_locked_file_is_given_up_on_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        box = Outbox(path, 100, 1 << 20, busy_timeout_s=0.1)
        assert time.monotonic() - started < 3.0  # SQLite's own default would wait 5 s
        assert box.discarded is not None
        box.close()
    finally:
        other.close()


def test_the_memory_fallback_writes_no_file_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    box = Outbox(blocker / "outbox.db", 100, 1 << 20)
    assert box.durable is False
    assert box.discarded is None
    put(box, 1)
    assert box.depth() == 1
    box.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-dir"]


def test_a_statement_that_fails_mid_put_leaves_the_file_unlocked_and_usable(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, 100, 1 << 20, busy_timeout_s=0.1)
    put(box, 1)
    other = sqlite3.connect(path, isolation_level=None, timeout=0.5)
    try:  # stands in for a write that fails inside the transaction (disk full, I/O error)
        other.execute(
            "CREATE TRIGGER jam BEFORE INSERT ON messages BEGIN SELECT abs(-9223372036854775808); END"
        )
        with pytest.raises(OutboxError, match=r"^outbox put failed: integer overflow$"):
            put(box, 1)
        other.execute("DROP TRIGGER jam")  # possible only if the failed put let go of the write lock
    finally:
        other.close()
    put(box, 1)
    assert (box.depth(), payloads(box)) == (2, [b"0000000000", b"0000000000"])
    box.close()


def test_a_file_that_fails_its_quick_check_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, 10_000, 1 << 26)
    put(box, 3000, size=100)
    box.close()
    db = sqlite3.connect(path)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'messages_by_priority'").fetchone()[0]
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with path.open("r+b") as f:  # one damaged index page: every query the outbox makes still works
        f.seek((root - 1) * page_size + 8)
        f.write(b"\xff" * 200)
    box = Outbox(path, 10_000, 1 << 26)
    assert box.discarded is not None
    assert box.discarded.reason.startswith(
        "DatabaseError: quick_check failed: *** in database main ***\nOn tree page"
    )
    assert box.depth() == 0
    box.close()


def test_a_file_that_goes_bad_where_no_new_one_can_be_made_keeps_messages_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    path = data / "outbox.db"
    box = Outbox(path, 10_000, 1 << 26)
    put(box, 2000, size=1000)
    box.close()
    box = Outbox(path, 10_000, 1 << 26)
    with path.open("r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * (path.stat().st_size - 4096))
    shutil.rmtree(data)  # the data partition is gone (the open file lives on until closed)
    assert box.next_batch(5000) == []
    assert box.durable is False
    assert box.discarded is not None
    assert box.discarded.reason == "DatabaseError: database disk image is malformed"
    stored = put(box, 2)
    assert [m.id for m in box.next_batch(10)] == stored
    box.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_holds_says_whether_that_exact_message_still_waits(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 100, 1 << 20)
    (first,) = put(box, 1, topic="r/cam/a/event")
    assert box.holds("r/cam/a/event", b"0000000000")
    assert not box.holds("r/cam/a/event", b"0000000001")
    assert not box.holds("r/cam/b/event", b"0000000000")
    box.ack(first)
    assert not box.holds("r/cam/a/event", b"0000000000")
    box.close()
    with pytest.raises(OutboxError, match=r"^outbox read failed"):
        box.holds("r/cam/a/event", b"0000000000")
