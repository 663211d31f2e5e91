"""The console's edits of the config file, its password hashes, sessions and login throttle."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.console.auth import (
    LOCKOUT_S,
    MAX_FAILURES,
    Sessions,
    Throttle,
    check_login,
    hash_password,
    verify_password,
)
from agent.console.config_edit import (
    BACKUPS_KEPT,
    EditError,
    MaskEdit,
    edited_text,
    mask_toml,
    parse_edit,
    write_config,
)

FILE = """# district office gateway
[gateway]
district = "gangnam"   # the district
id = "gw-01"

[[cameras]]
id = "cam-1"
source = "synthetic:street"
# the gate camera: mask the house opposite
privacy_masks = [[[0.0, 0.0], [0.1, 0.0], [0.1, 0.1]]]

[cameras.motion]
min_area = 0.01  # birds

[[cameras]]
id = "cam-2"
source = "synthetic:street"
motion = { min_area = 0.02 }
"""

TRI = [(0.2, 0.2), (0.4, 0.2), (0.3, 0.4)]


def test_an_edit_changes_only_the_cameras_masks() -> None:
    edit = MaskEdit(privacy=[TRI], motion=[TRI], detection=[TRI])
    text = edited_text(FILE, "cam-1", edit)
    data = tomllib.loads(text)
    cam1, cam2 = data["cameras"]
    assert cam1["privacy_masks"] == [[list(p) for p in TRI]]
    assert cam1["motion"] == {"min_area": 0.01, "masks": [[list(p) for p in TRI]]}
    assert cam1["detection"]["masks"] == [[list(p) for p in TRI]]
    assert cam2 == tomllib.loads(FILE)["cameras"][1]
    for line in (
        "# district office gateway",
        'district = "gangnam"   # the district',
        "min_area = 0.01  # birds",
    ):
        assert line in text
    parse_config(data)  # still a valid config


def test_an_inline_camera_section_and_removing_masks() -> None:
    text = edited_text(FILE, "cam-2", MaskEdit(motion=[TRI]))
    cam2 = tomllib.loads(text)["cameras"][1]
    assert cam2["motion"] == {"min_area": 0.02, "masks": [[list(p) for p in TRI]]}
    assert "detection" not in cam2 and "privacy_masks" not in cam2  # nothing added that was not asked
    text = edited_text(FILE, "cam-1", MaskEdit())
    assert tomllib.loads(text)["cameras"][0]["privacy_masks"] == []


@pytest.mark.parametrize(
    ("text", "camera", "why"),
    [
        (FILE, "cam-9", "no camera with id 'cam-9'"),
        ("[gateway]\n", "cam-1", r"no \[\[cameras\]\]"),
        ("[gateway\n", "cam-1", "not valid TOML"),
        ('[[cameras]]\nid = "cam-1"\nmotion = 3\n', "cam-1", "cameras.motion of 'cam-1' is not a table"),
    ],
)
def test_a_file_that_cannot_take_the_edit_is_named(text: str, camera: str, why: str) -> None:
    with pytest.raises(EditError, match=why):
        edited_text(text, camera, MaskEdit(motion=[TRI]))


def test_the_toml_shown_is_what_the_file_gets() -> None:
    edit = parse_edit({"privacy": [[[0.123456, 0.5], [0.9, 0.5], [0.9, 1.0]]], "detection": [TRI]})
    shown = tomllib.loads(mask_toml("cam-1", edit))["cameras"][0]
    written = tomllib.loads(edited_text(FILE, "cam-1", edit))["cameras"][0]
    assert shown["privacy_masks"] == written["privacy_masks"] == [[[0.1235, 0.5], [0.9, 0.5], [0.9, 1.0]]]
    assert shown["detection"]["masks"] == written["detection"]["masks"]


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ([], "expected a JSON object"),
        ({"privacy": [[[0.1, 0.1], [0.2, 0.2]]]}, "privacy"),
        ({"motion": [[[0.1, 0.1], [0.2, 0.2], [2.0, 0.3]]]}, "motion"),
        ({"detection": "everything"}, "detection"),
        ({"privacy": [], "extra": 1}, "extra"),
        ({"privacy": [TRI] * 33}, "privacy"),
    ],
)
def test_bad_masks_from_the_page_are_named(body: object, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        parse_edit(body)


def test_writing_keeps_a_backup_the_mode_and_only_a_few_backups(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(FILE)
    os.chmod(path, 0o640)
    first = write_config(path, FILE + "# one\n", clock=1_800_000_000)
    assert (tmp_path / first.backup).read_text() == FILE
    assert path.read_text().endswith("# one\n") and (path.stat().st_mode & 0o777) == 0o640
    for i in range(BACKUPS_KEPT + 3):
        write_config(path, FILE + f"# {i}\n", clock=1_800_000_000)  # same second: names still differ
    backups = sorted(tmp_path.glob("agent.toml.bak-*"))
    assert len(backups) == BACKUPS_KEPT
    assert not list(tmp_path.glob(".agent.toml.console-*")), "no temporary file left behind"


def test_password_hashes() -> None:
    stored = hash_password("correct horse battery")
    assert stored.startswith("scrypt$16384$8$1$") and "correct" not in stored
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterY", stored)
    assert not verify_password("x", "scrypt$16384$8$1$bad$hash")
    assert not verify_password("x", "md5$whatever")
    assert hash_password("same") != hash_password("same"), "salted"
    with pytest.raises(ValueError):
        hash_password("")


def test_sessions_expire_when_idle_and_are_bounded() -> None:
    now = [1000.0]
    sessions = Sessions(idle_s=60, clock=lambda: now[0])
    token, session = sessions.create("tech")
    assert sessions.get(token) is session and len(session.csrf) >= 32
    now[0] += 59
    assert sessions.alive(token) and sessions.get(token) is session  # used: the idle clock restarts
    now[0] += 61
    assert not sessions.alive(token) and sessions.get(token) is None
    assert sessions.get(None) is None and sessions.get("forged") is None
    tokens = [sessions.create("tech")[0] for _ in range(40)]
    assert sessions.get(tokens[0]) is None and sessions.get(tokens[-1]) is not None


def test_throttle_locks_a_user_after_failures_and_forgets_after_the_lockout() -> None:
    now = [0.0]
    throttle = Throttle(clock=lambda: now[0])
    keys = ["user:tech", "ip:127.0.0.1"]
    for _ in range(MAX_FAILURES):
        assert throttle.locked(keys) == 0
        throttle.failed(keys)
    assert throttle.locked(keys) > 0
    assert throttle.locked(["user:other", "ip:127.0.0.1"]) == 0, "the address alone is not locked yet"
    now[0] += LOCKOUT_S + 1
    assert throttle.locked(keys) == 0


def test_check_login() -> None:
    cfg = parse_config(
        {
            "gateway": {"district": "d", "id": "g"},
            "console": {
                "enabled": True,
                "users": [{"name": "tech", "password_hash": hash_password("right password")}],
            },
        }
    )
    users = cfg.console.users
    assert check_login(users, "tech", "right password") == "tech"
    assert check_login(users, "tech", "wrong password") is None
    assert check_login(users, "nobody", "right password") is None


class _Gateway:
    """The agent's side of a save, kept to what MaskService uses (the real one is in
    tests/test_console_e2e.py); `audit_fails` plays a full or read-only audit disk."""

    def __init__(self, text: str, audit_fails: bool = False) -> None:
        self.cfg = parse_config(tomllib.loads(text))
        self.audit_fails = audit_fails
        self.records: list[dict[str, object]] = []
        self.applied: list[str] = []
        self.label = "gangnam/gw-01"

    def config(self) -> object:
        return self.cfg

    def cameras(self) -> list[dict[str, object]]:
        return [{"id": c.id, "width": 640, "height": 360} for c in self.cfg.cameras]

    def config_problems(self, cfg: object) -> list[str]:
        return []

    def audit(self, fields: dict[str, object]) -> None:
        if self.audit_fails:
            raise OSError(28, "No space left on device")
        self.records.append(dict(fields))

    def apply_camera(self, new: object, camera: str) -> None:
        self.applied.append(camera)


def test_a_save_that_cannot_be_audited_is_undone(tmp_path: Path) -> None:
    from agent.console.commissioning import MaskService, SaveRefusedError

    path = tmp_path / "agent.toml"
    path.write_text(FILE)
    gateway = _Gateway(FILE, audit_fails=True)
    service = MaskService(gateway, path)  # type: ignore[arg-type]
    with pytest.raises(SaveRefusedError, match="audit log cannot be written") as refused:
        service.save("cam-1", MaskEdit(privacy=[TRI], confirm_loosen=True), user="tech", remote="127.0.0.1")
    assert refused.value.code == "internal"
    assert path.read_text() == FILE and gateway.applied == []


def test_without_a_config_file_nothing_is_saved(tmp_path: Path) -> None:
    from agent.console.commissioning import MaskService, SaveRefusedError

    gateway = _Gateway(FILE)
    service = MaskService(gateway, None)  # type: ignore[arg-type]
    with pytest.raises(SaveRefusedError) as refused:
        service.save("cam-1", MaskEdit(privacy=[TRI]), user="tech", remote="127.0.0.1")
    assert refused.value.code == "read_only" and gateway.records == [] and gateway.applied == []
    checked = service.check("cam-1", MaskEdit())
    assert checked.loosens_privacy, "removing cam-1's mask would show what it hides"


def test_a_config_file_that_cannot_be_replaced_is_refused_with_the_reason(tmp_path: Path) -> None:
    """Where the new file cannot be written (here its temporary name is taken by a directory; on a
    gateway, a file the agent's user may not write), nothing changes and the page is told why."""
    from agent.console.commissioning import MaskService, SaveRefusedError

    path = tmp_path / "agent.toml"
    path.write_text(FILE)
    (tmp_path / f".agent.toml.console-{os.getpid()}").mkdir()
    gateway = _Gateway(FILE)
    with pytest.raises(SaveRefusedError, match=r"cannot write agent\.toml") as refused:
        MaskService(gateway, path).save(  # type: ignore[arg-type]
            "cam-1", MaskEdit(privacy=[TRI], confirm_loosen=True), user="tech", remote="127.0.0.1"
        )
    assert refused.value.code == "read_only" and path.read_text() == FILE
    assert gateway.records == [] and gateway.applied == []


def test_a_failure_inside_the_console_is_a_500_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """A bug behind a request (here the agent's side raising) is logged with its traceback and
    answered with a plain JSON 500: nothing of the code reaches the browser."""
    import threading

    from werkzeug.test import Client

    from agent.console.app import ConsoleApp
    from agent.console.commissioning import MaskService

    class Broken(_Gateway):
        def cameras(self) -> list[dict[str, object]]:
            raise RuntimeError("secret internals")

    text = FILE + '\n[console]\nenabled = true\n[[console.users]]\nname = "tech"\n'
    text += f'password_hash = "{hash_password("right password")}"\n'
    gateway = Broken(text)
    app = ConsoleApp(gateway.cfg.console, gateway, MaskService(gateway, None), threading.Event())  # type: ignore[arg-type]
    client = Client(app)
    page = client.get("/login", headers={"Host": "127.0.0.1"}).get_data(as_text=True)
    token = page.split('name="csrf" value="')[1].split('"')[0]
    login = client.post(
        "/login",
        data={"username": "tech", "password": "right password", "csrf": token},
        headers={"Host": "127.0.0.1"},
    )
    assert login.status_code == 303
    reply = client.get("/api/cameras", headers={"Host": "127.0.0.1"})
    assert reply.status_code == 500 and reply.json == {
        "error": "internal",
        "message": "the console failed on this request; see the agent's log",
    }
    assert "secret internals" not in reply.get_data(as_text=True)
    assert "secret internals" in caplog.text
