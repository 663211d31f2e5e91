"""locate: cameras whose view covers a point, nearest first, only those the agency may see.

Expected distances and bearings were computed independently with GeographicLib (Karney's
algorithm, WGS84), not with agent.commands.geo.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import iso
from agent.commands.audit import AuditLog
from agent.commands.dispatcher import Dispatcher
from agent.config import parse_config
from tests.test_commands_dispatcher import NOW, RESP, ROOT, req
from tests.test_commands_gateway import T0, FakeGateway, bikes_frames

TARGET = {"lat": 37.5700, "lon": 126.9780}


def camera(
    cid: str, lat: float, lon: float, heading: float, fov: float, rng: float, **kw: Any
) -> dict[str, Any]:
    return {
        "id": cid,
        "source": "synthetic:street",
        "allowed_agencies": kw.get("agencies", ["police"]),
        "geo": {"lat": lat, "lon": lon, "heading_deg": heading, "fov_deg": fov, "range_m": rng},
    }


CAMERAS = [
    camera("far", 37.5700, 126.9837, 270, 40, 800),  # 503.5541 m, bearing 270.001738 → covers
    camera("near", 37.5691, 126.9780, 0, 60, 300),  # 99.8895 m, bearing 0 → covers
    camera("away", 37.5718, 126.9780, 0, 90, 500),  # 199.7791 m, bearing 180, faces north → not
    camera("short", 37.5700, 126.9758, 90, 90, 150),  # 194.3542 m > range 150 → not
    camera("outside", 37.5610, 126.9780, 0, 90, 2000),  # 998.8944 m, beyond radius 600 → not
    camera("edge", 37.5700, 126.9837, 250, 40, 800),  # bearing 270.0017 just outside 250 ± 20 → not
    camera("fire-only", 37.5691, 126.9780, 0, 60, 300, agencies=["fire"]),  # covers, but not police's
    {"id": "no-geo", "source": "synthetic:street", "allowed_agencies": ["police"]},
]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[FakeGateway, Dispatcher, AuditLog]]:
    cfg = parse_config({"gateway": {"district": "gangnam", "id": "gw-01"}, "cameras": CAMERAS})
    frames = {c["id"]: bikes_frames(3) for c in CAMERAS}
    frames["far"] = []  # covers the point but has no picture yet
    gw = FakeGateway(cfg, frames)
    with AuditLog.in_data_dir(tmp_path) as audit:
        yield gw, Dispatcher(gw, audit, clock=lambda: NOW), audit


def locate(
    d: Dispatcher, args: dict[str, Any], agency: str = "police", rid: str = "l-1"
) -> list[dict[str, Any]]:
    body = req("locate", args, id=rid)
    body["requester"]["agency"] = agency
    out = d.handle(json.dumps(body).encode(), RESP, None)
    assert out is not None
    reply = json.loads(out[1])
    assert reply["ok"] is True, reply
    hits: list[dict[str, Any]] = reply["result"]["cameras"]
    return hits


def test_nearest_first_with_known_distances(setup: tuple[FakeGateway, Dispatcher, AuditLog]) -> None:
    _, d, _ = setup
    hits = locate(d, {**TARGET, "radius_m": 600})
    assert [h["camera"] for h in hits] == ["near", "far"]
    assert hits[0]["distance_m"] == pytest.approx(99.8895, abs=0.01)
    assert hits[0]["bearing_deg"] == pytest.approx(0.0, abs=0.01)
    assert hits[1]["distance_m"] == pytest.approx(503.5541, abs=0.01)
    assert hits[1]["bearing_deg"] == pytest.approx(270.0017, abs=0.01)


def test_each_hit_gets_a_fresh_snapshot(setup: tuple[FakeGateway, Dispatcher, AuditLog]) -> None:
    gw, d, audit = setup
    near, far = locate(d, {**TARGET, "radius_m": 600})
    assert near["snapshot_topic"] == ROOT + "/cam/near/snapshot/l-1"
    assert [m.topic for m in gw.on("/snapshot/l-1")] == [near["snapshot_topic"]]
    assert far["snapshot_topic"] is None  # no frame: listed, but nothing to show
    records = [json.loads(line) for line in audit.path.read_text().splitlines()]
    assert [(r["cmd"], r["camera"], r["outcome"]) for r in records] == [("locate", "near", "ok")]


def test_radius_limits_the_search(setup: tuple[FakeGateway, Dispatcher, AuditLog]) -> None:
    _, d, _ = setup
    assert [h["camera"] for h in locate(d, {**TARGET, "radius_m": 1000})] == ["near", "far", "outside"]
    assert [h["camera"] for h in locate(d, {**TARGET, "radius_m": 99.0}, rid="l-2")] == []
    assert [h["camera"] for h in locate(d, TARGET, rid="l-3")] == ["near"]  # default radius 200


def test_only_cameras_the_agency_may_see(setup: tuple[FakeGateway, Dispatcher, AuditLog]) -> None:
    _, d, audit = setup
    assert [h["camera"] for h in locate(d, {**TARGET, "radius_m": 600}, agency="fire")] == ["fire-only"]
    assert [h["camera"] for h in locate(d, {**TARGET, "radius_m": 600}, agency="press", rid="l-2")] == []
    records = [json.loads(line) for line in audit.path.read_text().splitlines()]
    assert [(r["camera"], r["requester"]["agency"]) for r in records] == [
        ("fire-only", "fire"),
        (None, "press"),
    ]


def test_at_uses_buffered_frames(setup: tuple[FakeGateway, Dispatcher, AuditLog]) -> None:
    gw, d, _ = setup
    (hit,) = locate(d, {**TARGET, "at": iso(T0 - 3600)})
    assert hit["snapshot_topic"] is None
    assert gw.on("/snapshot/l-1") == []
    (hit,) = locate(d, {**TARGET, "at": iso(T0 + 0.04)}, rid="l-2")
    (msg,) = gw.on("/snapshot/l-2")
    assert msg.properties is not None
    assert msg.properties["ts"] == iso(T0 + 0.04)
