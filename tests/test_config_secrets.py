"""Issue 13 item 11: no secret in an error message, a log line or a camera status.

A mistyped `password = 98765432` used to be echoed back ("got 98765432"), and a misspelt
`rstp://admin:CamPassw0rd@…` source printed the credentials twice (once in the message, once in
the echo). Secrets are replaced, by one helper (`agent.config.redact`), wherever they could show:
`check-config`, `run`'s start-up error and log, the camera status the platform receives.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config, parse_config
from agent.config.redact import is_secret_name, redact
from agent.errors import ConfigError
from tests.conftest import Broker
from tests.harness import GatewayRun

CAM_PASSWORD = "CamPassw0rd"
MQTT_PASSWORD = "98765432"

GATEWAY = """
[gateway]
district = "gangnam"
id = "gw-01"
data_dir = "{data}"
"""
CAMERA = """
[[cameras]]
id = "cam-1"
source = "{source}"
"""


def config(tmp_path: Path, *, mqtt: str = "", source: str = "synthetic:street", extra: str = "") -> Path:
    text = GATEWAY.format(data=tmp_path / "data") + mqtt + CAMERA.format(source=source) + extra
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60, check=False
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- check-config and run at start-up ---------------------------------------------------------------


@pytest.mark.parametrize(
    "mqtt",
    [
        f'[mqtt]\nusername = "gw"\npassword = {MQTT_PASSWORD}\n',  # a number, not a string
        f'[mqtt]\nusername = "gw"\npassword = ["{MQTT_PASSWORD}"]\n',
        f'[mqtt]\nusername = "gw"\npasword = "{MQTT_PASSWORD}"\n',  # misspelt key: unknown, still secret
        f'[mqtt]\nusername = "gw"\npassword = "{MQTT_PASSWORD}"\npassword_file = "/etc/pw"\n',
    ],
)
def test_check_config_never_echoes_a_password(tmp_path: Path, mqtt: str) -> None:
    done = edge_agent("check-config", str(config(tmp_path, mqtt=mqtt)))
    assert done.returncode == 1, done.stdout
    assert "  - mqtt" in done.stderr  # the key is named
    assert MQTT_PASSWORD not in done.stderr + done.stdout


@pytest.mark.parametrize(
    "source",
    [
        f"rstp://admin:{CAM_PASSWORD}@10.0.0.5:554/Streaming/Channels/101",  # mistyped scheme
        f"rtsp//admin:{CAM_PASSWORD}@10.0.0.5/stream1",  # missing colon
        # long enough that the echo is cut inside the credentials
        f"rstp://operator-with-a-rather-long-user-name-for-the-camera:{CAM_PASSWORD}@10.0.0.5/s",
        f"rstp://admin:{CAM_PASSWORD}/with/slash@10.0.0.5/stream1",
        f"htp://cam.local/video.cgi?user=admin&pwd={CAM_PASSWORD}",
    ],
)
def test_a_mistyped_camera_url_is_shown_without_its_password(tmp_path: Path, source: str) -> None:
    path = config(tmp_path, source=source)
    checked = edge_agent("check-config", str(path))
    assert checked.returncode == 1
    assert "cameras[0].source" in checked.stderr
    assert CAM_PASSWORD not in checked.stderr + checked.stdout
    assert "***" in checked.stderr
    run = edge_agent("run", "--config", str(path))
    assert run.returncode == 1
    assert "cameras[0].source" in run.stderr
    assert CAM_PASSWORD not in run.stderr + run.stdout


def test_the_redacted_url_keeps_what_helps_fix_it(tmp_path: Path) -> None:
    source = f"rstp://admin:{CAM_PASSWORD}@10.0.0.5/stream1"
    with pytest.raises(ConfigError) as err:
        load_config(config(tmp_path, source=source))
    (line,) = err.value.problems
    assert "'rstp://admin:***@10.0.0.5/stream1'" in line
    assert line.count("***") == 2  # in the message and in the echo, both redacted


def test_detect_source_is_redacted_too(tmp_path: Path) -> None:
    extra = f'detect_source = "rtps://admin:{CAM_PASSWORD}@10.0.0.5/sub"\n'
    with pytest.raises(ConfigError) as err:
        load_config(config(tmp_path, extra=extra))
    assert any("cameras[0].detect_source" in line for line in err.value.problems)
    assert CAM_PASSWORD not in str(err.value)


def test_non_secret_values_are_still_shown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"gateway": {"district": "gangnam", "id": "gw-01"}, "mqtt": {"port": 70000}})
    assert "(got 70000)" in str(err.value)


# -- the helper --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/ch1", "rtsp://admin:***@10.0.0.5:554/ch1"),
        ("source 'rstp://admin:hunter2@cam/x' is bad", "source 'rstp://admin:***@cam/x' is bad"),
        ("rtsp://admin:p@ss@10.0.0.5/x", "rtsp://admin:***@10.0.0.5/x"),
        ("rtsp://admin:pa/ss@10.0.0.5/x", "rtsp://admin:***@10.0.0.5/x"),
        ("rtsp//admin:hunter2@10.0.0.5/x", "rtsp//admin:***@10.0.0.5/x"),
        ("http://cam/v.cgi?user=admin&pwd=hunter2&res=1", "http://cam/v.cgi?user=admin&pwd=***&res=1"),
        ("rtsp://admin@10.0.0.5/x", "rtsp://admin@10.0.0.5/x"),
        ("file:///srv/a.mp4", "file:///srv/a.mp4"),
        ("a@b and x:y are not URLs", "a@b and x:y are not URLs"),
    ],
)
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert "hunter2" not in redact(text)


def test_secret_query_values_and_secret_names() -> None:
    assert (
        redact("rtsp://admin:pw@10.0.0.5:554/ch1?token=abc&x=1")
        == "rtsp://admin:***@10.0.0.5:554/ch1?token=***&x=1"
    )
    assert [n for n in ("password", "pasword", "password_file", "audit_key", "secret", "tls_key_password")
            if not is_secret_name(n)] == []  # fmt: skip
    assert [
        n
        for n in ("port", "host", "username", "keepalive_s", "source", "id", "district")
        if is_secret_name(n)
    ] == []


# -- a running agent: log and camera status -----------------------------------------------------------


@pytest.mark.broker
def test_run_log_and_camera_status_hold_no_password(
    tmp_path: Path, broker: Broker, unique_gateway: str
) -> None:
    port = closed_port()
    cameras = (
        f'[[cameras]]\nid = "cam-1"\nsource = "rtsp://admin:{CAM_PASSWORD}@127.0.0.1:{port}/main"\n'
        f'detect_source = "rtsp://admin:{CAM_PASSWORD}@127.0.0.1:{port}/sub"\nallowed_agencies = ["police"]\n'
    )
    extra = f'username = "gw"\npassword = "{MQTT_PASSWORD}"\n'  # the test broker allows anyone
    run = GatewayRun(tmp_path, broker.host, broker.port, "secrets", unique_gateway, cameras, extra=extra)
    try:
        assert run.sub.wait_for(
            lambda ms: any(
                m.topic.endswith("/cam/cam-1/status") and m.json()["state"] == "failed" for m in ms
            ),
            30,
        ), run.agent.log()
        failed = [m for m in run.sub.on("/cam/cam-1/status") if m.json()["state"] == "failed"]
        assert all(CAM_PASSWORD not in m.payload.decode() for m in failed)
        assert "admin:***@127.0.0.1" in failed[0].json()["error"]
    finally:
        run.close()
    log = run.agent.log()
    assert "admin:***@127.0.0.1" in log
    assert CAM_PASSWORD not in log
    assert MQTT_PASSWORD not in log
    assert all(CAM_PASSWORD.encode() not in m.payload for m in run.sub.messages)
