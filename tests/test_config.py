"""Config loading: the example loads, every kind of bad input is named with its key and value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """
[gateway]
district = "gangnam"
id = "gw-01"
data_dir = "/tmp/x"
[[cameras]]
id = "cam-1"
source = "synthetic:street"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_example_config_loads() -> None:
    cfg = load_config(ROOT / "config.example.toml")
    assert cfg.topic_root == "cctv/v1/gangnam/gw-01"
    assert [c.id for c in cfg.cameras] == ["cam-1", "cam-2"]
    cam = cfg.cameras[0]
    assert cam.geo is not None and cam.geo.fov_deg == 90.0
    assert cam.privacy_masks[0][1] == (0.25, 0.0)


def test_issue_keys_as_written(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            MINIMAL
            + 'allowed_agencies = ["police", "fire"]\n'
            + "privacy_masks = [[[0.0, 0.0], [0.25, 0.0], [0.25, 1.0], [0.0, 1.0]]]\n"
            + "geo = { lat = 37.5172, lon = 127.0473, heading_deg = 90.0, fov_deg = 90.0, range_m = 80.0 }\n"
            + '[mqtt]\nhost = "127.0.0.1"\nport = 1883\n',
        )
    )
    assert cfg.mqtt.port == 1883
    assert cfg.cameras[0].allowed_agencies == ["police", "fire"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL.replace('id = "gw-01"', 'id = "GW 01"'), "gateway.id"),
        (MINIMAL + "colour = 3\n", "cameras[0].colour: Extra inputs are not permitted"),
        (
            MINIMAL + "geo = { lat = 95.0, lon = 0.0, heading_deg = 0.0, fov_deg = 90.0, range_m = 10.0 }\n",
            "cameras[0].geo.lat",
        ),
        (MINIMAL + "privacy_masks = [[[0.0, 0.0], [1.5, 0.0], [0.0, 1.0]]]\n", "cameras[0].privacy_masks"),
        (MINIMAL + "privacy_masks = [[[0.0, 0.0], [1.0, 0.0]]]\n", "at least 3"),
        (MINIMAL.replace("synthetic:street", "ftp://x"), "must start with one of"),
        (MINIMAL + '[[cameras]]\nid = "cam-1"\nsource = "usb:0"\n', "appears twice"),
        (MINIMAL + "[mqtt]\nport = 70000\n", "mqtt.port"),
        (MINIMAL + '[mqtt]\nprotocol = "4"\n', "mqtt.protocol"),
        (MINIMAL + '[mqtt.tls]\ncert_file = "/x.crt"\n', "cert_file and key_file"),
        (MINIMAL + "detect_fps = -1\n", "cameras[0].detect_fps"),
        ("[gateway]\nid = 'gw'\n", "gateway.district: Field required"),
        ("[gateway\n", "TOML syntax error"),
    ],
)
def test_bad_configs_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert any(expected in line for line in info.value.problems), info.value.problems


def test_bad_value_is_shown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL + "[mqtt]\nport = 70000\n"))
    assert "70000" in str(info.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "nope.toml")
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(p)


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    good = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(ROOT / "config.example.toml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(write(tmp_path, MINIMAL + "[mqtt]\nport = 0\n"))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert "mqtt.port" in bad.stderr


def test_example_mentions_every_setting() -> None:
    """config.example.toml mirrors the models: each field appears, set or commented out."""
    from pydantic import BaseModel

    from agent import config as c

    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    models: list[type[BaseModel]] = [
        c.GatewayConfig,
        c.MqttConfig,
        c.TlsConfig,
        c.GeoConfig,
        c.CameraConfig,
        c.MotionSettings,
        c.DetectionSettings,
        c.BufferSettings,
        c.ClipsSettings,
        c.StorageConfig,
        c.StreamSettings,
        c.DetectorConfig,
    ]
    missing = [
        f"{model.__name__}.{name}"
        for model in models
        for name in model.model_fields
        if f"{name} =" not in text and f".{name}]" not in text
    ]
    assert missing == []
