"""Every state file in data_dir damaged at once: the agent still starts, says which, loses nothing.

Project rule: bad input of any kind (files on disk included) gets a clear error naming the problem,
and nothing is lost or crashed. One real run fills a data_dir with its usual files (outbox,
settings, open events, audit log, reply store, holds, clips and their sidecars); what a short run
does not leave (clips kept pending at a stop, a camera's stationary objects) is planted in the
agent's own format. Each test copies that data_dir, damages every file one way, starts
`edge-agent run` again and judges it as the platform and the operator would:

- it keeps running: the retained `online` status, camera `ok`, a ping answered, telemetry saying
  the outbox and the reply store are durable, a clean SIGTERM, no traceback, no dead thread;
- a WARNING or ERROR line names each damaged file (a clip's files: the clip id; a pending clip's:
  its id), and does not call a folder a symbolic link;
- nothing is lost and nothing stays broken: the damaged bytes are still in data_dir (set aside,
  not overwritten); what an operator had in a folder found where a file goes (or in a file found
  where a folder goes) is still there; and what the agent writes to again is usable again (the
  obstacle moved aside), so the outbox and the reply store stay durable and clips stay on.

The audit log is the one file the agent refuses to start without: imagery must not go out
unaudited (agent.runtime.agent.prepare_data_dir stops for an unwritable data_dir for that reason).
A log it cannot open (a folder in its place, no `audit/` folder) must stop it with exit 1 and one
`edge-agent: ...` line naming the file, never a traceback (agent.cli.main). A log it opens but
cannot read (garbage, lines that are no records) starts a new chain and says so, as
docs/protocol.md "At start-up" documents.

Damage no agent can see, so no log line is asked for: a 0-byte audit.log (what a gateway that has
audited nothing has) and a 0-byte SQLite file (an empty database to SQLite, what a kill just after
the file was created leaves). The audit log's own damaged bytes need not be kept: a line without
its newline is cut off at start (docs/protocol.md), and the tracker may rewrite a camera's
stationary objects with what it sees (docs/objects.md).

Unreadable files (chmod 000) are not tested: the tests run as root, who reads them anyway.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.clock import iso
from agent.footage.clips import CLIP_ID_RE
from agent.sdk.client import ClientError, PlatformClient
from tests.conftest import Broker
from tests.harness import GatewayRun, Received, Subscriber, wait_answering

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DISTRICT = "damage"
CAM = "cam-1"
PENDING_JOB = "0f4e2d6c-1b7a-4c39-9a55-3d2e8f1b6a70"  # planted pending clip whose job.json is damaged
PENDING_FRAMES = "5b0c7e8a-92d4-4f61-8e3a-7c1d2b9f0e45"  # ... whose frames.jpg is damaged
CAMERAS = (
    f'[[cameras]]\nid = "{CAM}"\nsource = "synthetic:street"\nallowed_agencies = ["police", "admin"]\n'
    "[cameras.motion]\nmin_duration_s = 0.1\n"
    "[cameras.detection]\nenabled = true\n"
)
START_S = 30.0  # online, camera ok, ping: each within this (a loaded machine loads the model slowly)
STOP_S = 10.0
TRACEBACK = "Traceback (most recent call last)"


# -- the files -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateFile:
    """One file of data_dir: where it is, what it holds, and what a log line about it must name."""

    rel: str
    kind: str  # "json", "sqlite", "jsonl" (the audit log), "binary"
    names: tuple[str, ...] = ()  # each must be on the line (default: the file's name)
    keeps_bytes: bool = True  # its damaged bytes must still be in data_dir after the run

    @property
    def name(self) -> str:
        return Path(self.rel).name

    def mentioned_by(self, line: str) -> bool:
        return all(n in line for n in (self.names or (self.name,)))


@dataclass
class Template:
    """The data_dir of a real run (plus the planted files) and the files to damage in it."""

    data: Path
    files: list[StateFile] = field(default_factory=list)


def state_files(clip_a: str, clip_b: str) -> list[StateFile]:
    """Two clips, two pending clips: one file of each damaged, so neither hides the other."""
    return [
        StateFile("outbox.db", "sqlite"),
        StateFile("settings.json", "json"),
        StateFile("open_events.json", "json"),
        StateFile("audit/audit.log", "jsonl", keeps_bytes=False),
        StateFile("commands/replies.db", "sqlite"),
        StateFile("clips/holds.json", "json"),
        StateFile(f"clips/{clip_a}.json", "json", names=(clip_a,)),
        StateFile(f"clips/{clip_b}.mp4", "binary", names=(clip_b,)),
        StateFile(f"analysis/objects-{CAM}.json", "json", keeps_bytes=False),
        StateFile(f"clips-pending/{PENDING_JOB}/job.json", "json", names=(PENDING_JOB,)),
        StateFile(f"clips-pending/{PENDING_FRAMES}/frames.jpg", "binary", names=(PENDING_FRAMES,)),
    ]


FOLDERS = ["commands", "clips", "clips-pending", "analysis"]  # besides audit/, which stops the agent


# -- the damage ----------------------------------------------------------------------------------


def noise(seed: str, size: int = 4096) -> bytes:
    """Bytes of no file's format (not UTF-8 JSON, not SQLite, MP4 or JPEG), different per seed."""
    return b"\x00\xfe" + random.Random(seed).randbytes(size - 2)


