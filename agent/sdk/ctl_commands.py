"""What each `edge-agent ctl` subcommand sends and prints; agent.sdk.ctl builds the parser and the
client, runs these, and turns what they raise into exit codes (UsageError: 2)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from agent.clock import iso, parse_iso
from agent.sdk.client import LiveStream, PlatformClient

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


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def ping(client: PlatformClient, args: argparse.Namespace) -> None:
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


def describe(client: PlatformClient, args: argparse.Namespace) -> None:
    result = client.describe(timeout=args.timeout)
    if args.json:
        _print_json(result)
        return
    gw = result.get("gateway", {})
    print(f"gateway {gw.get('district')}/{gw.get('id')} {gw.get('name') or ''}".rstrip())
    print(f"  agent {gw.get('agent_version')}, up {gw.get('uptime_s')} s, root {gw.get('topic_root')}")
    for cam in result.get("cameras", []):
        res = cam.get("resolution") or {}
        size = f"{res.get('width')}x{res.get('height')}" if res else "-"
        geo = cam.get("geo")
        where = f" at {geo['lat']:.5f},{geo['lon']:.5f} heading {geo['heading_deg']:g}" if geo else ""
        print(f"  {cam.get('id'):<16} {cam.get('state'):<10} {size:>9} {cam.get('fps') or 0:>5} fps{where}")


def snapshot(client: PlatformClient, args: argparse.Namespace) -> None:
    at = parse_time(args.at) if args.at else None
    result, jpeg = client.snapshot(args.camera, max_width=args.max_width, at=at, timeout=args.timeout)
    out = Path(args.output)
    out.write_bytes(jpeg)
    if args.json:
        _print_json(result)
    else:
        print(f"{out}: {result['width']}x{result['height']}, {len(jpeg)} bytes, frame at {result['ts']}")


def _write_fmp4(live: LiveStream, out: Path) -> tuple[int, int]:
    """Segments in arrival order into `out`, from the first init segment on; a later init (the
    camera changed its stream) starts `out` with -1, -2, ... before the suffix. (segments, bytes)."""
    count = size = files = 0
    fh = None
    try:
        for seg in live:
            if seg.part == "init":
                if fh is not None:
                    fh.close()
                    files += 1
                    path = out.with_name(f"{out.stem}-{files}{out.suffix}")
                    print(f"the stream changed format; continuing in {path}", file=sys.stderr)
                else:
                    path = out
                fh = path.open("wb")
            if fh is None:
                continue  # fragments before the init cannot be played
            fh.write(seg.data)
            count += 1
            size += len(seg.data)
    finally:
        if fh is not None:
            fh.close()
    return count, size


def stream(client: PlatformClient, args: argparse.Namespace) -> None:
    fmp4 = args.format == "fmp4"
    out = Path(args.output)
    if fmp4:
        if out.parent != Path():
            out.parent.mkdir(parents=True, exist_ok=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
    max_width = args.max_width if args.max_width is not None or fmp4 else 640
    frames = size = 0
    t0 = time.monotonic()
    with client.stream(
        args.camera,
        args.seconds,
        args.fps,
        max_width,
        quality=args.quality,
        timeout=args.timeout,
        format=args.format,
    ) as live:
        print(f"session {live.session} until {live.expires_at}", file=sys.stderr)
        if fmp4:
            frames, size = _write_fmp4(live, out)
        else:
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
        "dir" if not fmp4 else "file": str(out),
    }
    if args.json:
        _print_json(summary)
    else:
        print(
            f"{out}: {frames} frames in {took:.1f} s ({summary['fps']} fps), {size} bytes, {dropped} dropped"
        )


def locate(client: PlatformClient, args: argparse.Namespace) -> None:
    at = parse_time(args.at) if args.at else None
    result = client.locate(args.lat, args.lon, args.radius, at=at, timeout=args.timeout)
    if args.json:
        _print_json(result)
        return
    hits = result.get("cameras", [])
    if not hits:
        print("no camera sees that point")
    for hit in hits:
        snap = hit.get("snapshot_topic") or "(no frame)"
        print(f"{hit['camera']:<16} {hit['distance_m']:>9.1f} m  bearing {hit['bearing_deg']:>6.1f}  {snap}")


def config_get(client: PlatformClient, args: argparse.Namespace) -> None:
    _print_json(client.config_get(timeout=args.timeout))


def config_set(client: PlatformClient, args: argparse.Namespace) -> None:
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


def clip_export(client: PlatformClient, args: argparse.Namespace) -> None:
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


def clip_fetch(client: PlatformClient, args: argparse.Namespace) -> None:
    result = client.clip_fetch(args.clip_id, args.output, chunk_bytes=args.chunk_bytes, timeout=args.timeout)
    if args.json:
        _print_json(result)
    else:
        size, count = result["bytes"], result["count"]
        print(f"{args.output}: {size} bytes in {count} chunk(s), sha256 {result['sha256']} OK")


def clip_hold(client: PlatformClient, args: argparse.Namespace) -> None:
    start, end, until = parse_time(args.start), parse_time(args.end), parse_time(args.until)
    result = client.clip_hold(args.camera, start, end, until, timeout=args.timeout)
    if args.json:
        _print_json(result)
    else:
        clips = ", ".join(result.get("clip_ids", [])) or "none stored yet"
        print(f"hold on {args.camera} {start} .. {end} until {until}; clips held: {clips}")


def _print_lease(result: dict[str, Any], as_json: bool = False) -> None:
    if as_json:
        _print_json(result)
        return
    until = result.get("lease_until")
    held = f"controlled by {result.get('agency')} until {until}" if until else "released"
    print(f"{result['camera']}: {held}")


def ptz_move(client: PlatformClient, args: argparse.Namespace) -> None:
    result = client.ptz_move(
        args.camera,
        pan=args.pan,
        tilt=args.tilt,
        zoom=args.zoom,
        mode="relative" if args.relative else "continuous",
        timeout_s=None if args.relative else args.seconds,
        timeout=args.timeout,
    )
    _print_lease(result, args.json)


def ptz_stop(client: PlatformClient, args: argparse.Namespace) -> None:
    result = client.ptz_stop(args.camera, release=args.release, timeout=args.timeout)
    _print_lease(result, args.json)


def ptz_presets(client: PlatformClient, args: argparse.Namespace) -> None:
    result = client.ptz_presets(args.camera, timeout=args.timeout)
    if args.json:
        _print_json(result)
        return
    for preset in result.get("presets", []):
        print(f"{preset['token']:<12} {preset['name']}")


def ptz_goto(client: PlatformClient, args: argparse.Namespace) -> None:
    result = client.ptz_goto_preset(args.camera, args.preset, timeout=args.timeout)
    _print_lease(result, args.json)


def ptz_look_at(client: PlatformClient, args: argparse.Namespace) -> None:
    result = client.ptz_look_at(args.camera, args.lat, args.lon, zoom=args.zoom, timeout=args.timeout)
    if args.json:
        _print_json(result)
        return
    print(
        f"{result['camera']}: bearing {result['bearing_deg']:.1f}, {result['distance_m']:.0f} m,"
        f" {result['depression_deg']:.1f} below the horizon"
        f" (pan {result['pan']:.3f}, tilt {result['tilt']:.3f})"
    )
    _print_lease(result)
