"""The link against real Mosquitto brokers: protocol `auto`, failure reasons, jittered reconnects,
two gateways with one client id, and a stop that logs no ERROR."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import MqttConfig
from agent.mqtt import MqttLink, Outbox
from agent.mqtt.reconnect import FullJitter, SpreadJitter, backoff_of
from agent.sdk.client import PlatformClient
from tests.conftest import Broker, free_port, start_mosquitto, stop_mosquitto
from tests.harness import Subscriber
from tests.mqtt_proxy import NoMqtt5Proxy

pytestmark = pytest.mark.broker

WILL = b'{"state":"offline","reason":"lost"}'


class Links:
    """Links a test starts; all stopped (and their outboxes closed) at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.made: list[tuple[MqttLink, Outbox]] = []

    def start(self, port: int, client_id: str, **mqtt: object) -> MqttLink:
        cfg = MqttConfig.model_validate({"host": "127.0.0.1", "port": port, **mqtt})
        outbox = Outbox(self.tmp / f"outbox-{len(self.made)}.db")
        link = MqttLink(cfg, client_id, outbox, f"{client_id}/status", WILL)
        link.set_online_message(f"{client_id}/status", b'{"state":"online"}')
        link.start()
        self.made.append((link, outbox))
        return link

    def stop_all(self) -> None:
        for link, outbox in self.made:
            link.stop()
            outbox.close()
        self.made.clear()


@pytest.fixture
def links(tmp_path: Path) -> Iterator[Links]:
    made = Links(tmp_path)
    yield made
    made.stop_all()


def lines(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and text in r.getMessage()]