def sqlite_of_another_schema(path: Path) -> None:
    """A sound SQLite file whose tables have the agent's names and other columns (and a row that
    tells it from the other files so damaged)."""
    path.unlink()
    conn = sqlite3.connect(path)
    try:
        conn.executescript(
            "CREATE TABLE meta (k TEXT); CREATE TABLE messages (x TEXT); CREATE TABLE replies (x TEXT);"
        )
        conn.execute("INSERT INTO messages VALUES (?)", (str(path),))
        conn.commit()
    finally:
        conn.close()


def wrong_shape(file: StateFile, shape: str) -> bytes | None:
    """Valid JSON of a shape the file never has (an object: naming the file, so that it can be
    found again); None for a file that is not JSON."""
    body = {"list": b"[]", "object": json.dumps({"x": file.rel}).encode(), "null": b"null"}[shape]
    if file.kind == "json":
        if file.name == "open_events.json" and shape == "list":
            return b"[1]"  # `[]` is what it holds with no event open; this is a list of no events
        return body
    if file.kind == "jsonl":
        return body + b"\n"  # a whole line of JSON that is no audit record
    return None


def keep_name(rel: str) -> str:
    """The name of an operator's file planted in a folder put in `rel`'s place."""
    return "kept-" + re.sub(r"[^a-z0-9]+", "-", rel.lower())


def marker(rel: str) -> bytes:
    """What an operator's file put at (or in a folder at) `rel` holds."""
    return f"an operator's file, where {rel} goes\n".encode()


def damage(data: Path, file: StateFile, kind: str) -> bool:
    """Damage one file in place; False when `kind` does not apply to it."""
    path = data / file.rel
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "noise":
        path.write_bytes(noise(file.rel))
    elif kind.startswith("shape-"):
        if file.kind == "sqlite":
            sqlite_of_another_schema(path)
            return True
        body = wrong_shape(file, kind.removeprefix("shape-"))
        if body is None:
            return False
        path.write_bytes(body)
    elif kind == "folder":
        path.unlink()
        path.mkdir(mode=0o700)
        (path / keep_name(file.rel)).write_bytes(marker(file.rel))
    else:
        raise AssertionError(kind)
    return True


def file_for_folder(data: Path, rel: str) -> None:
    """A regular file where the agent keeps a folder (the folder's contents gone with it)."""
    shutil.rmtree(data / rel)
    (data / rel).write_bytes(marker(rel))


# -- running the agent -----------------------------------------------------------------------------


def status_is(topic: str, state: str) -> Callable[[Received], bool]:
    return lambda m: m.topic == topic and m.json().get("state") == state


@dataclass
class Outcome:
    """What the platform and the operator saw of one start of the agent."""

    code: int | None  # the exit code when it exited by itself; None while it kept running
    log: str
    online_retained: bool = False
    camera_ok: bool = False
    ping: dict[str, Any] | None = None
    telemetry: dict[str, Any] = field(default_factory=dict)
    stop_code: int | None = None

    def loud(self) -> list[str]:
        return [ln for ln in self.log.splitlines() if " WARNING " in ln or " ERROR " in ln]


def start_run(tmp: Path, broker: Broker) -> GatewayRun:
    """An agent on `tmp/data` under a gateway id of its own (retained messages stay apart)."""
    return GatewayRun(tmp, broker.host, broker.port, DISTRICT, "gw-" + uuid.uuid4().hex[:12], CAMERAS)


