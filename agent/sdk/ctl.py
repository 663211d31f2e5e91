"""`edge-agent ctl`: send commands to a gateway from a shell, as the platform would.

    edge-agent ctl --host broker --district gangnam --gateway gw-01 --agency police --operator o-1 ping
    edge-agent ctl --config /etc/edge-agent/config.toml --agency admin --operator me config set \\
        cameras.cam-1.motion.threshold=30

Broker and gateway come from the options, or from an agent's config file (`--config`, handy on
the gateway itself); options given explicitly win over the file. Times (`--at`, clip spans)
are RFC 3339, `now`, or an offset from now such as `now-90s`, `now-5m`, `now+7d` (also `-90s`
where argparse lets a leading minus through: `--at=-90s`).

Exit codes: 0 success; 1 the agent answered with an error (code and message are printed) or a
local failure (file not writable, checksum mismatch); 2 usage error; 3 no answer: the broker
could not be reached or the agent did not reply within `--timeout`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

from agent.clock import iso, parse_iso
from agent.config import TlsConfig, load_config
from agent.errors import ConfigError
from agent.sdk.client import ClientError, CommandFailed, ConnectFailed, NoReply, PlatformClient

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3
PASSWORD_ENV = "EDGE_CTL_PASSWORD"  # noqa: S105 - the variable's name, not a secret

Action = Callable[[PlatformClient, argparse.Namespace], int]
_OFFSET = re.compile(r"^(?:now)?([+-])(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class UsageError(Exception):
    """A command line that cannot be turned into a request; exit 2."""


def parse_time(text: str) -> str:
    """RFC 3339, `now`, or an offset from now (`now-90s`, `now-5m`, `-2h`, `+7d`) as RFC 3339."""
    if text == "now":
        return iso()
    match = _OFFSET.match(text)
    if match:
        sign = -1.0 if match.group(1) == "-" else 1.0
        return iso(time.time() + sign * float(match.group(2)) * _UNIT_S[match.group(3)])
    try:
        parse_iso(text)
    except ValueError:
        raise UsageError(
            f"{text!r} is not a time: use RFC 3339, now, or an offset like now-90s, now+7d"
        ) from None
    return text


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """`a.b.c=VALUE` pairs as one nested partial; VALUE is JSON when it parses, else a string."""
    partial: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            raise UsageError(f"{pair!r}: expected KEY=VALUE with a dotted key, e.g. streams.max_sessions=2")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = partial
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UsageError(f"{pair!r}: {part!r} was already given a value")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise UsageError(f"{pair!r}: {key!r} already has keys below it")
        node[parts[-1]] = value
    return partial


# -- output ------------------------------------------------------------------------------------------


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _cmd_ping(client: PlatformClient, args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    result = client.ping(timeout=args.timeout)
    rtt_ms = (time.monotonic() - t0) * 1000
    if args.json:
        _print_json(result)
    else:
        print(
            f"pong from {client.root}: agent {result.get('agent_version')}, "
            f"up {result.get('uptime_s')} s, round trip {rtt_ms:.1f} ms"
        )
    return EXIT_OK


def _cmd_describe(client: PlatformClient, args: argparse.Namespace) -> int:
    result = client.describe(timeout=args.timeout)
    if args.json:
        _print_json(result)
        return EXIT_OK
    gw = result.get("gateway", {})
    print(f"gateway {gw.get('district')}/{gw.get('id')} {gw.get('name') or ''}".rstrip())
    print(f"  agent {gw.get('agent_version')}, up {gw.get('uptime_s')} s, root {gw.get('topic_root')}")
    for cam in result.get("cameras", []):
        res = cam.get("resolution") or {}
        size = f"{res.get('width')}x{res.get('height')}" if res else "-"
        geo = cam.get("geo")
        where = f" at {geo['lat']:.5f},{geo['lon']:.5f} heading {geo['heading_deg']:g}" if geo else ""
        print(f"  {cam.get('id'):<16} {cam.get('state'):<10} {size:>9} {cam.get('fps') or 0:>5} fps{where}")
    return EXIT_OK


def _cmd_snapshot(client: PlatformClient, args: argparse.Namespace) -> int:
    at = parse_time(args.at) if args.at else None
    result, jpeg = client.snapshot(args.camera, max_width=args.max_width, at=at, timeout=args.timeout)
    out = Path(args.output)
    out.write_bytes(jpeg)
    if args.json:
        _print_json(result)
    else:
        print(f"{out}: {result['width']}x{result['height']}, {len(jpeg)} bytes, frame at {result['ts']}")
    return EXIT_OK


def _cmd_stream(client: PlatformClient, args: argparse.Namespace) -> int:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    frames = size = 0
    t0 = time.monotonic()
    with client.stream(
        args.camera, args.seconds, args.fps, args.max_width, quality=args.quality, timeout=args.timeout
    ) as live:
        print(f"session {live.session} until {live.expires_at}", file=sys.stderr)
        for frame in live:
            (out / f"{frame.seq:06d}.jpg").write_bytes(frame.jpeg)
            frames += 1
            size += len(frame.jpeg)
        dropped = live.dropped
    took = time.monotonic() - t0
    summary = {
        "session": live.session,
        "frames": frames,
        "seconds": round(took, 2),
        "fps": round(frames / took, 2) if took else 0.0,
        "bytes": size,
        "dropped": dropped,
        "dir": str(out),
    }
    if args.json:
        _print_json(summary)
    else:
        print(
            f"{out}: {frames} frames in {took:.1f} s ({summary['fps']} fps), {size} bytes, {dropped} dropped"
        )
    return EXIT_OK


def _cmd_locate(client: PlatformClient, args: argparse.Namespace) -> int:
    at = parse_time(args.at) if args.at else None
    result = client.locate(args.lat, args.lon, args.radius, at=at, timeout=args.timeout)
    if args.json:
        _print_json(result)
        return EXIT_OK
    hits = result.get("cameras", [])
    if not hits:
        print("no camera sees that point")
    for hit in hits:
        snap = hit.get("snapshot_topic") or "(no frame)"
        print(f"{hit['camera']:<16} {hit['distance_m']:>9.1f} m  bearing {hit['bearing_deg']:>6.1f}  {snap}")
    return EXIT_OK


def _cmd_config_get(client: PlatformClient, args: argparse.Namespace) -> int:
    _print_json(client.config_get(timeout=args.timeout))
    return EXIT_OK


def _cmd_config_set(client: PlatformClient, args: argparse.Namespace) -> int:
    if args.json_partial is not None:
        if args.assignments:
            raise UsageError("give KEY=VALUE pairs or --json, not both")
        try:
            partial = json.loads(args.json_partial)
        except ValueError as exc:
            raise UsageError(f"--json is not valid JSON: {exc}") from None
        if not isinstance(partial, dict):
            raise UsageError("--json must be a JSON object")
    elif args.assignments:
        partial = parse_assignments(args.assignments)
    else:
        raise UsageError("config set needs KEY=VALUE pairs or --json '{...}'")
    _print_json(client.config_set(partial, timeout=args.timeout))
    return EXIT_OK


def _cmd_clip_export(client: PlatformClient, args: argparse.Namespace) -> int:
    result = client.clip_export(
        args.camera, parse_time(args.start), parse_time(args.end), timeout=args.timeout
    )
    if args.json:
        _print_json(result)
    else:
        print(
            f"clip {result['clip_id']}: {result['duration_s']} s, {result['bytes']} bytes, "
            f"sha256 {result['sha256']}"
        )
    return EXIT_OK


def _cmd_clip_fetch(client: PlatformClient, args: argparse.Namespace) -> int:
    result = client.clip_fetch(args.clip_id, args.output, chunk_bytes=args.chunk_bytes, timeout=args.timeout)
    if args.json:
        _print_json(result)
    else:
        size, count = result["bytes"], result["count"]
        print(f"{args.output}: {size} bytes in {count} chunk(s), sha256 {result['sha256']} OK")
    return EXIT_OK


def _cmd_clip_hold(client: PlatformClient, args: argparse.Namespace) -> int:
    start, end, until = parse_time(args.start), parse_time(args.end), parse_time(args.until)
    result = client.clip_hold(args.camera, start, end, until, timeout=args.timeout)
    if args.json:
        _print_json(result)
    else:
        clips = ", ".join(result.get("clip_ids", [])) or "none stored yet"
        print(f"hold on {args.camera} {start} .. {end} until {until}; clips held: {clips}")
    return EXIT_OK


# -- plumbing ----------------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> PlatformClient:
    """Build the client from the options, falling back to `--config`'s broker and root."""
    cfg = load_config(args.config) if args.config else None
    host = args.host or (cfg.mqtt.host if cfg else "127.0.0.1")
    port = args.port or (cfg.mqtt.port if cfg else 1883)
    protocol = args.protocol or (cfg.mqtt.protocol if cfg else "5")
    if args.root:
        root = args.root.rstrip("/")
    elif args.district and args.gateway:
        root = f"{args.prefix}/{args.district}/{args.gateway}"
    elif cfg is not None:
        root = cfg.topic_root
    else:
        raise UsageError("say which gateway: --root, --district and --gateway, or --config")
    tls = cfg.mqtt.tls if cfg else None
    if args.ca_file or args.cert_file or args.tls or args.tls_insecure:
        try:
            tls = TlsConfig(
                ca_file=args.ca_file,
                cert_file=args.cert_file,
                key_file=args.key_file,
                insecure=args.tls_insecure,
            )
        except ValueError as exc:
            raise UsageError(f"TLS options: {exc}") from None
    username = args.username or (cfg.mqtt.username if cfg else None)
    password = os.environ.get(PASSWORD_ENV)
    if args.password_file:
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError) as exc:
            raise UsageError(f"cannot read --password-file {args.password_file}: {exc}") from None
    elif password is None and cfg is not None and not args.username:
        password = cfg.mqtt.resolved_password()
    if not args.agency:
        raise UsageError("say who asks: --agency (or set EDGE_CTL_AGENCY)")
    return PlatformClient(
        host,
        port,
        root,
        agency=args.agency,
        operator=args.operator,
        incident=args.incident,
        protocol=cast(Literal["5", "3.1.1"], protocol),
        tls=tls,
        username=username,
        password=password,
    )


