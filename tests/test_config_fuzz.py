"""A seeded fuzz of the config file: every leaf key of config.example.toml, and of a minimal config
with one camera of each source kind, gets each mutation of MUTATIONS that fits its type, written out
as TOML and loaded. The agent must refuse it with a ConfigError naming the key (and no secret), or
accept it into a sane model: finite numbers, no `true` taken for 1, no NUL, nothing MQTT cannot carry.
Then whole-file cases, path keys naming a folder, a missing file or /dev/zero, and a sample through
the real CLI (`check-config` and `run`): exit 1, the key on stderr, never a traceback.
"""

from __future__ import annotations

import copy
import math
import random
import resource
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.analysis.objects.model import DEFAULT_LABELS
from agent.config import AgentConfig, load_config
from agent.errors import ConfigError
from agent.runtime.config_check import config_problems

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = tomllib.loads((ROOT / "config.example.toml").read_text(encoding="utf-8"))
SEED = 20261128
MQTT_SECRET, CAM_SECRET = "hunter2-mqtt-secret", "Cam-Pa55w0rd"
ONVIF_URL = "http://192.0.2.20/onvif/device_service"
ONVIF = {"url": ONVIF_URL, "username": "u", "password_file": "/pw", "timeout_s": 5.0, "rtsp_login": True}
PTZ = {"height_m": 8.0, "pan_deg_per_unit": 180.0, "tilt_deg_per_unit": -45.0, "home_preset": "1"}
DOME = {"id": "dome", "allowed_agencies": ["police"], "ptz_agencies": ["police"]}
MINIMAL: dict[str, Any] = {  # one camera of each source kind the example shows
    "gateway": {"district": "gangnam", "id": "gw-01", "data_dir": "/tmp/edge-agent-fuzz"},
    "mqtt": {"host": "127.0.0.1", "username": "gw-01", "password": MQTT_SECRET},
    "cameras": [
        {"id": "synth", "source": "synthetic:street"},
        {"id": "ip", "source": f"rtsp://u:{CAM_SECRET}@192.0.2.10/a", "detect_source": "rtsp://192.0.2.10/b"},
        {"id": "file", "source": "file:///srv/video.mp4"},
        {"id": "usb", "source": "usb:0"},
        {"id": "pi", "source": "picamera:0"},
        {**DOME, "onvif": ONVIF, "ptz": PTZ},
    ],
}
DOCS = {"example": EXAMPLE, "minimal": MINIMAL}

Parts = tuple[str | int, ...]


def key_path(parts: Parts) -> str:
    """("cameras", 0, "geo", "lat") -> "cameras[0].geo.lat", as the agent's error lines spell it."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def leaves(node: Any, parts: Parts = ()) -> Iterator[tuple[Parts, Any]]:
    """Every scalar (and empty list) with its key path, tables and arrays walked in order."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, (*parts, k))
    elif isinstance(node, list | tuple) and node:
        for i, v in enumerate(node):
            yield from leaves(v, (*parts, i))
    else:
        yield parts, node


DROP = object()


def edited(doc: dict[str, Any], settings: dict[Parts, Any]) -> dict[str, Any]:
    """A copy of `doc` with each key path of `settings` set to its value (removed if DROP), in order."""
    out = copy.deepcopy(doc)
    for parts, value in settings.items():
        node: Any = out
        for p in parts[:-1]:
            node = node[p]
        if value is DROP:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value
    return out