def judge(tmp: Path, broker: Broker) -> Outcome:
    """Start the agent on `tmp/data`, watch it come up (or exit), stop it: what was seen."""
    run = start_run(tmp, broker)
    client = PlatformClient(broker.host, broker.port, run.root, agency="police", operator="o-1").connect()
    try:
        online = status_is(run.root + "/status", "online")
        deadline = time.monotonic() + START_S
        while run.agent.proc.poll() is None and time.monotonic() < deadline:
            if run.sub.wait_for(lambda ms: any(online(m) for m in ms), 0.2):
                break
        if run.agent.proc.poll() is not None:
            return Outcome(run.agent.proc.returncode, run.agent.log())
        out = Outcome(None, "")
        late = Subscriber(broker.host, broker.port, run.root + "/status")
        try:
            out.online_retained = late.wait_for(lambda ms: any(m.retain and online(m) for m in ms), 5.0)
        finally:
            late.close()
        cam_ok = status_is(f"{run.root}/cam/{CAM}/status", "ok")
        out.camera_ok = run.sub.wait_for(lambda ms: any(cam_ok(m) for m in ms), START_S)
        try:
            out.ping = wait_answering(client, timeout=START_S)
        except ClientError:
            out.ping = None
        telemetry = run.root + "/telemetry"
        if run.sub.wait_for(lambda ms: any(m.topic == telemetry for m in ms), 5.0):
            out.telemetry = run.sub.on(telemetry)[-1].json()
        if run.agent.proc.poll() is None:
            out.stop_code, _ = run.agent.terminate(timeout=STOP_S)
        else:
            out.stop_code = run.agent.proc.returncode
        out.log = run.agent.log()
        return out
    finally:
        client.close()
        run.close()


# -- the template --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Template:
    """A data_dir as a real run leaves it: an event, a config.set, two holds (a clip each), an
    audited snapshot; then two pending clips and a parked car planted as the agent writes them."""
    tmp = tmp_path_factory.mktemp("template")
    run = start_run(tmp, broker)
    police = PlatformClient(broker.host, broker.port, run.root, agency="police", operator="o-1").connect()
    admin = PlatformClient(broker.host, broker.port, run.root, agency="admin", operator="a-1").connect()
    try:
        wait_answering(police, timeout=START_S)
        admin.config_set({"cameras": {CAM: {"motion": {"threshold": 30}}}})
        assert run.sub.wait_for(lambda ms: any(m.topic.endswith(f"/cam/{CAM}/event") for m in ms), START_S), (
            run.agent.log()
        )
        for _ in range(2):  # two spans apart: two clips besides the event's
            now = time.time()
            assert police.clip_hold(CAM, iso(now - 1.0), iso(now), iso(now + 3600))["clip_ids"]
            time.sleep(1.5)
        police.snapshot(CAM, max_width=64)
        code, _ = run.agent.terminate(timeout=STOP_S)
        assert code == 0, run.agent.log()
    finally:
        police.close()
        admin.close()
        run.close()
    data = tmp / "data"
    clips = sorted(
        p.stem
        for p in (data / "clips").glob("*.json")
        if CLIP_ID_RE.fullmatch(p.stem) and p.with_suffix(".mp4").is_file()
    )
    assert len(clips) >= 2, f"clips written: {clips}"
    clip_a, clip_b = clips[:2]
    plant_pending(data, PENDING_JOB, 0)
    plant_pending(data, PENDING_FRAMES, 1)
    plant_stationary(data)
    files = state_files(clip_a, clip_b)
    missing = [f.rel for f in files if not (data / f.rel).is_file()]
    assert not missing, f"no {missing} in {sorted(str(p.relative_to(data)) for p in data.rglob('*'))}"
    return Template(data, files)


