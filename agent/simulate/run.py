"""`edge-agent simulate`: its arguments and its run, stopped by --duration-s, SIGTERM or Ctrl-C.

Outboxes live in --data-dir (a temporary folder, removed at the end, unless given), so events
produced while the broker is away are delivered when it returns, as a gateway's are. A summary
is printed on stdout as one JSON object when the run ends (--report FILE adds per-gateway detail);
exit 0, or 1 when the fleet could not be built (a bad setting, a data dir that cannot be written).

More than `SHARD` gateways run in shards: child processes of `SHARD` gateways each, this process
forwarding SIGTERM to them and adding up their summaries. paho waits on its sockets with
select(), which cannot watch a descriptor numbered 1024 or more, and each gateway holds about six
(its socket, paho's socket pair, SQLite's files); the shards also spread the fleet over the cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from agent.config import MqttConfig

log = logging.getLogger(__name__)

MAX_GATEWAYS = 5000
SHARD = 120  # gateways per process: 6 descriptors each stay below select()'s 1024
ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")  # the contract's ids


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gateways", type=int, default=10, help=f"simulated gateways (1-{MAX_GATEWAYS})")
    p.add_argument(
        "--events-per-min", type=float, default=1.0, help="events per gateway per minute (Poisson)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--protocol", choices=["auto", "5", "3.1.1"], default="auto")
    p.add_argument("--username", help="broker user for every gateway")
    p.add_argument("--password-file", type=Path, help="first line is the broker password")
    p.add_argument("--prefix", default="cctv/v1", help="topic prefix")
    p.add_argument("--district", default="sim")
    p.add_argument("--id-prefix", default="sim", help="gateway ids are ID_PREFIX-0001 …")
    p.add_argument("--cameras", type=int, default=2, help="cameras per gateway (statuses and events)")
    p.add_argument("--telemetry-s", type=float, default=30.0, help="telemetry interval per gateway")
    p.add_argument("--start-spread-s", type=float, default=0.0, help="spread the first connections over this")
    p.add_argument("--reconnect-min-s", type=float, help="mqtt.reconnect_min_s (default: the agent's)")
    p.add_argument("--reconnect-spread-s", type=float, help="mqtt.reconnect_spread_s (default: the agent's)")
    p.add_argument("--reconnect-max-s", type=float, help="mqtt.reconnect_max_s (default: the agent's)")
    p.add_argument(
        "--duration-s", type=float, default=0.0, help="stop after this long (0: at SIGTERM/Ctrl-C)"
    )
    p.add_argument("--data-dir", type=Path, help="outboxes here (default: a temporary folder, removed)")
    p.add_argument("--report", type=Path, help="write per-gateway detail here at the end (JSON)")
    p.add_argument("--first", type=int, default=1, help=argparse.SUPPRESS)  # a shard's first gateway number


def mqtt_config(args: argparse.Namespace) -> MqttConfig:
    """The gateways' `[mqtt]` from the arguments; pydantic's ValidationError for bad values."""
    raw: dict[str, object] = {"host": args.host, "port": args.port, "protocol": args.protocol}
    for name in ("reconnect_min_s", "reconnect_spread_s", "reconnect_max_s"):
        if getattr(args, name) is not None:
            raw[name] = getattr(args, name)
    if args.username is not None:
        raw["username"] = args.username
    if args.password_file is not None:
        raw["password_file"] = args.password_file
    return MqttConfig.model_validate(raw)


def run(args: argparse.Namespace) -> int:
    from agent.simulate.fleet import Fleet, FleetSpec  # the link, paho and pydantic models: not for --help

    if not 1 <= args.gateways <= MAX_GATEWAYS:
        print(f"simulate: --gateways must be 1-{MAX_GATEWAYS}", file=sys.stderr)
        return 2
    last_id = f"{args.id_prefix}-{args.gateways:04d}"
    for name, value in (("--district", args.district), ("--id-prefix", last_id)):
        if not ID.match(value):
            print(f"simulate: {name} makes the id {value!r}, which is not {ID.pattern}", file=sys.stderr)
            return 2
    try:
        cfg = mqtt_config(args)
    except ValidationError as exc:
        print(f"simulate: invalid MQTT settings: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.gateways > SHARD:
        return _run_shards(args, stop)
    spec = FleetSpec(
        gateways=args.gateways,
        events_per_min=args.events_per_min,
        district=args.district,
        id_prefix=args.id_prefix,
        prefix=args.prefix,
        cameras=args.cameras,
        telemetry_s=args.telemetry_s,
        start_spread_s=args.start_spread_s,
        first=args.first,
    )
    with tempfile.TemporaryDirectory(prefix="edge-simulate-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            fleet = Fleet(spec, cfg, data_dir)
        except (OSError, ValueError) as exc:
            print(f"simulate: cannot build the fleet in {data_dir}: {exc}", file=sys.stderr)
            return 1
        t0 = time.monotonic()
        fleet.start()
        log.info(
            "simulating %d gateways on %s:%d, %g events/min each",
            spec.gateways,
            cfg.host,
            cfg.port,
            spec.events_per_min,
        )
        _wait(stop, t0, args.duration_s)
        summary = fleet.summary()
        fleet.stop()
        out = {**asdict(summary), "seconds": round(time.monotonic() - t0, 1)}
        if args.report is not None:
            _write_report(args.report, fleet.report())
    print(json.dumps(out), flush=True)
    return 0


def _wait(stop: threading.Event, t0: float, duration_s: float) -> None:
    end = t0 + duration_s if duration_s > 0 else float("inf")
    while not stop.wait(min(0.5, max(0.0, end - time.monotonic()))) and time.monotonic() < end:
        pass


def _write_report(path: Path, report: dict[str, object]) -> None:
    try:
        path.write_text(json.dumps(report), encoding="utf-8")
    except OSError as exc:
        print(f"simulate: cannot write the report {path}: {exc.strerror}", file=sys.stderr)


def _run_shards(args: argparse.Namespace, stop: threading.Event) -> int:
    """Children of `SHARD` gateways each; SIGTERM is passed on, their summaries added up."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-simulate-") as tmp:
        children: list[tuple[subprocess.Popen[bytes], Path]] = []
        for first in range(1, args.gateways + 1, SHARD):
            count = min(SHARD, args.gateways + 1 - first)
            report = Path(tmp) / f"report-{first}.json"
            argv = [
                sys.executable,
                "-m",
                "agent",
                "--log-level",
                logging.getLevelName(log.getEffectiveLevel()).lower(),
            ]
            argv += ["simulate", *_child_args(args), "--gateways", str(count), "--first", str(first)]
            argv += ["--report", str(report)]
            if args.data_dir is not None:
                argv += ["--data-dir", str(args.data_dir / f"shard-{first}")]
            children.append((subprocess.Popen(argv, stdout=subprocess.PIPE), report))
        _wait(stop, t0, args.duration_s)
        for child, _ in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 4.5  # each shard stops within 4 s; all of them at once
        totals: dict[str, float] = {}
        merged: dict[str, object] = {}
        failed = 0
        for child, report in children:
            try:
                out, _ = child.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                out, _ = child.communicate()
            if child.returncode != 0:
                failed += 1
                continue
            for key, value in json.loads(out).items():
                if key != "seconds":
                    totals[key] = totals.get(key, 0) + value
            if report.exists():
                merged.update(json.loads(report.read_text(encoding="utf-8")))
    if args.report is not None:
        _write_report(args.report, merged)
    if failed:
        print(
            f"simulate: {failed} of {len(children)} shards failed (their errors are above)", file=sys.stderr
        )
    print(
        json.dumps({**{k: int(v) for k, v in totals.items()}, "seconds": round(time.monotonic() - t0, 1)}),
        flush=True,
    )
    return 1 if failed else 0


def _child_args(args: argparse.Namespace) -> list[str]:
    """The arguments a shard shares with this run."""
    out = ["--host", args.host, "--port", str(args.port), "--protocol", args.protocol]
    out += [
        "--events-per-min",
        str(args.events_per_min),
        "--prefix",
        args.prefix,
        "--district",
        args.district,
    ]
    out += [
        "--id-prefix",
        args.id_prefix,
        "--cameras",
        str(args.cameras),
        "--telemetry-s",
        str(args.telemetry_s),
    ]
    out += ["--start-spread-s", str(args.start_spread_s), "--duration-s", "0"]
    for name in ("reconnect_min_s", "reconnect_spread_s", "reconnect_max_s", "username", "password_file"):
        value = getattr(args, name)
        if value is not None:
            out += ["--" + name.replace("_", "-"), str(value)]
    return out
