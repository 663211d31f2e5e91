"""The audit key reaches a gateway like the broker password does: from the Ansible role (Vault
variable -> a 0600 file the agent owns, named by gateway.audit_key_file) or from a firmware seed."""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

import pytest

from agent.commands.audit import AuditLog, load_key, verify
from agent.config import load_config
from tests.test_ansible import BIN, render_configs
from tests.test_firmware import GOOD_CONFIG, Gateway

SECRET = "3f1d0c9a8b7e6d5c4b3a29181706f5e4d3c2b1a09f8e7d6c5b4a392817060504"
EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def test_the_example_config_documents_the_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert '# audit_key_file = "/etc/edge-agent/audit-key"' in text
    enabled = text.replace("# audit_key_file", "audit_key_file", 1)
    data = tomllib.loads(enabled)
    assert data["gateway"]["audit_key_file"] == "/etc/edge-agent/audit-key"


@pytest.mark.skipif(not (BIN / "ansible-playbook").exists(), reason="ansible is not installed in this venv")
@pytest.mark.skipif(os.geteuid() != 0, reason="the role's tasks set ownership: run as root")
def test_the_role_writes_the_key_0600_and_names_it_in_the_config(tmp_path: Path) -> None:
    run = render_configs(
        tmp_path, ("mapo-gw-001",), extra={"edge_agent_audit_key": SECRET, "edge_agent_user": "root"}
    )
    assert run.rc == 0, run.output
    assert SECRET not in run.output
    etc = tmp_path / "mapo-gw-001" / "etc"
    key_file = etc / "audit-key"
    assert key_file.read_text(encoding="utf-8") == SECRET + "\n"
    assert key_file.stat().st_mode & 0o777 == 0o600
    cfg = load_config(etc / "config.toml")
    assert cfg.gateway.audit_key_file == key_file
    assert load_key(key_file) == SECRET.encode()

    again = render_configs(tmp_path, ("mapo-gw-001",), extra={"edge_agent_user": "root"})
    assert again.rc == 0, again.output
    assert not key_file.exists()
    assert load_config(etc / "config.toml").gateway.audit_key_file is None


def test_a_seed_installs_the_key_for_the_agent_alone(tmp_path: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.fail("ssh-keygen is missing: apt-get install openssh-client")
    gw = Gateway(tmp_path / "gw")
    config = GOOD_CONFIG.format(district="mapo", gateway="gw-009", host="broker.city.example", port=8883)
    config = config.replace(
        'id = "gw-009"\n', 'id = "gw-009"\naudit_key_file = "/etc/edge-agent/audit-key"\n'
    )
    gw.write_seed(
        config,
        {
            "tls/ca.pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "mqtt-password": "s3cret\n",
            "audit-key": SECRET + "\n",
        },
    )
    result = gw.firstboot()
    assert result.returncode == 0, result.stdout + result.stderr
    installed = gw.config_dir / "audit-key"
    assert installed.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in gw.seed.iterdir()) == ["status.txt"]
    # The installed key keys a log the agent accepts (the gateway's path, re-rooted here).
    key = load_key(installed)
    with AuditLog.in_data_dir(tmp_path / "data", key=key) as log:
        log.append(
            {"id": "r-1", "cmd": "ping", "camera": None, "requester": {"agency": "a"}, "outcome": "ok"}
        )
    assert verify(tmp_path / "data" / "audit" / "audit.log", key=SECRET.encode()).ok
