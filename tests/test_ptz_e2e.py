"""PTZ through the whole chain: the platform's SDK and `edge-agent ctl` over a real Mosquitto, an
`edge-agent run` subprocess, the real ONVIF client and our fake camera (tests/onvif_fake)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.sdk.client import CommandFailed, PlatformClient
from tests.conftest import Broker
from tests.harness import GatewayRun, Received, wait_answering
from tests.onvif_fake import FakeOnvifCamera

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(
        "PtzService" not in (Path(__file__).resolve().parent.parent / "agent/runtime/agent.py").read_text(),
        reason="the Agent does not start PtzService yet (issue 17: wiring in agent/runtime/agent.py)",
    ),
]


@dataclass
class Site:
    run: GatewayRun
    camera: FakeOnvifCamera
    police: PlatformClient
    press: PlatformClient
    broker: Broker

    def audit(self, request_id: str) -> list[tuple[str, str, str, str]]:
        def mine(ms: list[Received]) -> list[tuple[str, str, str, str]]:
            records = [m.json() for m in ms if m.topic.endswith("/audit")]
            return [
                (r["cmd"], r["camera"], r["outcome"], r["requester"]["agency"])
                for r in records
                if r["id"] == request_id
            ]

        self.run.sub.wait_for(lambda ms: bool(mine(ms)), 5.0)
        return mine(self.run.sub.messages)

    def ctl(self, agency: str, *args: str) -> subprocess.CompletedProcess[str]:
        broker = ["--host", self.broker.host, "--port", str(self.broker.port), "--root", self.run.root]
        who = ["--agency", agency, "--operator", "op-7", "--timeout", "10"]
        return subprocess.run(
            [sys.executable, "-m", "agent", "ctl", *broker, *who, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("ptz")
    camera = FakeOnvifCamera()
    pw = tmp / "onvif-password"
    pw.write_text(camera.password + "\n")
    cameras = f"""
[[cameras]]
id = "dome"
source = "synthetic:street?fps=5&width=160&height=90"
allowed_agencies = ["police", "press"]
ptz_agencies = ["police"]
geo = {{ lat = 37.5, lon = 127.0, heading_deg = 90.0, fov_deg = 90.0, range_m = 300.0 }}
onvif = {{ url = "{camera.url}", username = "{camera.username}", password_file = "{pw}", timeout_s = 3.0 }}
ptz = {{ height_m = 10.0, pan0_heading_deg = 90.0 }}
"""
    run = GatewayRun(tmp, broker.host, broker.port, "ptz", "gw-" + uuid.uuid4().hex[:10], cameras)
    clients = [
        PlatformClient(broker.host, broker.port, run.root, agency=a, operator="op-1")
        for a in ("police", "press")
    ]
    try:
        for c in clients:
            c.connect()
        wait_answering(clients[0])
        yield Site(run, camera, clients[0], clients[1], broker)
    finally:
        for c in clients:
            c.close()
        run.close()
        camera.close()


def test_sdk_move_reaches_the_camera_and_is_audited(site: Site) -> None:
    result = site.police.ptz_move("dome", pan=0.5, timeout_s=1.0)
    assert result["agency"] == "police"
    call = site.camera.calls("ContinuousMove")[-1]
    assert call.params["Velocity"]["PanTilt"] == {"x": "0.5", "y": "0.0"}
    presets = site.police.ptz_presets("dome")
    assert [p["token"] for p in presets["presets"]] == ["1", "2"]
    looked = site.police.ptz_look_at("dome", 37.5, 127.0005)
    assert looked["bearing_deg"] == pytest.approx(90.0, abs=0.1)
    assert site.camera.calls("AbsoluteMove")
    site.police.ptz_stop("dome", release=True)


def test_other_agency_is_refused_and_audited(site: Site) -> None:
    def commands() -> int:  # the agent asks the camera's status in the background
        return len([r for r in site.camera.requests if r.operation != "GetStatus"])

    before = commands()
    rid = "deny-" + uuid.uuid4().hex[:8]
    with pytest.raises(CommandFailed) as refused:
        site.press.request("ptz.goto_preset", {"camera": "dome", "preset": "2"}, timeout=10, request_id=rid)
    assert refused.value.code == "forbidden"
    assert site.audit(rid) == [("ptz.goto_preset", "dome", "forbidden", "press")]
    assert commands() == before


def test_ctl_ptz(site: Site) -> None:
    moved = site.ctl("police", "ptz", "goto", "dome", "2")
    assert moved.returncode == 0, moved.stderr
    assert "dome: controlled by police until" in moved.stdout
    assert site.camera.calls("GotoPreset")[-1].params["PresetToken"] == "2"
    listed = site.ctl("police", "ptz", "presets", "dome")
    assert listed.returncode == 0, listed.stderr
    assert "Crossing" in listed.stdout
    refused = site.ctl("press", "ptz", "move", "dome", "--pan", "0.3")
    assert refused.returncode == 1
    assert "forbidden" in refused.stderr
    released = site.ctl("police", "ptz", "stop", "dome", "--release")
    assert released.returncode == 0, released.stderr
    assert "dome: released" in released.stdout
    t0 = time.monotonic()
    site.camera.hang = {"RelativeMove"}
    try:
        slow = site.ctl("police", "ptz", "move", "dome", "--relative", "--pan", "0.1")
    finally:
        site.camera.hang = set()
    assert slow.returncode == 1
    assert "busy" in slow.stderr
    assert time.monotonic() - t0 < 10.0


def test_camera_status_says_when_the_camera_moves_and_whose_move_it_is(site: Site) -> None:
    def ptz_states(ms: list[Received]) -> list[dict[str, object]]:
        return [m.json()["ptz"] for m in ms if m.topic.endswith("/cam/dome/status") and "ptz" in m.json()]

    site.police.ptz_goto_preset("dome", "1")
    moved = {"moving": True, "commanded": True, "by": "police", "preset": "1"}
    assert site.run.sub.wait_for(lambda ms: moved in ptz_states(ms), 5.0)
    still = moved | {"moving": False}
    assert site.run.sub.wait_for(lambda ms: ptz_states(ms)[-1:] == [still], 5.0), ptz_states(
        site.run.sub.messages
    )
    site.police.ptz_stop("dome", release=True)
    site.run.sub.wait_for(lambda ms: not ptz_states(ms)[-1]["moving"], 5.0)
    site.camera.move_by_itself(0.1, seconds=3.0)  # nobody holds it: the agent asks every 2 s
    nobody = {"moving": True, "commanded": False, "by": None, "preset": None}
    assert site.run.sub.wait_for(lambda ms: ptz_states(ms)[-1:] == [nobody], 6.0), ptz_states(
        site.run.sub.messages
    )
    assert site.run.sub.wait_for(lambda ms: ptz_states(ms)[-1:] == [nobody | {"moving": False}], 8.0)
