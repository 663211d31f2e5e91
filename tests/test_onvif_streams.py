"""Stream URIs from ONVIF: a camera configured by `onvif` alone gets its main stream and substream
from the camera (GetProfiles/GetStreamUri), with the ONVIF login added for RTSP and never shown,
and asks again after the camera rebooted with new URIs. Real ONVIF client against our fake
device (tests/onvif_fake), real RTSP from the team's test camera (tests/rtsp_camera)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.capture.packets import StreamPacket
from agent.config import CameraConfig, parse_config
from agent.contract.messages import CameraStatus
from agent.errors import ConfigError, SourceError
from agent.onvif import PtzService
from agent.onvif.client import with_login
from agent.runtime.camera import CameraWorker
from tests.conftest import Broker
from tests.harness import GatewayRun
from tests.onvif_fake import FakeOnvifCamera
from tests.rtsp_camera.fixture import RtspCamera

PASSWORD = "p@ss:w/rd 9"  # every character that must be escaped in a URL's userinfo


def config(camera: dict[str, Any]) -> CameraConfig:
    return parse_config({"gateway": {"district": "gangnam", "id": "gw-01"}, "cameras": [camera]}).cameras[0]


def onvif_camera(fake: FakeOnvifCamera, pw: Path, **extra: Any) -> CameraConfig:
    login = {"url": fake.url, "username": fake.username, "password_file": str(pw), "timeout_s": 2.0}
    return config({"id": "dome", "onvif": login | extra.pop("onvif", {}), **extra})


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeOnvifCamera]:
    with FakeOnvifCamera(password=PASSWORD) as cam:
        yield cam


@pytest.fixture
def pw(tmp_path: Path, fake: FakeOnvifCamera) -> Path:
    path = tmp_path / "onvif-password"
    path.write_text(fake.password + "\n")
    return path


def started(cfg: CameraConfig) -> PtzService:
    service = PtzService.from_config([cfg], [])
    assert service is not None
    service.start()
    return service


# -- config ------------------------------------------------------------------------------------------


def test_source_may_be_left_out_only_with_onvif() -> None:
    cam = config({"id": "dome", "onvif": "http://192.0.2.30/onvif/device_service"})
    assert cam.source is None and cam.streams_from_onvif
    assert cam.records_packets  # ONVIF hands out RTSP: the camera's own packets are kept
    assert config({"id": "d", "onvif": "http://192.0.2.30", "footage": "packets"}).records_packets
    assert not config(
        {"id": "d", "onvif": "http://192.0.2.30", "privacy_masks": [[[0, 0], [1, 0], [1, 1]]]}
    ).records_packets
    explicit = config({"id": "d", "source": "rtsp://192.0.2.30/main", "onvif": "http://192.0.2.30"})
    assert not explicit.streams_from_onvif  # a given source is used as it is
    with pytest.raises(ConfigError) as err:
        config({"id": "dome"})
    assert err.value.problems == [
        "cameras[0]: source is required (or onvif, to ask the camera for its stream URIs)"
    ]


def test_login_is_added_escaped_and_never_over_one_the_camera_gave() -> None:
    assert (
        with_login("rtsp://192.0.2.30:554/Streaming/101", "agent", PASSWORD)
        == "rtsp://agent:p%40ss%3Aw%2Frd%209@192.0.2.30:554/Streaming/101"
    )
    assert with_login("rtsp://cam:given@192.0.2.30/main", "agent", "x") == "rtsp://cam:given@192.0.2.30/main"
    assert with_login("rtsp://192.0.2.30/main", None, None) == "rtsp://192.0.2.30/main"
    assert with_login("rtsp://192.0.2.30/main", "viewer", None) == "rtsp://viewer@192.0.2.30/main"


# -- asking the camera -----------------------------------------------------------------------------


def test_stream_uris_main_and_smallest_profile_with_the_login(fake: FakeOnvifCamera, pw: Path) -> None:
    service = started(onvif_camera(fake, pw))
    try:
        main, sub = service.stream_uris("dome")
    finally:
        service.stop()
    login = "agent:p%40ss%3Aw%2Frd%209@"
    assert (main, sub) == (f"rtsp://{login}127.0.0.1:8554/main", f"rtsp://{login}127.0.0.1:8554/sub")
    asked = [c.params["ProfileToken"] for c in fake.calls("GetStreamUri")]
    assert asked == ["main", "sub"]
    assert all(c.authenticated for c in fake.calls("GetStreamUri"))


def test_one_profile_gives_no_substream_and_rtsp_login_false_keeps_the_uri(tmp_path: Path) -> None:
    with FakeOnvifCamera(rtsp_sub=None) as fake:
        pw = tmp_path / "pw"
        pw.write_text(fake.password)
        service = started(onvif_camera(fake, pw, onvif={"rtsp_login": False}))
        try:
            assert service.stream_uris("dome") == ("rtsp://127.0.0.1:8554/main", None)
        finally:
            service.stop()


def test_faults_are_source_errors_naming_the_camera_without_the_password(
    fake: FakeOnvifCamera, pw: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("Wrong-Horse-9\n")
    service = started(onvif_camera(fake, wrong))
    try:
        with pytest.raises(SourceError) as refused:
            service.stream_uris("dome")
    finally:
        service.stop()
    assert "refused the gateway's credentials" in str(refused.value)
    assert "'dome'" in str(refused.value)
    assert "Wrong-Horse-9" not in str(refused.value) + caplog.text

    fake.hang, fake.hang_s = {"GetStreamUri"}, 30.0
    service = started(onvif_camera(fake, pw, onvif={"timeout_s": 0.5}))
    t0 = time.monotonic()
    try:
        with pytest.raises(SourceError, match="no answer"):
            service.stream_uris("dome")
    finally:
        service.stop()
    assert time.monotonic() - t0 < 4.0  # three requests' worth of onvif.timeout_s, plus a second

    with pytest.raises(SourceError, match="ONVIF control is not running"):
        service.stream_uris("dome")


# -- the camera's streams -------------------------------------------------------------------------


class Observed:
    """What a CameraWorker tells the outside: statuses and packets."""

    def __init__(self) -> None:
        self.statuses: list[CameraStatus] = []
        self.packets = 0
        self.lock = threading.Lock()

    def status(self, _camera: str, status: CameraStatus) -> None:
        with self.lock:
            self.statuses.append(status)

    def packet(self, _packet: StreamPacket) -> None:
        with self.lock:
            self.packets += 1

    def wait(self, what: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if what():
                    return True
            time.sleep(0.1)
        return False


def last_ok(obs: Observed, width: int) -> Callable[[], bool]:
    return lambda: bool(obs.statuses) and obs.statuses[-1].state == "ok" and obs.statuses[-1].width == width


def test_worker_reads_the_streams_the_camera_names_and_asks_again_after_a_reboot(
    tmp_path: Path,
    rtsp_camera_factory: Callable[..., RtspCamera],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    before = rtsp_camera_factory(user="agent", password=PASSWORD, main_size=(640, 360), sub_size=(320, 180))
    bare = {"user": "", "password": ""}  # the camera hands out URIs without the login
    with FakeOnvifCamera(
        password=PASSWORD,
        rtsp_main=before.url("/main", **bare),
        rtsp_sub=before.url("/sub", **bare),
    ) as fake:
        pw = tmp_path / "pw"
        pw.write_text(PASSWORD)
        cfg = onvif_camera(fake, pw, ptz={"status_poll_s": 0.0})
        service = started(cfg)
        obs = Observed()
        worker = CameraWorker(
            cfg,
            obs.status,
            lambda _c, _p: None,
            on_packet=obs.packet,
            backoff_max_s=0.5,
            resolve=lambda stop: service.stream_uris("dome", stop),
        )
        worker.start()
        try:
            assert obs.wait(last_ok(obs, 640), 20.0), obs.statuses
            assert obs.wait(lambda: obs.packets > 10, 10.0)  # the main stream's packets, kept
            latest = worker.latest_frame()
            assert latest is not None and latest.image.shape[:2] == (180, 320)  # analysis on the sub

            # A reboot: the camera comes back on another port and hands out new URIs.
            after = rtsp_camera_factory(
                user="agent", password=PASSWORD, main_size=(480, 270), sub_size=(320, 180)
            )
            fake.rtsp = {"main": after.url("/main", **bare), "sub": after.url("/sub", **bare)}
            before.stop()
            assert obs.wait(last_ok(obs, 480), 30.0), obs.statuses[-5:]
        finally:
            worker.stop()
            service.stop()
    assert len(fake.calls("GetProfiles")) >= 2  # asked again
    assert any(s.state == "failed" for s in obs.statuses)  # the reboot was seen and reported
    shown = " ".join(str(s.model_dump()) for s in obs.statuses) + caplog.text
    assert PASSWORD not in shown and "p%40ss" not in shown


def test_a_camera_without_substream_is_analysed_on_its_one_stream(
    tmp_path: Path, rtsp_camera_factory: Callable[..., RtspCamera]
) -> None:
    rtsp = rtsp_camera_factory(main_size=(320, 180), sub_size=(160, 90))
    with FakeOnvifCamera(rtsp_main=rtsp.main_url, rtsp_sub=None) as fake:
        pw = tmp_path / "pw"
        pw.write_text(fake.password)
        cfg = onvif_camera(fake, pw, ptz={"status_poll_s": 0.0}, onvif={"rtsp_login": False})
        service = started(cfg)
        obs = Observed()
        worker = CameraWorker(
            cfg, obs.status, lambda _c, _p: None, resolve=lambda stop: service.stream_uris("dome", stop)
        )
        worker.start()
        try:
            assert obs.wait(last_ok(obs, 320), 20.0), obs.statuses  # not held at connecting
            latest = worker.latest_frame()
            assert latest is not None and latest.image.shape[:2] == (180, 320)
        finally:
            worker.stop()
            service.stop()
    assert [c.params["ProfileToken"] for c in fake.calls("GetStreamUri")] == ["main"]


@pytest.mark.broker
def test_agent_run_streams_a_camera_named_by_onvif_alone(
    tmp_path: Path, broker: Broker, rtsp_camera_factory: Callable[..., RtspCamera]
) -> None:
    rtsp = rtsp_camera_factory(user="agent", password=PASSWORD, main_size=(640, 360), sub_size=(320, 180))
    bare = {"user": "", "password": ""}
    with FakeOnvifCamera(
        password=PASSWORD, rtsp_main=rtsp.url("/main", **bare), rtsp_sub=rtsp.url("/sub", **bare)
    ) as fake:
        pw = tmp_path / "onvif-password"
        pw.write_text(PASSWORD + "\n")
        cameras = f"""
