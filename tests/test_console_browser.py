"""The commissioning console in a real browser: Debian's Chromium, headless, driven by Selenium,
against `edge-agent run` as a subprocess with a synthetic camera and a real Mosquitto.

What a technician does and what the platform then sees: log in and watch a camera; draw a privacy
mask by clicking its corners on the live picture and save it, after which a snapshot taken over
MQTT is black inside the polygon, the config file holds it, a backup is kept and the audit log
names who changed what; removing a privacy mask asks first and saves nothing when refused. The
console refuses a wrong password, a POST without the session's CSRF token and a POST from another
origin. The page has one column on a phone and two on a laptop, and a finger can draw on it.

Chromium and chromedriver are Debian's (`chromium`, `chromium-driver`, which scripts/bootstrap
installs in CI) and are used only from /usr/bin; without them these tests fail naming what to
install, and are never skipped.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import cv2
import numpy as np
import pytest

from agent.console.auth import hash_password
from agent.sdk.client import PlatformClient
from tests.chromium import browser_problem, headless_chromium
from tests.conftest import Broker, free_port
from tests.harness import wait_answering, wait_frames

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

pytestmark = [pytest.mark.slow, pytest.mark.broker]

PURPOSE = "to drive the commissioning console"
USER = "tech"
PASSWORD = "correct horse battery staple"
WIDTH, HEIGHT = 480, 270
# cam-2 starts with this privacy mask (the right half of the picture); the removal test takes it away.
CAM2_MASK = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]
# The privacy mask the technician draws on cam-1, corner by corner (a quadrilateral, not a box).
DRAWN = [(0.45, 0.15), (0.9, 0.2), (0.85, 0.85), (0.5, 0.75)]

Pixels = np.ndarray[Any, np.dtype[np.uint8]]
T = TypeVar("T")


def test_a_machine_without_chromium_is_told_what_to_install(tmp_path: Path) -> None:
    problem = browser_problem(PURPOSE, tmp_path / "chromium", tmp_path / "chromedriver")
    assert problem is not None
    assert f"{tmp_path / 'chromium'} (Debian package chromium)" in problem
    assert f"{tmp_path / 'chromedriver'} (Debian package chromium-driver)" in problem
    assert "apt-get install --no-install-recommends chromium chromium-driver" in problem


def wait_until(what: str, fn: Callable[[], T | None], timeout: float, why: Callable[[], str] = str) -> T:
    """fn()'s first truthy value within `timeout` seconds; fails naming `what` and `why()`.

    An element not there yet (the next page still loading) or gone (replaced) counts as not yet:
    after a form is sent, the old page may answer before the new one is in."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
        except (NoSuchElementException, StaleElementReferenceException):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}. {why()}")
        time.sleep(0.1)


# ---- the agent -----------------------------------------------------------------------------------


@dataclass
class Gateway:
    """One `edge-agent run` with its console, its config file and its MQTT topic root."""

    url: str
    port: int
    config: Path
    data_dir: Path
    root: str
    broker: Broker
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def audit(self) -> list[dict[str, Any]]:
        path = self.data_dir / "audit" / "audit.log"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def mask_records(self, camera: str) -> list[dict[str, Any]]:
        """The audit log's records of console mask saves for `camera`."""
        return [r for r in self.audit() if r.get("action") == "console.masks" and r.get("camera") == camera]

    def camera_config(self, camera: str) -> dict[str, Any]:
        with self.config.open("rb") as f:
            cameras = tomllib.load(f)["cameras"]
        return next(c for c in cameras if c["id"] == camera)

    def snapshot(self, camera: str) -> Pixels:
        """A snapshot of `camera` taken over MQTT, as the platform takes one."""
        client = PlatformClient(
            self.broker.host, self.broker.port, self.root, agency="police", operator="op-1"
        )
        with client.connect() as c:
            wait_answering(c)
            wait_frames(c, camera)
            _result, jpeg = c.snapshot(camera, timeout=10.0)
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None, "the snapshot is not a JPEG"
        return np.asarray(img, np.uint8)


