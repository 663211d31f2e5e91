"""data_dir never follows a symbolic link, and what the agent creates there is 0600 / 0700.

Issue 13 item 9: a clip .mp4 linked to another file (with a matching sidecar) was served by
clip.fetch, and a `.write-test` link truncated its target at start-up. Each test plants a link
where an attacker with write access to data_dir could, then asserts on what is served and on the
bytes of the link's target.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.capture.source import Frame
from agent.clock import iso
from agent.config import parse_config
from agent.config.settings import SettingsStore
from agent.contract.messages import Event
from agent.footage.access import Footage
from agent.footage.clips import ClipError
from agent.footage.prebuffer import PreEventBuffer
from agent.footage.store import ClipStore
from agent.runtime.agent import prepare_data_dir
from agent.runtime.open_events import OpenEvents
from tests.test_clips import T0, buffered, scene
from tests.test_commands_gateway import base_config

SECRET = b"not footage: another user's file\n" * 64


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "secret.bin"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def forge_sidecar(root: Path, clip_id: str, target: Path) -> None:
    """Make the clip's sidecar describe `target` (size and hash), as an attacker would."""
    sidecar = root / f"{clip_id}.json"
    data = json.loads(sidecar.read_text())
    body = target.read_bytes()
    data.update(bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
    sidecar.write_text(json.dumps(data))


def test_a_clip_replaced_by_a_link_is_not_found_and_never_read(tmp_path: Path, secret: Path) -> None:
    root = tmp_path / "data" / "clips"
    store = ClipStore(root, verify_sha256=False)  # as the runtime opens it
    info = store.export("cam-1", T0, T0 + 1.0, buffered(1.0))
    video = store.path(info.clip_id)
    video.unlink()
    video.symlink_to(secret)
    forge_sidecar(root, info.clip_id, secret)
    with pytest.raises(ClipError) as err:
        list(store.chunks(info.clip_id, 4096))
    assert err.value.code == "not_found"
    assert secret.read_bytes() == SECRET


def test_the_startup_scan_removes_links_never_their_targets(
    tmp_path: Path, secret: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data" / "clips"
    store = ClipStore(root)
    linked, kept = (
        store.export("cam-1", T0 + 10 * k, T0 + 10 * k + 1, buffered(1.0, start=T0 + 10 * k))
        for k in range(2)
    )
    video = store.path(linked.clip_id)
    video.unlink()
    video.symlink_to(secret)
    forge_sidecar(root, linked.clip_id, secret)
    (root / "holds.json").symlink_to(secret)
    (root / "stray.tmp").symlink_to(secret)
    with caplog.at_level(logging.WARNING, logger="agent.footage.store"):
        reopened = ClipStore(root, verify_sha256=False)
    assert [c.clip_id for c in reopened.clips()] == [kept.clip_id]
    with pytest.raises(ClipError) as err:
        reopened.get(linked.clip_id)
    assert err.value.code == "not_found"
    assert "symbolic link refused" in caplog.text
    assert not [p for p in root.rglob("*") if p.is_symlink()], "every link is gone"
    assert secret.read_bytes() == SECRET, "a link's target is never touched"


def test_a_linked_discard_folder_is_not_used(tmp_path: Path, secret: Path) -> None:
    root = tmp_path / "data" / "clips"
    store = ClipStore(root)
    info = store.export("cam-1", T0, T0 + 1.0, buffered(1.0))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "discarded").symlink_to(elsewhere, target_is_directory=True)
    (root / f"{info.clip_id}.json").write_text("{garbled")
    ClipStore(root)
    assert list(elsewhere.iterdir()) == [], "nothing is moved out of data_dir through a link"
    assert (root / "discarded").is_dir() and not (root / "discarded").is_symlink()


def test_temporary_files_are_never_written_through_links(tmp_path: Path, secret: Path) -> None:
    data = tmp_path / "data"
    store = ClipStore(data / "clips")
    (data / "clips" / "holds.json.tmp").symlink_to(secret)
    store.hold("cam-1", T0, T0 + 1, time.time() + 3600)
    settings = SettingsStore(parse_config(base_config(data)), data / "settings.json")
    (data / "settings.json.tmp").symlink_to(secret)
    settings.apply({"cameras": {"cam-1": {"motion": {"threshold": 31}}}})
    events = OpenEvents(data / "open_events.json")
    (data / "open_events.json.tmp").symlink_to(secret)
    events.note(event("ev-1"))
    assert secret.read_bytes() == SECRET
    assert json.loads((data / "settings.json").read_text())["cameras"]["cam-1"]["motion"]["threshold"] == 31
    assert json.loads((data / "open_events.json").read_text())[0]["event_id"] == "ev-1"
    assert json.loads((data / "clips" / "holds.json").read_text())["holds"]


def test_linked_state_files_are_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir()
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "settings.json").write_text(json.dumps({"cameras": {"cam-1": {"motion": {"threshold": 99}}}}))
    (planted / "open.json").write_text(json.dumps([event("ev-planted").model_dump(mode="json")]))
    (data / "settings.json").symlink_to(planted / "settings.json")
    (data / "open_events.json").symlink_to(planted / "open.json")
    with caplog.at_level(logging.ERROR):
        settings = SettingsStore(parse_config(base_config(data)), data / "settings.json")
        events = OpenEvents(data / "open_events.json")
    assert settings.as_dict()["cameras"]["cam-1"]["motion"]["threshold"] != 99
    assert events.ends_for_orphans() == []
    assert "symbolic link" in caplog.text
    assert (
        json.loads((planted / "settings.json").read_text())["cameras"]["cam-1"]["motion"]["threshold"] == 99
    )


