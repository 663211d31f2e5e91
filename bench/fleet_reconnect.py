"""A fleet of gateways losing its broker together: how it comes back, with each reconnect policy.

The broker (Mosquitto, or RabbitMQ with its MQTT plugin) is killed (SIGKILL) and started again
on the same port `--down` seconds later (RabbitMQ: as soon as it has started again, 10-30 s).
The fleet is `edge-agent simulate` (N gateways, the agent's own link and outbox, in shards of
120 per process), `edge-agent run` processes (`--agents`, real agents with one synthetic camera),
or paho's own reconnect (the agent before issue 16). Per variant it prints:

- `all back s`: from the restart until the last gateway connected again;
- `peak 1 s`: the largest share of the fleet that connected within any one second (a sliding
  window): the burst of handshakes the broker (and its TLS) must absorb at once (goal <= 10 %);
- `p50 / p90 s`: when half, and nine in ten, of the fleet were back;
- `outage events`: event phases produced while a gateway was offline, and how many of them the
  platform (a subscriber connected right after the restart) received;
- `broker CPU`: the broker's peak CPU (% of one core, 1 s samples) from the restart until the
  fleet was back and its outboxes drained.

Connection times come from the simulator's report (wall clock at each CONNACK); for real agents
and paho, from the platform's view (a gateway's `online` status arriving, a few ms later).

    .venv/bin/python bench/fleet_reconnect.py                          # N = 1000, 5 s outage
    .venv/bin/python bench/fleet_reconnect.py --broker rabbitmq
    .venv/bin/python bench/fleet_reconnect.py --variants agents --agents 20
    .venv/bin/python bench/fleet_reconnect.py --variants agents --agents 100 --agent-cameras 0
    .venv/bin/python bench/fleet_reconnect.py --variants paho,full,spread --gateways 100

Bounded: each variant gives up `--give-up` seconds after the restart and reports who is missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import Broker, free_port, start_mosquitto, stop_mosquitto
from tests.rabbitmq import RabbitMQ

ROOT = Path(__file__).resolve().parent.parent
DISTRICT = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- brokers ------------------------------------------------------------------------------------


class BenchBroker(Protocol):
    port: int

    def kill(self) -> None: ...
    def restart(self) -> None: ...
    def pids(self) -> list[int]: ...
    def close(self) -> None: ...


class Mosquitto:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self._broker: Broker = self._start()

    def _start(self) -> Broker:
        # Persistence (saved every second) keeps the platform's session across the SIGKILL, so
        # what gateways send before the platform is back waits for it, as on a real deployment.
        extra = (
            "max_connections -1\nmax_queued_messages 1000000\npersistence true\n"
            f"persistence_location {self.workdir}/\nautosave_interval 1\n"
        )
        return start_mosquitto(self.workdir, port=self.port, extra=extra)

    def kill(self) -> None:
        os.kill(self._broker.process.pid, signal.SIGKILL)
        self._broker.process.wait(5)

    def restart(self) -> None:
        self._broker = self._start()

    def pids(self) -> list[int]:
        return [self._broker.process.pid]

    def close(self) -> None:
        stop_mosquitto(self._broker)


class Rabbit:
    def __init__(self, workdir: Path) -> None:
        self.node = RabbitMQ(workdir)
        self.node.start()
        self.port = self.node.port

    def kill(self) -> None:
        self.node.stop(kill=True)

    def restart(self) -> None:
        self.node.start()

    def pids(self) -> list[int]:
        proc = self.node.process
        if proc is None:
            return []
        group = os.getpgid(proc.pid)
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getpgid(int(entry.name)) == group:
                        out.append(int(entry.name))
                except OSError:
                    continue
        return out

    def close(self) -> None:
        self.node.close()


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


class CpuPeak:
    """The broker's peak CPU over 1 s samples, on its own thread until `stop()`."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.peak = 0.0
        self._pids = pids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench.cpu", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pids = self._pids()
        last, t = cpu_seconds(pids), time.monotonic()
        while not self._stop.wait(1.0):
            pids = self._pids() or pids
            now_cpu, now = cpu_seconds(pids), time.monotonic()
            self.peak = max(self.peak, (now_cpu - last) / (now - t))
            last, t = now_cpu, now

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(2)
        return self.peak