def camera_table(cam_id: str, privacy: str) -> str:
    return (
        f'[[cameras]]\nid = "{cam_id}"\n'
        f'source = "synthetic:street?fps=8&seed=5&width={WIDTH}&height={HEIGHT}"\n'
        f'allowed_agencies = ["police"]\nprivacy_masks = {privacy}\n'
        f"clips = {{ enabled = false }}\n"
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("console")
    gateway_id = "gw-console-" + uuid.uuid4().hex[:8]
    port = free_port()
    data_dir = tmp / "data"
    config = tmp / "cfg.toml"
    config.write_text(
        f"""
[gateway]
district = "console"
id = "{gateway_id}"
data_dir = "{data_dir}"
telemetry_interval_s = 5

[mqtt]
host = "{broker.host}"
port = {broker.port}
reconnect_min_s = 0.5
reconnect_max_s = 2

[console]
enabled = true
bind = "127.0.0.1"
port = {port}

[[console.users]]
name = "{USER}"
password_hash = "{hash_password(PASSWORD)}"

{camera_table("cam-1", "[]")}
{camera_table("cam-2", json.dumps([CAM2_MASK]))}
""",
        encoding="utf-8",
    )
    log_path = tmp / "agent.log"
    exe = Path(sys.executable).with_name("edge-agent")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(exe), "run", "--config", str(config), "--log-level", "info"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    gw = Gateway(
        f"http://127.0.0.1:{port}",
        port,
        config,
        data_dir,
        f"cctv/v1/console/{gateway_id}",
        broker,
        process,
        log_path,
    )
    try:

        def answering() -> bool:
            assert process.poll() is None, f"edge-agent exited with {process.returncode}:\n{gw.log()}"
            try:
                return request(gw, "GET", "/login").status == 200
            except OSError:
                return False

        wait_until("the console to answer", answering, 30, gw.log)
        yield gw
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# ---- plain HTTP, as a script (or an attacker's page) would send it --------------------------------


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(gw: Gateway, method: str, path: str, body: bytes | None = None, **headers: str) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def http_login(gw: Gateway) -> tuple[str, str]:
    """Log in with the form as a browser would; the session cookie and its CSRF token."""
    page = request(gw, "GET", "/login")
    found = re.search(rb'name="csrf" value="([^"]+)"', page.body)
    assert found, "the login page has no csrf field"
    form = urllib.parse.urlencode({"username": USER, "password": PASSWORD, "csrf": found.group(1).decode()})
    reply = request(gw, "POST", "/login", form.encode(), Content_Type="application/x-www-form-urlencoded")
    assert reply.status == 303, f"login answered {reply.status}: {reply.body[:300]!r}"
    cookie = reply.headers["Set-Cookie"].split(";", 1)[0]
    session = request(gw, "GET", "/api/session", Cookie=cookie)
    assert session.status == 200
    return cookie, session.json()["csrf"]


# ---- the browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    problem = browser_problem(PURPOSE)
    if problem is not None:
        pytest.fail(problem)  # never a skip: a green run must have used the browser
    driver = headless_chromium(tmp_path_factory.mktemp("chromium"), "--window-size=1366,768")
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: WebDriver, gateway: Gateway) -> Iterator[WebDriver]:
    """The browser logged out, at a laptop's size, with its console log emptied."""
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": False})
    browser.get(gateway.url + "/login")
    browser.delete_all_cookies()
    console_messages(browser)
    yield browser
    problems = [m for m in console_messages(browser) if page_fault(m)]
    assert not problems, f"the page reported: {problems}"


def console_messages(driver: WebDriver) -> list[str]:
    """The browser console's messages since the last call."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [str(e["message"]) for e in entries]


def page_fault(message: str) -> bool:
    """A console message that means the page is broken: a CSP refusal or an uncaught error."""
    return "Content Security Policy" in message or "Uncaught" in message


def by_id(driver: WebDriver, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def log_in(driver: WebDriver, gw: Gateway, password: str = PASSWORD) -> None:
    driver.get(gw.url + "/login")
    by_id(driver, "username").send_keys(USER)
    by_id(driver, "password").send_keys(password)
    by_id(driver, "login-form").submit()


def logged_in(driver: WebDriver, gw: Gateway) -> None:
    log_in(driver, gw)
    wait_until("the console page after login", lambda: driver.current_url.startswith(gw.url + "/#"), 15,
               lambda: f"at {driver.current_url}")  # fmt: skip


def card_state(driver: WebDriver, camera: str) -> str:
    cards = driver.execute_script(
        "return [...document.querySelectorAll('.camera')].map(c => [c.dataset.camera, "
        "c.querySelector('.badge').textContent, c.classList.contains('selected')])"
    )
    return next((state for cam, state, _sel in cards if cam == camera), "")


def select_camera(driver: WebDriver, gw: Gateway, camera: str) -> None:
    from selenium.webdriver.common.by import By

    wait_until(f"{camera} to be ok", lambda: card_state(driver, camera) == "ok", 30, gw.log)
    driver.find_element(By.CSS_SELECTOR, f'.camera[data-camera="{camera}"]').click()
    wait_until(f"{camera}'s live picture", lambda: live_width(driver, camera), 20, gw.log)


def live_width(driver: WebDriver, camera: str) -> int:
    """The live image's natural width once it shows `camera` (0 before its first frame)."""
    return int(
        driver.execute_script(
            "const img = document.getElementById('live');"
            "return img.src.includes('/cameras/' + arguments[0] + '/') ? img.naturalWidth : 0",
            camera,
        )
    )