def test_the_write_probe_never_truncates_a_link_target(tmp_path: Path, secret: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / ".write-test").symlink_to(secret)
    prepare_data_dir(data)
    assert secret.read_bytes() == SECRET
    assert not (data / ".write-test").exists() and not (data / ".write-test").is_symlink()


def event(event_id: str) -> Event:
    now = iso(time.time())
    return Event(
        event_id=event_id, camera="cam-1", kind="motion", phase="start", started_at=now, ts=now, score=0.5
    )


@pytest.fixture(params=[0o022, 0o000, 0o077], ids=lambda m: f"umask-{m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.mark.parametrize("encoder", ["ffmpeg", "opencv"])
def test_files_are_0600_and_folders_0700_whatever_the_umask(tmp_path: Path, umask: int, encoder: str) -> None:
    data = tmp_path / "data"
    prepare_data_dir(data)
    store = ClipStore(data / "clips", encoder=encoder)  # type: ignore[arg-type]
    recorded = store.export("cam-1", T0, T0 + 1.0, buffered(1.0), event_id="ev-1", source="event")
    buffer = PreEventBuffer(seconds=5, max_bytes=8 << 20, jpeg_quality=80)
    for i in range(11):
        buffer.push(Frame(scene(i), ts=T0 + 5 + i / 10, pts=i / 10, seq=i))
    footage = Footage(store, {"cam-1": buffer}, lambda: parse_config(base_config(data)))
    footage.export("cam-1", T0 + 5, T0 + 6)
    footage.hold("cam-1", T0 + 5, T0 + 6, time.time() + 3600)  # saves the buffer, writes holds.json
    garbled = data / "clips" / f"{recorded.clip_id}.json"
    with garbled.open("r+b") as fh:  # torn in place (its mode stays the agent's)
        fh.truncate(9)
    ClipStore(data / "clips")  # sets the clip aside: creates discarded/
    SettingsStore(parse_config(base_config(data)), data / "settings.json").apply(
        {"cameras": {"cam-1": {"motion": {"threshold": 31}}}}
    )
    OpenEvents(data / "open_events.json").note(event("ev-2"))
    modes = {str(p.relative_to(data)): stat.S_IMODE(p.lstat().st_mode) for p in [data, *data.rglob("*")]}
    assert {
        p for p, mode in modes.items() if stat.S_ISDIR((data / p).lstat().st_mode) and mode != 0o700
    } == set(), modes
    files = {p: mode for p, mode in modes.items() if (data / p).is_file()}
    assert any(p.endswith(".mp4") for p in files) and "settings.json" in files and "open_events.json" in files
    assert {p: oct(m) for p, m in files.items() if m != 0o600} == {}


def test_outbox_refuses_links_and_is_private(tmp_path: Path) -> None:
    """A link planted at the outbox is removed (its target untouched); the queue files are 0600."""
    from agent.mqtt.outbox import Outbox, OutboxMessage

    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    data = tmp_path / "data"
    data.mkdir()
    (data / "outbox.db").symlink_to(target)
    (data / "outbox.db-wal").symlink_to(target)
    old = os.umask(0o000)
    try:
        box = Outbox(data / "outbox.db", 100, 1 << 20)
        box.put(OutboxMessage("t/x", b"{}", kind="event"))
    finally:
        os.umask(old)
    assert target.read_bytes() == b"precious"
    assert box.durable and not (data / "outbox.db").is_symlink()
    for name in ("outbox.db", "outbox.db-wal", "outbox.db-shm"):
        f = data / name
        if f.exists():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, name
    box.close()


def test_settings_damaged_twice_in_one_second_keep_both_copies(tmp_path: Path) -> None:
    """An agent restarting in a loop over a bad settings file sets it aside each time; no copy an
    operator might need replaces an earlier one."""
    data = tmp_path / "data"
    data.mkdir()
    for damage in (b"{not json", b"[1, 2, 3]"):
        (data / "settings.json").write_bytes(damage)
        settings = SettingsStore(parse_config(base_config(data)), data / "settings.json")
        assert settings.as_dict()["cameras"]["cam-1"]["motion"]["threshold"] > 0  # the config's values
    aside = sorted(data.glob("settings.json.corrupt-*"))
    assert sorted(p.read_bytes() for p in aside) == [b"[1, 2, 3]", b"{not json"]
    assert not (data / "settings.json").exists()
