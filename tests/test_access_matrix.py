"""Access per agency for every command, generated from the command table, on a running agent.

For each command in `agent.commands.COMMANDS` an agency that is not allowed (`fire`) sends it to an
`edge-agent run` subprocess over a real broker. Commands scoped to a camera or to admins must be
answered `forbidden`, leave a `forbidden` audit record on `{root}/audit`, publish no imagery for
the request, and still work for the allowed agency (`police`), so the refusal is about access
and not about a bad argument. `locate` (filtered per camera) must list nothing the agency may not
see. Commands open to any agency must not be audited, i.e. expose no imagery and change nothing.
A command added to the table without a case here fails `test_every_command_has_a_case`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from agent.clock import iso
from agent.commands import COMMANDS
from agent.sdk.client import CommandFailed, PlatformClient
from tests.conftest import Broker
from tests.harness import GatewayRun, Received, wait_answering, wait_frames
from tests.onvif_fake import FakeOnvifCamera

pytestmark = pytest.mark.broker

ALLOWED, DENIED = "police", "fire"
GEO = (37.5, 127.0)
SEEN_BY_CAM_1 = (37.5, 127.0005)  # ~44 m east of cam-1, inside its view
CAMERAS = f"""
[[cameras]]
id = "cam-1"
source = "synthetic:street?fps=10&seed=7&width=320&height=180"
allowed_agencies = ["{ALLOWED}"]
geo = {{ lat = {GEO[0]}, lon = {GEO[1]}, heading_deg = 90.0, fov_deg = 90.0, range_m = 200.0 }}
buffer = {{ pre_event_s = 5.0, fps = 10.0 }}
ptz_agencies = ["{ALLOWED}"]
"""
ONVIF = 'onvif = {{ url = "{url}", username = "{user}", password_file = "{pw}" }}\n'


@dataclass
class Site:
    """The running agent, the platform's view of it, and one client per agency."""

    run: GatewayRun
    allowed: PlatformClient
    denied: PlatformClient
    clip_id: str = ""
    sessions: list[str] = field(default_factory=list)

    def session(self) -> str:
        """A live stream session opened by the allowed agency."""
        started = self.allowed.request("stream.start", {"camera": "cam-1", "duration_s": 60, "max_width": 64})
        self.sessions.append(str(started["session"]))
        return self.sessions[-1]

    def span(self) -> dict[str, str]:
        now = time.time()
        return {"camera": "cam-1", "start": iso(now - 2.0), "end": iso(now - 0.5)}

    def published_for(self, request_id: str) -> list[Received]:
        """Messages published for the request: imagery topics carry its id (snapshot/{id})."""
        return [m for m in self.run.sub.messages if request_id in m.topic]

    def audit(self, request_id: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        def records(ms: list[Received]) -> list[dict[str, Any]]:
            return [r for m in ms if m.topic.endswith("/audit") for r in [m.json()] if r["id"] == request_id]

        self.run.sub.wait_for(lambda ms: bool(records(ms)), timeout)
        return records(self.run.sub.messages)


Args = Callable[[Site], dict[str, Any]]
Outcome = Literal["forbidden", "filtered", "open"]
CASES: dict[str, tuple[Outcome, Args]] = {
    "ping": ("open", lambda site: {}),
    "describe": ("open", lambda site: {}),
    "config.get": ("open", lambda site: {}),
    "config.set": ("forbidden", lambda site: {"streams": {"max_sessions": 3}}),
    "snapshot": ("forbidden", lambda site: {"camera": "cam-1", "max_width": 64}),
    "locate": ("filtered", lambda site: {"lat": SEEN_BY_CAM_1[0], "lon": SEEN_BY_CAM_1[1]}),
    "stream.start": ("forbidden", lambda site: {"camera": "cam-1", "max_width": 64, "duration_s": 5}),
    "stream.renew": ("forbidden", lambda site: {"session": site.session(), "duration_s": 30}),
    "stream.stop": ("forbidden", lambda site: {"session": site.session()}),
    "clip.export": ("forbidden", lambda site: site.span()),
    "clip.fetch": ("forbidden", lambda site: {"clip_id": site.clip_id, "chunk_bytes": 1024 * 1024}),
    "clip.hold": ("forbidden", lambda site: {**site.span(), "until": iso(time.time() + 3600)}),
    "ptz.move": ("forbidden", lambda site: {"camera": "cam-1", "pan": 0.2, "timeout_s": 0.5}),
    "ptz.stop": ("forbidden", lambda site: {"camera": "cam-1"}),
    "ptz.presets": ("forbidden", lambda site: {"camera": "cam-1"}),
    "ptz.goto_preset": ("forbidden", lambda site: {"camera": "cam-1", "preset": "1"}),
    "ptz.look_at": (
        "forbidden",
        lambda site: {"camera": "cam-1", "lat": SEEN_BY_CAM_1[0], "lon": SEEN_BY_CAM_1[1]},
    ),
}
"""For each command: what an agency not allowed on cam-1 gets (refused, shown nothing, or answered
like anyone), and arguments the allowed agency may use on cam-1 (built when needed)."""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[Site]:
    gateway = "gw-" + uuid.uuid4().hex[:12]
    tmp = tmp_path_factory.mktemp("access")
    dome = FakeOnvifCamera()  # cam-1 is also a PTZ camera, for the ptz.* cases
    (tmp / "onvif-pw").write_text(dome.password)
    cameras = CAMERAS + ONVIF.format(url=dome.url, user=dome.username, pw=tmp / "onvif-pw")
    run = GatewayRun(tmp, broker.host, broker.port, "access", gateway, cameras)
    clients: list[PlatformClient] = []
    try:
        for agency in (ALLOWED, DENIED):
            clients.append(PlatformClient(broker.host, broker.port, run.root, agency=agency, operator="op-9"))
            clients[-1].connect()
        s = Site(run, allowed=clients[0], denied=clients[1])
        wait_answering(s.allowed)
        wait_frames(s.allowed, "cam-1")
        time.sleep(max(0.0, 2.5 - s.allowed.ping()["uptime_s"]))  # some seconds in the buffer
        s.clip_id = str(s.allowed.request("clip.export", s.span(), timeout=60)["clip_id"])
        yield s
    finally:
        for c in clients:
            c.close()
        run.close()
        dome.close()


def test_every_command_has_a_case() -> None:
    assert sorted(CASES) == sorted(COMMANDS), "give every command of agent.commands.COMMANDS a case here"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_agency_not_allowed(site: Site, name: str) -> None:
    spec = COMMANDS[name]
    if name not in CASES:
        pytest.fail(f"command {name!r} has no access case in CASES")
    outcome, make_args = CASES[name]
    args = make_args(site)
    rid = f"deny-{uuid.uuid4().hex[:12]}"
    if outcome == "forbidden":
        with pytest.raises(CommandFailed) as refused:
            site.denied.request(name, args, timeout=10, request_id=rid)
        assert refused.value.code == "forbidden", refused.value
        records = site.audit(rid)
        expected_camera = None if spec.access == "admin" else "cam-1"
        assert [(r["cmd"], r["camera"], r["outcome"], r["requester"]["agency"]) for r in records] == [
            (name, expected_camera, "forbidden", DENIED)
        ]
        assert site.published_for(rid) == []
        # The same request from an allowed agency succeeds: the refusal was about access (and for
        # stream.renew/stop, the session the refused request named is still there).
        if spec.access == "admin":
            admin = PlatformClient(
                site.allowed.host, site.allowed.port, site.run.root, agency="admin", operator="op-0"
            )
            with admin.connect() as c:
                assert isinstance(c.request(name, args, timeout=10), dict)
        else:
            assert isinstance(site.allowed.request(name, args, timeout=30), dict)
    elif outcome == "filtered":
        assert spec.access == "per_camera", spec
        result = site.denied.request(name, args, timeout=10, request_id=rid)
        assert result == {"cameras": []}
        assert site.published_for(rid) == []
        shown = site.allowed.request(name, args, timeout=10)
        assert [hit["camera"] for hit in shown["cameras"]] == ["cam-1"]
    else:
        assert spec.access == "any", f"{name} has an access rule: say what a foreign agency gets"
        assert not spec.audited, f"{name} exposes imagery or changes state, so it needs an access rule"
        assert isinstance(site.denied.request(name, args, timeout=10, request_id=rid), dict)
        time.sleep(0.2)
        assert site.audit(rid, timeout=0.3) == []