def click_at(driver: WebDriver, x: float, y: float) -> None:
    """Click the overlay canvas at (x, y), given in 0..1 of its width and height."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = by_id(driver, "overlay")
    w, h = canvas.size["width"], canvas.size["height"]
    # Selenium 4 offsets are from the element's centre.
    ActionChains(driver).move_to_element_with_offset(
        canvas, round((x - 0.5) * w), round((y - 0.5) * h)
    ).click().perform()


def status_text(driver: WebDriver) -> str:
    return str(by_id(driver, "status").text)


def polygon_mask(shape: tuple[int, ...], polygon: list[list[float]] | list[tuple[float, float]]) -> Pixels:
    h, w = shape[:2]
    mask = np.zeros((h, w), np.uint8)
    pts = np.array([[round(x * w), round(y * h)] for x, y in polygon], np.int32)
    cv2.fillPoly(mask, [pts], 255)
    return mask


def inside_outside(
    img: Pixels, polygon: list[list[float]] | list[tuple[float, float]]
) -> tuple[Pixels, Pixels]:
    """The pixels well inside and well outside `polygon` (a margin off its edge for JPEG ringing)."""
    mask = polygon_mask(img.shape, polygon)
    kernel = np.ones((13, 13), np.uint8)
    inside = cv2.erode(mask, kernel) > 0
    outside = cv2.dilate(mask, kernel) == 0
    return img[inside], img[outside]


def close(a: list[list[float]], b: list[tuple[float, float]], tol: float = 0.01) -> bool:
    return len(a) == len(b) and all(
        abs(p[0] - q[0]) <= tol and abs(p[1] - q[1]) <= tol for p, q in zip(a, b, strict=True)
    )


# ---- the tests -----------------------------------------------------------------------------------


def test_log_in_and_see_a_camera_live(page: WebDriver, gateway: Gateway) -> None:
    assert page.current_url.endswith("/login")
    logged_in(page, gateway)
    assert by_id(page, "user").text == USER
    assert by_id(page, "gateway").text == gateway.root.removeprefix("cctv/v1/")
    wait_until("cam-1's card to say ok", lambda: card_state(page, "cam-1") == "ok", 30, gateway.log)
    fps = page.execute_script(
        "return document.querySelector('.camera[data-camera=\"cam-1\"] .fps').textContent"
    )
    assert re.fullmatch(r"\d+\.\d fps", fps), fps
    width = wait_until("the live picture", lambda: live_width(page, "cam-1"), 20, gateway.log)
    assert width == WIDTH
    # The overlay canvas lies exactly over the picture.
    live, overlay = by_id(page, "live").rect, by_id(page, "overlay").rect
    for key in ("x", "y", "width", "height"):
        assert abs(live[key] - overlay[key]) <= 1, (live, overlay)
    assert live["width"] > 400


def test_draw_a_privacy_mask_and_save_it(page: WebDriver, gateway: Gateway) -> None:
    before_text = gateway.config.read_text(encoding="utf-8")
    before = gateway.snapshot("cam-1")
    inside, outside = inside_outside(before, DRAWN)
    assert inside.mean() > 20 and inside.std() > 10, "the street should show where the mask will go"

    logged_in(page, gateway)
    select_camera(page, gateway, "cam-1")
    assert by_id(page, "mask-kind").get_attribute("value") == "privacy"
    by_id(page, "new-polygon").click()
    for x, y in DRAWN:
        click_at(page, x, y)
    by_id(page, "finish-polygon").click()
    by_id(page, "check").click()
    toml = wait_until("the TOML of the masks", lambda: by_id(page, "toml").text, 10)
    shown = tomllib.loads(toml)["cameras"][0]
    assert shown["id"] == "cam-1" and close(shown["privacy_masks"][0], DRAWN), toml
    by_id(page, "save").click()
    wait_until(
        "the save", lambda: "Saved" in status_text(page), 20, lambda: status_text(page) + gateway.log()
    )

    # (b) the config file holds the drawn polygon, within a pixel's rounding.
    saved = gateway.camera_config("cam-1")["privacy_masks"]
    assert len(saved) == 1 and close(saved[0], DRAWN), saved
    # (a) what leaves the gateway is black inside it and still the street outside.
    after = gateway.snapshot("cam-1")
    inside, outside = inside_outside(after, saved[0])
    assert inside.max() <= 40 and inside.mean() < 3, f"masked area shows content (mean {inside.mean():.1f})"
    assert outside.mean() > 20 and outside.std() > 10, "the unmasked area should still show the street"
    # (c) the audit log names the user, the camera and the new polygon.
    records = gateway.mask_records("cam-1")
    assert len(records) == 1, records
    assert records[0]["user"] == USER and records[0]["loosened"] is False
    assert close(records[0]["after"]["privacy"][0], DRAWN)
    # (d) the backup the page names holds the file as it was.
    backup = re.search(r"Backup: (\S+?)\.?$", status_text(page))
    assert backup, status_text(page)
    assert (gateway.config.parent / backup.group(1)).read_text(encoding="utf-8") == before_text


def test_removing_a_privacy_mask_asks_first(page: WebDriver, gateway: Gateway) -> None:
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    assert gateway.camera_config("cam-2")["privacy_masks"] == [CAM2_MASK]
    logged_in(page, gateway)
    select_camera(page, gateway, "cam-2")
    click_at(page, 0.75, 0.5)  # inside the mask: selects it
    by_id(page, "delete-polygon").click()
    before = gateway.config.read_bytes()
    backups = sorted(gateway.config.parent.glob("cfg.toml.bak-*"))

    by_id(page, "save").click()
    alert = WebDriverWait(page, 10).until(expected_conditions.alert_is_present())
    assert "expose" in alert.text and "privacy" in alert.text, alert.text
    alert.dismiss()
    wait_until("the page to say nothing was saved", lambda: "Not saved" in status_text(page), 10)
    assert gateway.config.read_bytes() == before
    assert sorted(gateway.config.parent.glob("cfg.toml.bak-*")) == backups
    assert gateway.mask_records("cam-2") == []

    by_id(page, "save").click()
    WebDriverWait(page, 10).until(expected_conditions.alert_is_present()).accept()
    wait_until(
        "the save", lambda: "Saved" in status_text(page), 20, lambda: status_text(page) + gateway.log()
    )
    assert gateway.camera_config("cam-2")["privacy_masks"] == []
    records = gateway.mask_records("cam-2")
    assert len(records) == 1, records
    assert records[0]["user"] == USER and records[0]["loosened"] is True
    assert records[0]["before"]["privacy"] == [CAM2_MASK] and records[0]["after"]["privacy"] == []
    after = gateway.snapshot("cam-2")
    right = after[:, after.shape[1] // 2 + 8 :]
    assert right.mean() > 20 and right.std() > 10, "the right half should show the street again"


def test_wrong_password_missing_csrf_and_foreign_origin_are_refused(
    page: WebDriver, gateway: Gateway
) -> None:
    log_in(page, gateway, password="not the password")
    error = wait_until("the login error", lambda: by_id(page, "login-error").text, 10)
    assert error == "wrong user name or password"
    assert page.get_cookies() == [], "a refused login must not leave a session"
    page.get(gateway.url + "/")
    assert page.current_url == gateway.url + "/login"
    hidden = "return getComputedStyle(document.getElementById('login-error')).display"
    assert page.execute_script(hidden) == "none", "an empty error takes no room on the page"

    cookie, csrf = http_login(gateway)
    path = "/api/cameras/cam-1/masks/check"
    body = json.dumps({"privacy": [], "motion": [], "detection": []}).encode()
    json_type = "application/json"
    ok = request(gateway, "POST", path, body, Cookie=cookie, Content_Type=json_type, X_CSRF_Token=csrf)
    assert ok.status == 200, ok.body  # the same request with its token is served
    no_token = request(gateway, "POST", path, body, Cookie=cookie, Content_Type=json_type)
    assert (no_token.status, no_token.json()["error"]) == (403, "csrf")
    wrong_token = request(
        gateway, "POST", path, body, Cookie=cookie, Content_Type=json_type, X_CSRF_Token="x" + csrf
    )
    assert (wrong_token.status, wrong_token.json()["error"]) == (403, "csrf")
    foreign = request(
        gateway, "POST", path, body, Cookie=cookie, Content_Type=json_type, X_CSRF_Token=csrf,
        Origin="http://evil.example",
    )  # fmt: skip
    assert (foreign.status, foreign.json()["error"]) == (403, "origin")
    before = gateway.config.read_bytes()
    save = request(gateway, "POST", "/api/cameras/cam-1/masks", body, Cookie=cookie, Content_Type=json_type)
    assert save.status == 403 and gateway.config.read_bytes() == before


def test_a_page_whose_session_ends_goes_to_the_login(page: WebDriver, gateway: Gateway) -> None:
    logged_in(page, gateway)
    page.delete_all_cookies()  # as when the session expires: the next poll is answered 401
    wait_until("the login page", lambda: page.current_url == gateway.url + "/login", 10)
    logged_in(page, gateway)
    cookie = page.get_cookies()[0]
    by_id(page, "logout").click()
    wait_until("the login page after log out", lambda: page.current_url == gateway.url + "/login", 10)
    old = request(gateway, "GET", "/api/session", Cookie=f"{cookie['name']}={cookie['value']}")
    assert old.status == 401


def layout(driver: WebDriver) -> dict[str, Any]:
    rects: dict[str, Any] = driver.execute_script(
        "const r = id => document.getElementById(id).getBoundingClientRect();"
        "const buttons = [...document.querySelectorAll('.tools button')].map(b => b.getBoundingClientRect());"
        "return {list: r('camera-list'), live: r('live'), overlay: r('overlay'), width: innerWidth,"
        " scroll: document.documentElement.scrollWidth, button: Math.min(...buttons.map(b => b.height))}"
    )
    return rects


def emulate(driver: WebDriver, width: int, height: int, phone: bool) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 3 if phone else 1, "mobile": phone},
    )
    driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": phone, "maxTouchPoints": 5})


def touch(driver: WebDriver, *path: tuple[float, float]) -> None:
    """A finger on the overlay canvas: down at the first point, moved through the others, lifted;
    points in 0..1 of the canvas's size."""
    r = driver.execute_script("return document.getElementById('overlay').getBoundingClientRect()")
    points = [{"x": r["left"] + x * r["width"], "y": r["top"] + y * r["height"]} for x, y in path]
    events = [("touchStart", [points[0]])] + [("touchMove", [p]) for p in points[1:]] + [("touchEnd", [])]
    for kind, touching in events:
        driver.execute_cdp_cmd("Input.dispatchTouchEvent", {"type": kind, "touchPoints": touching})


