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
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeAlias, cast

from agent.commands.models import DEFAULT_CHUNK_BYTES
from agent.config import TlsConfig, load_config
from agent.errors import ConfigError
from agent.mqtt.topics import Topics
from agent.sdk import ctl_commands as commands
from agent.sdk.client import PlatformClient
from agent.sdk.ctl_commands import UsageError, parse_assignments, parse_time  # re-exported too
from agent.sdk.errors import ClientError, CommandFailed, ConnectFailed, NoReply

__all__ = [
    "EXIT_ERROR",
    "EXIT_NO_ANSWER",
    "EXIT_OK",
    "EXIT_USAGE",
    "PASSWORD_ENV",
    "UsageError",
    "add_ctl_parser",
    "parse_assignments",
    "parse_time",
]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3
PASSWORD_ENV = "EDGE_CTL_PASSWORD"  # noqa: S105 - the variable's name, not a secret

Action = Callable[[PlatformClient, argparse.Namespace], None]  # prints its result; failures raise
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # not subscriptable at runtime


def _client(args: argparse.Namespace) -> PlatformClient:
    """Build the client from the options, falling back to `--config`'s broker and root."""
    cfg = load_config(args.config) if args.config else None
    host = args.host or (cfg.mqtt.host if cfg else "127.0.0.1")
    port = args.port or (cfg.mqtt.port if cfg else 1883)
    protocol = args.protocol or (cfg.mqtt.protocol if cfg else "5")
    if args.root:
        root = args.root.rstrip("/")
    elif args.district and args.gateway:
        root = Topics.of_gateway(args.prefix, args.district, args.gateway).root
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
        protocol=cast(Literal["auto", "5", "3.1.1"], protocol),
        tls=tls,
        username=username,
        password=password,
        signing_key=args.sign_key,
    )


def _runner(action: Action) -> Callable[[argparse.Namespace], int]:
    """Wrap an action: connect, run, map failures to exit codes with a one-line message."""

    def run(args: argparse.Namespace) -> int:
        try:
            with _client(args).connect(timeout=args.timeout) as client:
                action(client, args)
                return EXIT_OK
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


