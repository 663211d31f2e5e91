"""The durable outbox on real SQLite files: order, in-flight requeue, bounds, corruption, close, a broker."""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.mqtt.outbox import Kind, Outbox, OutboxError, OutboxMessage
from tests.conftest import Broker


def ids(batch: list[OutboxMessage]) -> list[int]:
    return [m.id for m in batch]


def fill(box: Outbox, n: int, *, kind: Kind = "event", camera: str = "cam-1", size: int = 10) -> list[int]:
    return [
        box.put(OutboxMessage(f"r/cam/{camera}/{kind}", f"{i:0{size}d}".encode(), kind=kind, camera=camera))
        for i in range(n)
    ]


def test_messages_survive_a_restart_in_order(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, 1000, 1 << 20)
    box.put(OutboxMessage("r/cam/a/event", b"a1", kind="event", camera="a", properties={"event_id": "e1"}))
    box.put(OutboxMessage("r/cam/b/event", b"b1", kind="event", camera="b"))
    box.put(OutboxMessage("r/status", b"on", kind="status", retain=True))
    box.put(OutboxMessage("r/cam/a/event", b"a2", kind="event", camera="a"))
    box.close()
    box = Outbox(path, 1000, 1 << 20)
    batch = box.next_batch(10)
    assert [m.payload for m in batch] == [b"a1", b"b1", b"on", b"a2"]
    assert batch[0].properties == {"event_id": "e1"}
    assert batch[2].retain
    assert batch[2].kind == "status"
    assert batch[0].camera == "a"
    assert box.discarded is None
    assert box.durable
    box.close()


def test_inflight_is_skipped_then_requeued_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 1000, 1 << 20)
    all_ids = fill(box, 10)
    first = box.next_batch(4)
    box.mark_inflight(ids(first))
    assert ids(box.next_batch(3)) == all_ids[4:7]
    box.ack(all_ids[1])
    assert box.depth() == 9
    assert box.inflight() == 3
    assert box.requeue_inflight() == 3
    again = ids(box.next_batch(20))
    assert again == [all_ids[0], *all_ids[2:]]
    box.close()


def test_restart_makes_inflight_unsent(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, 1000, 1 << 20)
    all_ids = fill(box, 5)
    box.mark_inflight(all_ids[:3])
    box.ack(all_ids[0])
    box.close()
    box = Outbox(path, 1000, 1 << 20)
    assert ids(box.next_batch(10)) == all_ids[1:]
    box.close()


def test_eviction_drops_telemetry_then_snapshots_then_status_events_last(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, 6, 1 << 20)
    events = fill(box, 2, kind="event")
    fill(box, 2, kind="telemetry")
    fill(box, 1, kind="snapshot")
    box.put(OutboxMessage("r/cam/cam-1/status", b"s", kind="status", camera="cam-1", retain=True))
    assert box.dropped() == {}
    more = fill(box, 3, kind="event")  # three over: both telemetry, then the snapshot
    assert box.dropped() == {"telemetry": 2, "snapshot": 1}
    extra = fill(box, 1, kind="event")  # then the status
    assert box.dropped() == {"telemetry": 2, "snapshot": 1, "status": 1}
    last = fill(box, 2, kind="event")  # only events left: the oldest events go
    assert box.dropped() == {"telemetry": 2, "snapshot": 1, "status": 1, "event": 2}
    assert ids(box.next_batch(10)) == [*more, *extra, *last]
    assert not set(events) & set(ids(box.next_batch(10)))
    assert box.depth() == 6
    box.close()
    box = Outbox(path, 6, 1 << 20)
    assert box.dropped()["event"] == 2, "drop counts persist across restarts"
    box.close()


def test_new_telemetry_never_displaces_an_event(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 3, 1 << 20)
    events = fill(box, 3, kind="event")
    fill(box, 1, kind="telemetry")
    assert ids(box.next_batch(10)) == events
    assert box.dropped() == {"telemetry": 1}
    box.close()


def test_byte_bound_is_held(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 10_000, 50_000)
    fill(box, 100, kind="snapshot", size=1000)
    assert box.bytes_used() <= 50_000
    assert box.dropped()["snapshot"] >= 50
    with pytest.raises(ValueError, match="exceeds the outbox's max_bytes"):
        box.put(OutboxMessage("r/x", b"x" * 60_000, kind="event"))
    box.close()


def test_inflight_messages_are_not_evicted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 3, 1 << 20)
    first = fill(box, 3, kind="telemetry")
    box.mark_inflight(first)
    fill(box, 1, kind="event")
    assert box.depth() == 4  # over the bound until the acks arrive
    newest = fill(box, 5, kind="telemetry")  # but never by more than what is in flight
    assert box.depth() <= 6
    assert box.dropped() == {"telemetry": 4}
    for i in first:
        box.ack(i)
    assert [m.kind for m in box.next_batch(10)] == ["event", "telemetry"]
    assert ids(box.next_batch(10))[-1] == newest[-1]
    box.close()