def test_one_column_on_a_phone_two_on_a_laptop(page: WebDriver, gateway: Gateway) -> None:
    from selenium.webdriver.support.select import Select

    logged_in(page, gateway)
    wait_until("the live picture", lambda: live_width(page, "cam-1"), 20, gateway.log)

    emulate(page, 390, 844, phone=True)
    phone = wait_until("the phone layout", lambda: (lay := layout(page))["width"] == 390 and lay, 5)
    assert phone["list"]["bottom"] <= phone["live"]["top"], "the camera list should be above the live view"
    assert phone["scroll"] <= 390, "nothing may stick out sideways"
    assert phone["live"]["width"] >= 300, phone
    assert phone["button"] >= 40, "buttons must be large enough to tap"
    for key in ("x", "y", "width", "height"):
        assert abs(phone["live"][key] - phone["overlay"][key]) <= 1, "the canvas scales with the picture"
    # A finger draws a triangle (a stray corner undone), closes it by tapping its first corner again,
    # then drags a corner; Check shows the result as TOML.
    page.execute_script("document.getElementById('stage').scrollIntoView()")
    Select(by_id(page, "mask-kind")).select_by_value("motion")
    by_id(page, "new-polygon").click()
    for x, y in ((0.1, 0.1), (0.3, 0.1)):
        touch(page, (x, y))
    by_id(page, "finish-polygon").click()
    assert "at least 3 corners" in by_id(page, "hint").text
    touch(page, (0.6, 0.6))
    by_id(page, "undo-point").click()
    for x, y in ((0.2, 0.4), (0.105, 0.11)):
        touch(page, (x, y))
    touch(page, (0.2, 0.4), (0.25, 0.45), (0.3, 0.5))
    by_id(page, "check").click()
    toml = wait_until("the TOML", lambda: by_id(page, "toml").text, 10)
    motion = tomllib.loads(toml)["cameras"][0]["motion"]["masks"]
    assert len(motion) == 1 and close(motion[0], [(0.1, 0.1), (0.3, 0.1), (0.3, 0.5)]), toml
    by_id(page, "reset").click()  # back to the gateway's masks: no motion mask
    wait_until("the reset", lambda: "reloaded" in status_text(page), 10)
    by_id(page, "check").click()
    toml = wait_until("the TOML", lambda: by_id(page, "toml").text, 10)
    assert tomllib.loads(toml)["cameras"][0]["motion"]["masks"] == [], toml

    emulate(page, 1366, 768, phone=False)
    laptop = wait_until("the laptop layout", lambda: (lay := layout(page))["width"] == 1366 and lay, 5)
    assert laptop["list"]["right"] <= laptop["live"]["left"], "the camera list should be beside the live view"
    assert (
        laptop["list"]["top"] < laptop["live"]["bottom"] and laptop["live"]["top"] < laptop["list"]["bottom"]
    )
    assert laptop["scroll"] <= 1366
    for key in ("x", "y", "width", "height"):
        assert abs(laptop["live"][key] - laptop["overlay"][key]) <= 1, "the canvas scales with the picture"
    assert laptop["live"]["width"] > 2 * phone["live"]["width"] - 100


