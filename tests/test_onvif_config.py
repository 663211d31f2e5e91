"""The ONVIF and PTZ settings of a camera: what is accepted, what is refused with a clear reason,
and that a gateway without ONVIF cameras never loads the ONVIF client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from agent.errors import ConfigError

URL = "http://192.0.2.30/onvif/device_service"


def cfg(**camera: Any) -> dict[str, Any]:
    cam = {"id": "dome", "source": "rtsp://192.0.2.30/main", "allowed_agencies": ["police", "fire"], **camera}
    return {"gateway": {"district": "gangnam", "id": "gw-01"}, "cameras": [cam]}


def problems(**camera: Any) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(cfg(**camera))
    return "\n".join(err.value.problems)


def test_url_shorthand_and_table(tmp_path: Path) -> None:
    short = parse_config(cfg(onvif=URL)).cameras[0]
    assert short.onvif is not None
    assert (short.onvif.host, short.onvif.port, short.onvif.username) == ("192.0.2.30", 80, None)
    pw = tmp_path / "pw"
    pw.write_text("Tr0ub4dor&3\nignored\n")
    full = parse_config(
        cfg(onvif={"url": "http://192.0.2.30:8080", "username": "agent", "password_file": str(pw)})
    ).cameras[0]
    assert full.onvif is not None
    assert full.onvif.port == 8080
    assert full.onvif.resolved_password() == "Tr0ub4dor&3"
    assert full.ptz_agencies == []  # nobody may turn a camera unless the config says so
    assert full.ptz_settings.idle_return_s == 300.0


def test_credentials_in_the_url_are_refused_without_being_shown() -> None:
    text = problems(onvif="http://admin:Hunter22@192.0.2.30/onvif/device_service")
    assert "must not carry credentials" in text
    assert "Hunter22" not in text


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("rtsp://192.0.2.30/onvif/device_service", "http(s)://"),
        ("http:///onvif/device_service", "http(s)://"),
        ("http://192.0.2.30/cgi-bin/onvif", "must be at /onvif/device_service"),
        ("http://192.0.2.30:99999/onvif/device_service", "not a valid URL"),
    ],
)
def test_bad_device_addresses(url: str, reason: str) -> None:
    assert reason in problems(onvif=url)


def test_ptz_needs_onvif_and_visible_agencies() -> None:
    assert "need onvif" in problems(ptz_agencies=["police"])
    assert "need onvif" in problems(ptz={"home_preset": "1"})
    assert "not in allowed_agencies" in problems(onvif=URL, ptz_agencies=["press"])
    assert "password_file needs onvif.username" in problems(onvif={"url": URL, "password_file": "/x"})
    assert "must not be 0" in problems(onvif=URL, ptz={"pan_deg_per_unit": 0.0})
    assert "idle_return_s" in problems(onvif=URL, ptz={"idle_return_s": 1.0})


def test_unreadable_or_empty_password_file(tmp_path: Path) -> None:
    missing = parse_config(cfg(onvif={"url": URL, "username": "u", "password_file": str(tmp_path / "no")}))
    assert missing.cameras[0].onvif is not None
    with pytest.raises(ConfigError, match="cannot read"):
        missing.cameras[0].onvif.resolved_password()
    empty = tmp_path / "empty"
    empty.write_text("")
    blank = parse_config(cfg(onvif={"url": URL, "username": "u", "password_file": str(empty)}))
    assert blank.cameras[0].onvif is not None
    with pytest.raises(ConfigError, match="is empty"):
        blank.cameras[0].onvif.resolved_password()


def test_a_gateway_without_onvif_cameras_never_imports_zeep() -> None:
    code = (
        "import sys\n"
        "from agent.config import load_config\n"
        "from agent.onvif import PtzService\n"
        "import agent.commands, agent.runtime.gateway, agent.cli\n"
        "cfg = load_config('config.example.toml')\n"
        "assert PtzService.from_config([c for c in cfg.cameras if c.onvif is None], []) is None\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('zeep', 'onvif', 'aiohttp', 'lxml'))\n"
        "print(loaded)\n"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"
