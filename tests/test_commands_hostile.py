"""Commands from a hostile or buggy platform (issue 13), in-process against the real dispatcher.

Each test is the regression test of one defect: what the platform gets back, what the gateway
publishes, what lands in the audit log (real file) and in the reply store (real SQLite), and
what the agent logs. Requests go through `Dispatcher.handle` exactly as the command server
hands them over.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.clock import iso
from agent.commands.audit import AuditLog, verify
from agent.commands.dispatcher import Dispatcher
from agent.commands.limits import RateLimits
from agent.commands.models import CommandError
from agent.commands.streams import StreamManager
from agent.config import parse_config
from tests.test_commands_dispatcher import NOW, RESP, ROOT, raw, req
from tests.test_commands_gateway import FakeGateway, base_config


class Clock:
    """A settable clock, for the wall clock (issued_at, reply windows) and the rate limiter."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Agent:
    """A dispatcher over the fake gateway with its real audit log and reply store in `tmp`."""

    def __init__(self, tmp: Path, gw: FakeGateway | None = None, **kw: Any) -> None:
        self.tmp = tmp
        self.gw = gw or FakeGateway(parse_config(base_config(tmp)))
        self.audit = AuditLog.in_data_dir(tmp)
        self.streams = StreamManager(self.gw)
        self.wall = Clock(NOW)
        self.mono = Clock(1000.0)
        kw.setdefault("state_dir", tmp / "state")
        self.d = Dispatcher(
            self.gw, self.audit, streams=self.streams, clock=self.wall, monotonic=self.mono, **kw
        )

    def handle(
        self, body: object, topic: str | None = RESP, corr: bytes | None = b"c", **kw: Any
    ) -> dict[str, Any] | None:
        out = self.d.handle(body if isinstance(body, bytes) else raw(body), topic, corr, **kw)
        return None if out is None else dict(json.loads(out[1]))

    def code(self, body: object, **kw: Any) -> str:
        reply = self.handle(body, **kw)
        assert reply is not None, "expected a reply"
        return "ok" if reply["ok"] else str(reply["error"]["code"])

    def audit_lines(self) -> list[dict[str, Any]]:
        text = self.audit.path.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines()]

    def snapshots(self, rid: str) -> int:
        return len(self.gw.on(f"/snapshot/{rid}"))

    def close(self) -> None:
        self.d.close()
        self.streams.stop()
        self.audit.close()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path)
    yield a
    a.close()


def as_agency(body: dict[str, Any], agency: str) -> dict[str, Any]:
    return {**body, "requester": {**body["requester"], "agency": agency}}


# -- item 13: `..` in an id -------------------------------------------------------------------


@pytest.mark.parametrize("rid", ["a..b", "x...", "1..", "req..42"])
def test_ids_with_two_dots_in_a_row_are_refused(agent: Agent, rid: str) -> None:
    reply = agent.handle(req("snapshot", {"camera": "cam-1"}, id=rid))
    assert reply is not None
    assert reply["error"]["code"] == "bad_request"
    assert reply["error"]["message"].startswith("id")
    assert agent.snapshots(rid) == 0


@pytest.mark.parametrize("rid", ["a.b", "a.b.c", "x.", "01HZX3.v2:part-1"])
def test_ids_with_single_dots_still_pass(agent: Agent, rid: str) -> None:
    assert agent.code(req("ping", id=rid)) == "ok"


# -- item 10: untrusted strings never start a log line ---------------------------------------


