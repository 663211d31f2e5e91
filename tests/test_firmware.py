"""The flashable gateway image (firmware/): first-boot provisioning and a real boot under QEMU.

The quick tests run the first-boot script against a directory tree shaped like a gateway (boot
partition, data partition), with this checkout's `edge-agent` doing the checking. The slow test
builds the amd64 image (or reuses the cached one), boots it under software emulation with a seed
pointing at the test broker, waits for the seeded identity to come online, then freezes the
agent's main loop with SIGSTOP and expects systemd's watchdog to restart it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Broker, free_port
from tests.harness import Received, Subscriber

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware"
FIRSTBOOT = FIRMWARE / "rootfs/usr/local/sbin/edge-agent-firstboot"
SEEDCHECK = FIRMWARE / "rootfs/usr/local/lib/edge-gateway/seedcheck.py"
VENV_BIN = Path(sys.executable).parent

GOOD_CONFIG = """
[gateway]
district = "{district}"
id = "{gateway}"

[mqtt]
host = "{host}"
port = {port}
password_file = "/etc/edge-agent/mqtt-password"
username = "gw"

[mqtt.tls]
ca_file = "/etc/edge-agent/tls/ca.pem"

[[cameras]]
id = "cam-1"
source = "synthetic:street"
detect_fps = 2
"""


# -- first boot against a directory tree -------------------------------------------------------


class Gateway:
    """A directory shaped like the image's partitions, and the first-boot script run over it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seed = root / "boot/firmware/edge-agent"
        self.data = root / "data"
        self.config_dir = self.data / "etc/edge-agent"
        self.seed.mkdir(parents=True)
        self.data.mkdir()

    def write_seed(self, config: str, files: dict[str, str] | None = None) -> None:
        (self.seed / "config.toml").write_text(config, encoding="utf-8")
        for name, text in (files or {}).items():
            path = self.seed / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")

    def firstboot(self) -> subprocess.CompletedProcess[str]:
        env = dict(
            os.environ,
            EDGE_GATEWAY_ROOT=str(self.root),
            EDGE_AGENT_BIN=str(VENV_BIN / "edge-agent"),
            EDGE_AGENT_PYTHON=sys.executable,
            EDGE_SEEDCHECK=str(SEEDCHECK),
        )
        return subprocess.run(
            ["bash", str(FIRSTBOOT)], env=env, capture_output=True, text=True, timeout=120, check=False
        )

    def status(self) -> str:
        return (self.seed / "status.txt").read_text(encoding="utf-8")

    def issue(self) -> Path:
        return self.root / "run/issue.d/50-edge-gateway.issue"


@pytest.fixture
def gateway(tmp_path: Path) -> Gateway:
    if shutil.which("ssh-keygen") is None:
        pytest.fail("ssh-keygen is missing: apt-get install openssh-client")
    return Gateway(tmp_path / "gw")


def good_seed(gw: Gateway, district: str = "mapo", gateway_id: str = "gw-007") -> None:
    gw.write_seed(
        GOOD_CONFIG.format(district=district, gateway=gateway_id, host="broker.city.example", port=8883),
        {
            "tls/ca.pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "mqtt-password": "s3cret\n",
        },
    )


def test_good_seed_is_installed_on_the_data_partition_and_removed_from_boot(gateway: Gateway) -> None:
    good_seed(gateway)
    (gateway.seed / "authorized_keys").write_text("ssh-ed25519 AAAAC3Nza technician\n", encoding="utf-8")

    result = gateway.firstboot()

    assert result.returncode == 0, result.stdout + result.stderr
    assert gateway.status().startswith("OK ")
    assert "district=mapo gateway=gw-007 cameras=cam-1" in gateway.status()
    assert "[gateway]" in (gateway.config_dir / "config.toml").read_text(encoding="utf-8")
    assert (gateway.config_dir / "mqtt-password").read_text(encoding="utf-8") == "s3cret\n"
    assert (gateway.config_dir / "tls/ca.pem").is_file()
    assert (gateway.data / "ssh/authorized_keys/root").read_text(encoding="utf-8").startswith("ssh-ed25519")
    assert (gateway.data / "ssh/ssh_host_ed25519_key").is_file()
    # No secret stays on the FAT partition, and the login prompt carries no failure notice.
    assert sorted(p.name for p in gateway.seed.iterdir()) == ["status.txt"]
    assert not gateway.issue().exists()


