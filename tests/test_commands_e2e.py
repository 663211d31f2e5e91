"""End to end: the platform's commands against `edge-agent run` (a subprocess) on a real broker.

Most tests share one agent (module fixture) with three synthetic cameras:
- cam-1: police only, privacy mask over the left quarter, looks east from GEO_1;
- cam-2: police and fire, 88 m west of cam-1, also looking east (so a point east of both
  is seen by cam-1 first, then cam-2);
- cam-3: fire only, no geo.
Stream sessions are limited to 2 by the config file. Tests that change settings or restart the
agent start their own.

`internal` is not provoked here: every input the platform controls is validated before a handler
runs, and the fuzz test (test_commands_fuzz.py) found no request that reaches it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pytest

from agent.clock import iso, parse_iso
from agent.sdk.client import CommandFailed, NoReply, PlatformClient
from tests.conftest import Broker
from tests.harness import (
    AgentProcess,
    Received,
    Subscriber,
    settled,
    wait_answering,
    wait_frames,
    write_config,
)

pytestmark = pytest.mark.broker

DISTRICT = "e2e"
GEO_1 = (37.5, 127.0)
GEO_2 = (37.5, 126.999)  # ~88 m west of cam-1
EAST_OF_BOTH = (37.5, 127.0005)  # ~44 m from cam-1, ~132 m from cam-2
ERROR_CODES = {"bad_request", "unknown_command", "not_found", "forbidden", "expired", "busy", "internal"}

CAMERAS = f"""
[[cameras]]
id = "cam-1"
name = "Gate"
source = "synthetic:street?fps=15&seed=1"
allowed_agencies = ["police"]
privacy_masks = [[[0.0, 0.0], [0.25, 0.0], [0.25, 1.0], [0.0, 1.0]]]
geo = {{ lat = {GEO_1[0]}, lon = {GEO_1[1]}, heading_deg = 90.0, fov_deg = 90.0, range_m = 200.0 }}
buffer = {{ pre_event_s = 4.0, fps = 10.0 }}
clips = {{ pre_roll_s = 2.0 }}

[[cameras]]
id = "cam-2"
name = "Side street"
source = "synthetic:street?fps=10&seed=2"
allowed_agencies = ["police", "fire"]
geo = {{ lat = {GEO_2[0]}, lon = {GEO_2[1]}, heading_deg = 90.0, fov_deg = 90.0, range_m = 300.0 }}

