"""Issue 13 item 3: a stream session belongs to the agency that opened it.

Through the real Dispatcher and StreamManager: another agency allowed on the same camera can
neither renew nor stop the session (answered `forbidden`, audited, the frames keep flowing and
the expiry stays), an admin agency may stop any session (audited under the admin's name), and
the owner keeps full control.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import parse_iso
from tests.test_commands_dispatcher import ROOT, Env, req
from tests.test_commands_gateway import make_gateway


def as_agency(agency: str, cmd: str, args: dict[str, Any], rid: str) -> dict[str, Any]:
    body = req(cmd, args, id=rid)
    body["requester"] = {"agency": agency, "operator": f"{agency}-op"}
    return body


def frames_grow(env: Env, topic: str, timeout: float = 5.0) -> bool:
    """Whether new frames arrive on `topic` (the session is still being served)."""
    suffix = topic.removeprefix(ROOT)
    before = len(env.gw.on(suffix))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(env.gw.on(suffix)) > before:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    gw = make_gateway(tmp_path, admin_agencies=["cityops"])
    gw.live = True  # frames keep coming, so a running session keeps publishing
    e = Env(tmp_path, gw=gw)
    yield e
    e.close()


def start_police_stream(env: Env) -> dict[str, Any]:
    reply = env.call(as_agency("police", "stream.start", {"camera": "cam-2", "duration_s": 60}, "p-start"))
    assert reply["ok"] is True, reply
    result: dict[str, Any] = reply["result"]
    assert frames_grow(env, result["topic"])
    return result


def test_another_agency_cannot_renew_a_session(env: Env) -> None:
    started = start_police_stream(env)
    renew = as_agency("fire", "stream.renew", {"session": started["session"], "duration_s": 600}, "f-renew")
    message = env.error(renew, "forbidden")
    assert "police" not in message  # the owner is not disclosed to other agencies
    # The expiry is still police's: police renewing for 1 s gets an expiry before fire's 600 s would.
    own = env.call(
        as_agency("police", "stream.renew", {"session": started["session"], "duration_s": 1}, "p-r")
    )
    assert own["ok"] is True
    assert parse_iso(own["result"]["expires_at"]) == pytest.approx(time.time() + 1, abs=1.0)
    records = [(r["cmd"], r["outcome"], r["camera"], r["requester"]["agency"]) for r in env.audit_lines()]
    assert records == [
        ("stream.start", "ok", "cam-2", "police"),
        ("stream.renew", "forbidden", "cam-2", "fire"),
        ("stream.renew", "ok", "cam-2", "police"),
    ]


def test_another_agency_cannot_stop_a_session(env: Env) -> None:
    started = start_police_stream(env)
    env.error(as_agency("fire", "stream.stop", {"session": started["session"]}, "f-stop"), "forbidden")
    assert frames_grow(env, started["topic"]), "fire's stream.stop ended police's stream"
    assert env.call(as_agency("police", "stream.stop", {"session": started["session"]}, "p-stop"))["ok"]
    records = [(r["cmd"], r["outcome"], r["camera"], r["requester"]["agency"]) for r in env.audit_lines()]
    assert records == [
        ("stream.start", "ok", "cam-2", "police"),
        ("stream.stop", "forbidden", "cam-2", "fire"),
        ("stream.stop", "ok", "cam-2", "police"),
    ]


def test_admin_agency_may_stop_any_session_and_is_audited(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    started = start_police_stream(env)
    caplog.set_level(logging.INFO, logger="agent.commands")
    renew = as_agency("cityops", "stream.renew", {"session": started["session"], "duration_s": 600}, "a-r")
    env.error(renew, "forbidden")  # stopping is the admins' override, not extending
    assert env.call(as_agency("cityops", "stream.stop", {"session": started["session"]}, "a-stop"))["ok"]
    assert not frames_grow(env, started["topic"], timeout=0.5), "the session should have ended"
    assert "no stream session" in env.error(
        as_agency("police", "stream.renew", {"session": started["session"], "duration_s": 5}, "p-r2"),
        "not_found",
    )
    records = [(r["cmd"], r["outcome"], r["camera"], r["requester"]["agency"]) for r in env.audit_lines()]
    assert records == [
        ("stream.start", "ok", "cam-2", "police"),
        ("stream.renew", "forbidden", "cam-2", "cityops"),
        ("stream.stop", "ok", "cam-2", "cityops"),
        ("stream.renew", "not_found", None, "police"),
    ]
    assert any(
        "cityops" in r.getMessage() and "police" in r.getMessage() and r.levelno == logging.WARNING
        for r in caplog.records
    ), "an admin stopping another agency's session is logged as such"


def test_an_agency_not_allowed_on_the_camera_is_still_forbidden(env: Env) -> None:
    started = env.call(as_agency("police", "stream.start", {"camera": "cam-1"}, "p-1"))["result"]
    stop = as_agency("fire", "stream.stop", {"session": started["session"]}, "f-1")
    env.error(stop, "forbidden")
    assert env.call(as_agency("police", "stream.stop", {"session": started["session"]}, "p-2"))["ok"]


def test_each_agency_controls_its_own_sessions_on_a_shared_camera(env: Env) -> None:
    police = start_police_stream(env)
    fire = env.call(as_agency("fire", "stream.start", {"camera": "cam-2"}, "f-start"))["result"]
    renewed = env.call(
        as_agency("fire", "stream.renew", {"session": fire["session"], "duration_s": 30}, "f-r")
    )
    assert parse_iso(renewed["result"]["expires_at"]) == pytest.approx(time.time() + 30, abs=1.0)
    assert env.call(as_agency("fire", "stream.stop", {"session": fire["session"]}, "f-s"))["ok"]
    assert frames_grow(env, police["topic"])