def overlay_colour_pixels(driver: WebDriver, rgb: tuple[int, int, int]) -> int:
    """How many pixels of the overlay canvas are drawn in `rgb`."""
    return int(
        driver.execute_script(
            "const c = document.getElementById('overlay');"
            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0;"
            "for (let i = 0; i < d.length; i += 4)"
            "  if (d[i + 3] > 200 && Math.abs(d[i] - arguments[0]) < 8"
            "      && Math.abs(d[i + 1] - arguments[1]) < 8 && Math.abs(d[i + 2] - arguments[2]) < 8) n++;"
            "return n;",
            *rgb,
        )
    )


def test_motion_and_recent_events_are_shown(page: WebDriver, gateway: Gateway) -> None:
    logged_in(page, gateway)
    wait_until("the live picture", lambda: live_width(page, "cam-1"), 20, gateway.log)
    # Motion regions are outlined in orange over the picture as the street's movers pass.
    wait_until("a motion region on the overlay", lambda: overlay_colour_pixels(page, (255, 157, 0)) > 50, 45)
    shown = wait_until(
        "an event with its snapshot",
        lambda: page.execute_script(
            "const e = document.querySelector('#events li.event');"
            "const img = e && e.querySelector('img');"
            "return img && img.complete && img.naturalWidth > 0"
            "  ? [img.getAttribute('src'), img.naturalWidth, e.querySelector('.when').textContent] : null"
        ),
        60,
        gateway.log,
    )
    src, width, when = shown
    assert re.fullmatch(r"/api/events/[^/]+/snapshot\.jpg", src), src
    assert width == WIDTH
    assert re.search(r"\d{1,2}:\d{2}:\d{2}", when), when


