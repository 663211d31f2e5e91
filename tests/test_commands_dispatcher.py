"""The dispatcher end to end in-process: parsing, every error code, replies, idempotency, audit."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.capture.source import Frame
from agent.clock import iso
from agent.commands.audit import AuditLog, verify
from agent.commands.dispatcher import Dispatcher
from agent.commands.streams import StreamLimits, StreamManager
from agent.config import parse_config
from tests.test_commands_gateway import T0, ClipsAdapter, FakeGateway, base_config, make_gateway

NOW = T0 + 1.0  # the dispatcher's clock: one second after the first buffered frame
ROOT = "cctv/v1/gangnam/gw-01"
RESP = ROOT + "/reply/1"


def req(cmd: str, args: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": over.pop("id", "r-1"),
        "cmd": cmd,
        "args": args or {},
        "issued_at": iso(NOW),
        "ttl_s": 30,
        "requester": {"agency": "police", "operator": "officer-1234", "incident": "112-2026-000123"},
    }
    body.update(over)
    return body


def raw(body: object) -> bytes:
    return json.dumps(body).encode()


class Env:
    def __init__(self, tmp_path: Path, gw: FakeGateway | None = None, **kw: Any) -> None:
        self.gw = gw or make_gateway(tmp_path)
        self.audit = AuditLog.in_data_dir(tmp_path)
        self.streams = StreamManager(self.gw, limits=kw.pop("limits", None))
        self.streams.start()
        self.d = Dispatcher(self.gw, self.audit, streams=self.streams, clock=lambda: NOW, **kw)

    def call(self, body: object, topic: str | None = RESP, corr: bytes | None = b"c1") -> dict[str, Any]:
        out = self.d.handle(body if isinstance(body, bytes) else raw(body), topic, corr)
        assert out is not None, "expected a reply"
        reply: dict[str, Any] = json.loads(out[1])
        return reply

    def error(self, body: object, code: str, topic: str | None = RESP) -> str:
        reply = self.call(body, topic)
        assert reply["ok"] is False, reply
        assert reply["error"]["code"] == code, reply
        return str(reply["error"]["message"])

    def audit_lines(self) -> list[dict[str, Any]]:
        text = self.audit.path.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines()]

    def close(self) -> None:
        self.streams.stop()
        self.audit.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


# -- replies -------------------------------------------------------------------------------


def test_ping_reply_has_the_exact_shape(env: Env) -> None:
    out = env.d.handle(raw(req("ping")), RESP, b"corr-42")
    assert out is not None
    topic, payload, corr = out
    assert (topic, corr) == (RESP, b"corr-42")
    assert payload.startswith(b'{"id":"r-1","ok":true,"result":{"agent_version":"9.9.9-test","uptime_s":')
    assert set(json.loads(payload)) == {"id", "ok", "result"}


def test_error_reply_has_the_exact_shape(env: Env) -> None:
    out = env.d.handle(b"{not json", RESP, None)
    assert out is not None
    body = json.loads(out[1])
    assert list(body) == ["id", "ok", "error"]
    assert body["id"] is None
    assert body["ok"] is False
    assert list(body["error"]) == ["code", "message"]


def test_reply_to_is_used_without_a_response_topic(env: Env) -> None:
    out = env.d.handle(raw(req("ping", reply_to=ROOT + "/reply/legacy-7")), None, None)
    assert out is not None
    assert out[0] == ROOT + "/reply/legacy-7"
    assert out[2] is None


def test_mqtt5_response_topic_wins_over_reply_to(env: Env) -> None:
    out = env.d.handle(raw(req("ping", reply_to=ROOT + "/reply/legacy-7")), RESP, b"x")
    assert out is not None
    assert out[0] == RESP
    assert out[2] == b"x"


def test_no_reply_address_still_executes(env: Env) -> None:
    assert env.d.handle(raw(req("snapshot", {"camera": "cam-1"})), None, None) is None
    assert len(env.gw.on("/snapshot/r-1")) == 1


def test_unparseable_without_any_address_is_dropped(env: Env) -> None:
    assert env.d.handle(b"\xff\xfe garbage", None, None) is None
    assert env.d.handle(b"[1,2]", None, None) is None


def test_invalid_request_with_reply_to_is_answered_there(env: Env) -> None:
    body = req("ping", reply_to=ROOT + "/reply/legacy-7")
    del body["requester"]
    out = env.d.handle(raw(body), None, None)
    assert out is not None
    assert out[0] == ROOT + "/reply/legacy-7"
    reply = json.loads(out[1])
    assert reply["id"] == "r-1"
    assert reply["error"]["code"] == "bad_request"
    assert "requester" in reply["error"]["message"]


def test_wildcard_reply_to_is_refused(env: Env) -> None:
    assert env.d.handle(raw(req("ping", reply_to=ROOT + "/reply/+")), None, None) is None
    assert "reply_to" in env.error(req("ping", reply_to=ROOT + "/reply/#"), "bad_request")


def test_wildcard_response_topic_is_not_used(env: Env) -> None:
    out = env.d.handle(raw(req("ping", reply_to=ROOT + "/reply/legacy")), "bad/+/topic", None)
    assert out is not None
    assert out[0] == ROOT + "/reply/legacy"


# -- bad_request ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xc3\x28", "not UTF-8"),
        (b"[]", "JSON object"),
        (b'"ping"', "JSON object"),
        (b'{"id": NaN}', "not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "not valid JSON"),
    ],
)
def test_unparseable_payloads_are_bad_requests(env: Env, payload: bytes, words: str) -> None:
    assert words in env.error(payload, "bad_request")


def test_payload_size_limit(tmp_path: Path) -> None:
    e = Env(tmp_path, max_payload_bytes=1024)
    try:
        small = req("ping", args={})
        assert e.call(small)["ok"] is True
        big = req("ping", id="r-2", pad="x" * 2000)
        message = e.error(big, "bad_request")
        assert "limit is 1024" in message
        assert e.call(raw(big))["id"] is None  # not parsed at all
    finally:
        e.close()


def test_default_size_limit_is_64_kib(env: Env) -> None:
    body = raw(req("ping"))
    assert env.call(body + b" " * (64 * 1024 - len(body)))["ok"] is True
    assert "limit is 65536" in env.error(body + b" " * (64 * 1024 + 1 - len(body)), "bad_request")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": ""}, "id"),
        ({"id": "a/b"}, "id"),
        ({"id": ".."}, "id"),
        ({"id": "x" * 65}, "id"),
        ({"id": 5}, "id"),
        ({"cmd": 5}, "cmd"),
        ({"issued_at": "yesterday"}, "issued_at"),
        ({"issued_at": "2026-13-45T10:00:00Z"}, "issued_at"),
        ({"issued_at": "2026-11-24T10:00:00"}, "issued_at"),  # no offset
        ({"ttl_s": 0}, "ttl_s"),
        ({"ttl_s": 86401}, "ttl_s"),
        ({"ttl_s": "30"}, "ttl_s"),
        ({"args": []}, "args"),
        ({"requester": {"agency": "Police!", "operator": "x"}}, "requester.agency"),
        ({"extra": 1}, "extra"),
    ],
)
def test_envelope_faults_name_the_field(env: Env, change: dict[str, Any], field: str) -> None:
    assert env.error({**req("ping"), **change}, "bad_request").startswith(field)


@pytest.mark.parametrize(
    ("cmd", "args", "field"),
    [
        ("stream.start", {"camera": "cam-1", "fps": 45}, "args.fps"),
        ("stream.start", {"camera": "cam-1", "duration_s": 601}, "args.duration_s"),
        ("stream.start", {"camera": "cam-1", "quality": 0}, "args.quality"),
        ("stream.start", {"camera": "cam-1", "fps": True}, "args.fps"),
        ("snapshot", {}, "args.camera"),
        ("snapshot", {"camera": "cam-1", "zoom": 2}, "args.zoom"),
        ("snapshot", {"camera": "cam-1", "at": "noon"}, "args.at"),
        ("locate", {"lat": 91, "lon": 0}, "args.lat"),
        ("clip.export", {"camera": "cam-1", "start": iso(NOW), "end": iso(NOW - 5)}, "args"),
        ("ping", {"x": 1}, "args.x"),
    ],
)
def test_argument_faults_name_the_field(env: Env, cmd: str, args: dict[str, Any], field: str) -> None:
    assert env.error(req(cmd, args), "bad_request").startswith(field)


def test_issued_at_far_in_the_future_is_refused_small_skew_tolerated(env: Env) -> None:
    assert "in the future" in env.error(req("ping", issued_at=iso(NOW + 120)), "bad_request")
    assert env.call(req("ping", id="r-2", issued_at=iso(NOW + 10)))["ok"] is True


# -- expired, unknown, not_found, forbidden, busy, internal -----------------------------------


def test_expired_request_is_not_executed_but_audited(env: Env) -> None:
    body = req("snapshot", {"camera": "cam-1"}, issued_at=iso(NOW - 31), ttl_s=30)
    assert "expired" in env.error(body, "expired")
    assert env.gw.on("/snapshot/r-1") == []
    assert [r["outcome"] for r in env.audit_lines()] == ["expired"]


def test_request_within_ttl_runs(env: Env) -> None:
    assert env.call(req("snapshot", {"camera": "cam-1"}, issued_at=iso(NOW - 29), ttl_s=30))["ok"] is True


def test_unknown_command(env: Env) -> None:
    message = env.error(req("self.destruct"), "unknown_command")
    assert "self.destruct" in message
    assert "snapshot" in message


@pytest.mark.parametrize(
    ("cmd", "args", "words"),
    [
        ("snapshot", {"camera": "cam-9"}, "no camera 'cam-9'"),
        ("snapshot", {"camera": "cam-1", "at": iso(T0 - 60)}, "still buffered"),
        ("stream.renew", {"session": "0f0e", "duration_s": 10}, "no stream session"),
        ("stream.stop", {"session": "0f0e"}, "no stream session"),
        ("clip.export", {"camera": "cam-1", "start": iso(NOW - 9), "end": iso(NOW)}, "no clip store"),
        ("clip.fetch", {"clip_id": "abc"}, "no clip store"),
    ],
)
def test_not_found(env: Env, cmd: str, args: dict[str, Any], words: str) -> None:
    assert words in env.error(req(cmd, args), "not_found")


def test_camera_without_frames_is_not_found(tmp_path: Path) -> None:
    gw = FakeGateway(parse_config(base_config(tmp_path)), frames={"cam-1": [], "cam-2": []})
    e = Env(tmp_path, gw=gw)
    try:
        assert "no frame yet" in e.error(req("snapshot", {"camera": "cam-1"}), "not_found")
    finally:
        e.close()


def test_forbidden_camera_is_refused_and_audited(env: Env) -> None:
    body = req("snapshot", {"camera": "cam-1"})
    body["requester"]["agency"] = "fire"
    assert "not allowed for camera 'cam-1'" in env.error(body, "forbidden")
    assert env.gw.on("/snapshot/r-1") == []
    (record,) = env.audit_lines()
    assert record["outcome"] == "forbidden"
    assert record["camera"] == "cam-1"
    assert record["requester"]["agency"] == "fire"
    (published,) = env.gw.on(ROOT + "/audit")
    assert json.loads(published.payload) == record
    assert (published.qos, published.kind) == (1, "audit")


def test_config_set_is_admin_only_and_audited(env: Env) -> None:
    body = req("config.set", {"cameras": {"cam-1": {"motion": {"threshold": 40}}}})
    assert "admin" in env.error(body, "forbidden")
    assert [r["outcome"] for r in env.audit_lines()] == ["forbidden"]


def test_busy_when_stream_sessions_run_out(tmp_path: Path) -> None:
    e = Env(tmp_path, limits=StreamLimits(max_sessions=1))
    try:
        assert e.call(req("stream.start", {"camera": "cam-1"}))["ok"] is True
        assert "limit 1" in e.error(req("stream.start", {"camera": "cam-2"}, id="r-2"), "busy")
    finally:
        e.close()


class BrokenGateway(FakeGateway):
    def latest_frame(self, camera: str, fps: float | None = None) -> Frame | None:
        raise RuntimeError("frame buffer exploded")


def test_handler_raising_is_internal_and_the_agent_carries_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    e = Env(tmp_path, gw=BrokenGateway(parse_config(base_config(tmp_path))))
    try:
        with caplog.at_level(logging.ERROR):
            message = e.error(req("snapshot", {"camera": "cam-1"}), "internal")
        assert "RuntimeError" in message
        assert "exploded" not in message
        assert "frame buffer exploded" in caplog.text
        assert "Traceback" in caplog.text
        assert e.call(req("ping", id="r-2"))["ok"] is True
        assert [r["outcome"] for r in e.audit_lines()] == ["internal"]
    finally:
        e.close()


# -- idempotency ---------------------------------------------------------------------------


def test_repeated_id_replays_identical_bytes_and_runs_once(env: Env) -> None:
    body = raw(req("snapshot", {"camera": "cam-1"}))
    first = env.d.handle(body, RESP, b"a")
    second = env.d.handle(body, ROOT + "/reply/other", b"b")
    assert first is not None
    assert second is not None
    assert first[1] == second[1]
    assert second[0] == ROOT + "/reply/other"
    assert second[2] == b"b"
    assert len(env.gw.on("/snapshot/r-1")) == 1
    assert len(env.audit_lines()) == 1


def test_repeated_id_replays_errors_too(env: Env) -> None:
    body = req("snapshot", {"camera": "cam-1"})
    body["requester"]["agency"] = "fire"
    assert env.call(body) == env.call(body)
    assert len(env.audit_lines()) == 1


def test_rejected_envelope_is_not_remembered(env: Env) -> None:
    body = req("ping")
    env.error({**body, "ttl_s": 0}, "bad_request")
    assert env.call(body)["ok"] is True


# -- commands through the dispatcher -----------------------------------------------------------


def test_snapshot_is_audited_with_the_requester(env: Env) -> None:
    result = env.call(req("snapshot", {"camera": "cam-1"}))["result"]
    assert result["topic"] == ROOT + "/cam/cam-1/snapshot/r-1"
    (record,) = env.audit_lines()
    assert record["cmd"] == "snapshot"
    assert record["outcome"] == "ok"
    assert record["id"] == "r-1"
    assert record["requester"] == {
        "agency": "police",
        "operator": "officer-1234",
        "incident": "112-2026-000123",
    }
    assert verify(env.audit.path).ok


def test_read_only_commands_are_not_audited(env: Env) -> None:
    for i, cmd in enumerate(["ping", "describe", "config.get"]):
        assert env.call(req(cmd, id=f"q-{i}"))["ok"] is True
    assert env.audit_lines() == []


def test_describe_lists_cameras_with_geo_and_resolution(env: Env) -> None:
    result = env.call(req("describe"))["result"]
    assert result["gateway"]["id"] == "gw-01"
    assert result["gateway"]["topic_root"] == ROOT
    cam1, cam2 = result["cameras"]
    assert cam1["id"] == "cam-1"
    assert cam1["name"] == "Main gate"
    assert cam1["state"] == "ok"
    assert cam1["resolution"] == {"width": 640, "height": 272}
    assert cam1["fps"] == 25.0
    assert cam1["geo"] == {
        "lat": 37.5691,
        "lon": 126.978,
        "heading_deg": 0.0,
        "fov_deg": 60.0,
        "range_m": 300.0,
    }
    assert cam2["geo"] is None


def test_config_get_and_set(env: Env) -> None:
    admin = {"agency": "admin", "operator": "ops-1"}
    assert env.call(req("config.get"))["result"]["cameras"]["cam-1"]["motion"]["threshold"] == 25
    body = req("config.set", {"cameras": {"cam-1": {"motion": {"threshold": 40}}}}, id="r-0", requester=admin)
    ok = env.call(body)
    assert ok["result"]["cameras"]["cam-1"]["motion"]["threshold"] == 40
    bad = req("config.set", {"cameras": {"cam-1": {"motion": {"threshold": 999}}}}, id="r-2", requester=admin)
    assert "threshold" in env.error(bad, "bad_request")
    unknown = req("config.set", {"cameras": {"cam-7": {}}}, id="r-3", requester=admin)
    assert "cam-7" in env.error(unknown, "bad_request")
    assert "at least one" in env.error(req("config.set", {}, id="r-4", requester=admin), "bad_request")
    assert [r["outcome"] for r in env.audit_lines()] == ["ok", "bad_request", "bad_request", "bad_request"]
    assert env.call(req("config.get", id="r-5"))["result"]["cameras"]["cam-1"]["motion"]["threshold"] == 40


def test_clip_commands_with_the_clip_store(env: Env, tmp_path: Path) -> None:
    adapter = ClipsAdapter(tmp_path / "clips", env.gw)
    env.gw.clips = adapter
    start, end = iso(T0 - 1), iso(NOW)
    exported = env.call(req("clip.export", {"camera": "cam-1", "start": start, "end": end}))["result"]
    assert set(exported) == {"clip_id", "duration_s", "bytes", "sha256"}
    assert exported["duration_s"] == pytest.approx(0.48, abs=0.05)  # 12 frames at 25 fps
    fetched = env.call(req("clip.fetch", {"clip_id": exported["clip_id"], "chunk_bytes": 4096}, id="r-2"))
    result = fetched["result"]
    chunks = env.gw.on("/clips/" + exported["clip_id"])
    count = len(chunks)
    assert count > 1
    assert result["count"] == count
    assert result["bytes"] == exported["bytes"]
    assert [c.properties for c in chunks] == [{"index": str(i), "count": str(count)} for i in range(count)]
    assert all((c.qos, c.kind) == (1, "clip") for c in chunks)
    mp4 = b"".join(c.payload for c in chunks)
    assert mp4 == adapter.store.path(exported["clip_id"]).read_bytes()
    assert result["sha256"] == exported["sha256"] == hashlib.sha256(mp4).hexdigest()
    until = iso(time.time() + 86400)
    held = env.call(
        req("clip.hold", {"camera": "cam-1", "start": start, "end": end, "until": until}, id="r-3")
    )
    assert held["result"]["until"] == until
    assert held["result"]["clip_ids"] == [exported["clip_id"]]
    past = req(
        "clip.hold", {"camera": "cam-1", "start": iso(NOW - 99), "end": iso(NOW - 90), "until": iso(NOW - 1)}
    )
    assert "in the past" in env.error({**past, "id": "r-4"}, "bad_request")
    outside = req("clip.export", {"camera": "cam-1", "start": iso(T0 - 99), "end": iso(T0 - 50)}, id="r-5")
    assert "nothing buffered" in env.error(outside, "not_found")
    assert "no clip" in env.error(req("clip.fetch", {"clip_id": str(uuid.uuid4())}, id="r-6"), "not_found")
    assert "not a clip id" in env.error(req("clip.fetch", {"clip_id": "abc"}, id="r-7"), "bad_request")
    fire = req("clip.fetch", {"clip_id": exported["clip_id"]}, id="r-8")
    fire["requester"]["agency"] = "fire"
    env.error(fire, "forbidden")
    outcomes = [(r["cmd"], r["outcome"], r["camera"]) for r in env.audit_lines()]
    assert outcomes == [
        ("clip.export", "ok", "cam-1"),
        ("clip.fetch", "ok", "cam-1"),
        ("clip.hold", "ok", "cam-1"),
        ("clip.hold", "bad_request", "cam-1"),
        ("clip.export", "not_found", "cam-1"),
        ("clip.fetch", "not_found", None),
        ("clip.fetch", "bad_request", None),
        ("clip.fetch", "forbidden", "cam-1"),
    ]


def test_stream_commands_are_audited_with_their_camera(env: Env) -> None:
    started = env.call(req("stream.start", {"camera": "cam-1"}))["result"]
    renewed = env.call(req("stream.renew", {"session": started["session"], "duration_s": 30}, id="r-2"))
    assert renewed["ok"] is True
    fire = req("stream.stop", {"session": started["session"]}, id="r-3")
    fire["requester"]["agency"] = "fire"
    env.error(fire, "forbidden")
    assert env.call(req("stream.stop", {"session": started["session"]}, id="r-4"))["result"] == {}
    records = [(r["cmd"], r["outcome"], r["camera"]) for r in env.audit_lines()]
    assert records == [
        ("stream.start", "ok", "cam-1"),
        ("stream.renew", "ok", "cam-1"),
        ("stream.stop", "forbidden", "cam-1"),
        ("stream.stop", "ok", "cam-1"),
    ]


# -- fuzz ----------------------------------------------------------------------------------


def _mutations(rng: random.Random, base: bytes) -> bytes:
    data = bytearray(base)
    choice = rng.randrange(5)
    if choice == 0:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif choice == 1:
        del data[rng.randrange(len(data)) :]
    elif choice == 2:
        pos = rng.randrange(len(data))
        data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
    elif choice == 3:
        obj = json.loads(base)
        key = rng.choice([*obj, "args"])
        obj[key] = rng.choice([None, 0, -1, 1e308, "", "x" * 300, [], {}, True, {"camera": "cam-1"}])
        return raw(obj)
    else:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
    return bytes(data)


def test_fuzzed_requests_never_crash(env: Env) -> None:
    rng = random.Random(1234)
    seeds: list[tuple[str, dict[str, Any]]] = [
        ("ping", {}),
        ("snapshot", {"camera": "cam-1", "max_width": 320}),
        ("locate", {"lat": 37.57, "lon": 126.978}),
        ("stream.renew", {"session": "abc", "duration_s": 5}),
    ]
    bases = [raw(req(cmd, args, id=f"b-{i}")) for i, (cmd, args) in enumerate(seeds)]
    for n in range(1500):
        payload = _mutations(rng, rng.choice(bases))
        out = env.d.handle(payload, RESP, str(n).encode())
        assert out is not None
        reply = json.loads(out[1])
        assert reply["ok"] in (True, False)
        if not reply["ok"]:
            assert reply["error"]["code"] != "internal", (payload, reply)
    assert verify(env.audit.path).ok


def test_requester_without_operator_and_a_long_ttl_are_accepted(env: Env) -> None:
    """Only the agency is needed; a ttl beyond the 600 s window is accepted and capped at it."""
    body = req("ping", id="r-min", ttl_s=3600, requester={"agency": "police"})
    reply = env.call(body)
    assert reply["ok"] is True, reply
    late = req("ping", id="r-late", ttl_s=3600, issued_at=iso(NOW - 601))
    assert "expired" in env.error(late, "expired")