def test_missing_seed_is_reported_where_a_technician_looks(gateway: Gateway) -> None:
    result = gateway.firstboot()

    assert result.returncode == 1
    assert gateway.status().startswith("FAILED ")
    assert "no seed: edge-agent/config.toml is missing" in gateway.status()
    assert "no seed" in result.stdout  # the journal and the console
    assert "NOT provisioned" in gateway.issue().read_text(encoding="utf-8")
    assert not (gateway.config_dir / "config.toml").exists()
    # Host keys are made anyway, so SSH comes up for the technician.
    assert (gateway.data / "ssh/ssh_host_ed25519_key").is_file()


def test_invalid_config_names_the_bad_key_and_installs_nothing(gateway: Gateway) -> None:
    gateway.write_seed('[gateway]\ndistrict = "Mapo District"\nid = "gw-1"\n')

    result = gateway.firstboot()

    assert result.returncode == 1
    status = gateway.status()
    assert status.startswith("FAILED ")
    assert "the agent stays stopped until the seed is fixed" in status
    assert "gateway.district" in status
    assert "Mapo District" in status
    assert not (gateway.config_dir / "config.toml").exists()
    assert (gateway.seed / "config.toml").exists(), "a rejected seed stays for the technician to fix"


def test_file_named_by_the_config_must_come_with_the_seed(gateway: Gateway) -> None:
    gateway.write_seed(
        GOOD_CONFIG.format(district="mapo", gateway="gw-1", host="b", port=8883), {"mqtt-password": "x\n"}
    )

    result = gateway.firstboot()

    assert result.returncode == 1
    assert "mqtt.tls.ca_file names /etc/edge-agent/tls/ca.pem, but the seed has no edge-agent/tls/ca.pem" in (
        gateway.status()
    )


def test_bad_new_seed_keeps_the_running_config(gateway: Gateway) -> None:
    good_seed(gateway)
    assert gateway.firstboot().returncode == 0
    before = (gateway.config_dir / "config.toml").read_text(encoding="utf-8")
    gateway.write_seed("[gateway\n")

    result = gateway.firstboot()

    assert result.returncode == 1
    assert "keeps running with its previous config" in gateway.status()
    assert (gateway.config_dir / "config.toml").read_text(encoding="utf-8") == before


def test_no_new_seed_after_provisioning_is_quiet(gateway: Gateway) -> None:
    good_seed(gateway)
    assert gateway.firstboot().returncode == 0
    first_status = gateway.status()

    result = gateway.firstboot()

    assert result.returncode == 0
    assert "running as district=mapo gateway=gw-007" in result.stdout
    assert gateway.status() == first_status


# -- the image, booted -------------------------------------------------------------------------