[[cameras]]
id = "cam-3"
source = "synthetic:street?fps=5&seed=3&width=320&height=180"
allowed_agencies = ["fire"]
"""

STREAM_LIMITS = "[streams]\nmax_sessions = 2\nmax_bytes_per_s = 50000000\n"


@dataclass
class Gateway:
    """A running agent, a recorder of everything under its root, and client factories."""

    broker: Broker
    root: str
    data_dir: Path
    config: Path
    agent: AgentProcess
    sub: Subscriber

    def client(
        self, agency: str = "police", protocol: Literal["5", "3.1.1"] = "5", **kw: Any
    ) -> PlatformClient:
        c = PlatformClient(
            self.broker.host,
            self.broker.port,
            self.root,
            agency=agency,
            operator="op-7",
            incident="112-2026-000123",
            protocol=protocol,
            **kw,
        )
        return c.connect()

    def on(self, suffix: str) -> list[Received]:
        return self.sub.on(suffix)


def start_gateway(tmp: Path, broker: Broker, cameras: str, extra: str = "", protocol: str = "5") -> Gateway:
    gateway = "gw-" + uuid.uuid4().hex[:10]
    root = f"cctv/v1/{DISTRICT}/{gateway}"
    sub = Subscriber(broker.host, broker.port, root + "/#")
    cfg = write_config(
        tmp / "agent.toml",
        district=DISTRICT,
        gateway=gateway,
        port=broker.port,
        data_dir=tmp / "data",
        cameras=cameras,
        extra=extra,
        protocol=protocol,
    )
    agent = AgentProcess(cfg, tmp / "agent.log", log_level="info")
    return Gateway(broker, root, tmp / "data", cfg, agent, sub)


def stop_gateway(gw: Gateway) -> None:
    gw.agent.close()
    gw.sub.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[Gateway]:
    g = start_gateway(tmp_path_factory.mktemp("e2e"), broker, CAMERAS, STREAM_LIMITS)
    try:
        with g.client() as c:
            wait_answering(c)
            wait_frames(c, "cam-1")
            wait_frames(c, "cam-2")
        yield g
    finally:
        stop_gateway(g)


@pytest.fixture
def police(gw: Gateway) -> Iterator[PlatformClient]:
    with gw.client("police") as c:
        yield c


def decode(jpeg: bytes) -> np.ndarray[Any, np.dtype[np.uint8]]:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "not a JPEG"
    return np.asarray(img, np.uint8)


def error_of(call: Any) -> CommandFailed:
    with pytest.raises(CommandFailed) as info:
        call()
    return info.value


# -- ping, describe ---------------------------------------------------------------------------------


def test_ping_and_describe(police: PlatformClient) -> None:
    pong = police.ping()
    assert set(pong) == {"agent_version", "uptime_s"}
    assert pong["uptime_s"] > 0

    desc = police.describe()
    cams = {c["id"]: c for c in desc["cameras"]}
    assert list(cams) == ["cam-1", "cam-2", "cam-3"]
    assert desc["gateway"]["district"] == DISTRICT
    assert desc["gateway"]["topic_root"] == police.root
    assert cams["cam-1"]["state"] == "ok"
    assert cams["cam-1"]["resolution"] == {"width": 640, "height": 360}
    assert cams["cam-1"]["geo"]["lat"] == GEO_1[0]
    assert cams["cam-1"]["name"] == "Gate"
    assert cams["cam-3"]["geo"] is None


# -- snapshot, privacy ----------------------------------------------------------------------------


def test_snapshot_scaled_and_published_once_on_its_topic(gw: Gateway, police: PlatformClient) -> None:
    result, jpeg = police.snapshot("cam-2", max_width=320)
    assert (result["width"], result["height"]) == (320, 180)
    assert result["bytes"] == len(jpeg)
    assert decode(jpeg).shape == (180, 320, 3)
    assert abs(parse_iso(result["ts"]) - time.time()) < 5
    topic = result["topic"]
    assert topic.startswith(f"{gw.root}/cam/cam-2/snapshot/")
    time.sleep(0.3)
    copies = [m for m in gw.sub.messages if m.topic == topic]
    assert len(copies) == 1
    assert copies[0].payload == jpeg
    assert not copies[0].retain


def test_snapshot_at_picks_a_buffered_frame_else_not_found(police: PlatformClient) -> None:
    time.sleep(max(0.0, 3.0 - police.ping()["uptime_s"]))  # let the 4 s buffer fill a bit
    asked = time.time() - 1.5
    result, jpeg = police.snapshot("cam-1", at=iso(asked))
    assert abs(parse_iso(result["ts"]) - asked) < 0.3
    assert decode(jpeg).shape == (360, 640, 3)

    too_old = error_of(lambda: police.snapshot("cam-1", at=iso(time.time() - 60)))
    assert too_old.code == "not_found"
    assert "buffered" in too_old.message
    future = error_of(lambda: police.snapshot("cam-1", at=iso(time.time() + 60)))
    assert future.code == "not_found"


def assert_left_quarter_blank(img: np.ndarray[Any, np.dtype[np.uint8]]) -> None:
    _h, w = img.shape[:2]
    edge = w // 4
    interior = img[:, : edge - max(4, w // 64)]
    visible = img[:, edge + max(4, w // 64) :]
    assert interior.max() <= 24, "masked area shows content"
    assert interior.mean() < 2.0
    assert visible.std() > 10, "the unmasked area should show the street"
    assert visible.mean() > 20


def test_privacy_mask_is_blanked_in_snapshots_and_stream_frames(police: PlatformClient) -> None:
    _, jpeg = police.snapshot("cam-1")
    assert_left_quarter_blank(decode(jpeg))
    _, small = police.snapshot("cam-1", max_width=200)
    assert_left_quarter_blank(decode(small))
    with police.stream("cam-1", 1.5, fps=5, max_width=320) as live:
        frames = list(live)
    assert frames
    for f in frames:
        assert_left_quarter_blank(decode(f.jpeg))


def test_privacy_masks_cannot_be_changed_by_config_set(gw: Gateway) -> None:
    with gw.client("admin") as admin:
        err = error_of(lambda: admin.config_set({"cameras": {"cam-1": {"privacy_masks": []}}}))
        assert err.code == "bad_request"
        assert "privacy_masks" in err.message
        assert admin.config_get()["cameras"]["cam-1"]["privacy_masks"] != []


# -- streams ----------------------------------------------------------------------------------------


def test_stream_at_asked_fps_and_width(police: PlatformClient) -> None:
    for fps, seconds in ((5.0, 2.0), (10.0, 2.0)):
        with police.stream("cam-1", seconds, fps=fps, max_width=320) as live:
            frames = list(live)
        assert [f.seq for f in frames] == list(range(len(frames)))
        assert all(decode(f.jpeg).shape == (180, 320, 3) for f in frames[:5])
        stamps = [parse_iso(f.ts) for f in frames if f.ts is not None]
        assert len(stamps) == len(frames) and stamps == sorted(stamps)
        # The rate over the frames' own span (the agent's timestamps): `seconds` also covers the
        # subscribe and stream.start round trips, which a loaded machine makes long.
        assert len(frames) >= 4, (fps, len(frames))
        span = stamps[-1] - stamps[0]
        assert 0.7 * fps * span <= len(frames) - 1 <= 1.2 * fps * span + 2, (fps, len(frames), span)


def test_stream_ends_on_its_own_and_renew_extends_it(gw: Gateway, police: PlatformClient) -> None:
    short = police.request(
        "stream.start", {"camera": "cam-2", "fps": 5.0, "max_width": 160, "duration_s": 1.0}
    )
    renewed = police.request(
        "stream.start", {"camera": "cam-2", "fps": 5.0, "max_width": 160, "duration_s": 1.0}
    )
    assert short["topic"] == f"{gw.root}/cam/cam-2/stream/{short['session']}"
    first_expiry = parse_iso(renewed["expires_at"])
    # 8 s: the renewed session must outlive the waits below and its own stream.stop at the end.
    again = police.request("stream.renew", {"session": renewed["session"], "duration_s": 8.0})
    assert parse_iso(again["expires_at"]) > first_expiry + 1.5

    time.sleep(max(0.0, first_expiry - time.time()) + 1.2)  # past the first expiry + the worker's tick
    frames_short = settled(lambda: len(gw.on(short["topic"])))  # its QoS 0 frames may lag
    frames_renewed = len(gw.on(renewed["topic"]))
    time.sleep(1.0)
    assert len(gw.on(short["topic"])) == frames_short, "the unrenewed session went on past expires_at"
    assert frames_short >= 2  # 1 s at 5 fps, less its start-up
    assert len(gw.on(renewed["topic"])) > frames_renewed, "the renewed session stopped"
    err = error_of(lambda: police.request("stream.stop", {"session": short["session"]}))
    assert err.code == "not_found"
    assert police.request("stream.stop", {"session": renewed["session"]}) == {}
    props = gw.on(short["topic"])[0].user_properties
    assert props["seq"] == "0"
    assert abs(parse_iso(props["ts"]) - time.time()) < 10


def test_stream_sessions_beyond_the_limit_are_busy(police: PlatformClient) -> None:
    args = {"camera": "cam-2", "fps": 1.0, "max_width": 160, "duration_s": 30.0}
    sessions = [police.request("stream.start", args)["session"] for _ in range(2)]
    try:
        err = error_of(lambda: police.request("stream.start", args))
        assert err.code == "busy"
        assert "limit 2" in err.message
        police.request("stream.stop", {"session": sessions.pop()})
        sessions.append(police.request("stream.start", args)["session"])
    finally:
        for s in sessions:
            police.request("stream.stop", {"session": s})


# -- locate ------------------------------------------------------------------------------------------


def test_locate_nearest_first_filtered_by_agency(gw: Gateway, police: PlatformClient) -> None:
    hits = police.locate(*EAST_OF_BOTH)["cameras"]
    assert [h["camera"] for h in hits] == ["cam-1", "cam-2"]
    assert 40 < hits[0]["distance_m"] < 50
    assert 125 < hits[1]["distance_m"] < 140
    assert all(85 < h["bearing_deg"] < 95 for h in hits)
    assert gw.sub.wait_for(
        lambda msgs: all(any(m.topic == h["snapshot_topic"] for m in msgs) for h in hits), 5
    )
    jpeg = next(m.payload for m in gw.sub.messages if m.topic == hits[0]["snapshot_topic"])
    assert_left_quarter_blank(decode(jpeg))

    assert [h["camera"] for h in police.locate(*EAST_OF_BOTH, radius_m=100)["cameras"]] == ["cam-1"]
    assert police.locate(37.51, 127.0)["cameras"] == []  # 1.1 km north: nobody sees it
    with gw.client("fire") as fire:
        assert [h["camera"] for h in fire.locate(*EAST_OF_BOTH)["cameras"]] == ["cam-2"]


# -- clips ---------------------------------------------------------------------------------------------


def test_clip_commands_answer_sensibly(gw: Gateway, police: PlatformClient, tmp_path: Path) -> None:
    now = time.time()
    bad = error_of(lambda: police.clip_export("cam-1", iso(now - 1), iso(now - 2)))
    assert bad.code == "bad_request"
    assert "end must be after start" in bad.message
    forbidden = error_of(lambda: police.clip_export("cam-3", iso(now - 2), iso(now - 1)))
    assert forbidden.code == "forbidden"
    missing = error_of(lambda: police.request("clip.fetch", {"clip_id": str(uuid.uuid4())}))
    assert missing.code == "not_found"
    malformed = error_of(lambda: police.request("clip.fetch", {"clip_id": "../../etc/passwd"}))
    assert malformed.code == "bad_request"
    body = police.envelope("clip.export", {"camera": "cam-1", "start": iso(now - 3), "end": iso(now - 1)})
    reply = police.send_raw(json.dumps(body).encode(), body["id"], timeout=30)
    assert reply["ok"], reply
    info = reply["result"]
    assert info["bytes"] > 0
    out = tmp_path / "clip.mp4"
    fetched = police.clip_fetch(info["clip_id"], out, chunk_bytes=16 * 1024, timeout=30)
    assert fetched["sha256"] == info["sha256"]
    assert out.stat().st_size == info["bytes"]
    held = police.clip_hold("cam-1", iso(now - 3), iso(now - 1), iso(now + 3600))
    assert held["camera"] == "cam-1"


# -- error codes ------------------------------------------------------------------------------------


def test_every_error_code_reachable_from_outside(gw: Gateway, police: PlatformClient) -> None:
    def raw(payload: bytes) -> dict[str, Any]:
        return police.send_raw(payload, str(uuid.uuid4()))

    def code(reply: dict[str, Any]) -> str:
        assert reply["ok"] is False
        assert set(reply) == {"id", "ok", "error"}
        assert reply["error"]["code"] in ERROR_CODES
        return str(reply["error"]["code"])

    assert code(raw(b"{not json")) == "bad_request"
    assert code(raw(b"\xff\xfe")) == "bad_request"
    no_requester = police.envelope("ping")
    del no_requester["requester"]
    reply = raw(json.dumps(no_requester).encode())
    assert code(reply) == "bad_request"
    assert reply["id"] == no_requester["id"]
    assert "requester" in reply["error"]["message"]
    wrong_type = error_of(lambda: police.request("snapshot", {"camera": "cam-1", "max_width": "wide"}))
    assert wrong_type.code == "bad_request"
    assert "args.max_width" in wrong_type.message

    assert error_of(lambda: police.request("reboot")).code == "unknown_command"
    assert error_of(lambda: police.snapshot("cam-9")).code == "not_found"
    assert error_of(lambda: police.snapshot("cam-3")).code == "forbidden"
    assert error_of(lambda: police.config_set({"streams": {"max_sessions": 3}})).code == "forbidden"
    expired = error_of(lambda: police.request("snapshot", {"camera": "cam-1"}, issued_at=time.time() - 120))
    assert expired.code == "expired"
    # busy: test_stream_sessions_beyond_the_limit_are_busy; internal: see the module docstring.


def test_repeated_id_gets_the_first_reply_and_runs_once(gw: Gateway, police: PlatformClient) -> None:
    rid = "snap-" + uuid.uuid4().hex
    first = police.request("snapshot", {"camera": "cam-2", "max_width": 64}, request_id=rid)
    time.sleep(0.2)
    second = police.request("snapshot", {"camera": "cam-2", "max_width": 64}, request_id=rid)
    assert second == first
    time.sleep(0.5)
    assert len([m for m in gw.sub.messages if m.topic == first["topic"]]) == 1
    audits = [m.json() for m in gw.on("/audit") if m.json()["id"] == rid]
    assert len(audits) == 1


# -- MQTT 3.1.1 ------------------------------------------------------------------------------------------


def test_mqtt311_client_gets_replies_via_reply_to(gw: Gateway) -> None:
    with gw.client("police", protocol="3.1.1") as old:
        assert old.ping()["uptime_s"] > 0
        _result, jpeg = old.snapshot("cam-1", max_width=160)
        assert decode(jpeg).shape[1] == 160
        assert error_of(lambda: old.snapshot("cam-3")).code == "forbidden"


def test_agent_on_mqtt311(tmp_path: Path, broker: Broker) -> None:
    cams = '[[cameras]]\nid = "cam-1"\nsource = "synthetic:street?fps=10"\nallowed_agencies = ["police"]\n'
    g = start_gateway(tmp_path, broker, cams, protocol="3.1.1")
    try:
        protocols: tuple[Literal["5", "3.1.1"], ...] = ("5", "3.1.1")
        for protocol in protocols:  # a v5 client is answered through reply_to as well
            with g.client("police", protocol=protocol) as c:
                wait_answering(c)
                wait_frames(c, "cam-1")
                with c.stream("cam-1", 1.0, fps=5, max_width=160) as live:
                    frames = list(live)
                assert len(frames) >= 2
                assert [f.seq for f in frames] == list(range(len(frames)))  # counted: no user properties
                assert all(f.ts is None for f in frames)
    finally:
        stop_gateway(g)


# -- audit -------------------------------------------------------------------------------------------------


def edge_agent(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_audit_records_published_logged_and_verifiable(
    gw: Gateway, police: PlatformClient, tmp_path: Path
) -> None:
    ok_id, denied_id, cfg_id = (f"audit-{n}-{uuid.uuid4().hex[:8]}" for n in ("ok", "denied", "cfg"))
    police.request("snapshot", {"camera": "cam-1", "max_width": 64}, request_id=ok_id)
    error_of(lambda: police.request("snapshot", {"camera": "cam-3"}, request_id=denied_id))
    error_of(lambda: police.request("config.set", {"streams": {"max_sessions": 1}}, request_id=cfg_id))
    police.ping()  # not audited

    ids = {ok_id: ("cam-1", "ok"), denied_id: ("cam-3", "forbidden"), cfg_id: (None, "forbidden")}
    assert gw.sub.wait_for(lambda _: {r.json()["id"] for r in gw.on("/audit")} >= set(ids), 5)
    published = {r.json()["id"]: r.json() for r in gw.on("/audit")}
    for rid, (camera, outcome) in ids.items():
        rec = published[rid]
        assert (rec["camera"], rec["outcome"]) == (camera, outcome)
        assert rec["requester"] == {"agency": "police", "operator": "op-7", "incident": "112-2026-000123"}
    log = gw.data_dir / "audit" / "audit.log"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["hash"] for r in published.values()} <= {r["hash"] for r in lines}
    assert all(r["cmd"] != "ping" for r in lines)

    verified = edge_agent("audit", "verify", str(gw.data_dir))
    assert verified.returncode == 0, verified.stderr
    assert "OK" in verified.stdout

    tampered = tmp_path / "audit.log"
    shutil.copy(log, tampered)
    rows = tampered.read_text().splitlines()
    n = next(i for i, r in enumerate(rows) if json.loads(r)["id"] == denied_id)
    rows[n] = rows[n].replace('"outcome":"forbidden"', '"outcome":"ok"')
    tampered.write_text("\n".join(rows) + "\n")
    broken = edge_agent("audit", "verify", str(tampered))
    assert broken.returncode == 1
    assert f"line {n + 1}" in broken.stderr


# -- settings: applied, persisted, reported, limits -------------------------------------------------


def test_config_set_applied_persisted_and_reported_across_a_restart(tmp_path: Path, broker: Broker) -> None:
    cams = (
        '[[cameras]]\nid = "cam-1"\nsource = "synthetic:street?fps=10"\nallowed_agencies = ["police"]\n'
        "motion = { threshold = 25 }\n"
    )
    g = start_gateway(tmp_path, broker, cams)
    try:
        with g.client("admin") as admin:
            wait_answering(admin)
            new = admin.config_set({"cameras": {"cam-1": {"motion": {"threshold": 40}}}})
            assert new["cameras"]["cam-1"]["motion"]["threshold"] == 40
            assert admin.config_get()["cameras"]["cam-1"]["motion"]["threshold"] == 40
            bad = error_of(lambda: admin.config_set({"cameras": {"cam-1": {"motion": {"threshold": 999}}}}))
            assert bad.code == "bad_request"
            assert "cameras.cam-1.motion.threshold" in bad.message
            unknown = error_of(
                lambda: admin.config_set({"cameras": {"cam-9": {"motion": {"threshold": 30}}}})
            )
            assert unknown.code == "bad_request"
            assert admin.config_get()["cameras"]["cam-1"]["motion"]["threshold"] == 40

            # the bandwidth cap: a full-quality stream cannot fit into 10 kB/s
            admin.config_set({"streams": {"max_bytes_per_s": 10_000}})
            with g.client("police") as police:
                wait_frames(police, "cam-1")
                err = error_of(
                    lambda: police.request(
                        "stream.start", {"camera": "cam-1", "quality": 100, "max_width": 640}
                    )
                )
                assert err.code == "busy"
                assert "kB/s" in err.message
        assert g.sub.wait_for(
            lambda _: any(m.json()["streams"]["max_bytes_per_s"] == 10_000 for m in g.on("/config/reported")),
            5,
        )
        code, _ = g.agent.terminate()
        assert code == 0
        g.agent.close()

        g.agent = AgentProcess(g.config, tmp_path / "agent2.log", log_level="info")
        with g.client("police") as police:
            wait_answering(police)
            settings = police.config_get()
            assert settings["cameras"]["cam-1"]["motion"]["threshold"] == 40
            assert settings["streams"]["max_bytes_per_s"] == 10_000
        late = Subscriber(broker.host, broker.port, g.root + "/config/reported")  # sees the retained copy
        try:
            assert late.wait_for(bool, 5)
            reported = late.messages[0]
            assert reported.retain
            assert reported.json()["cameras"]["cam-1"]["motion"]["threshold"] == 40
            assert reported.json()["streams"]["max_bytes_per_s"] == 10_000
        finally:
            late.close()
    finally:
        stop_gateway(g)


# -- edge-agent ctl -------------------------------------------------------------------------------------


def test_ctl_subcommands_and_exit_codes(gw: Gateway, tmp_path: Path) -> None:
    # 30 s: the agent's two command workers also run the clip commands' ffmpeg, so on a loaded
    # machine an answer can take seconds; only "nobody-there" keeps a short timeout.
    base = ["ctl", "--port", str(gw.broker.port), "--root", gw.root, "--operator", "op-7", "--timeout", "30"]
    police = [*base, "--agency", "police"]
    runs: dict[str, tuple[list[str], int]] = {
        "ping": ([*police, "ping"], 0),
        "describe": ([*police, "describe"], 0),
        "snapshot": ([*police, "snapshot", "cam-1", "-o", str(tmp_path / "s.jpg"), "--max-width", "320"], 0),
        "stream": (
            [*police, "stream", "cam-2", "--seconds", "1", "--fps", "5", "-o", str(tmp_path / "st")],
            0,
        ),
        "locate": ([*police, "locate", str(EAST_OF_BOTH[0]), str(EAST_OF_BOTH[1])], 0),
        "config-get": ([*police, "--json", "config", "get"], 0),
        "config-set-forbidden": ([*police, "config", "set", "cameras.cam-1.motion.threshold=30"], 1),
        "config-set-admin": (
            [*base, "--agency", "admin", "config", "set", "cameras.cam-2.motion.min_area=0.001"],
            0,
        ),
        "config-set-json": (
            [
                *base,
                "--agency",
                "admin",
                "config",
                "set",
                "--json",
                '{"cameras":{"cam-3":{"detection":{"score_threshold":0.6}}}}',
            ],
            0,
        ),
        "config-set-usage": ([*base, "--agency", "admin", "config", "set", "no-equals-sign"], 2),
        "snapshot-unknown": ([*police, "snapshot", "cam-9", "-o", str(tmp_path / "x.jpg")], 1),
        "nobody-there": (
            ["ctl", *base[1:4], f"{gw.root}-x", "--agency", "police", "--timeout", "1", "ping"],
            3,
        ),
        "no-broker": (["ctl", "--port", "1", "--root", gw.root, "--agency", "police", "ping"], 3),
    }
    slow: dict[str, tuple[list[str], int]] = {  # ffmpeg on the command workers: after the others
        "clip-export": (
            [*police, "clip", "export", "cam-1", "now-3s", "now-1s"],
            -1,
        ),  # 0, or 1 without a store
        "clip-hold": ([*police, "clip", "hold", "cam-1", "now-3s", "now-1s", "now+1d"], -1),
    }
    out: dict[str, tuple[int, str, str]] = {}
    for batch in (runs, slow):
        procs = {
            name: subprocess.Popen(
                [sys.executable, "-m", "agent", *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, (argv, _) in batch.items()
        }
        for name, p in procs.items():
            stdout, stderr = p.communicate(timeout=60)
            out[name] = (p.returncode, stdout, stderr)
    runs |= slow
    for name, (_, expected) in runs.items():
        if expected >= 0:
            assert out[name][0] == expected, (name, out[name])
    assert "pong from" in out["ping"][1]
    assert "cam-3" in out["describe"][1]
    assert decode((tmp_path / "s.jpg").read_bytes()).shape[1] == 320
    assert len(list((tmp_path / "st").glob("*.jpg"))) >= 2
    assert out["locate"][1].split()[0] == "cam-1"
    assert "cameras" in json.loads(out["config-get"][1])
    assert "forbidden" in out["config-set-forbidden"][2]
    assert "not_found" in out["snapshot-unknown"][2]
    assert out["clip-export"][0] == 0 or "not_found" in out["clip-export"][2]
    assert out["clip-hold"][0] == 0 or "not_found" in out["clip-hold"][2]
    with gw.client() as police_client:
        settings = police_client.config_get()["cameras"]
    assert settings["cam-2"]["motion"]["min_area"] == 0.001
    assert settings["cam-3"]["detection"]["score_threshold"] == 0.6


# -- the client under concurrency -----------------------------------------------------------------


def test_one_client_shared_by_threads_gets_each_its_own_reply(police: PlatformClient) -> None:
    results: list[tuple[int, dict[str, Any]]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        try:
            for _ in range(10):
                r = police.request("describe") if n % 2 else police.ping()
                with lock:
                    results.append((n, r))
        except (CommandFailed, NoReply) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(results) == 60
    for n, r in results:
        assert ("gateway" in r) == bool(n % 2)