def toml(value: Any) -> str:
    """A value as TOML: inline tables, `nan`/`inf` literals, every control character escaped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        esc = {'"': '\\"', "\\": "\\\\"} | {chr(c): f"\\u{c:04x}" for c in [*range(32), 127]}
        return '"' + "".join(esc.get(c, c) for c in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(map(toml, value)) + "]"
    return "{ " + ", ".join(f'"{k}" = {toml(v)}' for k, v in value.items()) + " }"


def write(tmp: Path, doc: dict[str, Any]) -> Path:
    path = tmp / "config.toml"
    path.write_text("".join(f"{k} = {toml(v)}\n" for k, v in doc.items()), encoding="utf-8")
    return path


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def salted(v: str, rng: random.Random, chars: str) -> str:
    """`v` with three of `chars` inserted at seeded places."""
    for c in rng.choices(chars, k=3):
        i = rng.randint(0, len(v))
        v = v[:i] + c + v[i:]
    return v


Mutation = tuple[Callable[[Any], bool], Callable[[Any, random.Random], Any]]
string, boolean = (lambda v: isinstance(v, str)), (lambda v: isinstance(v, bool))
floating = lambda v: isinstance(v, float)  # noqa: E731
MUTATIONS: dict[str, Mutation] = {
    "string for number": (is_number, lambda v, r: "not-a-number"),
    "bool for number": (is_number, lambda v, r: True),
    "number for string": (string, lambda v, r: 42),
    "number for bool": (boolean, lambda v, r: 7),
    "string for bool": (boolean, lambda v, r: "yes please"),
    "string for list": (lambda v: v == [], lambda v, r: "x"),
    "list for scalar": (lambda v: v != [], lambda v, r: [v]),
    "table for scalar": (lambda v: v != [], lambda v, r: {"x": 1}),
    "negative": (is_number, lambda v, r: -(abs(v) or 1)),
    "zero": (is_number, lambda v, r: type(v)(0)),
    "huge": (is_number, lambda v, r: 1e308),
    "huge int": (lambda v: is_number(v) and isinstance(v, int), lambda v, r: 2**63 - 1),
    "nan": (floating, lambda v, r: math.nan),
    "inf": (floating, lambda v, r: math.inf),
    "-inf": (floating, lambda v, r: -math.inf),
    "empty string": (string, lambda v, r: ""),
    "100 kB string": (string, lambda v, r: v + "x" * 100_000),
    "NUL": (string, lambda v, r: salted(v, r, "\x00")),
    "control characters": (string, lambda v, r: salted(v, r, "\x01\x07\x1b\x7f\x85\u2028\u202e\ufeff")),
    "unknown key beside it": (lambda v: True, lambda v, r: 1),  # set at the leaf's parent, not the leaf
}


def names_key(problems: list[str], parts: Parts) -> bool:
    """A line starts with the key path, or with a parent's and then names the rest of it."""
    full = key_path(parts)
    if any(line.startswith((f"{full}:", f"{full}.", f"{full}[")) for line in problems):
        return True
    splits = [(key_path(parts[:i]) or "<root>", key_path(parts[i:])) for i in range(len(parts))]
    return any(line.startswith(f"{head}:") and tail in line for head, tail in splits for line in problems)


def insane(cfg: AgentConfig) -> list[str]:
    """What an accepted model must not hold: what breaks arithmetic, the OS or MQTT (65535 bytes)."""
    bad = []
    for parts, value in leaves(cfg.model_dump()):
        key = key_path(parts)
        if isinstance(value, float) and not math.isfinite(value):
            bad.append(f"{key} = {value}")
        if is_number(value) and key.endswith("_s") and value < 0:
            bad.append(f"{key} = {value}, a negative duration")
        if isinstance(value, str | Path) and "\x00" in str(value) and key != "mqtt.password":
            bad.append(f"{key} holds a NUL")
        if isinstance(value, Path) and str(value) == ".":
            bad.append(f"{key} = '' taken as the working directory")
    host = cfg.mqtt.host
    if len(host) > 253 or not host.isprintable() or " " in host:
        bad.append(f"mqtt.host {host[:20]!r}... ({len(host)} chars) is no host name")
    if len(cfg.topic_root.encode()) > 60_000:
        bad.append(f"topics under {cfg.topic_root[:20]!r}... exceed MQTT's 65535 bytes")
    for key in ("username", "password", "client_id"):
        if len((getattr(cfg.mqtt, key) or "").encode()) > 65_535:
            bad.append(f"mqtt.{key} exceeds MQTT's 65535 bytes")
    return bad


