"""End to end proof of "never lose an event": `edge-agent run` as a subprocess on a real broker,
through broker outages, SIGKILLs, a power cut that garbles its files, and a full disk.

Every camera loops a 5 s generated video in which a pedestrian walks in at 2 s, so each camera
raises one short event (start, updates every 0.5 s, end) per loop, and each run makes events at a
known pace.

How loss is told apart from the broker's own forgetting (test 1): the agent deletes a message
from its outbox on PUBACK, and Mosquitto sends PUBACK only after it has queued the message for
every matching subscriber. So the platform's subscriber keeps a persistent session
(clean_start=False, session expiry) and the broker, stopped gracefully and restarted on the same
port, persists sessions and their queues in its own directory: whatever the broker acknowledged
reaches the subscriber, also across the restart. What the agent produced while the broker was
down, or had in flight when it went away, exists only in the agent's outbox, since the broker
keeps no state for incoming QoS 1 messages and the agent's own session is not persistent. A
missing message can therefore only be the agent's fault. Ground truth is the outbox itself: a
watcher reads outbox.db read-only every 50 ms (a second SQLite connection on a WAL file), and
every event row it ever saw must arrive; rows seen during an outage are the events made offline.

Test 2 keeps one broker up and SIGKILLs the agent instead, twice right after its network went
dark (a relay that silently discards bytes both ways), so that messages sent into the void exist
only in the outbox at the kill. (Freezing the broker with SIGSTOP would not do: the kernel keeps
what the agent wrote in the broker's socket buffer and delivers it on thaw, which would hide an
agent that forgets messages on send.) After each kill a copy of outbox.db (+ -wal) is read: those
rows must all arrive after the restart, and only they may arrive twice. In test 1 duplicates are
not restricted: the broker's own session redelivery after a restart makes honest ones too.

The three long tests (outages, kills, disk full: ~30 s each) are also marked slow, so the local
quick run skips them and CI runs them; the power-loss and clip-content tests take ~7 s each.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import select
import shutil
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.capture.synthetic import write_scene_video
from agent.clock import iso, parse_iso
from agent.footage.store import ClipStore
from agent.mqtt.outbox import Outbox, OutboxMessage
from agent.sdk.client import CommandFailed, PlatformClient
from tests.conftest import Broker, start_mosquitto, stop_mosquitto
from tests.harness import AgentProcess, Received, Subscriber, write_config

pytestmark = pytest.mark.broker

DISTRICT = "durability"
LOOP_S = 5.0
SIZE = (320, 180)
Key = tuple[str, str, str]  # event_id, phase, ts: the platform's deduplication key


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two 5 s crossings (different pedestrians), looped by the agent: one event per loop each."""
    d = tmp_path_factory.mktemp("videos")
    out = []
    for seed in (1, 2):
        path = d / f"cross-{seed}.mp4"
        write_scene_video(path, "cross", seconds=LOOP_S, fps=10, size=SIZE, seed=seed)
        out.append(path)
    return out


def camera(
    cam_id: str, video: Path, *, pre_roll_s: float = 1.0, post_roll_s: float = 0.5, extra: str = ""
) -> str:
    return (
        f'[[cameras]]\nid = "{cam_id}"\nsource = "file://{video}"\nallowed_agencies = ["police"]\n'
        "motion = { end_delay_s = 0.5, update_interval_s = 0.5 }\n"
        f"clips = {{ enabled = true, pre_roll_s = {pre_roll_s}, post_roll_s = {post_roll_s} }}\n{extra}\n"
    )


def agent_config(tmp: Path, gateway: str, port: int, cameras: str, storage: str = "") -> Path:
    extra = f"\n[storage]\n{storage}\n" if storage else ""
    return write_config(
        tmp / "agent.toml",
        district=DISTRICT,
        gateway=gateway,
        port=port,
        data_dir=tmp / "data",
        cameras=cameras,
        extra=extra,
    )


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# -- what the platform sees -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Phase:
    """One event message as received."""

    camera: str
    event_id: str
    phase: str
    ts_text: str
    started_at: str
    ended_at: str | None
    clip_id: str | None

    @property
    def key(self) -> Key:
        return (self.event_id, self.phase, self.ts_text)

    @property
    def ts(self) -> float:
        return parse_iso(self.ts_text)


def parse_phase(payload: bytes) -> Phase:
    e = json.loads(payload)
    return Phase(
        e["camera"], e["event_id"], e["phase"], e["ts"], e["started_at"], e["ended_at"], e["clip_id"]
    )