def _runner(action: Action) -> Callable[[argparse.Namespace], int]:
    """Wrap an action: connect, run, map failures to exit codes with a one-line message."""

    def run(args: argparse.Namespace) -> int:
        try:
            with _client(args).connect(timeout=args.timeout) as client:
                return action(client, args)
        except UsageError as exc:
            print(f"edge-agent ctl: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except CommandFailed as exc:
            print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
            return EXIT_ERROR
        except (NoReply, ConnectFailed) as exc:
            print(f"no answer: {exc}", file=sys.stderr)
            return EXIT_NO_ANSWER
        except ConfigError as exc:
            print(f"{exc.source}: invalid configuration: {'; '.join(exc.problems)}", file=sys.stderr)
            return EXIT_ERROR
        except (ClientError, OSError, ValueError) as exc:
            print(f"edge-agent ctl: {exc}", file=sys.stderr)
            return EXIT_ERROR

    return run


def add_ctl_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `ctl` and its subcommands to `edge-agent`'s subparsers; each sets `func` -> exit code."""
    ctl = sub.add_parser(
        "ctl",
        help="send commands to a gateway as the platform would",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    conn = ctl.add_argument_group("broker and gateway")
    conn.add_argument("--config", "-c", help="take broker, TLS and topic root from this agent config")
    conn.add_argument("--host", help="broker host (default 127.0.0.1)")
    conn.add_argument("--port", type=int, help="broker port (default 1883)")
    conn.add_argument("--protocol", choices=["5", "3.1.1"], help="MQTT version (default 5)")
    conn.add_argument("--root", help="gateway topic root, e.g. cctv/v1/gangnam/gw-01")
    conn.add_argument("--prefix", default="cctv/v1", help="topic prefix with --district/--gateway")
    conn.add_argument("--district")
    conn.add_argument("--gateway")
    conn.add_argument("--username")
    conn.add_argument("--password-file", help=f"first line is the password (or set {PASSWORD_ENV})")
    conn.add_argument("--tls", action="store_true", help="TLS with the system's CA store")
    conn.add_argument("--ca-file", type=Path, help="CA bundle to verify the broker (implies TLS)")
    conn.add_argument("--cert-file", type=Path, help="client certificate (PEM)")
    conn.add_argument("--key-file", type=Path, help="client private key (PEM)")
    conn.add_argument("--tls-insecure", action="store_true", help="skip host name verification")
    who = ctl.add_argument_group("requester (goes into the audit log)")
    who.add_argument("--agency", default=os.environ.get("EDGE_CTL_AGENCY"), help="or set EDGE_CTL_AGENCY")
    who.add_argument(
        "--operator", default=os.environ.get("EDGE_CTL_OPERATOR") or os.environ.get("USER") or "ctl"
    )
    who.add_argument("--incident", help="incident reference")
    ctl.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")
    ctl.add_argument("--json", action="store_true", help="print results as JSON")
    cmds = ctl.add_subparsers(dest="ctl_command", required=True)

    def add(name: str, action: Action, help_text: str, parent: Any = cmds) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_text)
        p.set_defaults(func=_runner(action))
        return p

    add("ping", _cmd_ping, "agent version and uptime, with the round trip")
    add("describe", _cmd_describe, "gateway and cameras")
    p = add("snapshot", _cmd_snapshot, "save a JPEG of a camera")
    p.add_argument("camera")
    p.add_argument("-o", "--output", required=True, help="JPEG file to write")
    p.add_argument("--max-width", type=int)
    p.add_argument("--at", help="nearest buffered frame to this time")
    p = add("stream", _cmd_stream, "save a live stream's frames as numbered JPEGs")
    p.add_argument("camera")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("-o", "--output", required=True, help="directory for 000000.jpg, 000001.jpg, ...")
    p.add_argument("--fps", type=float, default=5.0)
    p.add_argument("--max-width", type=int, default=640)
    p.add_argument("--quality", type=int)
    p = add("locate", _cmd_locate, "cameras that see a point, nearest first")
    p.add_argument("lat", type=float)
    p.add_argument("lon", type=float)
    p.add_argument("--radius", type=float, help="metres (agent default 200)")
    p.add_argument("--at", help="snapshots nearest to this time")

    config = cmds.add_parser("config", help="runtime settings")
    config_cmds = config.add_subparsers(dest="config_command", required=True)
    add("get", _cmd_config_get, "print the settings in force", config_cmds)
    p = add("set", _cmd_config_set, "change settings (admin agencies only)", config_cmds)
    p.add_argument(
        "assignments", nargs="*", metavar="KEY=VALUE", help="e.g. cameras.cam-1.motion.threshold=30"
    )
    p.add_argument("--json", dest="json_partial", metavar="JSON", help="the partial as one JSON object")

    clip = cmds.add_parser("clip", help="clips: export, fetch, hold")
    clip_cmds = clip.add_subparsers(dest="clip_command", required=True)
    p = add("export", _cmd_clip_export, "cut a clip from buffered or recorded footage", clip_cmds)
    p.add_argument("camera")
    p.add_argument("start")
    p.add_argument("end")
    p = add("fetch", _cmd_clip_fetch, "download a clip (resumable), checking its SHA-256", clip_cmds)
    p.add_argument("clip_id")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--chunk-bytes", type=int, default=256 * 1024)
    p = add("hold", _cmd_clip_hold, "keep footage from retention (evidence hold)", clip_cmds)
    p.add_argument("camera")
    p.add_argument("start")
    p.add_argument("end")
    p.add_argument("until")