def wait_until(predicate: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# -- full jitter ----------------------------------------------------------------------------------


def test_full_jitter_waits_are_random_under_a_doubling_cap() -> None:
    backoff = FullJitter(0.5, 30.0, random.Random(7))
    caps, waits = [], []
    for _ in range(8):
        caps.append(backoff.cap())
        waits.append(backoff.next_wait())
    assert caps == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert all(0 <= w <= c for w, c in zip(waits, caps, strict=True))
    backoff.reset()
    assert backoff.cap() == 0.5
    # The first wait after a lost connection is spread too: 1,000 gateways, not one instant.
    firsts = [FullJitter(0.5, 30.0, random.Random(i)).next_wait() for i in range(1000)]
    per_tenth = [sum(1 for w in firsts if k / 10 <= w < (k + 1) / 10) for k in range(5)]
    assert max(per_tenth) < 260 and min(per_tenth) > 140, per_tenth


def fleet_return(policy: Callable[[random.Random], object], n: int, back_at: float) -> list[float]:
    """When each of `n` gateways that lost the broker at 0 first tries after `back_at` (the broker
    returned then), attempts taking no time: the return the policy gives a fleet."""
    times = []
    for i in range(n):
        backoff = policy(random.Random(i))
        t = 0.0
        while t < back_at:
            t += backoff.next_wait()  # type: ignore[attr-defined]
        times.append(t - back_at)
    return sorted(times)


def peak_share(times: list[float], n: int) -> float:
    """The largest share of `n` returning within any one second (a sliding window)."""
    j, peak = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - 1.0:
            j += 1
        peak = max(peak, i - j + 1)
    return peak / n


@pytest.mark.parametrize("outage_s", [1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0])
def test_spread_jitter_keeps_any_second_under_a_tenth_of_the_fleet(outage_s: float) -> None:
    n = 1000
    spread = fleet_return(lambda rng: SpreadJitter(0.5, 20.0, 30.0, rng), n, outage_s)
    assert peak_share(spread, n) <= 0.10, peak_share(spread, n)
    assert spread[-1] <= 30.0  # no gateway waits longer than reconnect_max_s between attempts
    if outage_s == 5.0:  # what full jitter did (and the fleet bench measured: 32 %)
        full = fleet_return(lambda rng: FullJitter(0.5, 30.0, rng), n, outage_s)
        assert peak_share(full, n) > 0.2


def test_spread_jitter_waits() -> None:
    backoff = SpreadJitter(0.5, 20.0, 30.0, random.Random(3))
    waits = [backoff.next_wait() for _ in range(6)]
    assert 0 <= waits[0] <= 0.5  # a blip costs at most reconnect_min_s
    assert 0 <= waits[1] <= 0.5 + 20.0
    assert all(20.0 <= w <= 30.0 for w in waits[2:4]) and all(w == pytest.approx(30.0) for w in waits[4:])
    backoff.reset()
    assert backoff.next_wait() <= 0.5
    # Attempts of the whole fleet (after its first one) land one per window at a uniform phase.
    starts = []
    for i in range(1000):
        b = SpreadJitter(0.5, 20.0, 30.0, random.Random(i))
        starts.append(b.next_wait() + b.next_wait())
    per_5s = [sum(1 for t in starts if 0.5 + 5 * k <= t < 0.5 + 5 * (k + 1)) for k in range(4)]
    assert all(200 <= c <= 300 for c in per_5s), per_5s
    assert isinstance(backoff_of(0.5, 0.0, 30.0), FullJitter)  # reconnect_spread_s = 0: as before


def test_a_fleet_returns_spread_after_its_broker_restarts(tmp_path: Path, links: Links) -> None:
    port = free_port()
    broker = start_mosquitto(tmp_path / "b1", port)
    fleet = [links.start(port, f"gw-j{i}", reconnect_min_s=1.0, reconnect_max_s=4.0) for i in range(10)]
    try:
        assert all(link.wait_connected(10) for link in fleet)
        stop_mosquitto(broker)
        assert wait_until(lambda: not any(link.connected for link in fleet), 5)
        time.sleep(1.0)
        broker = start_mosquitto(tmp_path / "b2", port)
        back: dict[int, float] = {}
        t0 = time.monotonic()
        while len(back) < len(fleet) and time.monotonic() - t0 < 20:
            for i, link in enumerate(fleet):
                if link.connected and i not in back:
                    back[i] = time.monotonic() - t0
            time.sleep(0.01)
    finally:
        stop_mosquitto(broker)
    assert len(back) == len(fleet), "every gateway came back within 20 s"
    times = sorted(back.values())
    # Without jitter (paho's own backoff) all ten returned within a few milliseconds of each other.
    assert times[-1] - times[0] > 0.5, times
    assert max(link.stats.connects for link in fleet) == 2


# -- protocol auto and failure reasons ------------------------------------------------------------


def test_auto_falls_back_to_311_when_the_broker_closes_after_an_mqtt5_connect(
    broker: Broker, unique_gateway: str, links: Links, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = NoMqtt5Proxy(broker.port)
    sub = Subscriber(broker.host, broker.port, f"{unique_gateway}/#")
    try:
        link = links.start(proxy.port, unique_gateway, reconnect_min_s=0.1)
        assert link.wait_connected(10)
        link.publish(f"{unique_gateway}/cam/c/event", b"{}", kind="event", properties={"event_id": "e"})
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/event") for m in ms), 10)
        assert link.stats.protocol == "3.1.1" and not link.v5
        assert proxy.refused == 1
        (event,) = sub.on("/event")
        assert event.user_properties == {}  # 3.1.1 carries none
        fallback = lines(caplog, logging.WARNING, "refused MQTT 5")
        assert len(fallback) == 1 and "3.1.1" in fallback[0]
        assert lines(caplog, logging.WARNING, "cannot connect") == []  # the fallback is no failure
    finally:
        links.stop_all()
        sub.close()
        proxy.stop()


def test_the_platform_client_negotiates_the_same_way(broker: Broker, unique_gateway: str) -> None:
    proxy = NoMqtt5Proxy(broker.port)
    try:
        for port, expected in ((proxy.port, "3.1.1"), (broker.port, "5")):
            client = PlatformClient("127.0.0.1", port, f"cctv/v1/d/{unique_gateway}", agency="police",
                                    operator="op", protocol="auto")  # fmt: skip
            with client:
                assert client.protocol == expected and client.v5 == (expected == "5")
    finally:
        proxy.stop()


def test_explicit_mqtt5_against_such_a_broker_says_why_once(
    broker: Broker, unique_gateway: str, links: Links, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    proxy = NoMqtt5Proxy(broker.port)
    try:
        link = links.start(
            proxy.port, unique_gateway, protocol="5", reconnect_min_s=0.05, reconnect_max_s=0.2
        )
        assert wait_until(lambda: proxy.refused >= 8, 10)
        assert not link.connected
    finally:
        links.stop_all()
        proxy.stop()
    warned = lines(caplog, logging.WARNING, "cannot connect")
    assert len(warned) == 1, warned  # rate-limited: one line per reason per minute
    assert "closed the connection right after CONNECT" in warned[0]


def test_each_failure_reason_is_a_warning_once(
    tmp_path: Path, links: Links, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    passwd = tmp_path / "passwd"
    passwd.touch(mode=0o600)
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "gw", "secret"], check=True, timeout=30)
    # As root, mosquitto would drop to its own user, which cannot read the test's private folder.
    stay = "user root\n" if os.geteuid() == 0 else ""
    secured = start_mosquitto(tmp_path / "auth", extra=f"{stay}password_file {passwd}\n")
    closed = free_port()
    try:
        fast = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.2}
        links.start(secured.port, "gw-bad-pw", username="gw", password="wrong", **fast)
        links.start(closed, "gw-nobody", **fast)
        good = links.start(secured.port, "gw-good", username="gw", password="secret", **fast)
        assert good.wait_connected(10)
        time.sleep(2.0)  # tens of attempts each
    finally:
        links.stop_all()
        stop_mosquitto(secured)
    bad = lines(caplog, logging.WARNING, "bad credentials")  # Mosquitto says "not authorized"
    refused = lines(caplog, logging.WARNING, "connection refused")
    assert len(bad) == 1 and f":{secured.port}" in bad[0]
    assert len(refused) == 1 and f":{closed}" in refused[0]


# -- two gateways, one identity -------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_second_gateway_with_the_same_client_id_is_named_at_error_and_backs_off(
    broker: Broker, unique_gateway: str, links: Links, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    caplog.set_level(logging.INFO)
    common = {"protocol": protocol, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "takeover_backoff_s": 30}
    first = links.start(broker.port, unique_gateway, **common)
    assert first.wait_connected(10)
    second = links.start(broker.port, unique_gateway, **common)
    assert wait_until(lambda: lines(caplog, logging.ERROR, "took this gateway's MQTT session"), 20)
    errors = lines(caplog, logging.ERROR, "took this gateway's MQTT session")
    time.sleep(2.0)  # a clone backing off leaves the other connected, instead of flapping every second
    connects = first.stats.connects + second.stats.connects
    time.sleep(2.0)
    assert first.stats.connects + second.stats.connects == connects
    assert first.connected or second.connected
    assert unique_gateway in errors[0] and "cloned" in errors[0]
    assert (
        len(set(lines(caplog, logging.ERROR, "took this gateway's MQTT session"))) <= 2
    )  # once a minute each
    assert first.stats.takeovers + second.stats.takeovers >= 1


def test_quick_broker_restarts_are_not_taken_for_a_twin(
    tmp_path: Path, links: Links, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    broker = start_mosquitto(tmp_path / "b0", port)
    link = links.start(port, "gw-restarts", protocol="3.1.1", reconnect_min_s=0.1, reconnect_max_s=0.3)
    try:
        for i in range(4):  # each connection ends within a second or two of its CONNACK
            assert link.wait_connected(10)
            stop_mosquitto(broker)
            assert wait_until(lambda: not link.connected, 5)
            time.sleep(0.5)
            broker = start_mosquitto(tmp_path / f"b{i + 1}", port)
        assert link.wait_connected(10)
    finally:
        links.stop_all()
        stop_mosquitto(broker)
    assert link.stats.takeovers == 0
    assert lines(caplog, logging.ERROR, "") == []


# -- a clean stop ---------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["auto", "3.1.1"])
def test_a_clean_stop_logs_no_error(
    broker: Broker, unique_gateway: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = MqttConfig.model_validate({"host": broker.host, "port": broker.port, "protocol": protocol})
    outbox = Outbox(tmp_path / "outbox.db")
    link = MqttLink(cfg, unique_gateway, outbox, f"{unique_gateway}/status", WILL)
    link.start()
    assert link.wait_connected(10)
    link.publish(f"{unique_gateway}/x", b"1", kind="event")
    t0 = time.monotonic()
    link.stop(final=(f"{unique_gateway}/status", b'{"state":"offline"}'))
    took = time.monotonic() - t0
    outbox.close()
    assert not link.alive() and took < 5
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_stop_while_the_broker_is_unreachable_is_quick_and_quiet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = MqttConfig.model_validate({"host": "127.0.0.1", "port": free_port()})
    outbox = Outbox(tmp_path / "outbox.db")
    link = MqttLink(cfg, "gw-alone", outbox, "gw-alone/status", WILL)
    link.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    link.stop(final=("gw-alone/status", b"{}"))
    outbox.close()
    assert time.monotonic() - t0 < 5 and not link.alive()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