def test_newlines_in_request_strings_are_escaped_in_the_log(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    forged = "\n2026-11-24 10:00:00 INFO agent: FORGED"
    bodies: list[bytes] = [
        raw(req("ping" + forged)),  # unknown command
        raw(req("snapshot" + forged, {"camera": "cam-1"}, id="r-2")),
        raw(req("snapshot", {"camera": "cam-9" + forged}, id="r-3")),
        raw(req("ping", id="r-4", reply_to="x/y" + forged)),
        raw({**req("ping", id="r-5"), "requester": {"agency": "police" + forged}}),
        raw({**req("ping", id="r-6" + forged)}),
        raw(as_agency(req("snapshot", {"camera": "cam-1"}, id="r-7"), "fire")),
        b'{"id": "r-8", "cmd": "\\u2028FORGED\\r\\u0085"}',
    ]
    with caplog.at_level(logging.DEBUG):
        for body in bodies:
            agent.handle(body)
            agent.handle(body, topic=f"{ROOT}/reply/x{forged}")
    assert caplog.records
    for record in caplog.records:
        text = record.getMessage()
        for bad in ("\n", "\r", "\u2028", "\u0085"):
            assert bad not in text, text


# -- item 7: a request from the future is audited like an expired one -------------------------


def test_issued_in_the_future_is_refused_and_audited_like_expired(agent: Agent) -> None:
    ahead = req("snapshot", {"camera": "cam-1"}, id="r-ahead", issued_at=iso(NOW + 3600))
    behind = req("snapshot", {"camera": "cam-1"}, id="r-behind", issued_at=iso(NOW - 3600))
    assert agent.code(ahead) == "bad_request"
    assert agent.code(behind) == "expired"
    assert agent.snapshots("r-ahead") == agent.snapshots("r-behind") == 0
    records = [(r["id"], r["cmd"], r["outcome"]) for r in agent.audit_lines()]
    assert records == [("r-ahead", "snapshot", "bad_request"), ("r-behind", "snapshot", "expired")]
    published = [json.loads(p.payload)["id"] for p in agent.gw.on("/audit")]
    assert published == ["r-ahead", "r-behind"]


def test_a_read_only_command_from_the_future_is_refused_without_a_record(agent: Agent) -> None:
    assert agent.code(req("ping", issued_at=iso(NOW + 3600))) == "bad_request"
    assert agent.audit_lines() == []


# -- retained commands -------------------------------------------------------------------------


def test_a_retained_command_is_refused_audited_and_answered(agent: Agent) -> None:
    reply = agent.handle(req("snapshot", {"camera": "cam-1"}), retained=True)
    assert reply is not None
    assert reply["error"]["code"] == "bad_request"
    assert "retained" in reply["error"]["message"]
    assert agent.snapshots("r-1") == 0
    (record,) = agent.audit_lines()
    assert (record["cmd"], record["outcome"], record["requester"]["agency"]) == (
        "snapshot",
        "bad_request",
        "police",
    )


def test_a_retained_read_only_command_is_refused_and_audited_too(agent: Agent) -> None:
    assert agent.code(req("ping", id="r-ret"), retained=True) == "bad_request"
    assert [(r["id"], r["outcome"]) for r in agent.audit_lines()] == [("r-ret", "bad_request")]


def test_a_retained_command_delivered_again_is_not_audited_again(agent: Agent) -> None:
    """Every reconnect redelivers a retained message: the stored refusal answers it."""
    body = req("snapshot", {"camera": "cam-1"})
    first = agent.handle(body, retained=True)
    assert agent.handle(body, retained=True) == first
    assert len(agent.audit_lines()) == 1


# -- item 4: idempotency keyed by requester, persisted, never forgotten inside its window -----


def test_another_agency_reusing_an_id_gets_its_own_answer(agent: Agent) -> None:
    police = req("snapshot", {"camera": "cam-1"}, id="police-1")
    assert agent.code(police) == "ok"
    reply = agent.handle(as_agency(police, "fire"))  # police's id and request, sent by fire
    assert reply is not None
    assert reply["error"]["code"] == "forbidden"
    shared = req("snapshot", {"camera": "cam-2"}, id="shared-1")  # a camera both may see
    assert agent.code(shared) == "ok"
    assert agent.code(as_agency(shared, "fire")) == "ok"
    assert agent.snapshots("police-1") == 1
    assert agent.snapshots("shared-1") == 2  # each agency's request ran once
    records = [(r["requester"]["agency"], r["camera"], r["outcome"]) for r in agent.audit_lines()]
    assert records == [
        ("police", "cam-1", "ok"),
        ("fire", "cam-1", "forbidden"),
        ("police", "cam-2", "ok"),
        ("fire", "cam-2", "ok"),
    ]


def test_a_flood_of_new_ids_does_not_make_an_earlier_id_run_again(agent: Agent) -> None:
    """10,050 pings with new ids, from the same agency and from another: the snapshot id is kept."""
    snap = req("snapshot", {"camera": "cam-2"}, id="snap-1")
    first = agent.handle(snap)
    for i in range(10_050):
        agent.mono.now += 0.001
        agent.d.handle(raw(req("ping", id=f"p-{i}", requester={"agency": "police" if i % 2 else "fire"})))
    assert agent.handle(snap) == first
    assert agent.snapshots("snap-1") == 1
    assert len(agent.audit_lines()) == 1


def test_no_id_is_forgotten_inside_its_window(tmp_path: Path) -> None:
    """Small limits: as many new ids as the limiter lets through in 600 s, and the first still replays."""
    limits = RateLimits(requests_per_s=2.0, requests_burst=20, refusals_per_s=1.0, refusals_burst=5)
    a = Agent(tmp_path, rate_limits=limits)
    try:
        snap = req("snapshot", {"camera": "cam-2"}, id="snap-1", ttl_s=600)
        first = a.handle(snap)
        codes: dict[str, int] = {}
        for i in range(3000):  # 10 requests a second for 300 s; the limiter admits 2 a second
            a.mono.now += 0.1
            a.wall.now += 0.1
            code = a.code(req("ping", id=f"p-{i}", issued_at=iso(a.wall.now)))
            codes[code] = codes.get(code, 0) + 1
        assert codes["ok"] >= 600
        assert codes["rate_limited"] >= 2000
        a.wall.now = NOW + 599  # still inside the snapshot's window
        assert a.handle(snap) == first
        assert a.snapshots("snap-1") == 1
    finally:
        a.close()


def test_a_repeated_id_after_a_restart_gets_the_stored_reply(tmp_path: Path) -> None:
    body = req("snapshot", {"camera": "cam-1"}, id="before-restart")
    a = Agent(tmp_path)
    first = a.handle(body)
    gw = a.gw
    a.close()
    b = Agent(tmp_path, gw=gw)  # a new dispatcher on the same data: the agent restarted
    try:
        assert b.handle(body) == first
        assert b.snapshots("before-restart") == 1
        assert len(b.audit_lines()) == 1
        assert verify(b.audit.path).ok
    finally:
        b.close()


def test_a_corrupt_reply_store_is_set_aside_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "replies.db").write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING):
        a = Agent(tmp_path)
    try:
        assert a.code(req("ping")) == "ok"
        assert "replies.db" in caplog.text
        assert any(p.name.startswith("replies.db.corrupt-") for p in state.iterdir())
        assert (state / "replies.db").stat().st_mode & 0o777 == 0o600
        assert state.stat().st_mode & 0o777 == 0o700
        rows = sqlite3.connect(state / "replies.db").execute("SELECT COUNT(*) FROM replies").fetchone()
        assert rows == (1,)
    finally:
        a.close()