def verdict(path: Path, parts: Parts, mutation: str) -> str | None:
    """None if the agent handled the mutated file at `path` well, else what went wrong."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        text = "\n".join(exc.problems)
        if MQTT_SECRET in text or CAM_SECRET in text:
            return f"a secret in the error: {text[:200]!r}"
        if not names_key(exc.problems, parts):
            return f"error does not name the key: {exc.problems[:2]}"[:300]
        if any(not line.isprintable() or len(line) > 2000 for line in exc.problems):
            return f"error line unprintable or {max(map(len, exc.problems))} chars long"
        return None
    except Exception as exc:  # any other exception is the finding
        return f"crashed: {type(exc).__name__}: {exc}"[:300]
    if mutation == "bool for number":
        return "accepted `true` as a number"
    return "; ".join(insane(cfg)) or None


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_every_leaf_key_refuses_or_sanely_accepts(tmp_path: Path, mutation: str) -> None:
    applies, make = MUTATIONS[mutation]
    findings, cases = [], 0
    for doc_name, doc in DOCS.items():
        for parts, value in leaves(doc):
            if mutation == "unknown key beside it":
                if isinstance(parts[-1], int):
                    continue
                parts = (*parts[:-1], "zz_unknown_key")  # noqa: PLW2901 - the key this case names
            if not applies(value):
                continue
            rng = random.Random(f"{SEED}:{doc_name}:{key_path(parts)}:{mutation}")
            cases += 1
            path = write(tmp_path, edited(doc, {parts: make(value, rng)}))
            if (why := verdict(path, parts, mutation)) is not None:
                findings.append(f"{doc_name}: {key_path(parts)}: {why}")
    assert cases > 0
    assert findings == [], f"{len(findings)}/{cases} cases:\n" + "\n".join(findings)


# -- whole files, path keys, the real CLI -----------------------------------------------------------


CAMERAS_1000 = [{"id": f"cam-{i}", "source": "usb:0"} for i in range(1000)]
# content, a text one problem line must hold, whether accepting the file is fine too
WHOLE_FILES: dict[str, tuple[bytes | dict[str, Any], str, bool]] = {
    "empty file": (b"", "gateway: Field required", False),
    "not TOML": (b"gateway: {district: gangnam}\n", "TOML syntax error", False),
    "UTF-8 BOM": (b"\xef\xbb\xbf" + (ROOT / "config.example.toml").read_bytes(), "byte order mark", True),
    "not UTF-8": (b'[gateway]\nname = "Gangnam \xc7\xd1"\n', "not UTF-8", False),
    "no gateway section": (edited(EXAMPLE, {("gateway",): DROP}), "gateway: Field required", False),
    "no district": (edited(EXAMPLE, {("gateway", "district"): DROP}), "gateway.district: Field", False),
    "camera without id": (edited(EXAMPLE, {("cameras", 0, "id"): DROP}), "cameras[0].id: Field", False),
    "camera without source": (edited(MINIMAL, {("cameras", 0, "source"): DROP}), "cameras[0]: source", False),
    "duplicate camera ids": (edited(EXAMPLE, {("cameras", 1, "id"): "cam-1"}), "appears twice", False),
    "zero cameras": (edited(EXAMPLE, {("cameras",): []}), "cameras", True),
    "1000 cameras": (edited(EXAMPLE, {("cameras",): CAMERAS_1000}), "cameras", True),
}


@pytest.mark.parametrize("case", list(WHOLE_FILES))
def test_whole_file_cases(tmp_path: Path, case: str) -> None:
    content, expected, may_accept = WHOLE_FILES[case]
    path = tmp_path / "case.toml"
    path.write_bytes(write(tmp_path, content).read_bytes() if isinstance(content, dict) else content)
    problems = []
    try:
        load_config(path)
    except ConfigError as exc:
        problems = exc.problems
    assert any(expected in line for line in problems) or (may_accept and not problems), problems


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def for_run(doc: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """`doc` with its state under `tmp`, a broker port nobody listens on, and a username (without
    one `run` never reads mqtt.password_file)."""
    mqtt = {**doc["mqtt"], "port": free_port(), "username": "gw-01"}
    return edited(doc, {("gateway", "data_dir"): str(tmp / "data"), ("mqtt",): mqtt})


def edge_agent(*args: str, cwd: Path) -> tuple[int, str]:
    """Exit code and stderr of `python -m agent ARGS`, held to 2 GiB and 20 s (a /dev/zero read)."""
    argv = [sys.executable, "-m", "agent", "--log-level", "error", *args]
    try:
        done = subprocess.run(
            argv, check=False, capture_output=True, text=True, errors="backslashreplace", cwd=cwd,
            timeout=20, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)),
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return -1, f"{args[0]} still running after 20 s"
    return done.returncode, done.stderr


JUNK = str(ROOT / "config.example.toml")  # a file that holds no key, certificate or password
USER = {"name": "tech", "password_hash": f"scrypt$16384$8$1${'A' * 24}${'B' * 44}"}
CONSOLE = {"enabled": True, "users": [USER]}
DETECTING: dict[Parts, Any] = {("cameras", 0, "detection", "enabled"): True}
# a key naming a file, and what else it needs to be read at all
PATH_KEYS: dict[Parts, dict[Parts, Any]] = {
    ("gateway", "audit_key_file"): {},
    ("gateway", "platform_keys", 0): {("gateway", "platform_keys"): [""]},
    ("mqtt", "password_file"): {},
    ("mqtt", "tls", "ca_file"): {("mqtt", "tls"): {}},
    ("mqtt", "tls", "cert_file"): {("mqtt", "tls"): {"key_file": JUNK}},
    ("detector", "model_path"): {**DETECTING, ("detector", "labels_path"): str(DEFAULT_LABELS)},
    ("detector", "labels_path"): DETECTING,
    ("console", "tls_cert_file"): {("console",): {**CONSOLE, "tls_key_file": JUNK}},
    ("cameras", 0, "onvif", "password_file"): {("cameras", 0, "onvif"): {"url": ONVIF_URL, "username": "u"}},
    ("gateway", "data_dir"): {},
}
PATH_CASES = [(k, kind) for k in PATH_KEYS for kind in ("a folder", "a missing file", "/dev/zero")]
PATH_CASES = PATH_CASES[:-3] + PATH_CASES[-1:]  # data_dir names a folder, and a missing one is created


@pytest.mark.parametrize(
    ("parts", "kind"), PATH_CASES, ids=lambda v: key_path(v) if isinstance(v, tuple) else v
)
def test_path_key_naming_a_folder_a_missing_file_or_dev_zero(tmp_path: Path, parts: Parts, kind: str) -> None:
    target = {"a folder": str(tmp_path), "a missing file": str(tmp_path / "missing")}.get(kind, kind)
    path = write(tmp_path, edited(for_run(EXAMPLE, tmp_path), {**PATH_KEYS[parts], parts: target}))
    key = key_path(parts)
    if kind == "/dev/zero":  # read in a child held to 2 GiB: an unbounded read must not take this one down
        code, err = edge_agent("check-config", str(path), cwd=tmp_path)
        assert (code, "Traceback" in err, key in err) == (1, False, True), f"exit {code}: {err[-600:]}"
    else:
        problems = config_problems(load_config(path))
        assert any(key in line for line in problems), problems


# a sample of the cases above: the settings made, the last one's key the one to name
CLI_CASES: dict[str, dict[Parts, Any]] = {
    "nan threshold": {("cameras", 0, "detection", "known_motion_fps"): math.nan},
    "inf post-roll": {("cameras", 0, "clips", "post_roll_s"): math.inf},
    "port a word": {("mqtt", "port"): "not-a-number"},
    "100 kB camera id": {("cameras", 0, "id"): "cam-" + "x" * 100_000},
    "no district": {("gateway", "district"): DROP},
    "unknown key": {("cameras", 0, "buffer", "colour"): 3},
    "negative outbox": {("storage", "outbox_max_bytes"): -1},
    "password in a list": {("mqtt", "password"): [MQTT_SECRET]},
    "camera password, bad port": {("cameras", 1, "source"): f"rtsp://admin:{CAM_SECRET}@192.0.2.10:99999/s"},
    "NUL in password_file": {("mqtt", "password_file"): "/tmp/pw\x00"},
    "password_file /dev/zero": {("mqtt", "password_file"): "/dev/zero"},
    "console TLS files a folder": {
        ("console",): {**CONSOLE, "tls_key_file": "/etc"},
        ("console", "tls_cert_file"): "/etc",
    },
    "data_dir /dev/zero": {("gateway", "data_dir"): "/dev/zero"},
}


@pytest.mark.parametrize("case", list(CLI_CASES))
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_cli_refuses_with_the_key_and_no_traceback(tmp_path: Path, command: str, case: str) -> None:
    path = write(tmp_path, edited(for_run(EXAMPLE, tmp_path), CLI_CASES[case]))
    key = key_path(list(CLI_CASES[case])[-1])
    args = ["check-config", str(path)] if command == "check-config" else ["run", "--config", str(path)]
    code, err = edge_agent(*args, cwd=tmp_path)
    assert (code, "Traceback" in err, key in err) == (1, False, True), f"exit {code}: {err[-800:]}"
    assert MQTT_SECRET not in err and CAM_SECRET not in err, err[-800:]
    assert len(err) < 10_000, f"{len(err)} characters on stderr"
    try:
        load_config(path)
    except ConfigError:  # refused by the schema: `run` must not have started anything
        assert not (tmp_path / "data").exists(), "run created data_dir before refusing its config"
