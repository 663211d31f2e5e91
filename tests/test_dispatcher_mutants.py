"""The dispatcher at its edges: each step's exact boundary and message, what is audited, what is
remembered and for how long, seen through replies, the audit file and the commands that ran.

Written to close the mutation-testing survivors of agent/commands/dispatcher.py (docs/mutants.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from agent.clock import iso
from agent.commands import COMMANDS
from agent.commands.handlers import CommandSpec
from agent.commands.limits import RateLimits
from agent.commands.models import CommandError, NoArgs
from agent.config import parse_config
from agent.errors import AgentError, ConfigError
from agent.footage.clips import ClipError
from tests.test_commands_dispatcher import NOW, RESP, ROOT, raw, req
from tests.test_commands_gateway import FakeGateway, base_config
from tests.test_commands_hostile import Agent, as_agency


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path)
    yield a
    a.close()


def error(agent: Agent, body: object, **kw: Any) -> tuple[str, str]:
    reply = agent.handle(body, **kw)
    assert reply is not None, "expected a reply"
    assert reply["ok"] is False, reply
    return str(reply["error"]["code"]), str(reply["error"]["message"])


def outcomes(agent: Agent) -> list[tuple[str, str]]:
    return [(r["id"], r["outcome"]) for r in agent.audit_lines()] if agent.audit.path.exists() else []


# -- time: skew and expiry ---------------------------------------------------------------------


def test_issued_at_exactly_max_skew_ahead_is_accepted_a_little_more_is_not(agent: Agent) -> None:
    assert agent.code(req("ping", id="a", issued_at=iso(NOW + 30.0))) == "ok"
    assert error(agent, req("ping", id="b", issued_at=iso(NOW + 30.5))) == (
        "bad_request",
        "issued_at is 30.5 s in the future (tolerance 30 s)",
    )


def test_the_skew_tolerance_is_the_configured_one(tmp_path: Path) -> None:
    a = Agent(tmp_path, max_skew_s=2.5)
    try:
        assert a.code(req("ping", id="a", issued_at=iso(NOW + 2.5))) == "ok"
        assert error(a, req("ping", id="b", issued_at=iso(NOW + 3.0))) == (
            "bad_request",
            "issued_at is 3.0 s in the future (tolerance 2.5 s)",
        )
    finally:
        a.close()


def test_a_request_expires_exactly_ttl_s_after_issued_at(agent: Agent) -> None:
    assert agent.code(req("ping", id="a", issued_at=iso(NOW - 30.0), ttl_s=30)) == "ok"
    assert error(agent, req("ping", id="b", issued_at=iso(NOW - 30.25), ttl_s=30)) == (
        "expired",
        "request expired 0.2 s ago (issued_at + ttl_s)",
    )


def test_a_ttl_beyond_the_idempotency_window_is_capped_at_600_s(agent: Agent) -> None:
    assert agent.code(req("ping", id="a", issued_at=iso(NOW - 600.0), ttl_s=3600)) == "ok"
    assert error(agent, req("ping", id="b", issued_at=iso(NOW - 601.0), ttl_s=3600)) == (
        "expired",
        "request expired 1.0 s ago (issued_at + ttl_s)",
    )


def test_expired_and_early_refusals_of_audited_commands_are_audited_read_only_ones_not(agent: Agent) -> None:
    snap = {"camera": "cam-1"}
    assert agent.code(req("snapshot", snap, id="s-old", issued_at=iso(NOW - 31))) == "expired"
    assert agent.code(req("ping", id="p-old", issued_at=iso(NOW - 31))) == "expired"
    assert agent.code(req("snapshot", snap, id="s-new", issued_at=iso(NOW + 31))) == "bad_request"
    assert outcomes(agent) == [("s-old", "expired"), ("s-new", "bad_request")]
    (record, _) = agent.audit_lines()
    assert record["camera"] is None  # refused before the arguments were read


# -- commands, arguments, access ------------------------------------------------------------------


def test_an_unknown_command_names_every_known_one(agent: Agent) -> None:
    assert error(agent, req("self.destruct")) == (
        "unknown_command",
        "unknown command 'self.destruct'; known: " + ", ".join(COMMANDS),
    )


def test_admin_commands_name_the_agency_and_run_for_an_admin_agency(tmp_path: Path) -> None:
    gw = FakeGateway(parse_config(base_config(tmp_path, admin_agencies=["fire"])))
    a = Agent(tmp_path, gw=gw)
    try:
        body = req("config.set", {"cameras": {"cam-1": {"motion": {"threshold": 40}}}}, id="p")
        assert error(a, body) == ("forbidden", "agency 'police' may not run config.set (admin only)")
        assert a.code(as_agency({**body, "id": "f"}, "fire")) == "ok"
        assert outcomes(a) == [("p", "forbidden"), ("f", "ok")]
    finally:
        a.close()


def test_only_access_camera_consults_the_camera_of_a_command(tmp_path: Path) -> None:
    def cam_1(ctx: Any, args: BaseModel) -> str:
        return "cam-1"

    def run(ctx: Any, args: BaseModel) -> dict[str, Any]:
        return {}

    extra = {
        "open.job": CommandSpec("open.job", NoArgs, run, "any", audited=True, camera_of=cam_1),
        "own.job": CommandSpec("own.job", NoArgs, run, "per_camera", audited=True, camera_of=cam_1),
    }
    a = Agent(tmp_path, commands={**COMMANDS, **extra})
    try:
        assert a.code(as_agency(req("open.job", id="a"), "fire")) == "ok"
        assert a.code(as_agency(req("own.job", id="b"), "fire")) == "ok"
    finally:
        a.close()


def test_a_camera_forbidden_to_the_agency_is_named(agent: Agent) -> None:
    body = as_agency(req("snapshot", {"camera": "cam-1"}), "fire")
    assert error(agent, body) == ("forbidden", "agency 'fire' is not allowed for camera 'cam-1'")
    assert agent.code(as_agency(req("snapshot", {"camera": "cam-2"}, id="r-2"), "fire")) == "ok"
    assert agent.snapshots("r-1") == 0
    assert agent.snapshots("r-2") == 1


# -- what a handler raises ------------------------------------------------------------------------


class CodedError(Exception):
    """Not an AgentError, though it carries a protocol code: must not be trusted as one."""

    code = "not_found"


class Script:
    """Handlers of made-up commands: each call pops the next outcome (an exception or a result)."""

    def __init__(self) -> None:
        self.outcomes: list[BaseException | dict[str, Any]] = []
        self.calls = 0

    def run(self, ctx: Any, args: BaseModel) -> dict[str, Any]:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else {"done": True}
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def scripted(tmp_path: Path, script: Script) -> Iterator[Agent]:
    extra = {
        name: CommandSpec(name, NoArgs, script.run, "any", audited=audited)
        for name, audited in (("job", False), ("audited.job", True), ("config.set", True))
    }
    a = Agent(tmp_path, commands={**COMMANDS, **extra})
    yield a
    a.close()


@pytest.mark.parametrize(
    ("raised", "code", "message"),
    [
        (CommandError("busy", "try later"), "busy", "try later"),
        (ClipError("not_found", "no clip 'c-1'"), "not_found", "no clip 'c-1'"),
        (RuntimeError("secret detail"), "internal", "job failed (RuntimeError); see agent log"),
        (CodedError("secret detail"), "internal", "job failed (CodedError); see agent log"),
        (AgentError("secret detail"), "internal", "job failed (AgentError); see agent log"),
        (ValueError("secret detail"), "internal", "job failed (ValueError); see agent log"),
        (ConfigError("config.set", ["a", "b"]), "bad_request", "a; b"),
    ],
)
def test_what_a_handler_raises_becomes_its_code_or_internal(
    scripted: Agent, script: Script, raised: Exception, code: str, message: str
) -> None:
    script.outcomes.append(raised)
    assert scripted.handle(req("job", id="j-1")) == {
        "id": "j-1",
        "ok": False,
        "error": {"code": code, "message": message},
    }
    assert script.calls == 1
    assert outcomes(scripted) == []  # job is not an audited command, whatever its outcome


def test_config_set_turns_value_and_validation_errors_into_bad_request(
    scripted: Agent, script: Script
) -> None:
    class Bounded(BaseModel):
        threshold: int

    try:
        Bounded.model_validate({"threshold": "x"})
    except Exception as exc:  # a real pydantic ValidationError
        invalid = exc
    script.outcomes += [ValueError("threshold must be below 255"), invalid]
    admin = {"agency": "admin", "operator": "ops-1"}
    assert error(scripted, req("config.set", id="a", requester=admin)) == (
        "bad_request",
        "threshold must be below 255",
    )
    code, message = error(scripted, req("config.set", id="b", requester=admin))
    assert code == "bad_request"
    assert message.startswith("threshold")
    assert outcomes(scripted) == [("a", "bad_request"), ("b", "bad_request")]


def test_a_failed_audited_command_is_audited_with_its_outcome(scripted: Agent, script: Script) -> None:
    script.outcomes += [RuntimeError("x"), CommandError("busy", "later"), {"fine": 1}]
    assert scripted.code(req("audited.job", id="a")) == "internal"
    assert scripted.code(req("audited.job", id="b")) == "busy"
    assert scripted.code(req("audited.job", id="c")) == "ok"
    assert scripted.code(req("job", id="d")) == "ok"
    assert outcomes(scripted) == [("a", "internal"), ("b", "busy"), ("c", "ok")]


def test_a_handler_killing_its_thread_leaves_the_id_free_to_run_again(
    scripted: Agent, script: Script
) -> None:
    script.outcomes.append(SystemExit("a thread-killing bug"))
    with pytest.raises(SystemExit):
        scripted.d.handle(raw(req("job", id="x")), RESP, b"c")
    reply = scripted.handle(req("job", id="x"))  # not stuck as "still executing"
    assert reply == {"id": "x", "ok": True, "result": {"done": True}}
    assert script.calls == 2


# -- a fault in the dispatcher itself ---------------------------------------------------------------


class BrokenVerifier:
    def verify(self, envelope: Mapping[str, Any], user_properties: Mapping[str, str]) -> None:
        raise RuntimeError("verifier bug")


def test_an_unexpected_fault_is_answered_internal_with_the_request_id(tmp_path: Path) -> None:
    a = Agent(tmp_path, verifier=BrokenVerifier())
    try:
        out = a.d.handle(raw(req("snapshot", {"camera": "cam-1"}, id="v-1")), RESP, b"corr")
        assert out == (
            RESP,
            b'{"id":"v-1","ok":false,"error":{"code":"internal","message":"internal error"}}',
            b"corr",
        )
        legacy = ROOT + "/reply/legacy"
        out = a.d.handle(raw(req("ping", id="v-2", reply_to=legacy)), None, None)
        assert out is not None
        assert (out[0], json.loads(out[1])["id"], out[2]) == (legacy, "v-2", None)
        assert a.snapshots("v-1") == 0
    finally:
        a.close()


# -- rate limits and their summaries --------------------------------------------------------------


def flood(agent: Agent, body: dict[str, Any], n: int, prefix: str) -> dict[str, int]:
    codes: dict[str, int] = {}
    for i in range(n):
        code = agent.code({**body, "id": f"{prefix}-{i}"})
        codes[code] = codes.get(code, 0) + 1
    return codes


def test_a_rate_limited_reply_names_the_agency(agent: Agent) -> None:
    codes = flood(agent, as_agency(req("snapshot", {"camera": "cam-1"}), "fire"), 51, "f")
    assert codes == {"forbidden": 50, "rate_limited": 1}
    assert agent.handle(as_agency(req("snapshot", {"camera": "cam-1"}, id="last"), "fire")) == {
        "id": "last",
        "ok": False,
        "error": {"code": "rate_limited", "message": "too many requests from agency 'fire'; retry later"},
    }


def test_the_summary_is_written_by_the_next_request_once_the_interval_passed(agent: Agent) -> None:
    flood(agent, as_agency(req("snapshot", {"camera": "cam-1"}), "fire"), 53, "f")
    assert [r for r in agent.audit_lines() if r["outcome"] == "rate_limited"] == []
    agent.mono.now += 10.0
    assert agent.code(req("ping", id="p")) == "ok"  # no explicit flush: handling a request does it
    (summary,) = [r for r in agent.audit_lines() if r["outcome"] == "rate_limited"]
    assert (summary["requester"]["agency"], summary["refused"]) == ("fire", 3)
    (published,) = [p for p in agent.gw.on("/audit") if b'"rate_limited"' in p.payload]
    assert json.loads(published.payload)["refused"] == 3


def test_agencies_the_config_does_not_name_are_summarised_as_unlisted(agent: Agent) -> None:
    for i in range(52):
        agent.code(as_agency(req("snapshot", {"camera": "cam-1"}, id=f"x-{i}"), f"made-up-{i % 3}"))
    agent.d.close()  # close writes what is pending without waiting for the interval
    (summary,) = [r for r in agent.audit_lines() if r["outcome"] == "rate_limited"]
    assert (summary["requester"]["agency"], summary["refused"]) == ("unlisted", 2)
    assert agent.d.stats()["rate_limited"] == {"*": 2}


def test_admin_agencies_have_their_own_account(tmp_path: Path) -> None:
    gw = FakeGateway(parse_config(base_config(tmp_path, admin_agencies=["ops"])))
    a = Agent(tmp_path, gw=gw)
    try:
        flood(a, as_agency(req("snapshot", {"camera": "cam-1"}), "intruder"), 60, "i")  # the shared account
        body = as_agency(req("snapshot", {"camera": "cam-1"}), "ops")
        assert flood(a, body, 50, "o") == {"forbidden": 50}  # a full refusal bucket of its own
        assert a.d.stats()["refused"] == {"*": 50, "ops": 50}
    finally:
        a.close()


def test_early_refusals_take_refusal_tokens_and_are_audited_only_within_them(tmp_path: Path) -> None:
    a = Agent(tmp_path, verifier=BrokenSigner())
    try:
        assert a.handle(req("ping", id="u")) == {
            "id": "u",
            "ok": False,
            "error": {"code": "unauthenticated", "message": "no valid signature"},
        }
        codes = flood(a, req("ping"), 51, "u")
        assert codes == {"unauthenticated": 49, "rate_limited": 2}
        assert len(a.audit_lines()) == 50
        hostile = ROOT + "/status"
        assert a.d.handle(raw(req("ping", id="h")), hostile, b"c") is None  # not answered, either way
        assert a.d.stats()["refused"] == {"police": 50}
        assert a.d.stats()["rate_limited"] == {"police": 3}
    finally:
        a.close()


def test_a_hostile_reply_topic_is_refused_before_the_signature_matters(tmp_path: Path) -> None:
    a = Agent(tmp_path, verifier=BrokenSigner())
    try:
        assert a.d.handle(raw(req("ping", id="h")), ROOT + "/status", b"c") is None
        assert outcomes(a) == [("h", "unauthenticated")]
    finally:
        a.close()


class BrokenSigner:
    """Refuses every envelope as unauthenticated."""

    def verify(self, envelope: Mapping[str, Any], user_properties: Mapping[str, str]) -> None:
        raise CommandError("unauthenticated", "no valid signature")


def test_a_rejected_request_echoes_the_correlation_data(agent: Agent) -> None:
    out = agent.d.handle(b"{not json", RESP, b"corr-7")
    assert out is not None
    assert (out[0], json.loads(out[1])["error"]["code"], out[2]) == (RESP, "bad_request", b"corr-7")


def test_account_of_names_the_queue_a_request_goes_to(agent: Agent) -> None:
    assert agent.d.account_of(raw(req("ping"))) == "police"
    assert agent.d.account_of(raw(as_agency(req("ping"), "fire"))) == "fire"
    assert agent.d.account_of(raw(as_agency(req("ping"), "nobody"))) == "*"
    assert agent.d.account_of(b"{not json") == "?"
    assert agent.d.account_of(raw(req("ping", pad="x" * 70_000))) == "?"


# -- what is remembered, where and for how long ------------------------------------------------------


def test_replies_are_kept_in_replies_db_under_the_state_dir(agent: Agent) -> None:
    assert agent.code(req("ping")) == "ok"
    assert agent.d.stats()["replies"] == {"entries": 1, "durable": True}
    assert (agent.tmp / "state" / "replies.db").is_file()
    assert sorted(
        p.name for p in (agent.tmp / "state").iterdir() if not p.name.endswith(("-wal", "-shm"))
    ) == ["replies.db"]


def test_without_a_state_dir_replies_are_kept_in_memory(tmp_path: Path) -> None:
    a = Agent(tmp_path, state_dir=None)
    try:
        assert a.code(req("ping")) == "ok"
        assert a.code(req("ping")) == "ok"
        assert a.d.stats()["replies"] == {"entries": 1, "durable": False}
    finally:
        a.close()


def test_a_repeat_is_replayed_for_630_s_even_when_the_request_has_expired_since(agent: Agent) -> None:
    body = req("snapshot", {"camera": "cam-1"}, ttl_s=600)
    first = agent.handle(body)
    agent.wall.now += 629.0  # the window: the longest ttl (600 s) plus the skew tolerance (30 s)
    assert agent.handle(body) == first
    assert agent.snapshots("r-1") == 1
    agent.wall.now += 1.0
    assert error(agent, body)[0] == "expired"  # forgotten: judged again, and too old
    assert outcomes(agent) == [("r-1", "ok"), ("r-1", "expired")]


def test_a_window_full_after_restarts_answers_rate_limited_and_runs_nothing(tmp_path: Path) -> None:
    limits = RateLimits(requests_per_s=0.001, requests_burst=2)  # window capacity 2 + ceil(0.63) = 3
    a = Agent(tmp_path, rate_limits=limits)
    snap = {"camera": "cam-1"}
    try:
        assert [a.code(req("snapshot", snap, id=i)) for i in ("a", "b", "c")] == ["ok", "ok", "rate_limited"]
    finally:
        a.close()
    b = Agent(tmp_path, rate_limits=limits)  # a restart refills the buckets, not the window
    try:
        assert b.code(req("snapshot", snap, id="a")) == "ok"  # a repeat: the stored reply, no token
        assert b.code(req("snapshot", snap, id="d")) == "ok"
        assert error(b, req("snapshot", snap, id="e")) == (
            "rate_limited",
            "too many requests from agency 'police'; retry later",
        )
        assert b.snapshots("e") == 0
        assert b.code(req("snapshot", snap, id="e")) == "rate_limited"  # not remembered: no token left
        fire = as_agency(req("snapshot", {"camera": "cam-2"}, id="f"), "fire")
        assert b.code(fire) == "ok"  # another account, another window
    finally:
        b.close()
    assert [r["id"] for r in b.audit_lines() if r["outcome"] != "rate_limited"] == ["a", "b", "d", "f"]