# -- the platform's view ------------------------------------------------------------------------


class Platform:
    """Subscribes to every gateway's status (exact topics: RabbitMQ delivers retained messages
    only there) and to all events, in a persistent session (what is sent while it is away waits
    for it); reconnects at once when told the broker is back. Before the outage it clears the
    retained statuses (both brokers keep them across a restart), so that every `online` after it
    is a gateway that is back."""

    def __init__(self, port: int, gateways: list[str]) -> None:
        self.port = port
        self.onlines: dict[str, list[float]] = {}  # gateway -> wall clock of each `online`
        self.events: set[str] = set()  # "{event_id}/{phase}"
        self._lock = threading.Lock()
        self._topics = [(f"cctv/v1/{DISTRICT}/{g}/status", 1) for g in gateways]
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-platform-{os.getpid()}",
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.connect()

    def connect(self, timeout: float = 60.0) -> None:
        self._subscribed.clear()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client.connect("127.0.0.1", self.port, keepalive=30)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.client.loop_start()
        self._subscribed.wait(10)

    def lost(self) -> None:
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, *args: Any) -> None:
        if flags.session_present:
            self._subscribed.set()
            return
        for i in range(0, len(self._topics), 200):
            client.subscribe(self._topics[i : i + 200])
        client.subscribe(f"cctv/v1/{DISTRICT}/+/cam/+/event", qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            if msg.topic.endswith("/event"):
                self.events.add(f"{body['event_id']}/{body['phase']}")
            elif body.get("state") == "online":
                self.onlines.setdefault(msg.topic.split("/")[3], []).append(now)

    def clear_retained(self) -> None:
        infos = [self.client.publish(topic, b"", qos=1, retain=True) for topic, _ in self._topics]
        for info in infos:
            info.wait_for_publish(10)

    def back_since(self, t0: float) -> dict[str, float]:
        """Per gateway, its first `online` at or after t0."""
        with self._lock:
            firsts = {g: min((t for t in ts if t >= t0), default=None) for g, ts in self.onlines.items()}
        return {g: t for g, t in firsts.items() if t is not None}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- fleets -------------------------------------------------------------------------------------


@dataclass
class Fleet:
    gateways: list[str]
    stop: Callable[[], dict[str, Any]]  # -> the simulator's report ({} for others)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


def sim_fleet(n: int, port: int, tmp: Path, rate: float, reconnect: dict[str, float]) -> Fleet:
    report = tmp / f"report-{time.monotonic_ns()}.json"
    argv = [sys.executable, "-m", "agent", "--log-level", "error", "simulate", "--gateways", str(n)]
    argv += ["--port", str(port), "--district", DISTRICT, "--id-prefix", "gw", "--events-per-min", str(rate)]
    argv += ["--telemetry-s", "30", "--start-spread-s", str(n / 200), "--report", str(report)]
    argv += ["--protocol", "auto"]
    for name, value in reconnect.items():
        argv += [f"--reconnect-{name}-s", str(value)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE)

    def stop() -> dict[str, Any]:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        print(f"  simulator: {out.decode().strip()}", file=sys.stderr)
        return json.loads(report.read_text()) if report.exists() else {}

    return Fleet([f"gw-{i:04d}" for i in range(1, n + 1)], stop, [proc])


def agent_fleet(n: int, port: int, tmp: Path, cameras: int = 1) -> Fleet:
    """`edge-agent run` processes, each with one synthetic camera, or none (`cameras` 0): the same
    link, outbox, status and command plane, without the ~5 % of a core a camera costs, so that
    100 of them fit on a 2-core machine."""
    procs = []
    camera = (
        '[[cameras]]\nid = "cam-1"\nname = "synthetic"\nsource = "synthetic:street"\ndetect_fps = 2.0\n'
        'allowed_agencies = ["police"]\nbuffer = { fps = 2.0, max_width = 320 }\n'
        "clips = { enabled = false }\n"
    )
    ids = [f"gw-{i:04d}" for i in range(1, n + 1)]
    for gw in ids:
        data = tmp / gw
        data.mkdir(parents=True, exist_ok=True)
        conf = data / "config.toml"
        conf.write_text(
            f'[gateway]\ndistrict = "{DISTRICT}"\nid = "{gw}"\ndata_dir = "{data}"\n'
            "telemetry_interval_s = 30\n\n"
            f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n\n' + (camera if cameras else ""),
            encoding="utf-8",
        )
        argv = [str(ROOT / ".venv/bin/edge-agent"), "--log-level", "error", "run", "--config", str(conf)]
        procs.append(subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL))
        time.sleep(0.05)

    def stop() -> dict[str, Any]:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        return {}

    return Fleet(ids, stop, procs)


