"""Config loading: the example loads, every kind of bad input is named with its key and value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from tests.test_config_files import pem_pair

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
        c.ConsoleConfig,
        c.ConsoleUser,
    ]
    missing = [
        f"{model.__name__}.{name}"
        for model in models
        for name in model.model_fields
        if f"{name} =" not in text and f".{name}]" not in text
    ]
    assert missing == []


# -- check-config finds what `run` would refuse (issue 13 item 12) -----------------------------------


def _mqtt_files_case(tmp_path: Path, case: str) -> tuple[str, str]:
    """([mqtt] TOML for a broken file setup, the key check-config must name)."""
    crt, key = pem_pair(tmp_path, "client")
    _, other_key = pem_pair(tmp_path, "other")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n", encoding="utf-8")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.pem"
    tls = {"ca_file": crt, "cert_file": crt, "key_file": key}

    def password(path: Path) -> str:
        return f'[mqtt]\nusername = "gw"\npassword_file = "{path}"\n'

    def tls_with(**files: Path) -> str:
        return "[mqtt.tls]\n" + "".join(f'{k} = "{v}"\n' for k, v in {**tls, **files}.items())

    cases = {
        "password_file missing": (password(missing), "mqtt.password_file"),
        "password_file empty": (password(empty), "mqtt.password_file"),
        "password_file a folder": (password(tmp_path), "mqtt.password_file"),
        "ca_file missing": (tls_with(ca_file=missing), "mqtt.tls.ca_file"),
        "ca_file junk": (tls_with(ca_file=junk), "mqtt.tls.ca_file"),
        "cert_file missing": (tls_with(cert_file=missing), "mqtt.tls.cert_file"),
        "cert_file junk": (tls_with(cert_file=junk), "mqtt.tls.cert_file"),
        "key_file missing": (tls_with(key_file=missing), "mqtt.tls.key_file"),
        "key_file junk": (tls_with(key_file=junk), "mqtt.tls.key_file"),
        "key_file of another cert": (tls_with(key_file=other_key), "mqtt.tls.key_file"),
    }
    return cases[case]


FILE_CASES = [
    "password_file missing",
    "password_file empty",
    "password_file a folder",
    "ca_file missing",
    "ca_file junk",
    "cert_file missing",
    "cert_file junk",
    "key_file missing",
    "key_file junk",
    "key_file of another cert",
]


@pytest.mark.parametrize("case", FILE_CASES)
def test_check_config_rejects_files_run_would_reject(tmp_path: Path, case: str) -> None:
    mqtt, key = _mqtt_files_case(tmp_path, case)
    path = write(tmp_path, MINIMAL.replace("/tmp/x", str(tmp_path / "data")) + mqtt)
    checked = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 1, checked.stdout
    assert f"  - {key}: " in checked.stderr, checked.stderr
    assert "OK" not in checked.stdout
    # and `run` does refuse it, at start-up, before any connection attempt
    run = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert run.returncode == 1, run.stderr


def test_check_config_accepts_good_files_and_warns_about_insecure(tmp_path: Path) -> None:
    crt, key = pem_pair(tmp_path, "client")
    password = tmp_path / "password"
    password.write_text("s3cret\n", encoding="utf-8")
    mqtt = (
        f'[mqtt]\nusername = "gw"\npassword_file = "{password}"\n'
        f'[mqtt.tls]\nca_file = "{crt}"\ncert_file = "{crt}"\nkey_file = "{key}"\n'
    )
    path = write(tmp_path, MINIMAL + mqtt)
    good = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout
    assert "insecure" not in good.stderr
    insecure = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "check-config",
            str(write(tmp_path, MINIMAL + mqtt + "insecure = true\n")),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert insecure.returncode == 0, insecure.stderr
    assert "warning: mqtt.tls.insecure" in insecure.stderr
    assert "host name" in insecure.stderr


def test_errors_are_reported_line_by_line_exactly(tmp_path: Path) -> None:
    """What `check-config` prints: the file, then one line per fault, key path first."""
    cases = {
        MINIMAL + '[[cameras]]\nid = "cam-1"\nsource = "usb:0"\n': "<root>: camera id 'cam-1' appears twice",
        MINIMAL
        + '[mqtt.tls]\ncert_file = "/x.crt"\n': "mqtt.tls: cert_file and key_file must be given together",
        MINIMAL
        + "[mqtt]\nport = 70000\n": "mqtt.port: Input should be less than or equal to 65535 (got 70000)",
        "[gateway]\nid = 'gw'\n": "gateway.district: Field required",
    }
    for text, line in cases.items():
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert (info.value.source, info.value.problems) == (str(path), [line])


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert (info.value.source, info.value.problems) == (
        str(missing),
        ["cannot read file: No such file or directory"],
    )
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError) as info:
        load_config(binary)
    assert info.value.source == str(binary)
    broken = write(tmp_path, "[gateway\n")
    with pytest.raises(ConfigError) as info:
        load_config(broken)
    assert info.value.source == str(broken)
    assert info.value.problems[0].startswith("TOML syntax error: ")


def test_password_file_gives_its_first_line_and_a_missing_one_is_named(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\nignored\n", encoding="utf-8")
    cfg = load_config(write(tmp_path, MINIMAL + f'[mqtt]\nusername = "gw"\npassword_file = "{secret}"\n'))
    assert cfg.mqtt.resolved_password() == "s3cret"
    inline = load_config(write(tmp_path, MINIMAL + '[mqtt]\nusername = "gw"\npassword = "inline"\n'))
    assert inline.mqtt.resolved_password() == "inline"
    secret.unlink()
    with pytest.raises(ConfigError) as info:
        cfg.mqtt.resolved_password()
    assert info.value.source == "mqtt.password_file"
    [problem] = info.value.problems
    assert problem.startswith(f"cannot read {secret}: ")
    assert "No such file or directory" in problem


@pytest.mark.parametrize("password", ['password = "s3cret-pw"', 'password_file = "/etc/edge-agent/mqtt.pw"'])
def test_a_password_without_a_username_is_refused(tmp_path: Path, password: str) -> None:
    """MQTT 3.1.1 sends no password without a username (paho drops it): refused, not ignored."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL + f"[mqtt]\n{password}\n"))
    assert info.value.problems == ["mqtt: a password (password or password_file) needs a username"]
    assert "s3cret-pw" not in str(info.value)


def test_check_config_no_files_checks_a_config_staged_before_its_files(tmp_path: Path) -> None:
    mqtt, _ = _mqtt_files_case(tmp_path, "ca_file missing")
    path = write(tmp_path, MINIMAL + mqtt)
    staged = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "--no-files", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert staged.returncode == 0, staged.stderr
    assert "OK" in staged.stdout
