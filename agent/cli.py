"""`edge-agent`: run the agent, replay footage, check a config, watch or demo a gateway."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from agent import __version__
from agent.config import AgentConfig, CameraConfig, load_config
from agent.config.builtin import default_config as default_config  # noqa: PLC0414 - re-exported (PEP 484)
from agent.config.builtin import to_toml
from agent.errors import AgentError, ConfigError
from agent.simulate.run import add_arguments as simulate_arguments

log = logging.getLogger("agent")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load(path: str | None) -> AgentConfig:
    if path is None:
        data = Path(os.environ.get("EDGE_AGENT_DATA", Path.home() / ".local/state/edge-agent"))
        return default_config(data)
    return load_config(path)


# -- subcommands ---------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    """Refuse what `run` would refuse, the TLS and password files included unless --no-files
    (a config checked before its files are in place, as the firmware does with a seed)."""
    from agent.runtime.config_check import config_problems

    try:
        cfg = load_config(args.file)
        problems = config_problems(cfg, files=not args.no_files)
        if problems:
            raise ConfigError(args.file, problems)
    except ConfigError as exc:
        print(f"{exc.source}: invalid configuration", file=sys.stderr)
        for line in exc.problems:
            print(f"  - {line}", file=sys.stderr)
        return EXIT_ERROR
    if cfg.mqtt.tls is not None and cfg.mqtt.tls.insecure:
        print(
            "warning: mqtt.tls.insecure = true: the broker's host name is not checked, so anyone with a"
            " certificate from that CA can impersonate the broker; for testing only",
            file=sys.stderr,
        )
    print(f"{args.file}: OK ({cfg.topic_root}, {len(cfg.cameras)} camera(s))")
    for cam in cfg.cameras:
        print(f"  {cam.id}: {_footage_path(cam)}")
    console = cfg.console
    if console.enabled:
        scheme = "https" if console.tls else "http"
        users = ", ".join(u.name for u in console.users)
        print(f"  console: {scheme}://{console.bind}:{console.port}/ (users: {users})")
    return EXIT_OK


def _footage_path(cam: CameraConfig) -> str:
    """How a camera's footage is kept and what that costs, for the operator reading check-config."""
    analysis = "the detect_source substream" if cam.detect_source else "the main stream"
    if cam.streams_from_onvif:
        analysis = "the substream the camera names over ONVIF (its smallest profile), if it has one"
    if cam.records_packets:
        decoded = (
            "nothing of the main stream is decoded"
            if cam.detect_source or cam.streams_from_onvif
            else "frames decoded for analysis only"
        )
        return f"packets (clips are the camera's own video, remuxed; {decoded}); analysis on {analysis}"
    if cam.privacy_masks:
        why = "privacy masks must be burnt in"
    elif cam.footage == "pixels":
        why = "footage = 'pixels'"
    else:
        why = "the source gives no packets"
    return (
        f"pixels ({why}: frames decoded, kept as JPEG and re-encoded for clips, about 8x the CPU"
        f" of the packet path with a substream, bench/ip_camera_bench.py); analysis on {analysis}"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from agent.runtime.agent import Agent

    cfg = _load(args.config)
    return Agent(cfg, config_path=Path(args.config) if args.config else None).run()


def cmd_replay(args: argparse.Namespace) -> int:
    from agent.analysis.replay import ReplayObserver, ReplayStats, TerminalProgress, cut_short, replay

    video = Path(args.video)
    camera = CameraConfig(id="replay", source=f"file://{video.resolve()}")
    detector = None
    if args.config:
        cfg = load_config(args.config)
        if args.camera:
            found = cfg.camera(args.camera)
            if found is None:
                raise ConfigError(args.config, [f"no camera with id {args.camera!r}"])
            camera = found
        elif cfg.cameras:
            camera = cfg.cameras[0]
        camera = camera.model_copy(update={"source": f"file://{video.resolve()}"})
        detector = cfg.detector
    observers: list[ReplayObserver] = []
    if args.annotate or args.snapshot_dir:
        from agent.analysis.annotate import AnnotatedVideo, EventSnapshots
        from agent.footage.privacy import apply_privacy_masks

        masks = camera.privacy_masks  # pictures on disk are masked as those that leave the gateway
        if args.annotate:
            annotate = Path(args.annotate)
            if annotate.resolve() == video.resolve():
                raise AgentError(f"--annotate {annotate} is the video being replayed: name another file")
            observers.append(AnnotatedVideo(annotate, prepare=lambda i: apply_privacy_masks(i, masks)))
        if args.snapshot_dir:
            snapshots = EventSnapshots(
                Path(args.snapshot_dir), prepare=lambda i: apply_privacy_masks(i, masks)
            )
            observers.append(snapshots)
    progress = TerminalProgress(sys.stderr) if sys.stderr.isatty() else None
    stats = ReplayStats()
    out = sys.stdout
    whole = True  # read to the end of the file (not stopped by a reader that went away)
    try:
        for record in replay(
            video, camera, detector=detector, observers=observers, progress=progress, stats=stats
        ):
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
            out.flush()
    except BrokenPipeError:  # `edge-agent replay x.mp4 | head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        whole = False
    finally:
        if progress is not None:
            progress.done()
    if whole and cut_short(stats):
        print(
            f"edge-agent: warning: {video} ended after {stats.video_s:.1f} s of the {stats.header_s:.1f} s"
            " its header gives; the file may be cut short (or damaged beyond what can be skipped),"
            " and events after that are missing",
            file=sys.stderr,
        )
    if stats.skipped:
        print(
            f"edge-agent: warning: {video}: {stats.skipped} frame(s) in damaged stretches would not"
            " decode and were skipped; events there may be missing or split",
            file=sys.stderr,
        )
    if args.stats:
        summary = {
            "video_s": round(stats.video_s, 3),
            "frames": stats.frames,
            "analysed": stats.analysed,
            "inferences": stats.inferences,
            "skipped": stats.skipped,
        }
        print(json.dumps(summary, separators=(",", ":")), file=sys.stderr)
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from agent.contract.schema import all_schemas, render_markdown

    if args.markdown:
        print(render_markdown())
    else:
        print(json.dumps(all_schemas(), indent=2))
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """One line either way: `PATH: OK, ...` (exit 0) or `FILE: BROKEN ...: why` (exit 1)."""
    from agent.commands.audit import load_key, log_files, verify

    path = Path(args.path)
    key_file: Path | None = Path(args.key_file) if args.key_file else None
    if path.is_dir() or args.config:
        cfg = load_config(args.config) if args.config else None
        path = (cfg.gateway.data_dir if cfg else path) / "audit" / "audit.log"
        if key_file is None and cfg is not None:
            key_file = cfg.gateway.audit_key_file
    if not log_files(path):
        print(f"{path}: no audit log", file=sys.stderr)
        return EXIT_ERROR
    try:
        key = None if key_file is None else load_key(key_file, private=False, source="--key-file")
    except ConfigError as exc:
        print(f"{path}: cannot verify: {'; '.join(exc.problems)}", file=sys.stderr)
        return EXIT_ERROR
    result = verify(path, key=key, head=args.head)
    if result.ok:
        notes = [f"{result.records} record(s) chained"]
        if result.files > 1:
            notes.append(f"across {result.files} files")
        if key is not None:
            notes.append(f"{result.keyed} keyed")
        if args.head:
            notes.append("the platform's head is in the chain")
        if result.torn_lines:
            notes.append(f"{len(result.torn_lines)} torn line(s) from power cuts")
        print(f"{path}: OK, {', '.join(notes)}")
        return EXIT_OK
    where = f" at line {result.first_bad_line}" if result.first_bad_line is not None else ""
    print(f"{result.file or path}: BROKEN{where}: {result.reason}", file=sys.stderr)
    return EXIT_ERROR


def _chain_hash(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise argparse.ArgumentTypeError("expected the 64 hex digits of an audit record's hash")
    return value.lower()


def cmd_keygen(args: argparse.Namespace) -> int:
    """A platform signing pair: PREFIX.key stays with the platform, PREFIX.pub goes to gateways."""
    from agent.commands.signing import generate_keypair, key_id, load_public_key

    private_path, public_path = generate_keypair(Path(args.out))
    print(f"{private_path}: private key (0600): keep it on the platform, give it to ctl --sign-key")
    print(f"{public_path}: public key, id {key_id(load_public_key(public_path))}: list it in")
    print("  gateway.platform_keys of each gateway's config")
    return EXIT_OK


def cmd_console_user(args: argparse.Namespace) -> int:
    """A `[[console.users]]` table for the config: the password read from the terminal (twice) or,
    when stdin is not a terminal, its first line; only the scrypt hash is printed."""
    import getpass

    from agent.config import ConsoleUser
    from agent.console.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("console-user: the two passwords differ", file=sys.stderr)
            return EXIT_ERROR
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 10:
        print("console-user: use a password of at least 10 characters", file=sys.stderr)
        return EXIT_ERROR
    try:
        user = ConsoleUser(name=args.name, password_hash=hash_password(password))
    except ValueError as exc:
        print(f"console-user: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f'[[console.users]]\nname = "{user.name}"\npassword_hash = "{user.password_hash}"')
    return EXIT_OK


def cmd_discover(args: argparse.Namespace) -> int:
    """ONVIF cameras on the LAN (or at --device) as `[[cameras]]` tables on stdout; progress and
    failures on stderr. Exit 1 when no camera could be read."""
    from agent.onvif.discovery import WSD_PORT, Found, describe, probe, to_toml

    password_file = Path(args.password_file).resolve() if args.password_file else None
    targets: list[tuple[str, Found | None]] = [(url, None) for url in args.device]
    if not args.device:
        try:
            found = probe(interface=args.interface, port=args.wsd_port or WSD_PORT, timeout_s=args.timeout)
        except OSError as exc:
            where = args.interface or "the default interface"
            print(f"discover: cannot send a WS-Discovery probe from {where}: {exc}", file=sys.stderr)
            return EXIT_ERROR
        print(f"discover: {len(found)} ONVIF device(s) answered", file=sys.stderr)
        targets = [(f.xaddrs[0], f) for f in found]
    if not targets:
        print("discover: no ONVIF camera answered the WS-Discovery probe", file=sys.stderr)
        return EXIT_ERROR
    reports = [
        describe(url, args.username, password_file, timeout_s=args.timeout, found=f) for url, f in targets
    ]
    for r in reports:
        if r.error is not None:
            print(f"discover: {r.error}", file=sys.stderr)
    print(to_toml(reports, args.username, password_file))
    return EXIT_OK if any(r.error is None and r.uris for r in reports) else EXIT_ERROR


def cmd_simulate(args: argparse.Namespace) -> int:
    from agent.simulate.run import run

    return run(args)


def cmd_watch(args: argparse.Namespace) -> int:
    from agent.sdk.watch import watch

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.seconds:
        threading.Timer(args.seconds, stop.set).start()
    with contextlib.suppress(KeyboardInterrupt):
        watch(args.host, args.port, args.root, sys.stdout, stop)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Start a private Mosquitto, run the agent on the built-in default and print what arrives."""
    from agent.sdk.watch import watch

    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if exe is None:
        raise AgentError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    work = Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    port = _free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n", encoding="utf-8")
    broker = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = default_config(work / "data", port)
    cfg_file = work / "config.toml"
    cfg_file.write_text(to_toml(cfg), encoding="utf-8")
    print(f"demo: broker on 127.0.0.1:{port}, agent config {cfg_file}", file=sys.stderr)
    print(f"demo: showing {cfg.topic_root}/# as the platform sees it (Ctrl-C to stop)", file=sys.stderr)
    done = threading.Event()  # the demo should end: timer, Ctrl-C or SIGTERM
    stop_watch = threading.Event()  # the watcher should stop, after the agent said goodbye
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    agent_proc: subprocess.Popen[bytes] | None = None

    def start_agent() -> None:
        nonlocal agent_proc
        if agent_proc is None:
            agent_proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(cfg_file), "--log-level", "warning"]
            )

    watcher = threading.Thread(
        target=watch,
        args=("127.0.0.1", port, cfg.topic_root, sys.stdout, stop_watch, start_agent),
        name="demo.watch",
    )
    try:
        time.sleep(0.3)
        watcher.start()
        done.wait(args.seconds or None)
    except KeyboardInterrupt:
        pass
    finally:
        proc = agent_proc
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(6)
            except subprocess.TimeoutExpired:
                proc.kill()
        time.sleep(0.5)
        stop_watch.set()
        watcher.join(2)
        broker.terminate()
        broker.wait(5)
        shutil.rmtree(work, ignore_errors=True)
    return EXIT_OK


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- entry point ---------------------------------------------------------------------------------


def build_parser(*, with_ctl: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description="District CCTV edge agent")
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", help="run the agent")
    s.add_argument("--config", "-c", help="TOML config file (default: built-in synthetic street)")
    s.add_argument("--log-level", default=argparse.SUPPRESS, choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("replay", help="run the motion/event pipeline over a video, print JSON lines")
    s.add_argument("video")
    s.add_argument("--config", "-c")
    s.add_argument("--camera", help="camera id whose settings to use (default: the first)")
    s.add_argument(
        "--annotate",
        metavar="OUT",
        help="also write the video with motion regions, object boxes, track ids and event spans drawn"
        " (H.264; .mp4, .mkv or .mov)",
    )
    s.add_argument(
        "--snapshot-dir", metavar="DIR", help="also write the best frame of each event here (JPEG)"
    )
    s.add_argument(
        "--stats",
        action="store_true",
        help="print frames, analysed frames and model inferences as one JSON line on stderr at the end",
    )
    s.set_defaults(func=cmd_replay)

    s = sub.add_parser("check-config", help="validate a config file and the TLS and password files it names")
    s.add_argument("file")
    s.add_argument(
        "--no-files", action="store_true", help="skip the TLS and password files (not in place yet)"
    )
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("schema", help="print the JSON Schema of every request, reply, event and status")
    s.add_argument("--markdown", action="store_true", help="the reference section of docs/protocol.md")
    s.set_defaults(func=cmd_schema)

    _add_audit_parser(sub)

    s = sub.add_parser("keygen", help="make an Ed25519 pair for signing commands (PREFIX.key, PREFIX.pub)")
    s.add_argument("--out", required=True, metavar="PREFIX", help="e.g. platform-2026; never overwrites")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser(
        "console-user", help="print a [[console.users]] table (scrypt hash) for the commissioning console"
    )
    s.add_argument("name", help="login name (a-z, 0-9, _ and -)")
    s.set_defaults(func=cmd_console_user)

    s = sub.add_parser("discover", help="find ONVIF cameras and print [[cameras]] tables for the config")
    s.add_argument("--username", help="ONVIF user to read the cameras with")
    s.add_argument(
        "--password-file", help="first line is the ONVIF password (named in the output, never shown)"
    )
    s.add_argument("--interface", help="IPv4 address of the interface to probe from (default: the system's)")
    s.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        help="seconds to wait for answers to the probe, and for each ONVIF request",
    )
    s.add_argument(
        "--device", action="append", default=[], metavar="URL", help="read this device service, no probe"
    )
    s.add_argument("--wsd-port", type=int, default=0, help=argparse.SUPPRESS)  # tests: a port of their own
    s.set_defaults(func=cmd_discover)

    s = sub.add_parser("simulate", help="N simulated gateways in one process, for load tests of a platform")
    simulate_arguments(s)
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("watch", help="print a gateway's messages as the platform sees them")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=1883)
    s.add_argument("--root", default="cctv/v1/+/+", help="topic root, e.g. cctv/v1/gangnam/gw-01")
    s.add_argument("--seconds", type=float, default=0.0)
    s.set_defaults(func=cmd_watch)

    s = sub.add_parser("demo", help="private broker + agent on the built-in default + watcher")
    s.add_argument("--seconds", type=float, default=0.0, help="stop after this long (default: Ctrl-C)")
    s.set_defaults(func=cmd_demo)

    if with_ctl:
        from agent.sdk.ctl import add_ctl_parser

        add_ctl_parser(sub)
    else:  # listed in --help, but the platform's SDK is loaded only when `ctl` is used
        sub.add_parser("ctl", help="send commands to a gateway as the platform would")
    return p


def _add_audit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`audit` and its own subcommands (only `verify` so far)."""
    s = sub.add_parser("audit", help="the local audit log")
    audit_sub = s.add_subparsers(dest="audit_command", required=True)
    a = audit_sub.add_parser("verify", help="check the hash chain of the audit log and its rotated files")
    a.add_argument("path", nargs="?", default="/var/lib/edge-agent", help="audit.log or a data_dir")
    a.add_argument("--config", "-c", help="take data_dir (and audit_key_file) from this config file")
    a.add_argument("--key-file", help="the gateway's audit key: records keyed with it are checked")
    a.add_argument(
        "--head",
        type=_chain_hash,
        help="the last hash the platform received on {root}/audit: it must be in the chain",
    )
    a.set_defaults(func=cmd_audit_verify)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(with_ctl="ctl" in argv).parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"{exc.source}: invalid configuration", file=sys.stderr)
        for line in exc.problems:
            print(f"  - {line}", file=sys.stderr)
        return EXIT_ERROR
    except AgentError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