def test_newer_retained_status_supersedes_waiting_one(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 100, 1 << 20)
    box.put(OutboxMessage("r/cam/a/status", b"connecting", kind="status", retain=True))
    ev = box.put(OutboxMessage("r/cam/a/event", b"e", kind="event"))
    box.put(OutboxMessage("r/cam/a/status", b"ok", kind="status", retain=True))
    assert [m.payload for m in box.next_batch(10)] == [b"e", b"ok"]
    assert ids(box.next_batch(1)) == [ev]
    assert box.superseded() == 1
    assert box.dropped() == {}
    box.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"kind": "gossip"}, ValueError, "unknown outbox kind"),
        ({"kind": "event", "qos": 3}, ValueError, "qos"),
        ({"kind": "event", "topic": "r/+/x"}, ValueError, "topic"),
        ({"kind": "event", "payload": "text"}, TypeError, "bytes"),
        ({"kind": "event", "properties": {"a": 1}}, ValueError, "str to str"),
    ],
)
def test_bad_messages_are_named_before_reaching_the_outbox(
    tmp_path: Path, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    box = Outbox(tmp_path / "outbox.db", 10, 1 << 20)
    args: dict[str, object] = {"topic": "r/x", "payload": b"x", **kwargs}
    with pytest.raises(error, match=message):
        box.put(OutboxMessage(**args))  # type: ignore[arg-type]
    assert box.depth() == 0
    assert box.next_batch(10) == []
    box.close()


def test_close_folds_the_wal_into_the_file_and_keeps_undelivered_rows(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    wal = tmp_path / "outbox.db-wal"
    box = Outbox(path, 1000, 1 << 20)
    all_ids = fill(box, 20)
    box.mark_inflight(all_ids[:5])
    for i in all_ids[:3]:
        box.ack(i)
    before = [(m.id, m.topic, m.payload) for m in box.next_batch(100)]
    assert wal.stat().st_size > 0, "commits are in the WAL before close"
    reader = sqlite3.connect(path)  # e.g. diagnostics: SQLite alone would leave the WAL behind
    try:
        assert reader.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 17
        box.close()
        box.close()  # idempotent
        assert not wal.exists() or wal.stat().st_size == 0
        assert reader.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 17
    finally:
        reader.close()
    box = Outbox(path, 1000, 1 << 20)
    assert box.discarded is None
    assert ids(box.next_batch(100)) == all_ids[3:], "in-flight rows are unsent again"
    assert [(m.id, m.topic, m.payload) for m in box.next_batch(100)][2:] == before
    box.close()


def test_a_closed_outbox_refuses_puts_and_keeps_its_file(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, 1000, 1 << 20)
    fill(box, 2)
    box.close()
    with pytest.raises(OutboxError, match="closed"):
        box.put(OutboxMessage("r/x", b"late", kind="event"))
    with pytest.raises(OutboxError, match="closed"):
        box.next_batch(10)
    assert box.discarded is None, "a closed connection is not mistaken for a corrupt file"
    assert [p.name for p in tmp_path.iterdir() if "corrupt" in p.name] == []
    box = Outbox(path, 1000, 1 << 20)
    assert [m.payload for m in box.next_batch(10)] == [b"0000000000", b"0000000001"]
    box.close()


def make_truncated(path: Path) -> None:
    box = Outbox(path, 10_000, 1 << 24)
    fill(box, 300, size=1000)
    box.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def make_foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE messages (x TEXT)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda p: p.write_bytes(b"\x00garbage\xff" * 500), id="garbage"),
        pytest.param(lambda p: p.write_text("just some text\n"), id="text"),
        pytest.param(make_truncated, id="truncated"),
        pytest.param(make_foreign, id="foreign-schema"),
    ],
)
def test_unusable_file_is_moved_aside(
    tmp_path: Path, spoil: object, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.db"
    spoil(path)  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, logger="agent.mqtt.outbox"):
        box = Outbox(path, 100, 1 << 20)
    assert box.discarded is not None
    assert box.discarded.moved_to.name.startswith("outbox.db.corrupt-")
    assert box.discarded.moved_to.exists()
    assert "moved aside" in caplog.text
    fill(box, 3)
    assert len(box.next_batch(10)) == 3
    box.close()
    assert Outbox(path, 100, 1 << 20).discarded is None, "the fresh file is sound"


def test_locked_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN EXCLUSIVE")
    try:
        box = Outbox(path, 100, 1 << 20, busy_timeout_s=0.1)
        assert box.discarded is not None
        assert "locked" in box.discarded.reason
        fill(box, 1)
        assert box.depth() == 1
        box.close()
    finally:
        other.close()


def test_unwritable_location_falls_back_to_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    box = Outbox(blocker / "outbox.db", 100, 1 << 20)
    assert not box.durable
    stored = fill(box, 2)
    assert box.depth() == 2
    assert ids(box.next_batch(10)) == stored
    box.close()
    assert blocker.read_text() == "x"