def event_phases(messages: list[Received]) -> list[Phase]:
    """Event messages in arrival order."""
    return [parse_phase(m.payload) for m in messages if m.topic.endswith("/event")]


def first_arrivals(phases: list[Phase]) -> list[Phase]:
    seen: set[Key] = set()
    out = []
    for p in phases:
        if p.key not in seen:
            seen.add(p.key)
            out.append(p)
    return out


def by_event(phases: list[Phase]) -> dict[str, list[Phase]]:
    out: dict[str, list[Phase]] = {}
    for p in first_arrivals(phases):
        out.setdefault(p.event_id, []).append(p)
    return out


def assert_ordered(phases: list[Phase]) -> None:
    """Per camera, new messages arrive oldest first; an event starts first, ends once and last."""
    firsts = first_arrivals(phases)
    for cam in {p.camera for p in firsts}:
        seq = [p for p in firsts if p.camera == cam]
        for a, b in itertools.pairwise(seq):
            assert b.ts >= a.ts, f"{cam}: {b.key} arrived after {a.key}, which is newer"
    for event_id, seq in by_event(phases).items():
        assert seq[0].phase == "start", f"event {event_id} began with {seq[0].phase}"
        ends = [p for p in seq if p.phase == "end"]
        assert len(ends) <= 1, f"event {event_id} has {len(ends)} different end phases"
        assert not ends or seq[-1].phase == "end", f"event {event_id} has phases after its end"


def unfinished(phases: list[Phase]) -> dict[str, list[Phase]]:
    return {eid: seq for eid, seq in by_event(phases).items() if seq[-1].phase != "end"}


def duplicates(phases: list[Phase]) -> set[Key]:
    counts: dict[Key, int] = {}
    for p in phases:
        counts[p.key] = counts.get(p.key, 0) + 1
    return {k for k, n in counts.items() if n > 1}


class SessionSubscriber:
    """The platform's subscriber with a persistent session that survives broker restarts.

    paho reconnects it on its own (with clean_start=False again); the broker keeps and persists
    whatever it queued for it meanwhile.
    """

    def __init__(self, port: int, topic: str, client_id: str) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("session subscriber did not get its SUBACK")

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(
                Received(msg.topic, bytes(msg.payload), bool(msg.retain), {}, time.monotonic())
            )

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def received(sub: Subscriber | SessionSubscriber) -> list[Phase]:
    if isinstance(sub, Subscriber):
        return event_phases(sub.on("/event"))
    return event_phases(sub.snapshot())


# -- the agent's outbox, read from outside ---------------------------------------------------------


