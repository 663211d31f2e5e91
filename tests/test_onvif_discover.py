"""`edge-agent discover`: WS-Discovery on loopback multicast finds our fake camera, the real ONVIF
client reads it, and the printed `[[cameras]]` tables pass `check-config`; never the password."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.onvif.discovery import probe
from tests.onvif_fake import FakeOnvifCamera, WsDiscoveryResponder

HEADER = '[gateway]\ndistrict = "gangnam"\nid = "gw-01"\n\n'


def discover(*args: str) -> subprocess.CompletedProcess[str]:
    # --timeout is the probe's wait and each ONVIF request's limit: 1 s failed on a loaded machine.
    return subprocess.run(
        [sys.executable, "-m", "agent", "discover", "--interface", "127.0.0.1", "--timeout", "2", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.fixture
def lan() -> Iterator[tuple[FakeOnvifCamera, FakeOnvifCamera, WsDiscoveryResponder]]:
    with (
        FakeOnvifCamera(name="Dome-1") as dome,
        FakeOnvifCamera(ptz=False, name="Bullet", rtsp_main="rtsp://127.0.0.1:8554/b1") as bullet,
        WsDiscoveryResponder([(dome.url, "Gate_Dome"), (bullet.url, "Gate_Dome")]) as wsd,
    ):
        yield dome, bullet, wsd


def test_discover_prints_a_config_check_config_accepts(
    tmp_path: Path, lan: tuple[FakeOnvifCamera, FakeOnvifCamera, WsDiscoveryResponder]
) -> None:
    dome, bullet, wsd = lan
    bullet.password = dome.password  # one login for the site's cameras, as commissioning often has
    pw = tmp_path / "onvif-password"
    pw.write_text(dome.password + "\n")
    out = discover("--wsd-port", str(wsd.port), "--username", dome.username, "--password-file", str(pw))
    assert out.returncode == 0, out.stderr
    assert dome.password not in out.stdout + out.stderr
    assert "2 ONVIF device(s) answered" in out.stderr
    text = out.stdout
    assert 'source = "rtsp://127.0.0.1:8554/main"' in text
    assert 'detect_source = "rtsp://127.0.0.1:8554/sub"' in text
    assert 'source = "rtsp://127.0.0.1:8554/b1"' in text
    assert 'id = "gate-dome"' in text
    assert 'id = "gate-dome-2"' in text  # the same name twice: ids stay unique
    assert '# PTZ: yes; presets: 1 "Home", 2 "Crossing"' in text
    assert "# PTZ: no" in text
    assert f'password_file = "{pw}"' in text
    assert [r.operation for r in dome.requests if r.operation == "GetStreamUri"] == ["GetStreamUri"] * 2
    config = tmp_path / "config.toml"
    config.write_text(HEADER + text)
    checked = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr + "\n" + text
    assert "2 camera(s)" in checked.stdout

    # The same without the stream URIs: the agent asks the cameras for them at start.
    bare = "\n".join(
        line for line in text.splitlines() if not line.startswith(("source =", "detect_source ="))
    )
    config.write_text(HEADER + bare)
    checked = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr + "\n" + bare
    assert "  gate-dome: packets" in checked.stdout
    pw.unlink()  # the password file is checked as `run` reads it
    checked = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 1
    assert f"cameras[0].onvif.password_file: cannot read {pw}" in checked.stderr


def test_wrong_password_says_so_without_showing_it(
    tmp_path: Path, lan: tuple[FakeOnvifCamera, FakeOnvifCamera, WsDiscoveryResponder]
) -> None:
    dome, _, wsd = lan
    pw = tmp_path / "onvif-password"
    pw.write_text("Wrong-Horse-9\n")
    out = discover("--wsd-port", str(wsd.port), "--username", dome.username, "--password-file", str(pw))
    assert out.returncode == 1
    assert "refused the gateway's credentials" in out.stderr
    assert "Wrong-Horse-9" not in out.stdout + out.stderr
    assert out.stdout.count("not read") == 2  # each device listed as a comment, nothing to paste


def test_nothing_answers(tmp_path: Path) -> None:
    with WsDiscoveryResponder([]) as wsd:
        out = discover("--wsd-port", str(wsd.port))
    assert out.returncode == 1
    assert "no ONVIF camera answered" in out.stderr
    assert wsd.probes == 2  # the probe is sent twice: UDP may lose one


def test_device_option_reads_without_a_probe(tmp_path: Path) -> None:
    with FakeOnvifCamera() as cam:
        pw = tmp_path / "pw"
        pw.write_text(cam.password)
        out = discover("--device", cam.url, "--username", cam.username, "--password-file", str(pw))
    assert out.returncode == 0, out.stderr
    assert 'source = "rtsp://127.0.0.1:8554/main"' in out.stdout
    assert 'id = "fakevision-fakedome"' in out.stdout


def test_probe_ignores_garbage_and_answers_to_other_probes() -> None:
    with FakeOnvifCamera() as cam, WsDiscoveryResponder([(cam.url, "Dome")]) as wsd:
        wsd.garbage = b"\x00<not xml"
        found = probe(interface="127.0.0.1", port=wsd.port, timeout_s=0.8)
    assert [f.xaddrs for f in found] == [(cam.url,)]  # two probes, one device
    assert found[0].name == "Dome"


def test_a_camera_that_does_not_answer_onvif(tmp_path: Path) -> None:
    with FakeOnvifCamera() as cam:
        cam.hang = {"GetServices", "GetCapabilities"}
        cam.hang_s = 30.0
        out = discover("--device", cam.url)
    assert out.returncode == 1
    assert "no answer" in out.stderr