def test_frame_threads_put_while_mqtt_thread_acks(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", 100_000, 1 << 26)
    per_thread = 300
    seen: dict[str, list[int]] = {}
    done = threading.Event()

    def producer(cam: str) -> None:
        for i in range(per_thread):
            box.put(OutboxMessage(f"r/cam/{cam}/event", str(i).encode(), kind="event", camera=cam))

    def consumer() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            batch = box.next_batch(50)
            if not batch and done.is_set():
                return
            box.mark_inflight(ids(batch))
            for m in batch:
                assert m.camera is not None
                seen.setdefault(m.camera, []).append(int(m.payload))
                box.ack(m.id)

    producers = [threading.Thread(target=producer, args=(f"c{i}",)) for i in range(4)]
    reader = threading.Thread(target=consumer)
    reader.start()
    for t in producers:
        t.start()
    for t in producers:
        t.join(30)
    done.set()
    reader.join(30)
    assert not reader.is_alive()
    assert dict(seen.items()) == {f"c{i}": list(range(per_thread)) for i in range(4)}
    assert box.depth() == 0
    box.close()


# -- through a real broker ----------------------------------------------------------------------------


class Pump:
    """The delivery cycle as the MQTT link runs it: a window of in-flight messages, ack on PUBACK."""

    def __init__(self, box: Outbox, client: mqtt.Client, window: int = 20) -> None:
        self.box, self.client, self.window = box, client, window
        self.lock = threading.Lock()
        self.by_mid: dict[int, int] = {}
        self.early: set[int] = set()
        self.acked = threading.Condition()
        client.on_publish = self.on_publish

    def on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, rc: ReasonCode, props: Properties
    ) -> None:
        with self.lock:
            message_id = self.by_mid.pop(mid, None)
            if message_id is None:
                self.early.add(mid)
                return
        self.box.ack(message_id)
        with self.acked:
            self.acked.notify_all()

    def step(self) -> int:
        """Publish up to the free window; returns how many were sent."""
        batch = self.box.next_batch(self.window - self.box.inflight())
        self.box.mark_inflight(ids(batch))
        for m in batch:
            info = self.client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            with self.lock:
                if info.mid in self.early:
                    self.early.discard(info.mid)
                    ack_now = True
                else:
                    self.by_mid[info.mid] = m.id
                    ack_now = False
            if ack_now:
                self.box.ack(m.id)
        return len(batch)

    def wait(self, timeout: float = 0.2) -> None:
        with self.acked:
            self.acked.wait(timeout)


def connect(broker: Broker, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(20)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


@pytest.mark.broker
def test_outbox_through_broker_survives_a_dropped_connection(
    broker: Broker, unique_gateway: str, tmp_path: Path
) -> None:
    root = f"cctv/v1/test/{unique_gateway}"
    total = 500
    received: list[tuple[str, int]] = []
    got_all = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        received.append((msg.topic.rsplit("/", 2)[1], int(msg.payload)))
        if len(set(received)) >= total:
            got_all.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{unique_gateway}-sub", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    sub.subscribe(f"{root}/#", qos=1)
    assert subscribed.wait(10)

    box = Outbox(tmp_path / "outbox.db", 10_000, 1 << 24)
    for i in range(total):
        cam = f"cam-{i % 3}"
        box.put(OutboxMessage(f"{root}/cam/{cam}/event", str(i).encode(), kind="event", camera=cam))

    first = connect(broker, f"{unique_gateway}-pub")
    dropped = threading.Event()
    first.on_disconnect = lambda *a: dropped.set()
    pump = Pump(box, first)
    deadline = time.monotonic() + 30
    while box.depth() > total // 2 and time.monotonic() < deadline:
        pump.step()
        pump.wait()
    pump.step()  # a full window goes out...
    sock = first.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)  # ...and the network goes away mid-stream
    assert dropped.wait(10)
    first.disconnect()
    first.loop_stop()
    unsent = {int(m.payload) for m in box.next_batch(total)}
    assert box.requeue_inflight() > 0
    in_flight_at_drop = {int(m.payload) for m in box.next_batch(total)} - unsent
    assert 0 < box.depth() < total

    second = connect(broker, f"{unique_gateway}-pub")
    pump = Pump(box, second)
    deadline = time.monotonic() + 30
    while box.depth() > 0 and time.monotonic() < deadline:
        pump.step()
        pump.wait()
    assert box.depth() == 0
    assert got_all.wait(15), f"subscriber got {len(set(received))} of {total}"
    second.disconnect()
    second.loop_stop()
    sub.disconnect()
    sub.loop_stop()
    box.close()

    numbers = [n for _, n in received]
    assert set(numbers) == set(range(total))
    duplicates = {n for n in numbers if numbers.count(n) > 1}
    assert duplicates <= in_flight_at_drop, "only messages in flight at the drop may come twice"
    first_seen: list[int] = []
    for n in numbers:
        if n not in first_seen:
            first_seen.append(n)
    for cam in ("cam-0", "cam-1", "cam-2"):
        per_cam = [n for c, n in received if c == cam]
        firsts = list(dict.fromkeys(per_cam))
        assert firsts == sorted(firsts), f"{cam} out of order"
