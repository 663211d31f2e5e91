"""The packet ring: whole GOPs of real H.264, bounded by time and bytes, safe across threads."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from agent.capture.packets import StreamPacket
from agent.config import parse_config
from agent.footage.packet_ring import OVERSIZE, PacketRing
from agent.footage.remux import remux_span
from tests.test_remux import T0, demux, encode, probe


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[StreamPacket]:
    """8 s at 25 fps, a keyframe each second, as RTSP delivers them (Annex-B)."""
    return demux(encode(tmp_path_factory.mktemp("ring") / "cam.ts", seconds=8.0))


def assert_whole_gops(ring: PacketRing) -> None:
    held = ring.since(float("-inf"))
    assert held[0][1].keyframe
    seqs = [s for s, _ in held]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_a_ring_starts_at_a_keyframe_and_numbers_packets(packets: list[StreamPacket]) -> None:
    ring = PacketRing(seconds=10, max_bytes=64 << 20)
    assert [ring.push(p) for p in packets[3:25]] == [-1] * 22  # joined mid-GOP
    assert ring.push(packets[25]) == 0
    assert ring.push(packets[26]) == 1
    assert len(ring) == 2
    assert ring.oldest_ts == ring.oldest_ts  # a method, not a value
    assert ring.oldest_ts() == packets[25].ts
    assert ring.newest() is packets[26]
    ring.clear()
    assert (len(ring), ring.newest(), ring.oldest_ts()) == (0, None, None)
    assert ring.push(packets[27]) == -1  # after clear: wait for a keyframe again
    assert ring.push(packets[50]) == 2  # numbers go on
    assert ring.stats().pushed == 26


def test_time_eviction_keeps_whole_gops_covering_the_seconds(packets: list[StreamPacket]) -> None:
    ring = PacketRing(seconds=2.5, max_bytes=64 << 20)
    for p in packets:
        ring.push(p)
    stats = ring.stats()
    assert_whole_gops(ring)
    # Newest at 7.96 s: keep from the keyframe at or before 5.46 s, i.e. 5.0 s.
    assert ring.oldest_ts() == pytest.approx(T0 + 5.0)
    assert stats.packets == 75
    assert stats.keyframes == 3
    assert stats.span_s == pytest.approx(2.96)
    assert stats.evicted_for_bytes == 0
    assert stats.bytes_used == sum(p.size for p in packets[125:])


def test_byte_budget_drops_oldest_gops_but_keeps_the_newest_whole(packets: list[StreamPacket]) -> None:
    gops = [sum(p.size for p in packets[i : i + 25]) for i in range(0, len(packets), 25)]
    gop = max(gops)
    ring = PacketRing(seconds=60, max_bytes=int(gop * 2.5))
    for p in packets:
        ring.push(p)
    stats = ring.stats()
    assert_whole_gops(ring)
    assert stats.bytes_used <= ring.max_bytes
    assert stats.keyframes >= 2
    assert stats.evicted_for_bytes > 0
    assert stats.evicted_for_bytes % 25 == 0  # whole GOPs of 25 packets
    assert stats.packets + stats.evicted_for_bytes == len(packets)
    # A budget smaller than one GOP still keeps the newest GOP whole.
    tiny = PacketRing(seconds=60, max_bytes=sum(p.size for p in packets[25:40]) // 2)
    for p in packets[:40]:
        tiny.push(p)
    assert len(tiny) == 15
    assert tiny.stats().bytes_used > tiny.max_bytes
    assert_whole_gops(tiny)


def test_a_stream_without_keyframes_cannot_grow_the_ring_without_bound(packets: list[StreamPacket]) -> None:
    first = packets[0]
    ring = PacketRing(seconds=60, max_bytes=20_000)
    ring.push(first)
    pushed = 0
    for i in range(1, 2000):  # a camera that never sends another keyframe
        p = packets[1 + i % 24]
        ring.push(replace(p, ts=first.ts + i / 25))
        pushed += p.size
        assert ring.stats().bytes_used <= OVERSIZE * ring.max_bytes + p.size
    assert pushed > 10 * OVERSIZE * ring.max_bytes
    assert ring.stats().evicted_for_bytes > 0


def test_since_starts_at_the_keyframe_at_or_before_t0(packets: list[StreamPacket]) -> None:
    ring = PacketRing(seconds=5, max_bytes=64 << 20)
    seqs = [ring.push(p) for p in packets]
    got = ring.since(T0 + 4.5)
    assert got[0][1].ts == pytest.approx(T0 + 4.0)
    assert got[0][1].keyframe
    assert got[-1][1] is packets[-1]
    assert ring.since(T0 + 4.0)[0][1].ts == pytest.approx(T0 + 4.0)
    assert ring.since(T0 - 100)[0][1].ts == ring.oldest_ts()  # older than the ring: its oldest
    assert ring.since(T0 + 100)[0][1].ts == pytest.approx(T0 + 7.0)
    # after(): what came since a sequence number; a hole shows as a jump in seq.
    assert [s for s, _ in ring.after(seqs[-3])] == seqs[-2:]
    assert ring.after(seqs[-1]) == []
    assert ring.oldest_ts() == pytest.approx(T0 + 2.0)
    assert ring.after(0)[0][0] == 50  # packets 1..49 were evicted: the hole is visible


def test_packets_from_the_ring_make_a_playable_clip(tmp_path: Path, packets: list[StreamPacket]) -> None:
    ring = PacketRing(seconds=3, max_bytes=64 << 20)
    for p in packets:
        ring.push(p)
    result = remux_span([p for _, p in ring.since(T0 + 5.5)], T0 + 5.5, T0 + 8.0, tmp_path / "c.mp4")
    assert result.first_ts == pytest.approx(T0 + 5.0)
    assert int(str(probe(tmp_path / "c.mp4")["nb_read_frames"])) == 75


def test_sessions_and_a_clock_stepping_back_keep_arrival_order(packets: list[StreamPacket]) -> None:
    ring = PacketRing(seconds=4, max_bytes=64 << 20)
    for p in packets[:75]:
        ring.push(p)
    # The camera restarts and NTP steps the clock back an hour: a new session, older wall times.
    later = [replace(p, ts=p.ts - 3600.0, info=replace(p.info, session=2)) for p in packets[:50]]
    for p in later:
        ring.push(p)
    held = ring.since(float("-inf"))
    assert [s for s, _ in held] == list(range(held[0][0], held[0][0] + len(held)))
    assert held[-1][1] is later[-1]
    # t0 on the newest clock: from the new session's keyframe at or before it.
    got = ring.since(later[30].ts)
    assert got[0][1] is later[25]
    assert {p.info.session for _, p in got} == {2}
    # Time eviction follows arrival: the old session leaves once 4 s of the new one arrived.
    for p in packets[50:150]:
        ring.push(replace(p, ts=p.ts - 3600.0, info=replace(p.info, session=2)))
    assert {p.info.session for _, p in ring.since(float("-inf"))} == {2}
    assert ring.stats().span_s < 6


def test_for_camera_uses_the_buffer_section() -> None:
    cfg = parse_config(
        {
            "gateway": {"id": "gw-1", "district": "d1"},
            "cameras": [
                {
                    "id": "cam-1",
                    "source": "synthetic:street",
                    "buffer": {"pre_event_s": 7, "max_bytes": 8 << 20},
                }
            ],
        }
    )
    ring = PacketRing.for_camera(cfg.cameras[0])
    assert (ring.seconds, ring.max_bytes) == (7.0, 8 << 20)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="seconds"):
        PacketRing(seconds=0, max_bytes=10)
    with pytest.raises(ValueError, match="max_bytes"):
        PacketRing(seconds=1, max_bytes=0)


def test_readers_on_other_threads_always_see_whole_gops(packets: list[StreamPacket]) -> None:
    ring = PacketRing(seconds=2, max_bytes=200_000)
    stop = threading.Event()
    problems: list[str] = []

    def read() -> None:
        while not stop.is_set():
            held = ring.since(float("-inf"))
            if held and not held[0][1].keyframe:
                problems.append(f"ring starts at a non-keyframe, seq {held[0][0]}")
            seqs = [s for s, _ in held]
            if seqs != list(range(seqs[0], seqs[0] + len(seqs))) if seqs else False:
                problems.append("a hole inside the ring")

    readers = [threading.Thread(target=read, name=f"test.ring-reader-{i}") for i in range(2)]
    for t in readers:
        t.start()
    try:
        for lap in range(5):
            for p in packets:
                ring.push(replace(p, ts=p.ts + lap * 8.0))
    finally:
        stop.set()
        for t in readers:
            t.join(5)
    assert not any(t.is_alive() for t in readers)
    assert problems == []
    assert ring.stats().pushed == 5 * len(packets)