def test_a_hidden_tab_stops_polling(page: WebDriver, gateway: Gateway) -> None:
    count = "return performance.getEntriesByType('resource').filter(e => e.name.includes('/overlay')).length"
    logged_in(page, gateway)
    page.execute_script("performance.setResourceTimingBufferSize(100000)")
    wait_until("the overlay to be polled", lambda: page.execute_script(count) >= 2, 10)
    start = page.execute_script(count)
    time.sleep(2)
    visible = page.execute_script(count) - start
    assert 2 <= visible <= 6, f"{visible} overlay requests in 2 s: expected about 4 (every 500 ms)"

    # The page notes its overlay requests at each change of visibility, since switching back to
    # the tab to ask would make it visible again.
    page.execute_script(
        "window.seen = [];"
        "document.addEventListener('visibilitychange', () =>"
        "  window.seen.push([document.visibilityState, performance.now(),"
        "    performance.getEntriesByType('resource').filter(e => e.name.includes('/overlay')).length]));"
    )
    console = page.current_window_handle
    page.switch_to.new_window("tab")  # the console's tab goes to the background
    time.sleep(3)
    page.close()
    page.switch_to.window(console)
    seen = wait_until(
        "the tab to be visible again", lambda: len(s := page.execute_script("return seen")) >= 2 and s, 5
    )
    (hidden, hidden_ms, at_hide), (shown, shown_ms, at_show) = seen[:2]
    assert (hidden, shown) == ("hidden", "visible")
    assert shown_ms - hidden_ms > 2500
    assert at_show - at_hide <= 1, f"{at_show - at_hide} overlay requests while the tab was hidden"