def private(path: Path, body: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(body)
    path.chmod(0o600)


def plant_pending(data: Path, clip_id: str, n: int) -> None:
    """A clip kept at a stop for the next start to encode (agent.footage.pending's layout)."""
    t0 = time.time() - 120 + 10 * n
    frames = []
    for i in range(5):
        ok, buf = cv2.imencode(".jpg", np.full((90, 160, 3), 40 * i, np.uint8))
        assert ok
        frames.append((t0 + i / 10, buf.tobytes()))
    job = {
        "version": 1,
        "clip_id": clip_id,
        "event_id": str(uuid.uuid4()),
        "camera": CAM,
        "start": frames[0][0],
        "end": frames[-1][0],
        "promised": True,
        "masks": [],
        "masked": False,
        "frames": [[ts, len(jpeg)] for ts, jpeg in frames],
    }
    entry = data / "clips-pending" / clip_id
    private(entry / "frames.jpg", b"".join(jpeg for _, jpeg in frames))
    private(entry / "job.json", json.dumps(job).encode())


def plant_stationary(data: Path) -> None:
    """A parked car the camera's tracker kept at its last stop (agent.analysis.objects.tracker)."""
    state = {"version": 1, "camera": CAM, "stationary": [{"label": "car", "box": [0.1, 0.5, 0.2, 0.2]}]}
    private(data / "analysis" / f"objects-{CAM}.json", json.dumps(state).encode())


def copy_template(template: Template, tmp: Path) -> Path:
    data = tmp / "data"
    shutil.copytree(template.data, data, symlinks=True)
    return data


# -- the checks ----------------------------------------------------------------------------------


def running_problems(out: Outcome) -> list[str]:
    """What is wrong with a start that should have kept the agent running (empty: nothing)."""
    if out.code is not None:
        return [f"the agent exited {out.code} by itself:\n{trimmed(out.log)}"]
    problems = []
    if not out.online_retained:
        problems.append("no retained online status")
    if not out.camera_ok:
        problems.append(f"no camera status ok for {CAM}")
    if out.ping is None:
        problems.append("no answer to ping")
    if out.stop_code != 0:
        problems.append(f"SIGTERM gave exit code {out.stop_code}")
    if TRACEBACK in out.log:
        problems.append("a traceback in the log:\n" + trimmed(out.log))
    if "threads died" in out.log:
        problems.append("a thread died")
    if not out.telemetry:
        problems.append("no telemetry")
    else:
        if out.telemetry.get("outbox", {}).get("durable") is not True:
            problems.append("the outbox is not durable (messages in memory only)")
        if out.telemetry.get("commands", {}).get("replies", {}).get("durable") is not True:
            problems.append("the reply store is not durable (replies in memory only)")
        if "clips" not in out.telemetry:
            problems.append("clips are disabled")
    return problems


def trimmed(log: str) -> str:
    """Each traceback of `log` cut to its last frame and the exception, or the log's tail."""
    lines = log.splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith(TRACEBACK):
            j = i + 1
            while j < len(lines) and lines[j].startswith(" "):
                j += 1
            last = max([k for k in range(i + 1, j) if lines[k].startswith("  File")], default=i + 1)
            found.append("\n".join(lines[last : j + 1]))
    return "\n---\n".join(found) if found else "\n".join(lines[-15:])


def naming_problems(out: Outcome, files: list[StateFile], *, folders: bool = False) -> list[str]:
    """Each of `files` has a WARNING or ERROR line naming it (and, for a folder, not a link)."""
    problems = []
    loud = out.loud()
    for f in files:
        lines = [line for line in loud if f.mentioned_by(line)]
        if not lines:
            problems.append(f"no WARNING/ERROR line names {f.rel}")
        elif folders and all("symbolic link" in line for line in lines):
            problems.append(f"a folder at {f.rel} is reported as a symbolic link: {lines[0][-220:]}")
    return problems


def what_was_at(data: Path, file: StateFile) -> Callable[[Path], bool]:
    """Whether a file is the damaged `file`, wherever it was moved: the same bytes, or for SQLite
    (whose header the agent's open may rewrite before it gives up on the file) the same row."""
    path = data / file.rel
    if file.kind == "sqlite" and path.read_bytes().startswith(b"SQLite format 3\x00"):
        return lambda p: str(path) in sqlite_rows(p)
    body = path.read_bytes()
    return lambda p: p.read_bytes() == body


def sqlite_rows(path: Path) -> list[str]:
    """The `messages.x` rows of an SQLite file made by `sqlite_of_another_schema` (else none)."""
    if not path.read_bytes().startswith(b"SQLite format 3\x00"):
        return []
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return [str(r[0]) for r in conn.execute("SELECT x FROM messages").fetchall()]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def kept_problems(data: Path, kept: dict[str, Callable[[Path], bool]]) -> list[str]:
    """Every damaged file is still in data_dir (moved aside, not overwritten or deleted)."""
    present = [p for p in data.rglob("*") if p.is_file() and not p.is_symlink()]
    return [
        f"the damaged {rel} was overwritten or deleted"
        for rel, is_it in kept.items()
        if not any(is_it(p) for p in present)
    ]


def planted_problems(data: Path, rels: list[str]) -> list[str]:
    """What an operator had where a file or folder of the agent's was (`marker(rel)`) is still in
    data_dir, wherever the agent moved it."""
    present = {p.read_bytes() for p in data.rglob("*") if p.is_file() and not p.is_symlink()}
    return [f"what was at {rel} was deleted" for rel in rels if marker(rel) not in present]


def still_blocked(data: Path, rels: list[str]) -> list[str]:
    """Paths still not usable by the agent after the run (the obstacle left in place)."""
    return [
        f"{rel} is still a folder: the agent keeps failing to write it"
        for rel in rels
        if (data / rel).is_dir()
    ]


def report(problems: list[str], out: Outcome) -> None:
    assert not problems, (
        "\n".join(problems) + "\n\nWARNING/ERROR lines:\n" + "\n".join(line[24:][:400] for line in out.loud())
    )


# -- the tests -----------------------------------------------------------------------------------

KINDS = ["empty", "noise", "shape-list", "shape-object", "shape-null", "folder"]
UNSEEABLE = {("empty", "sqlite"), ("empty", "jsonl")}  # see the module docstring
# The files the agent writes again where they are: a folder left there fails every write.
REWRITTEN = [
    "outbox.db",
    "settings.json",
    "open_events.json",
    "commands/replies.db",
    "clips/holds.json",
    f"analysis/objects-{CAM}.json",
]


@pytest.mark.parametrize("kind", KINDS)
def test_the_agent_runs_over_damaged_state_files_names_each_and_keeps_them(
    kind: str, template: Template, tmp_path: Path, broker: Broker
) -> None:
    data = copy_template(template, tmp_path)
    # A folder at the audit log stops the agent: test_an_audit_log_it_cannot_open_stops_...
    files = [f for f in template.files if not (kind == "folder" and f.kind == "jsonl")]
    damaged = [f for f in files if damage(data, f, kind)]
    unique = kind in ("noise", "shape-object")  # each file's damaged bytes differ: findable again
    kept = {f.rel: what_was_at(data, f) for f in damaged if unique and f.keeps_bytes}
    out = judge(tmp_path, broker)
    problems = running_problems(out)
    problems += naming_problems(
        out, [f for f in damaged if (kind, f.kind) not in UNSEEABLE], folders=kind == "folder"
    )
    problems += kept_problems(data, kept)
    if kind == "folder":
        problems += planted_problems(data, [f.rel for f in damaged])
        problems += still_blocked(data, REWRITTEN)
    report(problems, out)


@pytest.mark.parametrize("folders", [["commands", "clips-pending", "analysis"], ["clips"]], ids="+".join)
def test_the_agent_runs_with_files_where_its_folders_go(
    folders: list[str], template: Template, tmp_path: Path, broker: Broker
) -> None:
    """`clips` apart: while it is unusable the recorder, which reads `clips-pending`, never starts."""
    data = copy_template(template, tmp_path)
    for rel in folders:
        file_for_folder(data, rel)
    out = judge(tmp_path, broker)
    problems = running_problems(out)
    problems += [
        f"no WARNING/ERROR line names {rel}/"
        for rel in folders
        if not any(re.search(rf"/data/{re.escape(rel)}(?![\w-])", line) for line in out.loud())
    ]
    problems += planted_problems(data, folders)
    problems += [
        f"{rel} is still a file: the agent cannot keep anything there"
        for rel in folders
        if (data / rel).is_file()
    ]
    report(problems, out)


def folder_at_audit_log(data: Path) -> None:
    damage(data, StateFile("audit/audit.log", "jsonl"), "folder")


AUDIT_REFUSALS: dict[str, Callable[[Path], None]] = {
    "folder-at-audit.log": folder_at_audit_log,
    "file-at-audit": lambda data: file_for_folder(data, "audit"),
}


@pytest.mark.parametrize("how", list(AUDIT_REFUSALS))
def test_an_audit_log_it_cannot_open_stops_the_agent_with_one_line(
    how: str, template: Template, tmp_path: Path, broker: Broker
) -> None:
    data = copy_template(template, tmp_path)
    AUDIT_REFUSALS[how](data)
    out = judge(tmp_path, broker)
    assert out.code == 1, f"exit {out.code}, expected 1 (refused):\n{trimmed(out.log)}"
    assert TRACEBACK not in out.log, trimmed(out.log)
    last = out.log.strip().splitlines()[-1]
    rel = "audit" if how == "file-at-audit" else "audit/audit.log"
    assert last.startswith("edge-agent: ") and f"/data/{rel}" in last, trimmed(out.log)
    problems = planted_problems(data, [rel])
    assert not problems, problems