# -- item 5: refusals are rate-limited per agency and summarised -----------------------------


def test_a_flood_of_refusals_is_rate_limited_and_summarised(agent: Agent) -> None:
    fire = as_agency(req("snapshot", {"camera": "cam-1"}), "fire")
    codes: dict[str, int] = {}
    for i in range(2000):
        agent.mono.now += 0.001  # 1,000 refused requests a second for 2 s
        code = agent.code({**fire, "id": f"f-{i}"})
        codes[code] = codes.get(code, 0) + 1
    assert codes.keys() == {"forbidden", "rate_limited"}
    assert codes["forbidden"] <= 60
    # police is not limited by fire's flood, refused or not
    assert agent.code(req("snapshot", {"camera": "cam-1"}, id="p-1")) == "ok"
    assert agent.code(as_agency(req("snapshot", {"camera": "cam-1"}, id="p-2"), "police")) == "ok"
    assert agent.code(req("config.set", {"streams": {"max_sessions": 2}}, id="p-3")) == "forbidden"
    agent.mono.now += 11  # a summary interval later
    agent.d.flush_summaries()
    records = agent.audit_lines()
    summaries = [r for r in records if r["outcome"] == "rate_limited"]
    assert len(summaries) == 1
    (summary,) = summaries
    assert summary["cmd"] == "rate_limited"
    assert summary["requester"]["agency"] == "fire"
    assert summary["refused"] == codes["rate_limited"]
    assert len(records) == codes["forbidden"] + 3 + 1  # + police's three requests
    assert verify(agent.audit.path).ok
    stats = agent.d.stats()
    assert stats["rate_limited"]["fire"] == codes["rate_limited"]
    assert stats["refused"]["fire"] == codes["forbidden"]
    assert stats["rate_limited"].get("police", 0) == 0


def test_rate_limited_requests_are_not_remembered(agent: Agent) -> None:
    fire = as_agency(req("snapshot", {"camera": "cam-1"}), "fire")
    for i in range(200):
        agent.code({**fire, "id": f"f-{i}"})
    assert agent.code({**fire, "id": "f-199"}) == "rate_limited"
    agent.mono.now += 60  # the bucket refills: the same id is now refused for what it is
    assert agent.code({**fire, "id": "f-199"}) == "forbidden"


def test_unknown_agencies_share_one_limit(agent: Agent) -> None:
    for i in range(300):
        agent.code(as_agency(req("snapshot", {"camera": "cam-1"}, id=f"x-{i}"), f"agency-{i}"))
    assert agent.code(as_agency(req("snapshot", {"camera": "cam-1"}, id="y"), "agency-new")) == "rate_limited"
    assert agent.code(as_agency(req("snapshot", {"camera": "cam-1"}, id="z"), "fire")) == "forbidden"
    stats = agent.d.stats()
    assert set(stats["rate_limited"]) == {"*"}


# -- item 6: replies only under {root}/reply/ or configured prefixes --------------------------