def paho_fleet(n: int, port: int) -> Fleet:
    """The agent before issue 16: paho's own reconnect (1 s doubling to 30 s, no jitter)."""
    clients = []
    ids = [f"gw-{i:04d}" for i in range(1, n + 1)]
    for gw in ids:
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-{gw}", protocol=MQTTProtocolVersion.MQTTv5
        )
        c.reconnect_delay_set(1, 30)
        status = f"cctv/v1/{DISTRICT}/{gw}/status"
        c.will_set(status, b'{"state":"offline","reason":"lost"}', qos=1, retain=True)
        c.on_connect = lambda cl, *a, t=status: cl.publish(t, b'{"state":"online"}', qos=1, retain=True)
        c.connect_async("127.0.0.1", port, keepalive=30)
        c.loop_start()
        clients.append(c)

    def stop() -> dict[str, Any]:
        for c in clients:
            c.disconnect()
            c.loop_stop()
        return {}

    return Fleet(ids, stop)


# -- one outage ---------------------------------------------------------------------------------


def outage(
    make_broker: Callable[[], BenchBroker],
    make_fleet: Callable[[int], Fleet],
    n: int,
    down_s: float,
    give_up_s: float,
    settle_s: float,
) -> dict[str, Any]:
    broker = make_broker()
    ids = [f"gw-{i:04d}" for i in range(1, n + 1)]
    platform = Platform(broker.port, ids)  # first: the fleet's first `online` messages are live
    fleet = make_fleet(broker.port)
    try:
        deadline = time.monotonic() + 180
        while len(platform.back_since(0)) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        if len(platform.back_since(0)) < n:
            raise RuntimeError(f"only {len(platform.back_since(0))} of {n} gateways connected in 180 s")
        time.sleep(settle_s)  # events flowing, outboxes empty
        platform.clear_retained()
        time.sleep(2.0)  # Mosquitto's autosave (every second) has it
        killed = time.time()
        broker.kill()
        platform.lost()
        time.sleep(max(0.0, down_s - (time.time() - killed)))
        broker.restart()
        t0 = time.time()
        cpu = CpuPeak(broker.pids)
        platform.connect()
        deadline = time.monotonic() + give_up_s
        while len(platform.back_since(killed)) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(5.0)  # outboxes drain
        peak_cpu = cpu.stop()
        report = fleet.stop()
        time.sleep(1.0)
        if report:  # the simulator's own clock at each CONNACK after the kill
            back = {
                g: min((t for t in r["connected_at"] if t > killed), default=None) for g, r in report.items()
            }
            offline = {e for r in report.values() for e in r["offline_events"]}
        else:
            back = dict(platform.back_since(killed))
            offline = set()
        t0 = min([t0, *(t for t in back.values() if t is not None)])  # the port opened a little before
        times = sorted(t - t0 for t in back.values() if t is not None)
        received = len(offline & platform.events)
        for missing in sorted(offline - platform.events)[:5]:
            gw = next(g for g, r in report.items() if missing in r["offline_events"])
            print(f"  not received: {missing} of {gw} (back {back[gw]})", file=sys.stderr)
        return {
            "n": n,
            "down": t0 - killed,
            "back": len(times),
            "all": times[-1] if len(times) == n else None,
            "p50": times[n // 2] if len(times) > n // 2 else None,
            "p90": times[(n * 9) // 10] if len(times) > (n * 9) // 10 else None,
            "peak": peak_share(times) / n,
            "offline": len(offline) if report else None,
            "received": received if report else None,
            "cpu": peak_cpu,
        }
    finally:
        platform.close()
        for p in fleet.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        broker.close()


def peak_share(times: list[float]) -> int:
    """The most connections within any one second (a sliding window)."""
    peak, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - 1.0:
            j += 1
        peak = max(peak, i - j + 1)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--broker", choices=["mosquitto", "rabbitmq"], default="mosquitto")
    parser.add_argument("--gateways", type=int, default=1000, help="simulated fleet size (1-5000)")
    parser.add_argument("--agents", type=int, default=20, help="real agents for the `agents` variant")
    parser.add_argument(
        "--agent-cameras", type=int, choices=[0, 1], default=1, help="synthetic cameras per real agent"
    )
    parser.add_argument("--variants", default="full,spread", help="of paho, full, spread, agents")
    parser.add_argument("--down", type=float, default=5.0, help="seconds the broker stays down")
    parser.add_argument("--events-per-min", type=float, default=6.0, help="per simulated gateway")
    parser.add_argument("--spread", type=float, default=20.0, help="mqtt.reconnect_spread_s of `spread`")
    parser.add_argument(
        "--give-up", type=float, default=90.0, help="seconds after the restart to stop waiting"
    )
    args = parser.parse_args()
    n = max(1, min(args.gateways, 5000))
    logging.basicConfig(level=logging.ERROR)

    rows = []
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp_name:
        tmp = Path(tmp_name)

        def make_broker() -> BenchBroker:
            workdir = tmp / f"broker-{time.monotonic_ns()}"
            return Rabbit(workdir) if args.broker == "rabbitmq" else Mosquitto(workdir)

        fleets: dict[str, tuple[str, Callable[[int], Fleet]]] = {
            "paho": ("paho backoff (before)", lambda port: paho_fleet(n, port)),
            "full": (
                "full jitter 0.5-30 s",
                lambda port: sim_fleet(
                    n, port, tmp, args.events_per_min, {"min": 0.5, "spread": 0, "max": 30}
                ),
            ),
            "spread": (
                f"spread {args.spread:g} s (default)" if args.spread == 20 else f"spread {args.spread:g} s",
                lambda port: sim_fleet(n, port, tmp, args.events_per_min, {"spread": args.spread}),
            ),
            "agents": (
                f"{args.agents} agents ({args.agent_cameras} camera each), spread 20 s",
                lambda port: agent_fleet(args.agents, port, tmp, args.agent_cameras),
            ),
        }
        for key in args.variants.split(","):
            name, make = fleets[key]
            print(f"{name}: running", file=sys.stderr)
            try:
                rows.append(
                    (
                        name,
                        outage(
                            make_broker,
                            make,
                            args.agents if key == "agents" else n,
                            args.down,
                            args.give_up,
                            settle_s=10.0,
                        ),
                    )
                )
            except RuntimeError as exc:
                print(f"{name}: {exc}", file=sys.stderr)

    def s(v: object) -> str:
        return "-" if v is None else f"{v:.1f}"

    print(f"\n{args.broker}, SIGKILL, restarted after the outage; one run each (2 cores)\n")
    print(
        "| variant | N | outage s | back | all back s | p50 s | p90 s | peak 1 s"
        " | outage events received | broker CPU peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        events = "-" if r["offline"] is None else f"{r['received']} / {r['offline']}"
        print(
            f"| {name} | {r['n']} | {r['down']:.1f} | {r['back']} | {s(r['all'])} | {s(r['p50'])}"
            f" | {s(r['p90'])} |"
            f" {r['peak']:.1%} | {events} | {r['cpu']:.0%} |"
        )


if __name__ == "__main__":
    main()
