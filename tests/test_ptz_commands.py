"""ptz.* commands end to end in-process: the dispatcher, the real PtzService and the real ONVIF
client (onvif-zeep-async) against our fake camera (tests/onvif_fake), which records what reached it.

Each test asserts what the camera received (operation and parameters), what the platform was
answered, and what the audit log holds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.commands.audit import AuditLog
from agent.commands.dispatcher import Dispatcher
from agent.commands.gateway import PtzAccess
from agent.config import AgentConfig, parse_config
from agent.onvif import PtzService
from tests.onvif_fake import FakeOnvifCamera
from tests.test_commands_dispatcher import NOW, RESP, req
from tests.test_commands_gateway import FakeGateway

GEO = {"lat": 37.5, "lon": 127.0, "heading_deg": 90.0, "fov_deg": 90.0, "range_m": 300.0}


class PtzGatewayStandIn(FakeGateway):
    """The test gateway, with PTZ control (agent.commands.gateway.PtzGateway)."""

    def __init__(self, config: AgentConfig, ptz: PtzAccess | None) -> None:
        super().__init__(config, {})
        self._ptz = ptz

    def ptz(self) -> PtzAccess | None:
        return self._ptz


@dataclass
class Site:
    camera: FakeOnvifCamera
    service: PtzService
    dispatcher: Dispatcher
    audit: AuditLog
    password_file: Path

    def send(
        self, cmd: str, args: dict[str, Any], agency: str = "police", rid: str = "p-1"
    ) -> dict[str, Any]:
        body = req(cmd, args, id=rid)
        body["requester"]["agency"] = agency
        out = self.dispatcher.handle(json.dumps(body).encode(), RESP, None)
        assert out is not None
        reply: dict[str, Any] = json.loads(out[1])
        return reply

    def ok(self, cmd: str, args: dict[str, Any], agency: str = "police", rid: str = "p-1") -> dict[str, Any]:
        reply = self.send(cmd, args, agency, rid)
        assert reply["ok"] is True, reply
        result: dict[str, Any] = reply["result"]
        return result

    def error(
        self, cmd: str, args: dict[str, Any], agency: str = "police", rid: str = "p-1"
    ) -> dict[str, Any]:
        reply = self.send(cmd, args, agency, rid)
        assert reply["ok"] is False, reply
        error: dict[str, Any] = reply["error"]
        return error

    def records(self) -> list[tuple[str, str | None, str, str]]:
        lines = self.audit.path.read_text().splitlines()
        return [
            (r["cmd"], r["camera"], r["outcome"], r["requester"]["agency"]) for r in map(json.loads, lines)
        ]


def make_site(
    tmp_path: Path, camera: FakeOnvifCamera, *, password: str | None = None, **ptz: Any
) -> Generator[Site, None, None]:
    pw = tmp_path / "onvif-password"
    pw.write_text((password or camera.password) + "\n")
    cameras = [
        {
            "id": "dome",
            "source": "synthetic:street",
            "allowed_agencies": ["police", "fire", "press"],
            "ptz_agencies": ["police", "fire"],
            "geo": GEO,
            "onvif": {
                "url": camera.url,
                "username": camera.username,
                "password_file": str(pw),
                "timeout_s": 2.0,
            },
            # No status polls: the tests count what reaches the camera (test_ptz_status polls).
            "ptz": {"height_m": 10.0, "pan0_heading_deg": 90.0, "status_poll_s": 0.0, **ptz},
        },
        {"id": "fixed", "source": "synthetic:street", "allowed_agencies": ["police"]},
    ]
    cfg = parse_config(
        {"gateway": {"district": "gangnam", "id": "gw-01", "admin_agencies": ["admin"]}, "cameras": cameras}
    )
    service = PtzService.from_config(cfg.cameras, cfg.gateway.admin_agencies)
    assert service is not None
    service.start()
    try:
        with AuditLog.in_data_dir(tmp_path) as audit:
            gw = PtzGatewayStandIn(cfg, service)
            yield Site(camera, service, Dispatcher(gw, audit, clock=lambda: NOW), audit, pw)
    finally:
        service.stop()


@pytest.fixture
def camera() -> Iterator[FakeOnvifCamera]:
    with FakeOnvifCamera() as cam:
        yield cam


@pytest.fixture
def site(tmp_path: Path, camera: FakeOnvifCamera) -> Iterator[Site]:
    yield from make_site(tmp_path, camera)


# -- the right request reaches the camera, and is audited ---------------------------------------------


def test_continuous_move_reaches_the_camera_and_is_audited(site: Site) -> None:
    args = {"camera": "dome", "pan": 0.5, "tilt": -0.25, "timeout_s": 2.0}
    result = site.ok("ptz.move", args)
    assert result["camera"] == "dome"
    assert result["agency"] == "police"
    (call,) = site.camera.calls("ContinuousMove")
    assert call.authenticated
    assert call.params == {
        "ProfileToken": "main",
        "Velocity": {"PanTilt": {"x": "0.5", "y": "-0.25"}, "Zoom": {"x": "0.0"}},
        "Timeout": "PT2S",
    }
    assert site.records() == [("ptz.move", "dome", "ok", "police")]
    assert site.service.moving("dome")


def test_continuous_move_is_stopped_by_the_agent_at_its_timeout(site: Site) -> None:
    site.ok("ptz.move", {"camera": "dome", "pan": 1.0, "timeout_s": 0.5})
    deadline = time.monotonic() + 3.0
    while not site.camera.calls("Stop") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert site.camera.calls("Stop"), "a camera ignoring Timeout must still be stopped"
    time.sleep(0.5)
    assert not site.service.moving("dome")


def test_relative_move(site: Site) -> None:
    site.ok("ptz.move", {"camera": "dome", "mode": "relative", "pan": 0.1, "zoom": 0.2})
    (call,) = site.camera.calls("RelativeMove")
    assert call.params["Translation"] == {"PanTilt": {"x": "0.1", "y": "0.0"}, "Zoom": {"x": "0.2"}}
    assert site.camera.position() == pytest.approx((0.1, 0.0, 0.2))


def test_stop_and_release(site: Site) -> None:
    site.ok("ptz.move", {"camera": "dome", "pan": 0.3})
    held = site.ok("ptz.stop", {"camera": "dome"}, rid="p-2")
    assert held["lease_until"] is not None
    (call,) = site.camera.calls("Stop")
    assert call.params == {"ProfileToken": "main", "PanTilt": "true", "Zoom": "true"}
    assert site.ok("ptz.stop", {"camera": "dome", "release": True}, rid="p-3") == {
        "camera": "dome",
        "lease_until": None,
    }
    site.ok("ptz.move", {"camera": "dome", "tilt": 0.2}, agency="fire", rid="p-4")  # free again


def test_presets_and_goto_preset(site: Site) -> None:
    presets = site.ok("ptz.presets", {"camera": "dome"})
    assert presets == {
        "camera": "dome",
        "presets": [{"token": "1", "name": "Home"}, {"token": "2", "name": "Crossing"}],
    }
    site.ok("ptz.goto_preset", {"camera": "dome", "preset": "2"}, rid="p-2")
    (call,) = site.camera.calls("GotoPreset")
    assert call.params == {"ProfileToken": "main", "PresetToken": "2"}
    assert site.camera.position() == pytest.approx((0.1, -0.1, 0.0))
    error = site.error("ptz.goto_preset", {"camera": "dome", "preset": "9"}, rid="p-3")
    assert error["code"] == "not_found"
    assert "'9'" in error["message"]
    assert site.records()[-1] == ("ptz.goto_preset", "dome", "not_found", "police")


# -- access, leases ---------------------------------------------------------------------------------


def test_agency_without_ptz_rights_is_refused_and_nothing_reaches_the_camera(site: Site) -> None:
    before = len(site.camera.requests)
    commands: list[tuple[str, dict[str, Any]]] = [
        ("ptz.move", {"camera": "dome", "pan": 0.5}),
        ("ptz.stop", {"camera": "dome"}),
        ("ptz.presets", {"camera": "dome"}),
        ("ptz.goto_preset", {"camera": "dome", "preset": "1"}),
        ("ptz.look_at", {"camera": "dome", "lat": 37.5, "lon": 127.0005}),
    ]
    for rid, (cmd, args) in enumerate(commands):
        error = site.error(cmd, args, agency="press", rid=f"d-{rid}")  # may see the camera, not turn it
        assert error["code"] == "forbidden", (cmd, error)
        assert "ptz_agencies" in error["message"]
    assert len(site.camera.requests) == before
    assert {r[2] for r in site.records()} == {"forbidden"}
    assert len(site.records()) == 5


def test_lease_makes_other_agencies_busy_until_an_admin_takes_over(site: Site) -> None:
    site.ok("ptz.move", {"camera": "dome", "pan": 0.2}, agency="police")
    busy = site.error("ptz.move", {"camera": "dome", "pan": -0.2}, agency="fire", rid="p-2")
    assert busy["code"] == "busy"
    assert "'police'" in busy["message"]
    assert len(site.camera.calls("ContinuousMove")) == 1
    taken = site.ok("ptz.goto_preset", {"camera": "dome", "preset": "1"}, agency="admin", rid="p-3")
    assert taken["agency"] == "admin"
    assert (
        site.error("ptz.move", {"camera": "dome", "pan": 0.2}, agency="police", rid="p-4")["code"] == "busy"
    )
    assert [r[2] for r in site.records()] == ["ok", "busy", "ok", "busy"]


def test_camera_without_onvif_or_unknown(site: Site) -> None:
    assert site.error("ptz.move", {"camera": "fixed", "pan": 0.5})["code"] == "forbidden"  # no ptz_agencies
    assert site.error("ptz.presets", {"camera": "fixed"}, agency="admin", rid="p-2")["code"] == "not_found"
    assert site.error("ptz.presets", {"camera": "nope"}, rid="p-3")["code"] == "not_found"


def test_bad_arguments(site: Site) -> None:
    assert site.error("ptz.move", {"camera": "dome"})["code"] == "bad_request"  # nothing to move
    error = site.error("ptz.move", {"camera": "dome", "pan": 1.5}, rid="p-2")
    assert error["code"] == "bad_request"
    assert "args.pan" in error["message"]
    assert site.camera.requests == []


# -- faults of the camera -----------------------------------------------------------------------------


def test_a_camera_that_does_not_answer_is_busy_within_its_timeout(site: Site) -> None:
    site.camera.hang = {"ContinuousMove"}
    t0 = time.monotonic()
    error = site.error("ptz.move", {"camera": "dome", "pan": 0.5})
    took = time.monotonic() - t0
    assert error["code"] == "busy"
    assert "no answer" in error["message"]
    assert took < 4.0  # onvif.timeout_s = 2
    assert site.records() == [("ptz.move", "dome", "busy", "police")]
    site.camera.hang = set()
    site.ok("ptz.move", {"camera": "dome", "pan": 0.5}, rid="p-2")  # and it works again afterwards


def test_wrong_credentials_are_an_internal_error_naming_the_setting(
    tmp_path: Path, camera: FakeOnvifCamera, caplog: pytest.LogCaptureFixture
) -> None:
    for s in make_site(tmp_path, camera, password="not-the-password"):
        error = s.error("ptz.presets", {"camera": "dome"})
        assert error["code"] == "internal"
        assert "credentials" in error["message"]
        assert "password_file" in error["message"]
        assert "not-the-password" not in json.dumps(error)
        assert "not-the-password" not in caplog.text
        assert all(not r.authenticated for r in camera.requests)


def test_unsupported_operation_is_bad_request(site: Site) -> None:
    site.camera.unsupported = {"RelativeMove"}
    error = site.error("ptz.move", {"camera": "dome", "mode": "relative", "pan": 0.1})
    assert error["code"] == "bad_request"
    assert "does not support RelativeMove" in error["message"]


def test_a_camera_without_ptz(tmp_path: Path) -> None:
    with FakeOnvifCamera(ptz=False) as cam:
        for s in make_site(tmp_path, cam):
            error = s.error("ptz.move", {"camera": "dome", "pan": 0.1})
            assert error["code"] == "bad_request"
            assert "has no PTZ" in error["message"]
            assert cam.calls("ContinuousMove") == []


def test_a_camera_that_vanished_is_busy(tmp_path: Path) -> None:
    cam = FakeOnvifCamera()
    cam.close()  # nothing listens on its port any more
    for s in make_site(tmp_path, cam):
        t0 = time.monotonic()
        error = s.error("ptz.stop", {"camera": "dome"})
        assert error["code"] == "busy"
        assert "cannot be reached" in error["message"] or "no answer" in error["message"]
        assert time.monotonic() - t0 < 4.0


def test_stop_ends_within_5_s_with_a_request_hanging(tmp_path: Path, camera: FakeOnvifCamera) -> None:
    import threading

    camera.hang = {"GetProfiles"}
    sites = make_site(tmp_path, camera)
    s = next(sites)
    worker = threading.Thread(target=s.send, args=("ptz.presets", {"camera": "dome"}))
    worker.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    s.service.stop()
    assert time.monotonic() - t0 < 5.0
    worker.join(5)
    assert not worker.is_alive()
    sites.close()


# -- idle return to the home preset -------------------------------------------------------------------


def test_returns_home_after_idle(tmp_path: Path, camera: FakeOnvifCamera) -> None:
    for s in make_site(tmp_path, camera, home_preset="1", idle_return_s=5.0, lease_s=5.0):
        s.ok("ptz.move", {"camera": "dome", "mode": "relative", "pan": 0.5})
        time.sleep(4.0)
        assert camera.calls("GotoPreset") == []
        deadline = time.monotonic() + 3.0
        while not camera.calls("GotoPreset") and time.monotonic() < deadline:
            time.sleep(0.1)
        (home,) = camera.calls("GotoPreset")
        assert home.params["PresetToken"] == "1"
        assert camera.position() == pytest.approx((0.0, 0.0, 0.0))
        # the lease ended with the idle time: another agency may turn the camera now
        s.ok("ptz.move", {"camera": "dome", "pan": 0.1}, agency="fire", rid="p-2")