class Vm:
    """The image booted under qemu-system-x86_64 (TCG), with SSH forwarded to the host."""

    def __init__(self, image: Path, workdir: Path, key: Path) -> None:
        self.serial = workdir / "serial.log"
        self.key = key
        self.ssh_port = free_port()
        self._out = (workdir / "qemu.out").open("wb")
        self.process = subprocess.Popen(
            [
                str(FIRMWARE / "qemu.sh"),
                str(image),
                "--serial",
                str(self.serial),
                "--ssh-port",
                str(self.ssh_port),
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-i", str(self.key), "-p", str(self.ssh_port), "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=error",
             "-o", "ConnectTimeout=20", "root@127.0.0.1", command],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def run(self, command: str) -> str:
        """Output of a command that must succeed on the gateway."""
        result = self.ssh(command)
        assert result.returncode == 0, f"{command}: {result.stderr}\n{self.console()}"
        return result.stdout

    def console(self, lines: int = 60) -> str:
        if not self.serial.exists():
            return "(no serial output)"
        text = self.serial.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(20)
        self._out.close()


def onlines(messages: list[Received], topic: str) -> list[dict[str, object]]:
    out = []
    for m in messages:
        if m.topic == topic and m.payload:
            body = json.loads(m.payload)
            if body.get("state") == "online":
                out.append(body)
    return out


@pytest.fixture(scope="module")
def amd64_image() -> Path:
    """The amd64 image from firmware/build.sh, rebuilt only when its inputs changed."""
    if os.geteuid() != 0:
        pytest.fail("the image build needs root (debootstrap, chroot)")
    result = subprocess.run(
        [str(FIRMWARE / "build.sh"), "--arch", "amd64", "--reuse"],
        capture_output=True, text=True, timeout=45 * 60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def booted(
    amd64_image: Path, tmp_path: Path, broker: Broker, unique_gateway: str
) -> Iterator[tuple[Vm, Subscriber, str]]:
    image = tmp_path / "gateway.img"
    subprocess.run(["cp", "--sparse=always", str(amd64_image), str(image)], check=True)
    os.truncate(image, image.stat().st_size + 512 * 1024 * 1024)  # a bigger "card": the data partition grows
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "config.toml").write_text(
        f'[gateway]\ndistrict = "firmware"\nid = "{unique_gateway}"\n\n'
        f'[mqtt]\nhost = "10.0.2.2"\nport = {broker.port}\n\n'
        '[[cameras]]\nid = "cam-1"\nsource = "synthetic:street"\ndetect_fps = 2\n',
        encoding="utf-8",
    )
    shutil.copy(key.with_suffix(".pub"), seed / "authorized_keys")
    subprocess.run([str(FIRMWARE / "seed-image.sh"), str(image), str(seed)], check=True, capture_output=True)
    topic = f"cctv/v1/firmware/{unique_gateway}/status"
    sub = Subscriber(broker.host, broker.port, topic)
    vm = Vm(image, tmp_path, key)
    try:
        yield vm, sub, topic
    finally:
        vm.stop()
        sub.close()


@pytest.fixture
def unseeded(amd64_image: Path, tmp_path: Path) -> Iterator[Vm]:
    image = tmp_path / "gateway.img"
    subprocess.run(["cp", "--sparse=always", str(amd64_image), str(image)], check=True)
    vm = Vm(image, tmp_path, tmp_path / "no-key")
    try:
        yield vm
    finally:
        vm.stop()


@pytest.mark.slow
def test_image_without_seed_says_why_and_stays_reachable(unseeded: Vm) -> None:
    vm = unseeded
    deadline = time.monotonic() + 10 * 60
    while "NOT provisioned" not in vm.console(400) and time.monotonic() < deadline:
        assert vm.process.poll() is None, f"qemu exited; console:\n{vm.console()}"
        time.sleep(2)
    console = vm.console(400)
    assert "edge-agent-firstboot: FAILED: no seed: edge-agent/config.toml is missing" in console, console
    assert "NOT provisioned" in console, "the login prompt repeats the reason"
    # SSH is up with host keys made on this device, for a technician with a seeded key later.
    keys = subprocess.run(
        ["ssh-keyscan", "-p", str(vm.ssh_port), "-t", "ed25519", "127.0.0.1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "ssh-ed25519" in keys.stdout, keys.stderr + console


@pytest.mark.slow
@pytest.mark.broker
def test_image_boots_with_seeded_identity_and_watchdog_restarts_a_hung_agent(
    booted: tuple[Vm, Subscriber, str],
) -> None:
    vm, sub, topic = booted
    t0 = time.monotonic()
    came_online = False
    while not came_online and time.monotonic() - t0 < 12 * 60:
        assert "edge-agent-firstboot: FAILED" not in vm.console(400), f"provisioning failed:\n{vm.console()}"
        assert vm.process.poll() is None, f"qemu exited; console:\n{vm.console()}"
        came_online = sub.wait_for(lambda msgs: bool(onlines(msgs, topic)), timeout=5)
    assert came_online, f"no online status on {topic}; console:\n{vm.console()}"
    boot_s = time.monotonic() - t0
    first = onlines(sub.messages, topic)[0]
    assert first["cameras"] == ["cam-1"]
    print(f"\nboot to online: {boot_s:.0f} s")

    assert vm.run("findmnt -no OPTIONS /").startswith("ro,"), "the root file system is read-only"
    assert vm.run("cat /boot/firmware/edge-agent/status.txt").startswith("OK ")
    assert vm.run("ls /boot/firmware/edge-agent").split() == ["README.txt", "status.txt"], "seed consumed"
    assert vm.run("hostname").strip() == f"firmware-{topic.split('/')[3]}"
    assert vm.run("systemctl is-active edge-agent").strip() == "active"
    assert vm.run("cat /sys/class/watchdog/watchdog0/state").strip() == "active", "hardware watchdog armed"
    assert vm.run("systemctl --failed --no-legend --plain").strip() == "", "no failed units"

    frozen = vm.ssh("kill -STOP $(systemctl show -p MainPID --value edge-agent)")
    assert frozen.returncode == 0, frozen.stderr
    t1 = time.monotonic()
    restarted = sub.wait_for(
        lambda msgs: any(b["started_at"] != first["started_at"] for b in onlines(msgs, topic)), timeout=6 * 60
    )
    assert restarted, f"no new online after SIGSTOP; console:\n{vm.console()}"
    print(f"SIGSTOP to online again: {time.monotonic() - t1:.0f} s")
    journal = vm.ssh("journalctl -u edge-agent --no-pager; systemctl show -p NRestarts --value edge-agent")
    assert "Watchdog timeout" in journal.stdout, journal.stdout[-3000:]
    assert journal.stdout.splitlines()[-1] != "0"
