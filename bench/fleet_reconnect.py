"""A fleet of gateways losing its broker together: how they come back, with and without jitter.

N gateways in this process share one Mosquitto on loopback. The broker is killed (SIGKILL) and
started again on the same port after `--down` seconds; the bench polls every gateway's
connection state every 5 ms and prints, per variant:

- `all back s`: from the restart until the last gateway is connected again;
- `peak 1 s`: the largest share of the fleet that connected within any one second (a sliding
  window): the burst of handshakes the broker (and its TLS) must absorb at once;
- `p50 / p90 s`: when half, and nine in ten, of the fleet were back.

Variants: `paho backoff` is the agent before issue 16 (paho's own reconnect: 1 s doubling to
30 s, no jitter); `full jitter` is `MqttLink` as shipped (agent.mqtt.reconnect), with the
configured `reconnect_min_s` / `reconnect_max_s`.

    .venv/bin/python bench/fleet_reconnect.py                 # N = 100, 5 s outage
    .venv/bin/python bench/fleet_reconnect.py --gateways 300 --down 10 --min 1 --max 60

Bounded: each variant gives up `--give-up` seconds after the restart and reports who is missing.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import MqttConfig
from agent.mqtt import MqttLink, Outbox
from tests.conftest import Broker, free_port, start_mosquitto, stop_mosquitto

WILL = b'{"state":"offline","reason":"lost"}'


class Fleet:
    """N connections and a way to ask which are up; `close()` stops them all."""

    def __init__(self, connected: list[Callable[[], bool]], close: Callable[[], None]) -> None:
        self.connected = connected
        self.close = close


def paho_fleet(n: int, port: int) -> Fleet:
    clients = []
    for i in range(n):
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-paho-{i}", protocol=MQTTProtocolVersion.MQTTv5
        )
        c.reconnect_delay_set(1, 30)  # what the agent asked paho for before (0.5 rounded up)
        c.will_set(f"bench/paho-{i}/status", WILL, qos=1, retain=True)
        c.connect_async("127.0.0.1", port, keepalive=30)
        c.loop_start()
        clients.append(c)

    def close() -> None:
        for c in clients:
            c.disconnect()
            c.loop_stop()

    return Fleet([c.is_connected for c in clients], close)


def link_fleet(n: int, port: int, tmp: Path, min_s: float, max_s: float) -> Fleet:
    links: list[tuple[MqttLink, Outbox]] = []
    cfg = MqttConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "protocol": "5",
            "reconnect_min_s": min_s,
            "reconnect_max_s": max_s,
        }
    )
    for i in range(n):
        outbox = Outbox(tmp / f"outbox-{i}.db")
        link = MqttLink(cfg, f"bench-link-{i}", outbox, f"bench/link-{i}/status", WILL)
        link.set_online_message(f"bench/link-{i}/status", b'{"state":"online"}')
        link.start()
        links.append((link, outbox))

    def close() -> None:
        for link, outbox in links:
            link.stop(timeout=0.5)
            outbox.close()

    def is_up(link: MqttLink) -> Callable[[], bool]:
        return lambda: link.connected

    return Fleet([is_up(link) for link, _ in links], close)


def wait_all(fleet: Fleet, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(up() for up in fleet.connected):
            return True
        time.sleep(0.05)
    return False


def outage(fleet: Fleet, broker: Broker, workdir: Path, down_s: float, give_up_s: float) -> dict[str, object]:
    """Kill the broker, restart it after `down_s`, and time the fleet's return."""
    n = len(fleet.connected)
    os.kill(broker.process.pid, signal.SIGKILL)
    broker.process.wait(5)
    deadline = time.monotonic() + 10
    while any(up() for up in fleet.connected) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(max(0.0, down_s - 0.5))
    restarted = start_mosquitto(workdir, port=broker.port)
    t0 = time.monotonic()
    back: dict[int, float] = {}
    while len(back) < n and time.monotonic() - t0 < give_up_s:
        for i, up in enumerate(fleet.connected):
            if i not in back and up():
                back[i] = time.monotonic() - t0
        time.sleep(0.005)
    times = sorted(back.values())
    peak = 0
    j = 0
    for i, t in enumerate(times):  # sliding one-second window
        while times[j] < t - 1.0:
            j += 1
        peak = max(peak, i - j + 1)
    return {
        "broker": restarted,
        "back": len(times),
        "all": times[-1] if len(times) == n else None,
        "p50": times[n // 2] if len(times) > n // 2 else None,
        "p90": times[(n * 9) // 10] if len(times) > (n * 9) // 10 else None,
        "peak": peak / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=100, help="fleet size (1-2000)")
    parser.add_argument("--down", type=float, default=5.0, help="seconds the broker stays down")
    parser.add_argument("--min", type=float, default=0.5, help="mqtt.reconnect_min_s of the jittered fleet")
    parser.add_argument("--max", type=float, default=30.0, help="mqtt.reconnect_max_s of the jittered fleet")
    parser.add_argument(
        "--give-up", type=float, default=90.0, help="seconds after the restart to stop waiting"
    )
    args = parser.parse_args()
    n = max(1, min(args.gateways, 2000))
    logging.basicConfig(level=logging.ERROR)  # the fleet's WARNINGs about the outage are expected

    rows = []
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp_name:
        tmp = Path(tmp_name)
        variants: list[tuple[str, Callable[[int], Fleet]]] = [
            ("paho backoff (before)", lambda port: paho_fleet(n, port)),
            (
                f"full jitter {args.min:g}-{args.max:g} s",
                lambda port: link_fleet(n, port, tmp, args.min, args.max),
            ),
        ]
        for name, make in variants:
            port = free_port()
            workdir = tmp / f"broker-{port}"
            broker = start_mosquitto(workdir, port=port, extra="max_connections -1\n")
            fleet = make(port)
            try:
                if not wait_all(fleet, 60):
                    print(f"{name}: the fleet did not connect in 60 s", file=sys.stderr)
                    continue
                result = outage(fleet, broker, workdir, args.down, args.give_up)
                broker = result.pop("broker")  # type: ignore[assignment]
                rows.append((name, result))
            finally:
                fleet.close()
                stop_mosquitto(broker)

    def s(v: object) -> str:
        return "-" if v is None else f"{v:.2f}"

    print(f"\nfleet of {n} on one Mosquitto (loopback), SIGKILL, restart after {args.down:g} s\n")
    print(f"| {'variant':<26} | back | all back s | p50 s | p90 s | peak 1 s |")
    print(f"|{'-' * 28}|------|------------|-------|-------|----------|")
    for name, r in rows:
        peak = float(r["peak"])  # type: ignore[arg-type]
        print(
            f"| {name:<26} | {r['back']:>4} | {s(r['all']):>10} | {s(r['p50']):>5} | {s(r['p90']):>5} |"
            f" {peak:>7.0%} |"
        )


if __name__ == "__main__":
    main()
