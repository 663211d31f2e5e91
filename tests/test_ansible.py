"""Fleet management with Ansible (ansible/): the role, the playbooks and the example inventory.

Quick tier: syntax checks, ansible-lint at the production profile, the role's own config tasks
run on this machine for every example gateway (so each rendered config.toml passed the agent's
`check-config` through `validate:`), and the generated broker ACL enforced by a real Mosquitto.

Slow tier (`-m slow`): a minimal Debian bookworm is debootstrapped once into ansible/.cache/
(gitignored), copied, and converged with site.yml over the chroot connection; a second converge
must change nothing. The same root then goes through upgrade, rollback, a failing upgrade that is
rolled back automatically, pruning of old releases and diagnostics.
"""

from __future__ import annotations

import grp
import importlib.util
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_DIR = REPO / "ansible"
INVENTORY = ANSIBLE_DIR / "inventories" / "example" / "hosts.yml"
VAULT_PASS = ANSIBLE_DIR / "inventories" / "example" / "vault-password.example"
EXAMPLE_HOSTS = ("gangnam-gw-001", "gangnam-gw-002", "mapo-gw-001")
PLAYBOOKS = ("site.yml", "upgrade.yml", "rollback.yml", "diagnostics.yml", "broker-acl.yml")
BIN = Path(sys.executable).parent
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = pytest.mark.skipif(
    not (BIN / "ansible-playbook").exists(),
    reason="ansible is not installed in this venv: pip install -e '.[fleet]'",
)

RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Run:
    rc: int
    output: str

    def recap(self, host: str) -> dict[str, int]:
        for m in RECAP.finditer(self.output):
            if m.group(1) == host:
                return {"ok": int(m[2]), "changed": int(m[3]), "unreachable": int(m[4]), "failed": int(m[5])}
        raise AssertionError(f"no PLAY RECAP line for {host}:\n{self.output[-3000:]}")


def clean_env(tmp: Path) -> dict[str, str]:
    """A minimal environment: the chroot connection hands the controller's environment to every
    command in the root, and this machine's CA and pip variables would point at files there."""
    return {
        "PATH": f"{BIN}:{SYSTEM_PATH}",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-local"),
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
    }


