"""The commissioning console over real HTTP against `edge-agent run` on a real broker.

One agent (module fixture) with a synthetic camera and the console on a free loopback port; the
platform's side (PlatformClient) checks what leaves the gateway after a save: snapshots blank
inside a new privacy mask. The browser's side of the same flows is tests/test_console_browser.py.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import cv2
import numpy as np
import pytest

from agent.sdk.client import PlatformClient
from tests.conftest import Broker, free_port
from tests.console_client import HASH, PASSWORD, ConsoleClient, console_section
from tests.harness import AgentProcess, Subscriber, wait_answering, wait_frames, write_config

pytestmark = pytest.mark.broker

T = TypeVar("T")

CAMERAS = """
[[cameras]]
id = "cam-1"
name = "Gate"
# the camera the technician commissions
source = "synthetic:street?fps=10&seed=4&width=640&height=360"
allowed_agencies = ["police"]
motion = { min_area = 0.002 }

[[cameras]]
id = "cam-2"
source = "synthetic:street?fps=5&seed=5&width=320&height=180"
allowed_agencies = ["police"]
"""


@dataclass
class Console(ConsoleClient):
    port: int
    config: Path
    data_dir: Path
    agent: AgentProcess
    police: PlatformClient
    sub: Subscriber

    def audit(self) -> list[dict[str, Any]]:
        path = self.data_dir / "audit" / "audit.log"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def agent_config(tmp: Path, broker: Broker, gateway: str, port: int, settings: str = "") -> Path:
    """A config for `gateway` with CAMERAS and a console on `port` (plus `settings` in [console])."""
    return write_config(
        tmp / "agent.toml",
        district="console",
        gateway=gateway,
        port=broker.port,
        data_dir=tmp / "data",
        cameras=CAMERAS,
        extra=console_section(port, settings),
    )


def once_up(agent: AgentProcess, attempt: Callable[[], T]) -> T:
    """`attempt()` retried while the agent's console does not listen yet (up to 20 s)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return attempt()
        except OSError:
            assert time.monotonic() < deadline, agent.log()[-2000:]
            time.sleep(0.3)