[[cameras]]
id = "dome"
allowed_agencies = ["police"]
onvif = {{ url = "{fake.url}", username = "{fake.username}", password_file = "{pw}" }}
"""
        run = GatewayRun(tmp_path, broker.host, broker.port, "onvif", "gw-" + uuid.uuid4().hex[:10], cameras)
        try:

            def ok(ms: list[Any]) -> bool:
                states = [m.json() for m in ms if m.topic.endswith("/cam/dome/status")]
                return bool(states) and states[-1]["state"] == "ok" and states[-1]["width"] == 640

            assert run.sub.wait_for(ok, 30.0), run.agent.log()[-3000:]
        finally:
            run.close()
        published = b"".join(m.payload for m in run.sub.messages).decode("utf-8", "replace")
        log = run.agent.log()
    for shown in (published, log):
        assert PASSWORD not in shown and "p%40ss" not in shown
    assert "stream URIs from the camera: rtsp://agent:***@127.0.0.1" in log


@pytest.mark.broker
def test_a_camera_that_does_not_answer_onvif_is_failed_and_the_agent_still_stops_in_time(
    tmp_path: Path, broker: Broker
) -> None:
    with FakeOnvifCamera() as fake:
        fake.hang, fake.hang_s = {"GetStreamUri"}, 60.0
        pw = tmp_path / "pw"
        pw.write_text(fake.password)
        login = f'username = "{fake.username}", password_file = "{pw}"'
        cameras = f"""
[[cameras]]
id = "dome"
onvif = {{ url = "{fake.url}", {login}, timeout_s = 1.0 }}
"""
        run = GatewayRun(tmp_path, broker.host, broker.port, "onvif", "gw-" + uuid.uuid4().hex[:10], cameras)
        try:

            def failed(ms: list[Any]) -> bool:
                states = [m.json() for m in ms if m.topic.endswith("/cam/dome/status")]
                return any(s["state"] == "failed" and "no answer" in (s["error"] or "") for s in states)

            assert run.sub.wait_for(failed, 20.0), run.agent.log()[-3000:]
            time.sleep(1.5)  # a question in flight at SIGTERM
            code, took = run.agent.terminate()
            log = run.agent.log()
        finally:
            run.close()
    assert code == 0
    assert took < 5.0
    assert "did not stop" not in log  # the question in flight is abandoned at once
    error = next(m.json()["error"] for m in run.sub.on("/cam/dome/status") if m.json()["state"] == "failed")
    assert error.startswith("ONVIF: camera 'dome' (ONVIF at http://127.0.0.1:")