def playbook(
    tmp: Path,
    book: str | Path,
    *args: str,
    inventories: tuple[Path, ...] = (INVENTORY,),
    extra: dict[str, Any] | None = None,
    timeout: float = 600,
) -> Run:
    """Run ansible-playbook from ansible/ and return its exit status and combined output."""
    argv = [str(BIN / "ansible-playbook"), "--vault-password-file", str(VAULT_PASS)]
    for inv in inventories:
        argv += ["-i", str(inv)]
    if extra:
        tmp.mkdir(parents=True, exist_ok=True)
        extra_file = tmp / f"extra-{time.monotonic_ns()}.json"
        extra_file.write_text(json.dumps(extra), encoding="utf-8")
        argv += ["-e", f"@{extra_file}"]
    argv += [*args, str(book)]
    proc = subprocess.run(
        argv,
        cwd=ANSIBLE_DIR,
        env=clean_env(tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(proc.returncode, proc.stdout)


# -- quick tier: lint and syntax ---------------------------------------------------------------


@pytest.mark.parametrize("book", PLAYBOOKS)
def test_playbook_passes_syntax_check(tmp_path: Path, book: str) -> None:
    run = playbook(tmp_path, book, "--syntax-check", timeout=120)
    assert run.rc == 0, run.output


def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(BIN / "ansible-lint"), "--profile", "production", "--nocolor"],
        cwd=ANSIBLE_DIR,
        env={**clean_env(tmp_path), "ANSIBLE_LINT_NODEPS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


# -- quick tier: the role renders and validates each example gateway's config ------------------

RENDER_PLAY = """
- name: Run the role's config tasks on this machine
  hosts: gateways
  connection: local
  gather_facts: false
  tasks:
    - name: Render, check and install the config
      ansible.builtin.include_role:
        name: edge_agent
        tasks_from: config
"""


def render_configs(tmp: Path, hosts: tuple[str, ...], extra: dict[str, Any] | None = None) -> Run:
    """The role's tasks/config.yml for `hosts`, into tmp/<host>/etc; `validate:` runs this
    checkout's `edge-agent check-config` through a stand-in release folder."""
    for host in hosts:
        release_bin = tmp / host / "release" / "bin"
        release_bin.mkdir(parents=True, exist_ok=True)
        link = release_bin / "edge-agent"
        if not link.exists():
            link.symlink_to(BIN / "edge-agent")
    book = tmp / "render.yml"
    book.write_text(RENDER_PLAY, encoding="utf-8")
    overrides = {
        "edge_agent_config_dir": f"{tmp}/{{{{ inventory_hostname }}}}/etc",
        "_edge_agent_release_dir": f"{tmp}/{{{{ inventory_hostname }}}}/release",
        "edge_agent_group": grp.getgrgid(os.getgid()).gr_name,
        "edge_agent_manage_services": False,
        **(extra or {}),
    }
    return playbook(tmp, book, "--limit", ",".join(hosts), extra=overrides, timeout=300)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the role's tasks set root ownership: run as root")
needs_agent_cli = pytest.mark.skipif(
    not (BIN / "edge-agent").exists(), reason="the edge-agent console script is not installed in this venv"
)


@needs_root
@needs_agent_cli
def test_example_inventory_renders_configs_the_agent_accepts(tmp_path: Path) -> None:
    run = render_configs(tmp_path, EXAMPLE_HOSTS)
    assert run.rc == 0, run.output
    for host in EXAMPLE_HOSTS:
        etc = tmp_path / host / "etc"
        config = tomllib.loads((etc / "config.toml").read_text(encoding="utf-8"))
        district, gateway = host.split("-", 1)
        assert config["gateway"]["district"] == district
        assert config["gateway"]["id"] == gateway
        assert config["mqtt"]["username"] == host
        assert config["mqtt"]["password_file"] == str(etc / "mqtt-password")
        assert config["mqtt"]["tls"]["ca_file"] == str(etc / "tls" / "ca.pem")
        assert "password" not in config["mqtt"]
        # The vault was decrypted into a file only the agent's group can read.
        secret = (etc / "mqtt-password").read_text(encoding="utf-8")
        assert secret.strip()
        assert "ANSIBLE_VAULT" not in secret
        assert (etc / "mqtt-password").stat().st_mode & 0o777 == 0o640
        assert (etc / "config.toml").stat().st_mode & 0o777 == 0o640
        assert (etc / "tls" / "ca.pem").read_text(encoding="utf-8").startswith("-----BEGIN CERTIFICATE-----")
        # check-config itself agrees with the installed file.
        check = subprocess.run(
            [str(BIN / "edge-agent"), "check-config", str(etc / "config.toml")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check.stderr
    gangnam = tomllib.loads((tmp_path / "gangnam-gw-001" / "etc" / "config.toml").read_text(encoding="utf-8"))
    cam = gangnam["cameras"][0]
    assert cam["geo"] == {"lat": 37.49794, "lon": 127.02762, "heading_deg": 45, "fov_deg": 90, "range_m": 60}
    assert cam["privacy_masks"] == [[[0.7, 0.0], [1.0, 0.0], [1.0, 0.35], [0.7, 0.35]]]
    assert cam["motion"] == {"threshold": 30, "min_area": 0.001}
    assert [c["id"] for c in gangnam["cameras"]] == ["cam-1", "cam-2"]


@needs_root
@needs_agent_cli
def test_awkward_strings_survive_rendering_exactly(tmp_path: Path) -> None:
    name = 'Exit "11" \\ back\tslash 강남역 🚇 [x] = # not a comment'
    source = 'rtsp://192.0.2.5:554/a path?x=1&y="2"'
    run = render_configs(
        tmp_path,
        ("mapo-gw-001",),
        {
            "edge_agent_gateway_name": name,
            "edge_agent_cameras": [{"id": "cam-9", "name": name, "source": source, "detect_fps": 2.5}],
        },
    )
    assert run.rc == 0, run.output
    config = tomllib.loads((tmp_path / "mapo-gw-001" / "etc" / "config.toml").read_text(encoding="utf-8"))
    assert config["gateway"]["name"] == name
    assert config["cameras"] == [{"id": "cam-9", "name": name, "source": source, "detect_fps": 2.5}]


@needs_root
@needs_agent_cli
def test_config_the_agent_rejects_never_replaces_the_old_one(tmp_path: Path) -> None:
    assert render_configs(tmp_path, ("gangnam-gw-002",)).rc == 0
    installed = tmp_path / "gangnam-gw-002" / "etc" / "config.toml"
    before = installed.read_bytes()
    bad = [{"id": "Cam 1", "source": "usb:0"}, {"id": "cam-2", "source": "usb:1", "fps": 5}]
    run = render_configs(tmp_path, ("gangnam-gw-002",), {"edge_agent_cameras": bad})
    assert run.rc != 0
    assert "failed to validate" in run.output
    assert "cameras[0].id" in run.output  # check-config's own words reach the operator
    assert "cameras[1].fps" in run.output
    assert installed.read_bytes() == before


def test_preflight_refuses_ids_the_agent_would_reject(tmp_path: Path) -> None:
    book = tmp_path / "preflight.yml"
    book.write_text(
        RENDER_PLAY.replace("tasks_from: config", "tasks_from: preflight").replace(
            "gather_facts: false", "gather_facts: true"
        ),
        encoding="utf-8",
    )
    run = playbook(
        tmp_path, book, "--limit", "mapo-gw-001", extra={"edge_agent_gateway_id": "GW 1"}, timeout=300
    )
    assert run.rc != 0
    assert '"GW 1"' in run.output
    assert "must match" in run.output


# -- quick tier: rollout planning ----------------------------------------------------------------

WAVES_PLAY = """
- name: Same host order and serial as upgrade.yml
  hosts: "{{ _edge_agent_waves | flatten }}"
  serial: "{{ _edge_agent_waves | map('length') | list }}"
  gather_facts: false
  vars:
    _edge_agent_waves: >-
      {{ groups | edge_agent_rollout_waves(edge_agent_rollout_batch | default(2),
                                           districts=edge_agent_rollout_districts | default(none)) }}
  tasks:
    - name: Print the batch
      ansible.builtin.debug:
        msg: "BATCH {{ ansible_play_batch | join(',') }}"
      run_once: true
"""


def test_upgrade_batches_take_a_few_gateways_of_every_district(tmp_path: Path) -> None:
    lines = ["all:", "  children:", "    gateways:", "      children:"]
    for district, count in (("a", 5), ("b", 2), ("c", 3)):
        lines += [f"        district_{district}:", "          hosts:"]
        lines += [f"            {district}-gw-{i}:" for i in range(count)]
    inventory = tmp_path / "fleet.yml"
    inventory.write_text("\n".join(lines) + "\n", encoding="utf-8")
    upgrade = (ANSIBLE_DIR / "upgrade.yml").read_text(encoding="utf-8")
    assert "edge_agent_rollout_waves(edge_agent_rollout_batch | default(2)," in upgrade  # same plan
    book = tmp_path / "waves.yml"
    book.write_text(WAVES_PLAY, encoding="utf-8")

    def batches(extra: dict[str, Any]) -> list[list[str]]:
        run = playbook(tmp_path, book, "-c", "local", inventories=(inventory,), extra=extra, timeout=120)
        assert run.rc == 0, run.output
        return [m.split(",") for m in re.findall(r'"BATCH ([^"]*)"', run.output)]

    assert batches({}) == [
        ["a-gw-0", "a-gw-1", "b-gw-0", "b-gw-1", "c-gw-0", "c-gw-1"],
        ["a-gw-2", "a-gw-3", "c-gw-2"],
        ["a-gw-4"],
    ]
    assert batches({"edge_agent_rollout_batch": 3, "edge_agent_rollout_districts": ["c"]}) == [
        ["c-gw-0", "c-gw-1", "c-gw-2"]
    ]


def _rollout_module() -> Any:
    spec = importlib.util.spec_from_file_location("rollout", ANSIBLE_DIR / "filter_plugins" / "rollout.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rollout_plan_covers_gateways_outside_districts_and_names_bad_settings() -> None:
    rollout = _rollout_module()
    groups = {"gateways": ["a-1", "a-2", "lost"], "district_a": ["a-1", "a-2"], "ungrouped": []}
    assert rollout.rollout_waves(groups, 1) == [["a-1", "lost"], ["a-2"]]
    with pytest.raises(rollout.RolloutError, match="at least 1, got 0"):
        rollout.rollout_waves(groups, 0)
    with pytest.raises(rollout.RolloutError, match="whole number, got 'two'"):
        rollout.rollout_waves(groups, "two")
    with pytest.raises(rollout.RolloutError, match="unknown district"):
        rollout.rollout_waves(groups, 2, districts=["mapo"])
    assert rollout.batch_overflow(["a-1", "a-2"], groups, 1) == {"a": 2}


# -- quick tier: the generated broker ACL, enforced by Mosquitto -------------------------------

MOSQUITTO = shutil.which("mosquitto", path=SYSTEM_PATH)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd", path=SYSTEM_PATH)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _client(port: int, user: str, inbox: queue.Queue[tuple[str, bytes]] | None = None) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"t-{user}", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.username_pw_set(user, f"pw-{user}")
    connected: queue.Queue[int] = queue.Queue()
    client.on_connect = lambda _c, _u, _f, reason, _p: connected.put(reason.value)
    if inbox is not None:
        client.on_message = lambda _c, _u, msg: inbox.put((msg.topic, bytes(msg.payload)))
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert connected.get(timeout=10) == 0, f"{user} was refused"
    return client


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[int]:
    """Mosquitto on a free loopback port with the ACL broker-acl.yml renders from the example."""
    if MOSQUITTO is None or MOSQUITTO_PASSWD is None:
        pytest.skip("mosquitto and mosquitto_passwd are needed (Debian: apt-get install mosquitto)")
    acl = tmp_path / "acl.conf"
    run = playbook(tmp_path, "broker-acl.yml", extra={"edge_agent_acl_file": str(acl)}, timeout=120)
    assert run.rc == 0, run.output
    passwd = tmp_path / "passwd"
    passwd.touch(mode=0o600)
    for user in ("platform", *EXAMPLE_HOSTS):
        subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwd), user, f"pw-{user}"], check=True, timeout=30)
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    # As root, mosquitto would drop to its own user, which cannot read the test's private folder.
    stay = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"{stay}listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n",
        encoding="utf-8",
    )
    log = tmp_path / "mosquitto.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None, log.read_text(encoding="utf-8", errors="replace")
                assert time.monotonic() < deadline, "mosquitto did not start listening"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_broker_acl_confines_each_gateway_to_its_root(acl_broker: int) -> None:
    platform_inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
    spy_inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
    platform = _client(acl_broker, "platform", platform_inbox)
    spy = _client(acl_broker, "mapo-gw-001", spy_inbox)
    gateway = _client(acl_broker, "gangnam-gw-001")
    try:
        platform.subscribe("cctv/v1/#", qos=1)
        spy.subscribe("cctv/v1/gangnam/#", qos=1)  # another gateway trying to listen in
        spy.subscribe("cctv/v1/mapo/gw-001/#", qos=1)
        time.sleep(0.3)  # SUBACKs; the marker below proves delivery order, not this pause
        gateway.publish("cctv/v1/mapo/gw-001/cmd", b"forged", qos=1).wait_for_publish(5)
        gateway.publish("cctv/v1/gangnam/gw-002/status", b"forged", qos=1).wait_for_publish(5)
        gateway.publish("cctv/v1/gangnam/gw-001/status", b"own", qos=1).wait_for_publish(5)
        gateway.publish("cctv/v1/gangnam/gw-001/marker", b"end", qos=1).wait_for_publish(5)
        seen: list[tuple[str, bytes]] = []
        while not seen or seen[-1][0] != "cctv/v1/gangnam/gw-001/marker":
            seen.append(platform_inbox.get(timeout=10))
        assert seen == [("cctv/v1/gangnam/gw-001/status", b"own"), ("cctv/v1/gangnam/gw-001/marker", b"end")]
        assert spy_inbox.empty()  # neither the forged cmd nor gangnam's traffic reached mapo
    finally:
        for client in (platform, spy, gateway):
            client.loop_stop()
            client.disconnect()


# -- slow tier: converge a real Debian root over the chroot connection ---------------------------

SUITE = "bookworm"
CACHE = Path(os.environ.get("EDGE_AGENT_TEST_CACHE", ANSIBLE_DIR / ".cache"))
MIRROR = os.environ.get("EDGE_AGENT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
HOST = "gangnam-gw-001"


def _debootstrapped_base() -> Path:
    """A minimal Debian with what every gateway image has (python3 for Ansible, systemd), built once."""
    base = CACHE / f"debian-{SUITE}"
    if (base / ".complete").exists():
        return base
    if os.geteuid() != 0:
        pytest.skip("debootstrap and chroot need root")
    debootstrap = shutil.which("debootstrap", path=SYSTEM_PATH)
    if debootstrap is None:
        pytest.skip("debootstrap is not installed (Debian: apt-get install debootstrap)")
    partial = base.with_name(base.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [debootstrap, "--variant=minbase", "--include=python3,systemd", SUITE, str(partial), MIRROR],
        check=True,
        timeout=1500,
        stdout=subprocess.DEVNULL,
    )
    (partial / ".complete").write_text(f"{SUITE} {MIRROR}\n", encoding="utf-8")
    shutil.rmtree(base, ignore_errors=True)
    partial.rename(base)
    return base


def _pip_settings(root: Path) -> dict[str, Any]:
    """This machine's pip index and CA settings, replicated into the root through role variables."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    conf: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        conf[key.split(".", 1)[-1]] = value.strip().strip("'\"")
    index = os.environ.get("PIP_INDEX_URL") or conf.get("index-url", "")
    extras = (os.environ.get("PIP_EXTRA_INDEX_URL") or conf.get("extra-index-url", "")).split()
    cert = os.environ.get("PIP_CERT") or conf.get("cert", "")
    settings: dict[str, Any] = {
        "edge_agent_pip_index_url": index if index.startswith(("http://", "https://")) else "",
        "edge_agent_pip_extra_args": [
            arg
            for url in extras
            if url.startswith(("http://", "https://"))
            for arg in ("--extra-index-url", url)
        ],
        "edge_agent_pip_environment": {
            name: os.environ[name] for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY") if name in os.environ
        },
    }
    if cert and Path(cert).is_file():
        (root / "etc/ssl").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cert, root / "etc/ssl/controller-ca.pem")
        settings["edge_agent_pip_environment"]["PIP_CERT"] = "/etc/ssl/controller-ca.pem"
    return settings


def _build_wheel(out: Path, version: str | None) -> str:
    """Build the agent's wheel from a copy of this checkout, optionally stamped with `version`."""
    src = out / f"src-{version or 'head'}"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(REPO / "agent", src / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    init = src / "agent" / "__init__.py"
    text = init.read_text(encoding="utf-8")
    if version is not None:
        text = re.sub(r'__version__ = "[^"]*"', f'__version__ = "{version}"', text)
        init.write_text(text, encoding="utf-8")
    found = re.search(r'__version__ = "([^"]*)"', text)
    assert found, "agent/__init__.py has no __version__"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out / "wheels"), str(src)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    return found[1]


@dataclass
class Converged:
    root: Path
    work: Path
    inventory: Path
    extra: dict[str, Any]
    versions: tuple[str, str, str]
    first: Run
    second: Run
    seconds: tuple[float, float]

    def run(self, book: str, **more: Any) -> Run:
        return playbook(
            self.work,
            book,
            "--limit",
            HOST,
            inventories=(INVENTORY, self.inventory),
            extra={**self.extra, **more},
        )

    def chroot(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["chroot", str(self.root), *argv],
            env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def link(self, name: str) -> str:
        return os.readlink(self.root / "opt/edge-agent" / name).rsplit("/", 1)[-1]

    def releases(self) -> set[str]:
        return {p.name for p in (self.root / "opt/edge-agent/releases").iterdir()}


@pytest.fixture(scope="module")
def converged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Converged]:
    base = _debootstrapped_base()
    work = tmp_path_factory.mktemp("converge")
    root = work / "root"
    subprocess.run(["cp", "-a", f"{base}/.", str(root)], check=True, timeout=600)
    try:
        shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
        v1 = _build_wheel(work, None)
        v2 = _build_wheel(work, v1 + ".post1")
        v3 = _build_wheel(work, v1 + ".post2")
        inventory = work / "chroot.yml"
        inventory.write_text(
            json.dumps(
                {
                    "all": {
                        "hosts": {
                            HOST: {
                                "ansible_connection": "community.general.chroot",
                                "ansible_host": str(root),
                                "ansible_become": False,
                                "ansible_python_interpreter": "/usr/bin/python3",
                            }
                        }
                    }
                }
            ),
            encoding="utf-8",
        )
        extra = {
            "edge_agent_manage_services": False,
            "edge_agent_wheel_dir": str(work / "wheels"),
            "edge_agent_version": v1,
            **_pip_settings(root),
        }
        state = Converged(root, work, inventory, extra, (v1, v2, v3), Run(0, ""), Run(0, ""), (0.0, 0.0))
        started = time.monotonic()
        state.first = state.run("site.yml")
        middle = time.monotonic()
        state.second = state.run("site.yml")
        state.seconds = (middle - started, time.monotonic() - middle)
        print(f"\nconverge: first {state.seconds[0]:.0f} s, second {state.seconds[1]:.0f} s")
        yield state
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_converge_then_converge_again_changes_nothing(converged: Converged) -> None:
    assert converged.first.rc == 0, converged.first.output[-6000:]
    assert converged.first.recap(HOST)["changed"] > 0
    assert converged.second.rc == 0, converged.second.output[-6000:]
    recap = converged.second.recap(HOST)
    changed = re.findall(r"^changed: \[.*$", converged.second.output, re.MULTILINE)
    assert recap["changed"] == 0, changed
    assert recap["failed"] == 0


@pytest.mark.slow
def test_installed_agent_accepts_its_config_inside_the_root(converged: Converged) -> None:
    assert converged.first.rc == 0
    check = converged.chroot(
        "/opt/edge-agent/current/bin/edge-agent", "check-config", "/etc/edge-agent/config.toml"
    )
    assert check.returncode == 0, check.stderr
    assert "cctv/v1/gangnam/gw-001" in check.stdout
    imports = converged.chroot(
        "/opt/edge-agent/current/bin/python", "-c", "import cv2, numpy, paho.mqtt, agent"
    )
    assert imports.returncode == 0, imports.stderr


@pytest.mark.slow
def test_root_has_user_layout_permissions_and_enabled_unit(converged: Converged) -> None:
    assert converged.first.rc == 0
    passwd = converged.chroot("getent", "passwd", "edge-agent").stdout.strip().split(":")
    assert passwd[5] == "/var/lib/edge-agent"
    assert passwd[6] == "/usr/sbin/nologin"
    assert int(passwd[2]) < 1000  # a system user
    assert "edge-agent" in converged.chroot("id", "-nG", "edge-agent").stdout.split()
    assert "video" in converged.chroot("id", "-nG", "edge-agent").stdout.split()
    modes = converged.chroot(
        "stat",
        "-c",
        "%n %U:%G %a",
        "/etc/edge-agent/config.toml",
        "/etc/edge-agent/mqtt-password",
        "/var/lib/edge-agent",
        "/opt/edge-agent/releases",
    ).stdout.splitlines()
    assert modes == [
        "/etc/edge-agent/config.toml root:edge-agent 640",
        "/etc/edge-agent/mqtt-password root:edge-agent 640",
        "/var/lib/edge-agent edge-agent:edge-agent 750",
        "/opt/edge-agent/releases root:root 755",
    ]
    assert converged.link("current") == converged.versions[0]
    wants = converged.root / "etc/systemd/system/multi-user.target.wants/edge-agent.service"
    assert os.readlink(wants) == "/etc/systemd/system/edge-agent.service"


@pytest.mark.slow
def test_unit_passes_systemd_analyze(converged: Converged) -> None:
    analyze = shutil.which("systemd-analyze", path=SYSTEM_PATH)
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = "/etc/systemd/system/edge-agent.service"
    text = (converged.root / unit.lstrip("/")).read_text(encoding="utf-8")
    for line in (
        "Type=notify",
        "WatchdogSec=30",
        "NotifyAccess=main",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/edge-agent",
        "DevicePolicy=closed",
        "User=edge-agent",
    ):
        assert line in text.splitlines()
    verify = subprocess.run(
        [analyze, "verify", f"--root={converged.root}", unit],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert "edge-agent.service" not in verify.stdout + verify.stderr  # no warning about our unit
    # The threshold is on systemd's internal 0-100 scale: 30 is an exposure of 3.0 ("OK" or better).
    security = subprocess.run(
        [
            analyze,
            "security",
            "--offline=yes",
            f"--root={converged.root}",
            "--threshold=30",
            "edge-agent.service",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert security.returncode == 0, security.stdout[-3000:] + security.stderr


@pytest.mark.slow
def test_diagnostics_collects_outbox_depth_and_audit_verdict(converged: Converged) -> None:
    assert converged.first.rc == 0
    seed = (
        "from pathlib import Path\n"
        "from agent.commands.audit import AuditLog\n"
        "from agent.mqtt.outbox import Outbox, OutboxMessage\n"
        "log = AuditLog.in_data_dir('/var/lib/edge-agent')\n"
        "for n in range(3):\n"
        "    log.append({'id': f'c{n}', 'cmd': 'snapshot', 'camera': 'cam-1', 'outcome': 'ok'})\n"
        "log.close()\n"
        "box = Outbox(Path('/var/lib/edge-agent/outbox.sqlite'))\n"
        "for n in range(4):\n"
        "    box.put(OutboxMessage('cctv/v1/gangnam/gw-001/cam/cam-1/event', b'{}', kind='event'))\n"
        "box.put(OutboxMessage('cctv/v1/gangnam/gw-001/telemetry', b'{}', kind='telemetry'))\n"
        "box.close()\n"
    )
    seeded = converged.chroot("/opt/edge-agent/current/bin/python", "-c", seed)
    assert seeded.returncode == 0, seeded.stderr

    def collect(name: str) -> Path:
        out = converged.work / name
        run = converged.run("diagnostics.yml", edge_agent_diagnostics_root=str(out))
        assert run.rc == 0, run.output[-6000:]
        (stamp,) = list(out.iterdir())
        return stamp / HOST

    folder = collect("diag-1")
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    (outbox,) = report["outbox"]
    assert outbox["depth"] == 5
    assert outbox["by_kind"] == {"event": 4, "telemetry": 1}
    assert report["audit"]["ok"] is True
    assert report["audit"]["records"] == 3
    assert tomllib.loads((folder / "config.toml").read_text(encoding="utf-8"))["gateway"]["id"] == "gw-001"
    assert converged.versions[0] in (folder / "version.txt").read_text(encoding="utf-8")
    assert {"journal.txt", "service.txt", "releases.txt", "pip-freeze.txt", "check-config.txt"} <= {
        p.name for p in folder.iterdir()
    }

    audit = converged.root / "var/lib/edge-agent/audit/audit.log"
    lines = audit.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1] = lines[1].replace('"snapshot"', '"stream.start"')
    audit.write_text("".join(lines), encoding="utf-8")
    tampered = json.loads((collect("diag-2") / "report.json").read_text(encoding="utf-8"))
    assert tampered["audit"]["ok"] is False
    assert tampered["audit"]["first_bad_line"] == 2


@pytest.mark.slow
def test_upgrade_rollback_auto_rollback_and_pruning(converged: Converged) -> None:
    assert converged.second.rc == 0
    v1, v2, v3 = converged.versions

    up = converged.run("upgrade.yml", edge_agent_version=v2)
    assert up.rc == 0, up.output[-6000:]
    assert (converged.link("current"), converged.link("previous")) == (v2, v1)
    check = converged.chroot("/opt/edge-agent/current/bin/edge-agent", "--version")
    assert v2 in check.stdout + check.stderr

    back = converged.run("rollback.yml", edge_agent_version=v2)
    assert back.rc == 0, back.output[-6000:]
    assert (converged.link("current"), converged.link("previous")) == (v1, v2)

    # A gateway that is not healthy on the new release is rolled back and the rollout stops.
    failed = converged.run("upgrade.yml", edge_agent_version=v2, edge_agent_health_expected_version="9.9.9")
    assert failed.rc != 0
    assert f"rolled back to {v1}" in failed.output
    assert "No further gateways will be upgraded" in failed.output
    assert (converged.link("current"), converged.link("previous")) == (v1, v2)

    up = converged.run("upgrade.yml", edge_agent_version=v3)
    assert up.rc == 0, up.output[-6000:]
    assert (converged.link("current"), converged.link("previous")) == (v3, v1)
    assert converged.releases() == {v1, v3}  # v2 pruned: two releases on the box

    # A config the new release rejects stops the rollout before anything is switched.
    config = converged.root / "etc/edge-agent/config.toml"
    before = config.read_bytes()
    bad = converged.run(
        "upgrade.yml", edge_agent_version=v3, edge_agent_cameras=[{"id": "cam-1", "source": "ftp://x"}]
    )
    assert bad.rc != 0
    assert "the release before it was left in place" in bad.output
    assert config.read_bytes() == before
    assert (converged.link("current"), converged.link("previous")) == (v3, v1)
