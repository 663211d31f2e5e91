"""Stream sessions: frames on the session topic with seq/ts, masks, limits, renew/stop, owner, expiry."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.commands.models import CommandError
from agent.commands.streams import StreamLimits, StreamManager
from agent.footage.images import encode_outgoing
from tests.test_commands_gateway import FakeGateway, Published, bikes_images, make_gateway

ROOT = "cctv/v1/gangnam/gw-01"


class Clock:
    """Wall clock for session expiry, moved by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def wait_for(gw: FakeGateway, suffix: str, count: int, timeout: float = 10.0) -> list[Published]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = gw.on(suffix)
        if len(got) >= count:
            return got
        time.sleep(0.01)
    raise AssertionError(f"only {len(gw.on(suffix))} of {count} messages on *{suffix}")


@pytest.fixture
def live(tmp_path: Path) -> FakeGateway:
    gw = make_gateway(tmp_path)
    gw.live = True
    return gw


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager(live: FakeGateway, clock: Clock) -> Iterator[StreamManager]:
    sm = StreamManager(live, clock=clock)
    sm.start()
    yield sm
    sm.stop()


def test_frames_arrive_in_order_with_seq_and_ts(live: FakeGateway, manager: StreamManager) -> None:
    info = manager.open("cam-1", owner="police", fps=30, max_width=320, quality=60, duration_s=60)
    assert info.topic == f"{ROOT}/cam/cam-1/stream/{info.session}"
    frames = wait_for(live, info.session, 5)
    assert [f.properties["seq"] for f in frames[:5] if f.properties] == ["0", "1", "2", "3", "4"]
    assert all(f.qos == 0 and not f.retain and f.kind == "snapshot" for f in frames)
    timestamps = [f.properties["ts"] for f in frames if f.properties]
    assert timestamps == sorted(timestamps)
    assert len(set(timestamps)) == len(timestamps)
    img = cv2.imdecode(np.frombuffer(frames[0].payload, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    assert img.shape == (136, 320, 3)
    assert int(img[34 + 16 : 102 - 16, 80 + 16 : 240 - 16].max()) == 0  # privacy mask, interior


def test_stop_ends_the_frames(live: FakeGateway, manager: StreamManager) -> None:
    info = manager.open("cam-1", owner="police", fps=30, max_width=160, quality=50, duration_s=60)
    wait_for(live, info.session, 2)
    manager.close(info.session, agency="police")
    count = len(live.on(info.session))
    time.sleep(0.2)
    assert len(live.on(info.session)) == count
    with pytest.raises(CommandError) as err:
        manager.close(info.session, agency="police")
    assert err.value.code == "not_found"


def test_only_the_owner_renews_and_stops_unless_overridden(live: FakeGateway, manager: StreamManager) -> None:
    info = manager.open("cam-2", owner="police", fps=30, max_width=160, quality=50, duration_s=60)
    assert info.owner == "police"
    with pytest.raises(CommandError) as renew:
        manager.renew(info.session, 600, agency="fire")
    with pytest.raises(CommandError) as close:
        manager.close(info.session, agency="fire")
    for err in (renew, close):
        assert err.value.code == "forbidden"
        assert "police" not in err.value.message
    running = manager.session(info.session)
    assert running is not None
    assert running.expires_at == info.expires_at
    count = len(wait_for(live, info.session, 1))
    assert len(wait_for(live, info.session, count + 2)) > count  # still streaming
    stopped = manager.close(info.session, agency="cityops", override=True)
    assert (stopped.session, stopped.owner) == (info.session, "police")
    assert manager.session(info.session) is None


def test_sessions_expire_on_their_own_and_renew_extends(
    live: FakeGateway, manager: StreamManager, clock: Clock
) -> None:
    a = manager.open("cam-1", owner="police", fps=10, max_width=160, quality=50, duration_s=10)
    b = manager.open("cam-2", owner="police", fps=10, max_width=160, quality=50, duration_s=10)
    wait_for(live, a.session, 1)
    clock.now += 8
    renewed = manager.renew(b.session, 30, agency="police")
    assert renewed.expires_at == pytest.approx(clock.now + 30)
    clock.now += 5  # a is past its 10 s, b renewed
    manager.wake()
    deadline = time.monotonic() + 5
    while manager.session(a.session) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [s.session for s in manager.sessions()] == [b.session]
    count = len(live.on(a.session))
    time.sleep(0.2)
    assert len(live.on(a.session)) == count  # no frames after expiry
    with pytest.raises(CommandError) as err:
        manager.renew(a.session, 10, agency="police")
    assert err.value.code == "not_found"


def test_session_limit_is_busy(live: FakeGateway, clock: Clock) -> None:
    sm = StreamManager(live, limits=StreamLimits(max_sessions=2), clock=clock)
    sm.start()
    try:
        sm.open("cam-1", owner="police", fps=5, max_width=160, quality=50, duration_s=60)
        second = sm.open("cam-2", owner="police", fps=5, max_width=160, quality=50, duration_s=60)
        with pytest.raises(CommandError) as err:
            sm.open("cam-1", owner="police", fps=5, max_width=160, quality=50, duration_s=60)
        assert err.value.code == "busy"
        assert "limit 2" in err.value.message
        sm.close(second.session, agency="police")
        sm.open("cam-1", owner="police", fps=5, max_width=160, quality=50, duration_s=60)  # room again
    finally:
        sm.stop()


def test_bandwidth_limit_is_busy(live: FakeGateway, clock: Clock) -> None:
    one = len(encode_outgoing(bikes_images()[-1], [], max_width=640, quality=90).data)
    sm = StreamManager(
        live, limits=StreamLimits(max_sessions=10, max_bytes_per_s=int(one * 25 * 1.5)), clock=clock
    )
    sm.start()
    try:
        sm.open("cam-2", owner="police", fps=25, max_width=640, quality=90, duration_s=60)  # ~one * 25
        with pytest.raises(CommandError) as err:
            sm.open("cam-2", owner="police", fps=25, max_width=640, quality=90, duration_s=60)
        assert err.value.code == "busy"
        assert "kB/s" in err.value.message
        # a small one still fits
        sm.open("cam-2", owner="police", fps=2, max_width=160, quality=30, duration_s=60)
    finally:
        sm.stop()


def test_not_running_is_busy(live: FakeGateway) -> None:
    sm = StreamManager(live)
    with pytest.raises(CommandError) as err:
        sm.open("cam-1", owner="police", fps=5, max_width=160, quality=50, duration_s=60)
    assert err.value.code == "busy"


def test_stop_joins_the_worker_and_clears_sessions(live: FakeGateway, clock: Clock) -> None:
    sm = StreamManager(live, clock=clock)
    sm.start()
    sm.open("cam-1", owner="police", fps=30, max_width=160, quality=50, duration_s=60)
    sm.stop()
    assert sm.sessions() == []
    assert not any(t.name == "commands.streams" and t.is_alive() for t in threading.enumerate())


def test_a_camera_that_stops_producing_sends_nothing_new(tmp_path: Path, clock: Clock) -> None:
    gw = make_gateway(tmp_path)  # not live: the newest frame never changes
    sm = StreamManager(gw, clock=clock)
    sm.start()
    try:
        info = sm.open("cam-1", owner="police", fps=30, max_width=160, quality=50, duration_s=60)
        wait_for(gw, info.session, 1)
        time.sleep(0.2)
        assert len(gw.on(info.session)) == 1
    finally:
        sm.stop()


def test_a_camera_without_frames_yet_can_be_streamed(tmp_path: Path, clock: Clock) -> None:
    gw = make_gateway(tmp_path)
    gw.frames["cam-1"] = []
    sm = StreamManager(gw, clock=clock)
    sm.start()
    try:
        info = sm.open("cam-1", owner="police", fps=5, max_width=640, quality=75, duration_s=60)
        assert info.bytes_per_s > 0  # estimated until real frames come
        assert [s.session for s in sm.sessions()] == [info.session]
        assert gw.on(info.session) == []
    finally:
        sm.stop()