@pytest.mark.parametrize(
    "topic",
    [
        f"{ROOT}/status",
        f"{ROOT}/audit",
        f"{ROOT}/cam/cam-1/event",
        f"{ROOT}/cmd",
        "cctv/v1/gangnam/gw-02/cmd",
        f"{ROOT}/reply",
        f"{ROOT}/reply/",
        f"{ROOT}/replyx/1",
        "platform/replies/1",
    ],
)
def test_a_reply_topic_outside_the_reply_prefixes_is_refused_audited_and_unanswered(
    agent: Agent, topic: str
) -> None:
    snap = req("snapshot", {"camera": "cam-1"}, id="r-hostile")
    assert agent.d.handle(raw(snap), topic, b"c") is None  # as the MQTT 5 Response Topic
    assert agent.d.handle(raw({**snap, "id": "r-hostile-2", "reply_to": topic}), None, None) is None
    both = {**snap, "id": "r-hostile-3", "reply_to": topic}
    assert agent.d.handle(raw(both), f"{ROOT}/reply/ok", b"c") is None  # one bad address is enough
    assert (
        agent.snapshots("r-hostile") == agent.snapshots("r-hostile-2") == agent.snapshots("r-hostile-3") == 0
    )
    assert [p.topic for p in agent.gw.published if not p.topic.endswith("/audit")] == []
    records = [(r["id"], r["outcome"]) for r in agent.audit_lines()]
    assert records == [("r-hostile", "forbidden"), ("r-hostile-2", "forbidden"), ("r-hostile-3", "forbidden")]


def test_a_hostile_reply_topic_on_a_broken_request_is_not_answered(agent: Agent) -> None:
    assert agent.d.handle(b"{not json", f"{ROOT}/status", b"c") is None
    assert agent.d.handle(raw({"id": "x", "reply_to": f"{ROOT}/status"}), None, None) is None


def test_replies_go_under_the_reply_prefix_and_the_configured_prefixes(tmp_path: Path) -> None:
    cfg = base_config(tmp_path, reply_prefixes=["platform/replies", "ops"])
    a = Agent(tmp_path, gw=FakeGateway(parse_config(cfg)))
    try:
        for n, topic in enumerate([f"{ROOT}/reply/a", f"{ROOT}/reply/a/b", "platform/replies/7", "ops/x"]):
            out = a.d.handle(raw(req("ping", id=f"r-{n}")), topic, None)
            assert out is not None
            assert out[0] == topic
        for n, topic in enumerate(["platform/repliesx/7", "platform/replies", "opsx/1", "other/replies/1"]):
            assert a.d.handle(raw(req("ping", id=f"bad-{n}")), topic, None) is None
    finally:
        a.close()


# -- signed commands: the verifier hook -------------------------------------------------------


class TokenVerifier:
    """Accepts envelopes whose `sig` is "good" or whose user property `sig` is "good"."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, Any], dict[str, str]]] = []

    def verify(self, envelope: dict[str, Any], user_properties: Mapping[str, str]) -> None:
        self.seen.append((envelope, dict(user_properties)))
        if envelope.get("sig") != "good" and user_properties.get("sig") != "good":
            raise CommandError("unauthenticated", "no valid signature")


def test_with_a_verifier_unsigned_commands_are_refused_and_audited(tmp_path: Path) -> None:
    verifier = TokenVerifier()
    a = Agent(tmp_path, verifier=verifier)
    try:
        reply = a.handle(req("snapshot", {"camera": "cam-1"}, id="u-1"))
        assert reply is not None
        assert reply["error"] == {"code": "unauthenticated", "message": "no valid signature"}
        assert a.code(req("ping", id="u-2", sig="bad")) == "unauthenticated"
        assert a.snapshots("u-1") == 0
        assert a.code(req("snapshot", {"camera": "cam-1"}, id="s-1", sig="good")) == "ok"
        assert a.code(req("ping", id="s-2"), user_properties={"sig": "good"}) == "ok"
        records = [(r["id"], r["outcome"]) for r in a.audit_lines()]
        assert records == [("u-1", "unauthenticated"), ("u-2", "unauthenticated"), ("s-1", "ok")]
        envelope, props = verifier.seen[-1]
        assert envelope["id"] == "s-2"
        assert props == {"sig": "good"}
    finally:
        a.close()


def test_an_unauthenticated_repeat_of_a_signed_id_gets_no_stored_reply(tmp_path: Path) -> None:
    a = Agent(tmp_path, verifier=TokenVerifier())
    try:
        assert a.code(req("snapshot", {"camera": "cam-1"}, id="s-1", sig="good")) == "ok"
        assert a.code(req("snapshot", {"camera": "cam-1"}, id="s-1")) == "unauthenticated"
    finally:
        a.close()


def test_without_a_verifier_a_sig_is_accepted_and_ignored(agent: Agent) -> None:
    assert agent.code(req("ping", sig="QUJD")) == "ok"
