"""clip.export by remux: recordings and the packet ring give the same bytes for the same span,
recorded packets are adopted atomically with their gaps, other formats are not mixed in."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agent.capture.packets import StreamPacket
from agent.footage.clips import ClipError
from agent.footage.packet_ring import PacketRing
from agent.footage.remux import ClipWriter
from agent.footage.store import ClipStore
from tests.test_clips import buffered
from tests.test_remux import T0, demux, encode, probe


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[StreamPacket]:
    return demux(encode(tmp_path_factory.mktemp("exp") / "cam.ts", seconds=8.0))


def ring_of(packets: list[StreamPacket]) -> list[StreamPacket]:
    ring = PacketRing(seconds=30, max_bytes=64 << 20)
    for p in packets:
        ring.push(p)
    return [p for _, p in ring.since(float("-inf"))]


def record(store: ClipStore, packets: list[StreamPacket], clip_id: str, event_id: str = "ev-1") -> None:
    """An event recording as the packet recorder makes it: part file, ClipWriter, adopt."""
    writer = ClipWriter(store.part_path(clip_id))
    for p in packets:
        writer.add(p)
    store.adopt(clip_id, "cam-1", writer.close(), event_id=event_id, source="event")


ID1 = "11111111-1111-4111-8111-111111111111"
ID2 = "22222222-2222-4222-8222-222222222222"


def test_the_same_span_gives_the_same_bytes_from_the_ring_and_from_recordings(
    tmp_path: Path, packets: list[StreamPacket]
) -> None:
    store = ClipStore(tmp_path / "clips")
    ring = ring_of(packets)
    a = store.export_packets("cam-1", T0 + 1.5, T0 + 3.5, ring)
    b = store.export_packets("cam-1", T0 + 1.5, T0 + 3.5, ring)
    assert a.sha256 == b.sha256
    assert (a.codec, a.width, a.height, a.fps, a.source) == ("h264", 640, 272, 25.0, "export")
    assert a.start == pytest.approx(T0 + 1.0)  # the keyframe at or before the start
    p = probe(store.path(a.clip_id))
    assert int(str(p["nb_read_frames"])) == a.frames == 63
    # An event recorded those packets; later the span has left the ring: recordings only.
    record(store, packets[:150], ID1)
    c = store.export_packets("cam-1", T0 + 1.5, T0 + 3.5, [])
    assert c.sha256 == a.sha256
    # Recording plus what the ring holds beyond it: both, spliced at a keyframe, and repeatable.
    d = store.export_packets("cam-1", T0 + 4.5, T0 + 7.5, ring[120:])
    e = store.export_packets("cam-1", T0 + 4.5, T0 + 7.5, ring[120:])
    assert d.sha256 == e.sha256
    assert d.gaps == ()
    assert d.start == pytest.approx(T0 + 4.0)
    assert int(str(probe(store.path(d.clip_id))["nb_read_frames"])) == d.frames == 88
    assert ClipStore(tmp_path / "clips").get(d.clip_id).sha256 == d.sha256  # the scan accepts it


def test_adopt_writes_sidecar_with_gaps_and_part_files_are_private(
    tmp_path: Path, packets: list[StreamPacket]
) -> None:
    store = ClipStore(tmp_path / "clips")
    part = store.part_path(ID1)
    assert part.name == f"{ID1}.part.mp4"
    assert os.stat(part).st_mode & 0o777 == 0o600
    second = demux_again(packets[:50], start=packets[49].ts + 2.0)
    writer = ClipWriter(part)
    for p in packets[:50] + second:
        writer.add(p)
    info = store.adopt(ID1, "cam-1", writer.close(), event_id="ev-9", source="event")
    assert not part.exists()
    assert info.gaps == ((packets[49].ts, second[0].ts),)
    sidecar = json.loads((tmp_path / "clips" / f"{ID1}.json").read_text())
    assert len(sidecar["gaps"]) == 1
    assert (sidecar["frames"], sidecar["codec"], sidecar["width"]) == (100, "h264", 640)
    again = ClipStore(tmp_path / "clips").get(ID1)
    assert again.gaps[0][0] == pytest.approx(packets[49].ts, abs=1e-3)
    # An id already stored cannot be adopted again.
    writer = ClipWriter(store.part_path(ID2))
    for p in packets[:25]:
        writer.add(p)
    with pytest.raises(ClipError) as err:
        store.adopt(ID1, "cam-1", writer.close(), event_id=None, source="event")
    assert err.value.code == "bad_request"


def demux_again(packets: list[StreamPacket], start: float) -> list[StreamPacket]:
    """The same packets as a new session of the camera starting at `start`."""
    info = replace(packets[0].info, session=packets[0].info.session + 1)
    return [replace(p, ts=start + (p.ts - packets[0].ts), info=info) for p in packets]


def test_a_pixel_path_recording_is_not_mixed_with_packets(
    tmp_path: Path, packets: list[StreamPacket]
) -> None:
    store = ClipStore(tmp_path / "clips")
    # A re-encoded recording (320x180, libx264 or mp4v) of the first seconds.
    store.export("cam-1", T0, T0 + 3.0, buffered(3.0, start=T0), source="event")
    info = store.export_packets("cam-1", T0, T0 + 6.0, ring_of(packets[50:]))
    assert (info.width, info.height) == (640, 272)
    assert info.start == pytest.approx(T0 + 2.0)  # the ring's footage only


def test_export_errors(tmp_path: Path, packets: list[StreamPacket]) -> None:
    store = ClipStore(tmp_path / "clips")
    ring = ring_of(packets)
    for start, end, code in [(T0 + 50, T0 + 60, "not_found"), (T0 + 2, T0 + 1, "bad_request"),
                             (T0, T0 + 601, "bad_request")]:  # fmt: skip
        with pytest.raises(ClipError) as err:
            store.export_packets("cam-1", start, end, ring)
        assert err.value.code == code
    assert store.clips() == []
    assert [p.name for p in (tmp_path / "clips").iterdir() if p.suffix == ".mp4"] == []


class SlowRing(list[StreamPacket]):
    """A ring whose reading waits until told: an export that takes its time."""

    def __init__(self, items: list[StreamPacket], gate: threading.Event, entered: threading.Event) -> None:
        super().__init__(items)
        self.gate = gate
        self.entered = entered

    def __iter__(self) -> Iterator[StreamPacket]:
        self.entered.set()
        self.gate.wait(10)
        return super().__iter__()


def test_a_second_export_while_one_runs_is_busy_but_event_clips_are_not(
    tmp_path: Path, packets: list[StreamPacket]
) -> None:
    store = ClipStore(tmp_path / "clips")
    gate, entered = threading.Event(), threading.Event()
    slow = SlowRing(ring_of(packets), gate, entered)
    results: list[object] = []
    worker = threading.Thread(
        target=lambda: results.append(store.export_packets("cam-1", T0 + 1, T0 + 2, slow)), name="test.export"
    )
    worker.start()
    try:
        assert entered.wait(10)
        with pytest.raises(ClipError) as err:
            store.export_packets("cam-1", T0 + 1, T0 + 2, ring_of(packets))
        assert err.value.code == "busy"
        event = store.export_packets("cam-1", T0 + 1, T0 + 2, ring_of(packets), source="event", event_id="e")
        assert event.source == "event"
    finally:
        gate.set()
        worker.join(10)
    assert not worker.is_alive()
    assert len(results) == 1