def add_ctl_parser(sub: Subparsers) -> None:
    """Add `ctl` and its subcommands to `edge-agent`'s subparsers; each sets `func` -> exit code."""
    ctl = sub.add_parser(
        "ctl",
        help="send commands to a gateway as the platform would",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection_options(ctl.add_argument_group("broker and gateway"))
    who = ctl.add_argument_group("requester (goes into the audit log)")
    who.add_argument("--agency", default=os.environ.get("EDGE_CTL_AGENCY"), help="or set EDGE_CTL_AGENCY")
    who.add_argument(
        "--operator", default=os.environ.get("EDGE_CTL_OPERATOR") or os.environ.get("USER") or "ctl"
    )
    who.add_argument("--incident", help="incident reference")
    who.add_argument(
        "--sign-key",
        type=Path,
        default=os.environ.get("EDGE_CTL_SIGN_KEY"),
        metavar="FILE",
        help="sign commands with this Ed25519 private key (edge-agent keygen); or set EDGE_CTL_SIGN_KEY",
    )
    ctl.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")
    ctl.add_argument("--json", action="store_true", help="print results as JSON")
    cmds = ctl.add_subparsers(dest="ctl_command", required=True)
    _add_camera_commands(cmds)
    config = cmds.add_parser("config", help="runtime settings")
    _add_config_commands(config.add_subparsers(dest="config_command", required=True))
    clip = cmds.add_parser("clip", help="clips: export, fetch, hold")
    _add_clip_commands(clip.add_subparsers(dest="clip_command", required=True))
    ptz = cmds.add_parser("ptz", help="turn a PTZ camera: move, stop, presets, goto, look-at")
    _add_ptz_commands(ptz.add_subparsers(dest="ptz_command", required=True))


def _add(cmds: Subparsers, name: str, action: Action, help_text: str) -> argparse.ArgumentParser:
    p = cmds.add_parser(name, help=help_text)
    p.set_defaults(func=_runner(action))
    return p


def _add_connection_options(conn: argparse._ArgumentGroup) -> None:
    conn.add_argument("--config", "-c", help="take broker, TLS and topic root from this agent config")
    conn.add_argument("--host", help="broker host (default 127.0.0.1)")
    conn.add_argument("--port", type=int, help="broker port (default 1883)")
    conn.add_argument(
        "--protocol",
        choices=["auto", "5", "3.1.1"],
        help="MQTT version (default 5; auto falls back to 3.1.1)",
    )
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


def _add_camera_commands(cmds: Subparsers) -> None:
    _add(cmds, "ping", commands.ping, "agent version and uptime, with the round trip")
    _add(cmds, "describe", commands.describe, "gateway and cameras")
    p = _add(cmds, "snapshot", commands.snapshot, "save a JPEG of a camera")
    p.add_argument("camera")
    p.add_argument("-o", "--output", required=True, help="JPEG file to write")
    p.add_argument("--max-width", type=int)
    p.add_argument("--at", help="nearest buffered frame to this time")
    p = _add(cmds, "stream", commands.stream, "save a live stream: numbered JPEGs, or one fmp4 file")
    p.add_argument("camera")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument(
        "-o", "--output", required=True, help="jpeg: directory for 000000.jpg, ...; fmp4: the .mp4 file"
    )
    p.add_argument("--format", choices=["jpeg", "fmp4"], default="jpeg")
    p.add_argument("--fps", type=float, default=5.0)
    p.add_argument(
        "--max-width", type=int, help="jpeg default 640; fmp4 default: the camera's own size where possible"
    )
    p.add_argument("--quality", type=int)
    p = _add(cmds, "locate", commands.locate, "cameras that see a point, nearest first")
    p.add_argument("lat", type=float)
    p.add_argument("lon", type=float)
    p.add_argument("--radius", type=float, help="metres (agent default 200)")
    p.add_argument("--at", help="snapshots nearest to this time")


def _add_config_commands(cmds: Subparsers) -> None:
    _add(cmds, "get", commands.config_get, "print the settings in force")
    p = _add(cmds, "set", commands.config_set, "change settings (admin agencies only)")
    p.add_argument(
        "assignments", nargs="*", metavar="KEY=VALUE", help="e.g. cameras.cam-1.motion.threshold=30"
    )
    p.add_argument("--json", dest="json_partial", metavar="JSON", help="the partial as one JSON object")


def _add_clip_commands(cmds: Subparsers) -> None:
    p = _add(cmds, "export", commands.clip_export, "cut a clip from buffered or recorded footage")
    p.add_argument("camera")
    p.add_argument("start")
    p.add_argument("end")
    p = _add(cmds, "fetch", commands.clip_fetch, "download a clip (resumable), checking its SHA-256")
    p.add_argument("clip_id")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES)
    p = _add(cmds, "hold", commands.clip_hold, "keep footage from retention (evidence hold)")
    p.add_argument("camera")
    p.add_argument("start")
    p.add_argument("end")
    p.add_argument("until")


def _add_ptz_commands(cmds: Subparsers) -> None:
    p = _add(cmds, "move", commands.ptz_move, "pan/tilt/zoom: speeds for --seconds, or --relative steps")
    p.add_argument("camera")
    p.add_argument("--pan", type=float, default=0.0, help="-1..1")
    p.add_argument("--tilt", type=float, default=0.0, help="-1..1")
    p.add_argument("--zoom", type=float, default=0.0, help="-1..1")
    p.add_argument("--seconds", type=float, help="continuous: stop after this long (agent default 1)")
    p.add_argument("--relative", action="store_true", help="steps in ONVIF's generic space, not speeds")
    p = _add(cmds, "stop", commands.ptz_stop, "stop moving; --release gives the camera back")
    p.add_argument("camera")
    p.add_argument("--release", action="store_true", help="end this agency's lease")
    p = _add(cmds, "presets", commands.ptz_presets, "list the camera's presets")
    p.add_argument("camera")
    p = _add(cmds, "goto", commands.ptz_goto, "go to a preset (its token, from presets)")
    p.add_argument("camera")
    p.add_argument("preset")
    p = _add(cmds, "look-at", commands.ptz_look_at, "turn the camera to a point on the ground")
    p.add_argument("camera")
    p.add_argument("lat", type=float)
    p.add_argument("lon", type=float)
    p.add_argument("--zoom", type=float, help="zoom position 0..1 (default: unchanged)")