@pytest.fixture(scope="module")
def console(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console")
    gateway = "gw-" + uuid.uuid4().hex[:10]
    root = f"cctv/v1/console/{gateway}"
    port = free_port()
    cfg = agent_config(tmp, broker, gateway, port)
    sub = Subscriber(broker.host, broker.port, root + "/#")
    agent = AgentProcess(cfg, tmp / "agent.log", log_level="info")
    police = PlatformClient(broker.host, broker.port, root, agency="police", operator="op-1").connect()
    try:
        wait_answering(police)
        wait_frames(police, "cam-1")
        yield Console(port, cfg, tmp / "data", agent, police, sub)
    finally:
        police.close()
        sub.close()
        code, took = agent.terminate()
        agent.close()
        assert code == 0 and took < 5.5, (code, took, agent.log()[-3000:])


def snapshot_image(client: PlatformClient, camera: str) -> np.ndarray:
    _, jpeg = client.snapshot(camera)
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


# -- login and the gates ---------------------------------------------------------------------------


def test_pages_need_a_login_and_the_page_is_served_with_a_strict_policy(console: Console) -> None:
    status, headers, _ = console.request("GET", "/")
    assert status == 303 and headers["location"] == "/login"
    status, _, body = console.request("GET", "/api/cameras")
    assert status == 401 and json.loads(body)["error"] == "login"
    cookie, _ = console.session()
    status, headers, page = console.request("GET", "/", headers={"Cookie": cookie})
    assert status == 200 and b"console.js" in page
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    status, headers, js = console.request("GET", "/static/console.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and js
    assert console.request("GET", "/static/..%2Fapp.py")[0] == 404
    assert not re.search(rb"https?://", page), "the page must fetch nothing from elsewhere"


def test_a_wrong_password_is_refused_and_audited_without_the_password(console: Console) -> None:
    status, cookie = console.login(password="not the password")
    assert status == 401 and cookie is None
    status, cookie = console.login(user="nobody", password=PASSWORD)
    assert status == 401 and cookie is None
    records = console.audit()
    failed = [r for r in records if r.get("action") == "console.login_failed"]
    assert {r["user"] for r in failed} >= {"tech", "nobody"}
    assert "not the password" not in json.dumps(records) and PASSWORD not in json.dumps(records)


def test_repeated_wrong_passwords_lock_the_user_out(console: Console) -> None:
    statuses = [console.login(user="locked-out", password=f"guess {i}")[0] for i in range(6)]
    assert statuses[:5] == [401] * 5 and statuses[5] == 429


def test_a_login_form_without_its_token_is_refused(console: Console) -> None:
    form = urlencode({"username": "tech", "password": PASSWORD, "csrf": "forged.token"})
    status, headers, _ = console.request(
        "POST", "/login", form.encode(), {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 403 and "set-cookie" not in headers


def test_posts_without_the_csrf_token_or_from_another_origin_are_refused(console: Console) -> None:
    cookie, csrf = console.session()
    body: dict[str, Any] = {"privacy": [], "motion": [], "detection": []}
    status, reply = console.post_json("/api/cameras/cam-2/masks/check", body, cookie, None)
    assert status == 403 and reply["error"] == "csrf"
    status, reply = console.post_json("/api/cameras/cam-2/masks/check", body, cookie, "wrong")
    assert status == 403 and reply["error"] == "csrf"
    evil = {"Origin": "http://evil.example"}
    status, reply = console.post_json("/api/cameras/cam-2/masks/check", body, cookie, csrf, evil)
    assert status == 403 and reply["error"] == "origin"
    same = {"Origin": f"http://127.0.0.1:{console.port}"}
    status, reply = console.post_json("/api/cameras/cam-2/masks/check", body, cookie, csrf, same)
    assert status == 200 and reply["ok"] is True


def test_another_host_name_is_refused_dns_rebinding(console: Console) -> None:
    cookie, _ = console.session()
    status, _, body = console.request(
        "GET", "/api/cameras", headers={"Cookie": cookie, "Host": f"attacker.example:{console.port}"}
    )
    assert status == 400 and json.loads(body)["error"] == "host"


def test_logout_ends_the_session(console: Console) -> None:
    cookie, csrf = console.session()
    status, headers, _ = console.request("POST", "/logout", b"", {"Cookie": cookie, "X-CSRF-Token": csrf})
    assert status == 303 and headers["location"] == "/login"
    assert console.request("GET", "/api/cameras", headers={"Cookie": cookie})[0] == 401


# -- what the page shows ---------------------------------------------------------------------------


def test_cameras_live_view_and_overlay(console: Console) -> None:
    cookie, _ = console.session()
    status, _, body = console.request("GET", "/api/cameras", headers={"Cookie": cookie})
    cams = {c["id"]: c for c in json.loads(body)["cameras"]}
    assert set(cams) == {"cam-1", "cam-2"}
    assert cams["cam-1"]["state"] == "ok" and cams["cam-1"]["width"] == 640
    assert cams["cam-1"]["footage"] == "pixels" and cams["cam-1"]["fps"] > 0
    conn = console.http()
    conn.request("GET", "/api/cameras/cam-1/live.mjpg", headers={"Cookie": cookie})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("multipart/x-mixed-replace")
    data = b""
    while data.count(b"\xff\xd9") < 2 and len(data) < 2_000_000:
        data += resp.read1(65536)
    conn.close()
    first = data[data.index(b"\xff\xd8") : data.index(b"\xff\xd9") + 2]
    image = cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] == 640
    status, _, body = console.request("GET", "/api/cameras/cam-1/overlay", headers={"Cookie": cookie})
    overlay = json.loads(body)
    assert status == 200 and set(overlay) == {"ts", "motion", "objects"}
    assert console.request("GET", "/api/cameras/nope/overlay", headers={"Cookie": cookie})[0] == 404
    viewed = [r for r in console.audit() if r.get("action") == "console.view"]
    assert any(r["camera"] == "cam-1" and r["user"] == "tech" for r in viewed)


def test_recent_events_with_their_snapshots(console: Console) -> None:
    cookie, _ = console.session()
    deadline = time.monotonic() + 30
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        status, _, body = console.request("GET", "/api/cameras/cam-1/events", headers={"Cookie": cookie})
        events = json.loads(body)["events"]
        if any(e["snapshot"] for e in events):
            break
        time.sleep(0.5)
    with_snapshot = [e for e in events if e["snapshot"]]
    assert with_snapshot, events
    status, headers, jpeg = console.request("GET", with_snapshot[0]["snapshot"], headers={"Cookie": cookie})
    assert status == 200 and headers["content-type"] == "image/jpeg" and jpeg[:2] == b"\xff\xd8"
    viewed = [r for r in console.audit() if r.get("action") == "console.view"]
    assert any(r.get("event_id") == with_snapshot[0]["event_id"] and r["camera"] == "cam-1" for r in viewed)


# -- masks -----------------------------------------------------------------------------------------

SQUARE = [[0.5, 0.25], [0.9, 0.25], [0.9, 0.75], [0.5, 0.75]]


def test_check_shows_the_toml_and_refuses_bad_polygons(console: Console) -> None:
    cookie, csrf = console.session()
    body = {"privacy": [SQUARE], "motion": [], "detection": []}
    status, reply = console.post_json("/api/cameras/cam-2/masks/check", body, cookie, csrf)
    assert status == 200 and reply["ok"] and not reply["loosens_privacy"]
    parsed = tomllib.loads(reply["toml"])
    assert parsed["cameras"][0]["id"] == "cam-2"
    assert parsed["cameras"][0]["privacy_masks"] == [SQUARE]
    bad = {"privacy": [[[0.1, 0.1], [1.5, 0.1], [0.2, 0.3]]], "motion": [], "detection": []}
    status, reply = console.post_json("/api/cameras/cam-2/masks/check", bad, cookie, csrf)
    assert status == 422 and any("privacy" in p for p in reply["problems"])
    two_points = {"privacy": [[[0.1, 0.1], [0.2, 0.2]]]}
    status, reply = console.post_json("/api/cameras/cam-2/masks", two_points, cookie, csrf)
    assert status == 422
    status, reply = console.post_json("/api/cameras/cam-2/masks", {"privacy": "all"}, cookie, csrf)
    assert status == 422
    status, _, _ = console.request(
        "POST",
        "/api/cameras/cam-2/masks",
        b"x" * 300_000,
        {"Cookie": cookie, "X-CSRF-Token": csrf, "Content-Type": "application/json"},
    )
    assert status == 413


def test_saving_a_privacy_mask_blanks_snapshots_writes_the_file_and_audits(console: Console) -> None:
    before_text = console.config.read_text()
    image = snapshot_image(console.police, "cam-1")
    h, w = image.shape[:2]
    inside = image[int(0.3 * h) : int(0.7 * h), int(0.55 * w) : int(0.85 * w)]
    assert inside.mean() > 20, "the scene must not be black there before the mask"
    cookie, csrf = console.session()
    body = {"privacy": [SQUARE], "motion": [[[0.0, 0.0], [0.2, 0.0], [0.2, 0.2]]], "detection": []}
    status, reply = console.post_json("/api/cameras/cam-1/masks", body, cookie, csrf)
    assert status == 200 and reply["saved"], reply
    # What leaves the gateway from now on is blank inside the mask, and only there.
    image = snapshot_image(console.police, "cam-1")
    inside = image[int(0.3 * h) : int(0.7 * h), int(0.55 * w) : int(0.85 * w)]
    outside = image[int(0.3 * h) : int(0.7 * h), int(0.05 * w) : int(0.45 * w)]
    assert inside.max() < 40 and outside.mean() > 20
    # The file holds it, comments and the other camera untouched; a backup holds the old file.
    text = console.config.read_text()
    cfg = tomllib.loads(text)
    cam1 = next(c for c in cfg["cameras"] if c["id"] == "cam-1")
    assert cam1["privacy_masks"] == [SQUARE] and cam1["motion"]["masks"] == body["motion"]
    assert cam1["motion"]["min_area"] == 0.002
    assert "# the camera the technician commissions" in text
    assert (console.config.parent / reply["backup"]).read_text() == before_text
    record = [r for r in console.audit() if r.get("action") == "console.masks"][-1]
    assert record["user"] == "tech" and record["camera"] == "cam-1" and record["loosened"] is False
    assert record["after"]["privacy"] == [SQUARE] and record["before"]["privacy"] == []
    # The agent says it is in force: config/reported carries the new masks.
    reported = [m.json() for m in console.sub.on("/config/reported")]
    assert reported and reported[-1]["cameras"]["cam-1"]["privacy_masks"] == [SQUARE]


def test_loosening_a_privacy_mask_needs_confirmation_and_is_audited_as_such(console: Console) -> None:
    cookie, csrf = console.session()
    body: dict[str, Any] = {"privacy": [SQUARE], "motion": [], "detection": []}
    status, reply = console.post_json("/api/cameras/cam-2/masks", body, cookie, csrf)
    assert status == 200
    text = console.config.read_text()
    smaller = [[0.6, 0.3], [0.8, 0.3], [0.8, 0.7], [0.6, 0.7]]
    body = {"privacy": [smaller], "motion": [], "detection": []}
    status, reply = console.post_json("/api/cameras/cam-2/masks/check", body, cookie, csrf)
    assert reply["loosens_privacy"] is True
    status, reply = console.post_json("/api/cameras/cam-2/masks", body, cookie, csrf)
    assert status == 409 and reply["error"] == "loosens_privacy"
    assert console.config.read_text() == text, "nothing is written without the confirmation"
    status, reply = console.post_json(
        "/api/cameras/cam-2/masks", {**body, "confirm_loosen": True}, cookie, csrf
    )
    assert status == 200 and reply["loosens_privacy"] is True
    record = [r for r in console.audit() if r.get("action") == "console.masks"][-1]
    assert record["camera"] == "cam-2" and record["loosened"] is True
    # A bigger mask is not a loosening.
    status, reply = console.post_json(
        "/api/cameras/cam-2/masks/check", {"privacy": [SQUARE, smaller]}, cookie, csrf
    )
    assert reply["loosens_privacy"] is False


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (("telemetry_interval_s = 1", 'telemetry_interval_s = "often"'), "telemetry_interval_s"),
        (('id = "cam-2"', 'id = "cam-9"'), "cam-2"),
    ],
    ids=["a value that does not load", "the camera gone from the file"],
)
def test_a_file_broken_by_hand_since_the_start_is_never_written_over(
    console: Console, edit: tuple[str, str], named: str
) -> None:
    good = console.config.read_text()
    broken = good.replace(*edit)
    console.config.write_text(broken)
    try:
        cookie, csrf = console.session()
        status, reply = console.post_json("/api/cameras/cam-2/masks", {"privacy": [SQUARE]}, cookie, csrf)
        assert status == 422 and any(named in p for p in reply["problems"]), reply
        assert console.config.read_text() == broken
    finally:
        console.config.write_text(good)


# -- an agent without a config file, and a bad console section ------------------------------------


def test_idle_connections_cannot_exhaust_the_console(console: Console) -> None:
    """Connections that send nothing hold a request thread each, up to a bound: beyond it new
    connections are closed at once (never a thread each), and once they go, service resumes."""
    import socket

    from agent.console.server import MAX_CONNECTIONS

    idle = [socket.create_connection(("127.0.0.1", console.port)) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.5)
        with pytest.raises((OSError, http.client.HTTPException)):
            console.request("GET", "/login")
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            assert console.request("GET", "/login")[0] == 200
            break
        except (OSError, http.client.HTTPException):
            assert time.monotonic() < deadline, "the console did not recover"
            time.sleep(0.2)


def test_check_config_refuses_a_console_without_users_or_tls_off_loopback(tmp_path: Path) -> None:
    import subprocess
    import sys

    base = '[gateway]\ndistrict = "d"\nid = "g"\n'
    cases = {
        "no users": "[console]\nenabled = true\n",
        "lan without tls": f'[console]\nenabled = true\nbind = "0.0.0.0"\n'
        f'[[console.users]]\nname = "tech"\npassword_hash = "{HASH}"\n',
        "a password, not a hash": '[console]\nenabled = true\n[[console.users]]\nname = "tech"\n'
        'password_hash = "hunter22"\n',
    }
    for why, section in cases.items():
        path = tmp_path / "c.toml"
        path.write_text(base + section)
        done = subprocess.run(
            [sys.executable, "-m", "agent", "check-config", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 1, why
        assert "console" in done.stderr, (why, done.stderr)
        assert "hunter22" not in done.stderr


def test_check_config_says_where_the_console_listens_and_who_may_log_in(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "c.toml"
    path.write_text('[gateway]\ndistrict = "d"\nid = "g"\n' + console_section(8123))
    done = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "console: http://127.0.0.1:8123/ (users: tech)" in done.stdout
    assert "scrypt" not in done.stdout


def test_console_user_prints_a_table_that_logs_in(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "agent", "console-user", "night-tech"],
        input="a long enough password\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    user = tomllib.loads(done.stdout)["console"]["users"][0]
    assert user["name"] == "night-tech" and "a long enough" not in done.stdout
    from agent.console.auth import verify_password

    assert verify_password("a long enough password", user["password_hash"])
    assert not verify_password("a long enough passworD", user["password_hash"])
    short = subprocess.run(
        [sys.executable, "-m", "agent", "console-user", "x"],
        input="short\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert short.returncode == 1 and "at least" in short.stderr


def test_a_console_with_a_certificate_serves_https_with_secure_cookies(
    broker: Broker, tmp_path: Path
) -> None:
    import ssl

    from tests.test_config_files import pem_pair

    cert, key = pem_pair(tmp_path, "console")
    port = free_port()
    cfg = agent_config(tmp_path, broker, "gw-tls", port, f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"')
    agent = AgentProcess(cfg, tmp_path / "agent.log", log_level="info")
    try:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False  # the test certificate names no host
        client = ConsoleClient(port, tls=context)
        status, cookie = once_up(agent, client.login)
        assert status == 303 and cookie and cookie.startswith("__Host-console=")
        flags = client.last_cookie_header.lower()
        assert "secure" in flags and "httponly" in flags and "samesite=strict" in flags
        code, _, body = client.request("GET", "/api/session", headers={"Cookie": cookie})
        assert code == 200 and json.loads(body)["user"] == "tech"
        plain = ConsoleClient(port)
        with pytest.raises((OSError, http.client.HTTPException)):
            plain.request("GET", "/login")
    finally:
        code, took = agent.terminate()
        agent.close()
        assert code == 0 and took < 5.5


def test_sigterm_stops_the_agent_in_time_while_browsers_hold_live_views(
    broker: Broker, tmp_path: Path
) -> None:
    """Two live views still open (their clients stopped reading) do not hold up a stop."""
    port = free_port()
    cfg = agent_config(tmp_path, broker, "gw-stop", port)
    agent = AgentProcess(cfg, tmp_path / "agent.log", log_level="info")
    stalled = []
    try:
        client = ConsoleClient(port)
        cookie, _ = once_up(agent, client.session)
        for _ in range(2):
            conn = client.http()
            conn.request("GET", "/api/cameras/cam-1/live.mjpg", headers={"Cookie": cookie})
            assert conn.getresponse().status == 200
            stalled.append(conn)  # never read again
        time.sleep(3)
        code, took = agent.terminate()
        assert code == 0 and took < 5.5, (code, took, agent.log()[-3000:])
    finally:
        for conn in stalled:
            conn.close()
        agent.close()


def test_hostile_requests_are_answered_never_crash_the_console(console: Console) -> None:
    """A bounded fuzz of the API: random JSON shapes, paths and methods get a clear 4xx (never a
    500), and the console still answers afterwards."""
    import random

    rng = random.Random(7)
    cookie, csrf = console.session()
    atoms: list[Any] = [
        None,
        True,
        0,
        -1,
        1.5,
        1e308,
        "x",
        "",
        [],
        {},
        [[0.1, 0.1]],
        "cam-1",
        "\u0000",
        "é" * 50,
    ]

    def junk(depth: int = 0) -> Any:
        roll = rng.random()
        if depth > 3 or roll < 0.4:
            return rng.choice(atoms)
        if roll < 0.7:
            return [junk(depth + 1) for _ in range(rng.randint(0, 4))]
        keys = ["privacy", "motion", "detection", "confirm_loosen", "extra", "__proto__"]
        return {rng.choice(keys): junk(depth + 1) for _ in range(rng.randint(0, 4))}

    statuses: set[int] = set()
    for i in range(120):
        path = rng.choice(
            [
                "/api/cameras/cam-2/masks/check",
                "/api/cameras/cam-2/masks",
                "/api/cameras/%2e%2e/masks",
                "/api/cameras/cam-2/masks/check?x=1",
                "/api/events/../../etc/passwd/snapshot.jpg",
                "/api/cameras/" + "a" * 300 + "/overlay",
            ]
        )
        method = "POST" if i % 4 else rng.choice(["GET", "PUT", "DELETE"])
        raw = json.dumps(junk()).encode() if i % 5 else bytes(rng.randrange(256) for _ in range(64))
        headers = {"Cookie": cookie, "X-CSRF-Token": csrf, "Content-Type": "application/json"}
        status, _, body = console.request(method, path, raw, headers)
        statuses.add(status)
        assert status < 500, (method, path, raw[:200], body[:300])
        if status != 200:
            assert json.loads(body)["error"], body
    assert console.request("GET", "/login")[0] == 200
    assert 422 in statuses and statuses <= {200, 404, 405, 409, 413, 422}, statuses


def test_a_console_port_already_taken_stops_the_agent_with_the_reason(broker: Broker, tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = agent_config(tmp_path, broker, "gw-port", port)
        done = subprocess.run(
            [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"console: cannot listen on 127.0.0.1:{port}" in done.stderr