def outbox_rows(db: Path, *, readonly: bool) -> tuple[list[Key], int]:
    """(keys of the event rows, number of rows of any kind) in an outbox file."""
    target = f"file:{db}?mode=ro" if readonly else f"file:{db}"
    conn = sqlite3.connect(target, uri=True, timeout=1.0)
    try:
        rows = conn.execute(
            "SELECT CASE WHEN kind = 'event' THEN payload END FROM messages ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [parse_phase(r[0]).key for r in rows if r[0] is not None], len(rows)


def snapshot_outbox(db: Path, into: Path) -> list[Key]:
    """Copy outbox.db and its WAL as a kill left them and read the copy (SQLite replays the WAL)."""
    into.mkdir(parents=True)
    for suffix in ("", "-wal"):
        src = db.with_name(db.name + suffix)
        if src.exists():
            shutil.copy2(src, into / src.name)
    return outbox_rows(into / db.name, readonly=False)[0] if (into / db.name).exists() else []


class OutboxWatcher:
    """Polls a live outbox.db every 50 ms and remembers each event row it saw, and when.

    Owned by the test: started on construction, `stop()` joins it.
    """

    def __init__(self, db: Path) -> None:
        self.db = db
        self._lock = threading.Lock()  # guards seen and depth
        self.seen: dict[Key, float] = {}
        self.depth = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="outbox-watcher", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            try:
                keys, depth = outbox_rows(self.db, readonly=True)
            except sqlite3.Error:
                continue  # not created yet, or busy for a moment
            now = time.monotonic()
            with self._lock:
                for k in keys:
                    self.seen.setdefault(k, now)
                self.depth = depth

    def seen_between(self, spans: list[tuple[float, float]]) -> set[Key]:
        with self._lock:
            return {k for k, t in self.seen.items() if any(a <= t <= b for a, b in spans)}

    def all_seen(self) -> set[Key]:
        with self._lock:
            return set(self.seen)

    def current_depth(self) -> int:
        with self._lock:
            return self.depth

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


def persistent_broker_options(directory: Path) -> str:
    """Mosquitto options persisting sessions to `directory` (saved on a graceful stop)."""
    directory.mkdir(parents=True, exist_ok=True)
    run_as = "user root\n" if os.geteuid() == 0 else ""  # else it drops to `mosquitto`, who cannot write here
    return f"{run_as}persistence true\npersistence_location {directory}/\nautosave_interval 0\n"


def hang_then_stop(broker: Broker, hang_s: float) -> None:
    """The broker hangs (messages the agent sends meanwhile stay unacknowledged), then stops.

    The stop is graceful so that it saves the platform's session; SIGCONT lets it act on SIGTERM.
    """
    broker.process.send_signal(signal.SIGSTOP)
    time.sleep(hang_s)
    broker.process.send_signal(signal.SIGTERM)
    broker.process.send_signal(signal.SIGCONT)
    assert broker.process.wait(10) == 0


# -- 1. broker outages ----------------------------------------------------------------------------


@pytest.mark.slow  # ~30 s each: run by CI, or by `pytest tests/test_durability_e2e.py`
def test_broker_outages_lose_no_event(tmp_path: Path, videos: list[Path], unique_gateway: str) -> None:
    rng = random.Random(41)
    options = persistent_broker_options(tmp_path / "broker-db")
    broker = start_mosquitto(tmp_path / "mosquitto", extra=options)
    root = f"cctv/v1/{DISTRICT}/{unique_gateway}"
    sub = SessionSubscriber(broker.port, root + "/cam/+/event", client_id=f"platform-{unique_gateway}")
    cameras = camera("cam-1", videos[0]) + camera("cam-2", videos[1])
    agent = AgentProcess(agent_config(tmp_path, unique_gateway, broker.port, cameras), tmp_path / "agent.log")
    watcher = OutboxWatcher(tmp_path / "data" / "outbox.db")
    outages: list[tuple[float, float]] = []
    t0 = time.monotonic()
    try:
        assert wait_until(lambda: any(p.phase == "end" for p in received(sub)), 30), agent.log()
        for _ in range(3):
            time.sleep(rng.uniform(1.0, 2.5))
            down = time.monotonic()
            hang_then_stop(broker, rng.uniform(0.5, 1.5))
            time.sleep(max(0.0, down + rng.uniform(3.0, 5.0) - time.monotonic()))
            broker = start_mosquitto(tmp_path / "mosquitto", port=broker.port, extra=options)
            outages.append((down, time.monotonic()))
        made_offline = watcher.seen_between(outages)

        def delivered() -> bool:
            keys = {p.key for p in received(sub)}
            return watcher.all_seen() <= keys and watcher.current_depth() == 0

        assert wait_until(delivered, 30), (
            f"{len(watcher.all_seen() - {p.key for p in received(sub)})} event messages the outbox"
            f" held never arrived\n{agent.log()[-3000:]}"
        )
        code, _ = agent.terminate()
        assert code == 0
        # The clean stop ends the open events; their end phases are the last thing sent.
        wait_until(lambda: not unfinished(received(sub)), 5)
    finally:
        watcher.stop()
        agent.close()
        sub.close()
        stop_mosquitto(broker)
    elapsed = time.monotonic() - t0

    phases = received(sub)
    got = {p.key for p in phases}
    offline_ids = {k[0] for k in made_offline}
    assert len(offline_ids) >= 3, f"too few events made during the outages to prove anything: {offline_ids}"
    assert made_offline <= got
    assert watcher.all_seen() <= got
    assert_ordered(phases)
    assert not unfinished(phases), f"events without an end: {sorted(unfinished(phases))}"
    events = by_event(phases)
    for event_id in offline_ids:
        assert events[event_id][0].phase == "start" and events[event_id][-1].phase == "end"
    leftover = outbox_rows(tmp_path / "data" / "outbox.db", readonly=False)[0]
    assert leftover == [], f"{len(leftover)} event messages still waiting in the outbox after the stop"
    print(
        f"\nbroker outages: {len(outages)} of {[round(b - a, 1) for a, b in outages]} s; {len(events)} events"
        f" ({len(offline_ids)} made offline, {len(made_offline)} messages), {len(phases)} received,"
        f" {len(duplicates(phases))} redelivered twice; {elapsed:.1f} s"
    )


# -- 2. agent killed ----------------------------------------------------------------------------------


class Partition:
    """A TCP relay between agent and broker that can silently stop carrying packets.

    `cut()` turns it into a black hole: bytes both ways are read and thrown away while the
    connections stay open, so what the agent sends is lost on the wire and no PUBACK comes back.
    `heal()` drops those connections and relays again. The broker and the platform's subscriber
    never notice, so nothing can be lost on their side. Owner: the test; `close()` ends the thread.

    Lock scope: `_lock` guards the `_cut` and `_heal` flags set by the test and read by the relay.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._peers: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._cut = False
        self._heal = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="partition.relay", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        with self._lock:
            self._cut = True

    def heal(self) -> None:
        with self._lock:
            self._cut, self._heal = False, True

    def _drop(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock, None)
        for s in (sock, peer):
            if s is not None:
                self._peers.pop(s, None)
                s.close()

    def _relay(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                cut, heal, self._heal = self._cut, self._heal, False
            if heal:
                for sock in list(self._peers):
                    self._drop(sock)
            readable, _, _ = select.select([self._listener, *self._peers], [], [], 0.05)
            for sock in readable:
                if sock is self._listener:
                    client, _ = self._listener.accept()
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                    self._peers[client], self._peers[upstream] = upstream, client
                    continue
                if sock not in self._peers:
                    continue  # dropped together with its peer in this round
                try:
                    data = sock.recv(65536)
                    if data and not cut:
                        self._peers[sock].sendall(data)
                except OSError:
                    data = b""
                if not data:
                    self._drop(sock)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        for sock in list(self._peers):
            self._drop(sock)
        self._listener.close()


@dataclass
class Kill:
    spawned: float  # wall clock, as event ts: the killed process's lifetime
    at: float
    cut_at: float | None  # when the network went dark before the kill, if it did
    in_outbox: list[Key]


@pytest.mark.slow  # ~30 s each: run by CI, or by `pytest tests/test_durability_e2e.py`
def test_agent_killed_at_random_moments_redelivers_its_outbox(
    tmp_path: Path, videos: list[Path], unique_gateway: str
) -> None:
    """SIGKILL 4 times; rows left in outbox.db must all arrive after the restart, only they twice.

    Before two of the kills the network goes dark for longer than a loop's quiet part, so every
    camera makes phases that exist only in the agent's outbox when it dies.

    An event open at a kill gets its end from the next process, which finds it in
    data_dir/open_events.json: every event ends exactly once, with `ended_at` no later than
    the kill.
    """
    rng = random.Random(20261124)
    broker = start_mosquitto(tmp_path / "mosquitto")
    network = Partition(broker.port)
    root = f"cctv/v1/{DISTRICT}/{unique_gateway}"
    sub = Subscriber(broker.host, broker.port, root + "/cam/+/event")
    cfg = agent_config(
        tmp_path, unique_gateway, network.port, camera("cam-1", videos[0]) + camera("cam-2", videos[1])
    )
    db = tmp_path / "data" / "outbox.db"
    dark = set(rng.sample(range(4), 2))
    kills: list[Kill] = []
    agent: AgentProcess | None = None
    t0 = time.monotonic()
    try:
        for k in range(4):
            spawned = time.time()
            agent = AgentProcess(cfg, tmp_path / f"agent-{k}.log")

            def producing(since: float = spawned) -> bool:
                return any(p.ts > since for p in received(sub))

            assert wait_until(producing, 20), agent.log()
            time.sleep(rng.uniform(0.0, 3.0))
            cut_at = None
            if k in dark:
                cut_at = time.time()
                network.cut()
                time.sleep(rng.uniform(2.5, 3.5))  # longer than the quiet part of a loop
            at = time.time()
            agent.kill()
            kills.append(Kill(spawned, at, cut_at, snapshot_outbox(db, tmp_path / f"outbox-after-kill-{k}")))
            network.heal()
            agent.close()
        spawned = time.time()
        agent = AgentProcess(cfg, tmp_path / "agent-final.log")
        owed = {key for kill in kills for key in kill.in_outbox}
        assert wait_until(lambda: owed <= {p.key for p in received(sub)}, 30), (
            f"{len(owed - {p.key for p in received(sub)})} of {len(owed)} messages in the outbox at a kill"
            f" never arrived\n{agent.log()[-3000:]}"
        )

        def final_run_ended_one() -> bool:
            return any(p.phase == "end" and parse_iso(p.started_at) > spawned for p in received(sub))

        assert wait_until(final_run_ended_one, 20), agent.log()
        code, _ = agent.terminate()
        assert code == 0
        wait_until(lambda: not unfinished(received(sub)), 5)
    finally:
        if agent is not None:
            agent.close()
        network.close()
        sub.close()
        stop_mosquitto(broker)
    elapsed = time.monotonic() - t0

    phases = received(sub)
    assert owed <= {p.key for p in phases}
    twice = duplicates(phases)
    assert twice <= owed, f"duplicates that were not in the outbox at a kill: {sorted(twice - owed)[:5]}"
    assert_ordered(phases)
    # What each camera made while the network was dark reached the platform (after the restart).
    for kill in kills:
        if kill.cut_at is not None:
            for cam in ("cam-1", "cam-2"):
                made = [p for p in phases if p.camera == cam and kill.cut_at <= p.ts <= kill.at]
                assert made, f"{cam} made nothing that arrived in the {kill.at - kill.cut_at:.1f} s dark"
    # Events cut by a kill were ended by the next process: none is left open, each ended once.
    assert not unfinished(phases), f"events without an end: {sorted(unfinished(phases))[:5]}"
    ends = [p for p in phases if p.phase == "end"]
    assert len({p.event_id for p in ends}) == len({(p.event_id, p.ts) for p in ends})
    cut = {
        p.event_id: p
        for p in ends
        if any(k.spawned <= parse_iso(p.started_at) <= k.at and p.ts > k.at for k in kills)
    }
    print(
        f"\nagent kills: {len(kills)} ({len(dark)} after the network went dark); event rows in the outbox"
        f" at each kill {[len(k.in_outbox) for k in kills]}; {len(by_event(phases))} events, {len(cut)} cut"
        f" by a kill and ended by the next run, {len(twice)} messages arrived twice; {elapsed:.1f} s"
    )


# -- 3. power loss ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Jpeg:
    ts: float
    jpeg: bytes


def video_jpegs(video: Path, start: float, count: int) -> list[Jpeg]:
    cap = cv2.VideoCapture(str(video))
    out = []
    try:
        for i in range(count):
            ok, img = cap.read()
            assert ok
            out.append(Jpeg(start + i * 0.1, bytes(cv2.imencode(".jpg", img)[1])))
    finally:
        cap.release()
    return out


def test_power_loss_garbled_files_are_set_aside_and_events_flow(
    tmp_path: Path, videos: list[Path], unique_gateway: str, broker: Broker
) -> None:
    data = tmp_path / "data"
    # Yesterday's state: an outbox with messages waiting (its WAL not yet checkpointed) and clips.
    outbox = Outbox(data / "outbox.db")
    for i in range(5):
        outbox.put(OutboxMessage(f"t/{i}", b"{}", kind="event", camera="cam-1"))
    torn_state = tmp_path / "at-power-cut"
    torn_state.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy2(data / f"outbox.db{suffix}", torn_state / f"outbox.db{suffix}")
    outbox.close()
    for suffix in ("", "-wal"):
        shutil.copy2(torn_state / f"outbox.db{suffix}", data / f"outbox.db{suffix}")
    store = ClipStore(data / "clips")
    now = time.time()
    intact, torn, garbled = (
        store.export(
            "cam-1", now - 900 + 60 * i, now - 890 + 60 * i, video_jpegs(videos[0], now - 900 + 60 * i, 30)
        )
        for i in range(3)
    )
    # The power cut: the outbox's header and WAL garbled, a clip cut short, a sidecar half written.
    garbage = random.Random(3).randbytes(100)
    with (data / "outbox.db").open("r+b") as fh:
        fh.write(garbage)
    wal = data / "outbox.db-wal"
    wal.write_bytes(wal.read_bytes()[: wal.stat().st_size // 3])
    torn_mp4 = data / "clips" / f"{torn.clip_id}.mp4"
    torn_mp4.write_bytes(torn_mp4.read_bytes()[: torn.bytes // 2])
    (data / "clips" / f"{garbled.clip_id}.json").write_bytes(b'{"clip_id": "' + garbled.clip_id.encode()[:9])

    root = f"cctv/v1/{DISTRICT}/{unique_gateway}"
    sub = Subscriber(broker.host, broker.port, root + "/#")
    cfg = agent_config(tmp_path, unique_gateway, broker.port, camera("cam-1", videos[0]))
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/telemetry") for m in ms), 20), agent.log()
        assert wait_until(lambda: any(p.phase == "end" for p in received(sub)), 30), agent.log()
        with PlatformClient(broker.host, broker.port, root, agency="police", operator="officer-1") as police:
            fetched = police.clip_fetch(intact.clip_id, tmp_path / "intact.mp4", timeout=30)
            lost = []
            for info in (torn, garbled):
                with pytest.raises(CommandFailed) as err:
                    police.clip_fetch(info.clip_id, tmp_path / f"{info.clip_id}.mp4", timeout=10)
                lost.append(err.value.code)
        log = agent.log()
    finally:
        agent.close()
        sub.close()

    # What was discarded is said in the log and in telemetry, and the files are kept aside.
    assert "is unusable" in log and "moved aside to" in log, log
    telemetry = sub.on("/telemetry")[-1].json()
    discarded = telemetry["outbox"]["discarded"]
    assert discarded is not None and discarded["reason"], telemetry["outbox"]
    moved = Path(discarded["moved_to"])
    assert moved.parent == data and moved.name.startswith("outbox.db.corrupt-") and moved.exists()
    assert moved.read_bytes()[:100] == garbage  # the garbled file itself, kept for salvage
    assert telemetry["outbox"]["durable"] is True
    set_aside = sorted(p.name for p in (data / "clips" / "discarded").iterdir())
    for info in (torn, garbled):
        assert any(n.startswith(f"{info.clip_id}.mp4.") for n in set_aside), set_aside
        assert any(n.startswith(f"{info.clip_id}.json.") for n in set_aside), set_aside
    assert f"moved {torn.clip_id}.mp4 aside" in log and f"moved {garbled.clip_id}.json aside" in log
    # The intact clip is kept and served whole; the damaged ones are gone from the catalogue.
    assert fetched["sha256"] == intact.sha256
    assert decoded_frames(tmp_path / "intact.mp4") == intact.frames
    assert lost == ["not_found", "not_found"]
    # And events flow: complete events, in order.
    phases = received(sub)
    assert_ordered(phases)
    assert any(seq[0].phase == "start" and seq[-1].phase == "end" for seq in by_event(phases).values())


def decoded_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        count = 0
        for _ in range(100_000):
            ok, _img = cap.read()
            if not ok:
                break
            count += 1
        return count
    finally:
        cap.release()


def test_a_corrupt_outbox_is_moved_aside_with_its_wal(tmp_path: Path) -> None:
    """A bad block mid-file, the newest commits intact in the WAL: salvage needs that WAL too."""
    outbox = Outbox(tmp_path / "outbox.db")
    for i in range(300):
        outbox.put(OutboxMessage(f"t/{i}", random.Random(i).randbytes(500), kind="event"))
    outbox.close()  # checkpointed: the 300 rows are in the main file
    outbox = Outbox(tmp_path / "outbox.db")
    for i in range(3):
        outbox.put(OutboxMessage(f"t/new/{i}", b"{}", kind="event"))  # only in the WAL
    for suffix in ("", "-wal"):
        shutil.copy2(tmp_path / f"outbox.db{suffix}", tmp_path / f"cut.db{suffix}")
    outbox.close()
    size = (tmp_path / "cut.db").stat().st_size
    with (tmp_path / "cut.db").open("r+b") as fh:
        fh.seek(size // 2)
        fh.write(random.Random(3).randbytes(8192))
    wal = (tmp_path / "cut.db-wal").read_bytes()
    reopened = Outbox(tmp_path / "cut.db")
    reopened.close()
    assert reopened.discarded is not None, "the damaged file was not noticed"
    kept = reopened.discarded.moved_to.with_name(reopened.discarded.moved_to.name + "-wal")
    assert kept.exists() and kept.read_bytes() == wal


# -- 4. disk full -------------------------------------------------------------------------------------


def clip_files(clips: Path) -> dict[str, int]:
    """Finished clips on disk (not set aside, not half written): clip_id -> MP4 bytes."""
    out = {}
    for p in clips.glob("*.mp4"):
        if not p.name.endswith(".part.mp4"):
            try:
                out[p.stem] = p.stat().st_size
            except FileNotFoundError:
                continue  # deleted by retention just now
    return out


QUOTA = 64 * 1024


@pytest.mark.slow  # ~30 s each: run by CI, or by `pytest tests/test_durability_e2e.py`
def test_clip_quota_holds_and_a_full_disk_never_stop_events(
    tmp_path: Path, videos: list[Path], unique_gateway: str, broker: Broker
) -> None:
    root = f"cctv/v1/{DISTRICT}/{unique_gateway}"
    clips = tmp_path / "data" / "clips"
    cameras = camera("cam-1", videos[0], pre_roll_s=2.0, post_roll_s=1.0) + camera(
        "cam-2", videos[1], pre_roll_s=2.0, post_roll_s=1.0
    )
    sub = Subscriber(broker.host, broker.port, root + "/#")
    cfg = agent_config(
        tmp_path, unique_gateway, broker.port, cameras, f"clips_quota_bytes = {QUOTA}\nmin_free_bytes = 0"
    )
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    police = PlatformClient(broker.host, broker.port, root, agency="police", operator="officer-1").connect()
    peak = biggest = 0
    ever: set[str] = set()
    t0 = time.monotonic()
    try:
        # Hold the first ended event of cam-1 once its clip is on disk.
        def first_clip() -> Phase | None:
            ends = [p for p in received(sub) if p.phase == "end" and p.camera == "cam-1" and p.clip_id]
            return ends[0] if ends and ends[0].clip_id in clip_files(clips) else None

        assert wait_until(lambda: first_clip() is not None, 30), agent.log()
        held_event = first_clip()
        assert held_event is not None and held_event.clip_id is not None and held_event.ended_at is not None
        hold = police.clip_hold("cam-1", held_event.started_at, held_event.ended_at, iso(time.time() + 3600))
        held = set(hold["clip_ids"])
        assert held_event.clip_id in held

        # Let clips pile up well past the quota; sample the folder as it changes.
        def pressure() -> bool:
            nonlocal peak, biggest
            files = clip_files(clips)
            ever.update(files)
            peak = max(peak, sum(files.values()))
            biggest = max([biggest, *files.values()])
            return len(ever - set(files) - held) >= 3 and len(ever) >= 7

        assert wait_until(pressure, 45, step=0.05), f"retention deleted too little: {sorted(ever)}"
        ends_before = sum(p.phase == "end" for p in received(sub))
        assert wait_until(lambda: sum(p.phase == "end" for p in received(sub)) >= ends_before + 2, 15)
        telemetry = sub.on("/telemetry")[-1].json()
        code, _ = agent.terminate()
        assert code == 0
        quota_run = time.monotonic() - t0

        files = clip_files(clips)
        deleted = ever - set(files)
        assert sum(files.values()) <= QUOTA, files
        assert peak <= QUOTA + biggest, f"usage peaked at {peak} bytes, quota {QUOTA}, largest clip {biggest}"
        assert not held & deleted, f"held clips deleted: {held & deleted}"
        storage = telemetry["storage"]
        assert (
            storage["clips_bytes"] <= QUOTA and storage["clips_held_bytes"] > 0 and not storage["disk_full"]
        )
        assert telemetry["clips"]["written"] >= 4 and telemetry["clips"]["failed"] == 0

        # Now the disk is "full": free space can never reach an absurd floor of 1 PB.
        cfg = agent_config(
            tmp_path,
            unique_gateway,
            broker.port,
            cameras,
            f"clips_quota_bytes = {QUOTA}\nmin_free_bytes = {10**15}",
        )
        spawned = time.time()
        agent.close()
        agent = AgentProcess(cfg, tmp_path / "agent-disk-full.log")

        def disk_full_seen() -> bool:
            tel = [m.json() for m in sub.on("/telemetry")]
            return any(t.get("storage", {}).get("disk_full") and parse_iso(t["ts"]) > spawned for t in tel)

        assert wait_until(disk_full_seen, 20), agent.log()

        def flowing() -> bool:
            return any(p.phase == "end" and parse_iso(p.started_at) > spawned for p in received(sub))

        assert wait_until(flowing, 30), agent.log()

        def skipped() -> bool:
            tel = sub.on("/telemetry")[-1].json()
            return bool(tel["clips"]["skipped_disk_full"] >= 1 and parse_iso(tel["ts"]) > spawned)

        assert wait_until(skipped, 15), sub.on("/telemetry")[-1].json()
        statuses = [m.json() for m in sub.on("/cam/cam-1/status")]
        late_end = next(p for p in received(sub) if p.phase == "end" and parse_iso(p.started_at) > spawned)
        phantom = None
        if late_end.clip_id is not None:
            with pytest.raises(CommandFailed) as err:
                police.clip_fetch(late_end.clip_id, tmp_path / "never.mp4", timeout=10)
            phantom = err.value.code
        telemetry = sub.on("/telemetry")[-1].json()
        files = clip_files(clips)
    finally:
        police.close()
        agent.close()
        sub.close()

    storage = telemetry["storage"]
    assert storage["disk_full"] is True and "below the floor" in storage["disk_full_reason"], storage
    assert any(s["error"] and s["error"].startswith("disk full: clips paused") for s in statuses), statuses
    # Under disk pressure everything deletable went; the held clips stayed.
    assert set(files) == held, (set(files), held)
    assert phantom in (None, "not_found")
    phases = received(sub)
    assert_ordered(phases)
    print(
        f"\nclip quota {QUOTA} B: {len(ever)} clips on disk at some point, {len(deleted)} deleted, usage"
        f" peak {peak} B (largest clip {biggest} B), {len(held)} held and kept; quota run {quota_run:.1f} s;"
        f" disk full: end phase clip_id={late_end.clip_id is not None}, fetch -> {phantom}"
    )


# -- 5. clip content ----------------------------------------------------------------------------------


def read_video(path: Path) -> Iterator[np.ndarray[Any, np.dtype[np.uint8]]]:
    cap = cv2.VideoCapture(str(path))
    try:
        for _ in range(100_000):
            ok, img = cap.read()
            if not ok:
                return
            yield np.asarray(img, dtype=np.uint8)
    finally:
        cap.release()


def test_event_clip_has_pre_roll_and_privacy_mask(
    tmp_path: Path, videos: list[Path], unique_gateway: str, broker: Broker
) -> None:
    pre_roll, post_roll = 1.5, 0.5
    mask = "privacy_masks = [[[0.0, 0.0], [0.4, 0.0], [0.4, 0.45], [0.0, 0.45]]]\n"
    root = f"cctv/v1/{DISTRICT}/{unique_gateway}"
    sub = Subscriber(broker.host, broker.port, root + "/cam/+/event")
    cfg = agent_config(
        tmp_path,
        unique_gateway,
        broker.port,
        camera("cam-1", videos[0], pre_roll_s=pre_roll, post_roll_s=post_roll, extra=mask),
    )
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    out = tmp_path / "clip.mp4"
    try:
        assert wait_until(lambda: any(p.phase == "end" for p in received(sub)), 30), agent.log()
        end = next(p for p in received(sub) if p.phase == "end")
        assert end.clip_id is not None and end.ended_at is not None
        # The clip is written once the post-roll is buffered; the store renames the MP4 into place
        # under the lock that clip.fetch's lookup takes, so once it is there the fetch finds it.
        sidecar_path = tmp_path / "data" / "clips" / f"{end.clip_id}.json"
        assert wait_until(sidecar_path.with_suffix(".mp4").exists, 15), agent.log()
        with PlatformClient(broker.host, broker.port, root, agency="police", operator="officer-1") as police:
            result = police.clip_fetch(end.clip_id, out, timeout=15)
    finally:
        agent.close()
        sub.close()

    frames = list(read_video(out))
    assert frames and result["bytes"] == out.stat().st_size
    h, w = frames[0].shape[:2]
    assert (w, h) == SIZE
    # Privacy: inside the mask (a margin off its edge for the codec's blur) every pixel is black.
    x1, y1 = int(0.4 * w) - 4, int(0.45 * h) - 4
    for img in frames:
        assert int(img[2:y1, 2:x1].max()) <= 24 and float(img[2:y1, 2:x1].mean()) < 3.0
        assert float(img[y1 + 8 :, x1 + 8 :].mean()) > 40.0  # the unmasked street is not
    # Pre-roll: the clip lasts pre-roll + event + post-roll, and it opens with the empty street
    # (as in the video's first frame) for about the pre-roll before the pedestrian shows up.
    sidecar = json.loads(sidecar_path.read_text())
    duration = sidecar["frames"] / sidecar["fps"]
    event_s = parse_iso(end.ended_at) - parse_iso(end.started_at)
    assert duration >= event_s + post_roll + 0.7 * pre_roll, (duration, event_s)
    assert parse_iso(sidecar["start"]) <= parse_iso(end.started_at) - 0.7 * pre_roll
    empty = next(read_video(videos[0]))
    street = (slice(y1 + 8, h), slice(0, w))

    def differs(img: np.ndarray[Any, np.dtype[np.uint8]]) -> int:
        """Pixels of the street that changed a lot: a pedestrian, not noise or the codec."""
        change = cv2.cvtColor(cv2.absdiff(img[street], empty[street]), cv2.COLOR_BGR2GRAY)
        return int(np.count_nonzero(change > 40))

    changed = [differs(f) for f in frames]
    quiet = next(i for i, n in enumerate(changed) if n > 20)
    assert quiet >= 0.7 * pre_roll * sidecar["fps"] and max(changed) > 50, changed
