"""N simulated gateways in one process and the one thread that paces their traffic.

`Fleet` owns the gateways (each its own MQTT connection: an `MqttLink` with its pump and
connecting threads, and paho's) and the `sim.scheduler` thread, which publishes each gateway's
events (a Poisson stream at `events_per_min`, each a `start` then an `end` phase 1-5 s later)
and telemetry from one heap. The heap holds at most one next event and one telemetry tick per
gateway plus the ends of open events, so it is bounded by the fleet's size and rate. Starting
is spread over `start_spread_s` so that the fleet's first connections do not arrive as one
burst either; stopping stops the scheduler first, then every gateway in parallel (a bounded
pool), within `STOP_S`.
"""

from __future__ import annotations

import heapq
import logging
import random
import resource
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from agent.config import MqttConfig
from agent.simulate.gateway import SimGateway

log = logging.getLogger(__name__)

STOP_S = 4.0  # the whole fleet: the process stops within 5 s of SIGTERM
STOP_WORKERS = 64
EVENT_MIN_S, EVENT_MAX_S = 1.0, 5.0


@dataclass(frozen=True)
class FleetSpec:
    """What to simulate: `gateways` under `{prefix}/{district}/{id_prefix}-NNNN`, from `first`."""

    gateways: int
    events_per_min: float
    district: str = "sim"
    id_prefix: str = "sim"
    prefix: str = "cctv/v1"
    cameras: int = 2
    telemetry_s: float = 30.0
    start_spread_s: float = 0.0
    first: int = 1


@dataclass
class FleetSummary:
    gateways: int
    connected: int
    events: int
    commands: int
    outbox_depth: int


class Fleet:
    """`start()` connects the gateways and starts the scheduler; `stop()` ends both."""

    def __init__(self, spec: FleetSpec, mqtt: MqttConfig, data_dir: Path, seed: int | None = None) -> None:
        if spec.gateways < 1:
            raise ValueError("a fleet needs at least one gateway")
        _raise_fd_limit(spec.gateways)
        self.spec = spec
        self._rng = random.Random(seed)  # traffic shape, not a secret
        self.gateways = [
            SimGateway(mqtt, spec.prefix, spec.district, f"{spec.id_prefix}-{i:04d}", spec.cameras, data_dir)
            for i in range(spec.first, spec.first + spec.gateways)
        ]
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        now = time.monotonic()
        spread = self.spec.start_spread_s
        for i, gw in enumerate(self.gateways):
            self._push(now + spread * i / len(self.gateways), gw.start)
            self._push(now + self._rng.uniform(0, self.spec.telemetry_s), self._telemetry(gw))
            self._schedule_event(gw, now + spread)
        self._thread = threading.Thread(target=self._run, name="sim.scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the traffic, then every gateway (offline/shutdown where connected)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        deadline = time.monotonic() + STOP_S
        started = [gw for gw in self.gateways if gw.link.alive()]
        for gw in self.gateways:
            if gw not in started:
                gw.outbox.close()
        each = max(0.3, min(1.0, STOP_S * STOP_WORKERS / max(1, len(started)) / 2))
        with ThreadPoolExecutor(max_workers=STOP_WORKERS, thread_name_prefix="sim.stop") as pool:
            for gw in started:
                pool.submit(self._stop_one, gw, deadline, each)

    @staticmethod
    def _stop_one(gw: SimGateway, deadline: float, each: float) -> None:
        try:
            gw.stop(timeout=min(each, max(0.05, deadline - time.monotonic())))
        except Exception:
            log.exception("simulated gateway %s did not stop cleanly", gw.id)

    def report(self) -> dict[str, object]:
        """Per gateway: its connections (count, wall-clock times of the latest), and the event
        phases (`{event_id}/{phase}`) produced while it was offline, which the platform must
        receive once the broker is back."""
        return {
            gw.id: {
                "connects": gw.link.stats.connects,
                "connected_at": list(gw.connected_at),
                "protocol": gw.link.stats.protocol,
                "offline_events": sorted(set(gw.offline_events)),
            }
            for gw in self.gateways
        }

    def summary(self) -> FleetSummary:
        counts = [gw.counts for gw in self.gateways]
        return FleetSummary(
            gateways=len(self.gateways),
            connected=sum(1 for gw in self.gateways if gw.link.connected),
            events=sum(c.events for c in counts),
            commands=sum(c.commands for c in counts),
            outbox_depth=sum(gw.outbox.depth() for gw in self.gateways),
        )

    # -- the scheduler ------------------------------------------------------------------------

    def _push(self, when: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, action))

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._heap:
                self._stop.wait(0.5)
                continue
            when = self._heap[0][0]
            delay = when - time.monotonic()
            if delay > 0:
                self._stop.wait(min(delay, 0.5))
                continue
            _, _, action = heapq.heappop(self._heap)
            try:
                action()
            except Exception:
                log.exception("simulated traffic failed")

    def _telemetry(self, gw: SimGateway) -> Callable[[], None]:
        def tick() -> None:
            gw.telemetry()
            self._push(time.monotonic() + self.spec.telemetry_s, tick)

        return tick

    def _schedule_event(self, gw: SimGateway, after: float) -> None:
        if self.spec.events_per_min <= 0:
            return
        when = after + self._rng.expovariate(self.spec.events_per_min / 60.0)

        def fire() -> None:
            camera = self._rng.choice(gw.cameras)
            x, y = self._rng.uniform(0, 0.8), self._rng.uniform(0, 0.8)
            event_id = gw.event(camera, round(self._rng.uniform(0.05, 1.0), 3), (x, y, 0.2, 0.2))
            self._push(
                time.monotonic() + self._rng.uniform(EVENT_MIN_S, EVENT_MAX_S), lambda: gw.end_event(event_id)
            )
            self._schedule_event(gw, time.monotonic())

        self._push(when, fire)


def _raise_fd_limit(gateways: int) -> None:
    """Each gateway holds a socket, paho's socket pair and SQLite's files: about 8 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 64 + 8 * gateways
    if soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        log.warning(
            "%d gateways need about %d file descriptors; the hard limit is %d (raise it: ulimit -Hn)",
            gateways, need, hard,
        )  # fmt: skip
