"""ptz.look_at: the pan/tilt sent to the camera is within 1° of the geometry, for a table of points.

The expected direction is computed independently of agent.commands.geo/aim: both points to
Earth-centred coordinates on WGS84 (the camera `height_m` above the ellipsoid, the point on it),
the difference turned into east/north/up at the camera, azimuth = atan2(E, N) and depression =
-atan2(U, horizontal). Then the camera's calibration gives the pan/tilt it should have been sent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.commands.aim import aim
from agent.commands.models import CommandError
from agent.config import GeoConfig
from agent.config.cameras import PtzConfig
from tests.onvif_fake import FakeOnvifCamera
from tests.test_ptz_commands import Site, make_site

A, F = 6_378_137.0, 1 / 298.257223563
E2 = F * (2 - F)
CAM = GeoConfig(lat=37.5665, lon=126.9780, heading_deg=90.0, fov_deg=90.0, range_m=500.0)


def ecef(lat: float, lon: float, h: float) -> tuple[float, float, float]:
    p, q = math.radians(lat), math.radians(lon)
    n = A / math.sqrt(1 - E2 * math.sin(p) ** 2)
    return (
        (n + h) * math.cos(p) * math.cos(q),
        (n + h) * math.cos(p) * math.sin(q),
        (n * (1 - E2) + h) * math.sin(p),
    )


def expected(geo: GeoConfig, height: float, lat: float, lon: float) -> tuple[float, float]:
    """(azimuth from north, depression below the horizon) in degrees, from ECEF/ENU."""
    cx, cy, cz = ecef(geo.lat, geo.lon, height)
    tx, ty, tz = ecef(lat, lon, 0.0)
    dx, dy, dz = tx - cx, ty - cy, tz - cz
    p, q = math.radians(geo.lat), math.radians(geo.lon)
    east = -math.sin(q) * dx + math.cos(q) * dy
    north = -math.sin(p) * math.cos(q) * dx - math.sin(p) * math.sin(q) * dy + math.cos(p) * dz
    up = math.cos(p) * math.cos(q) * dx + math.cos(p) * math.sin(q) * dy + math.sin(p) * dz
    azimuth = math.degrees(math.atan2(east, north)) % 360.0
    return azimuth, -math.degrees(math.atan2(up, math.hypot(east, north)))


def point(distance_m: float, bearing_deg: float) -> tuple[float, float]:
    """A point roughly `distance_m` away at `bearing_deg` (any point will do: the expected
    direction is computed from the point itself)."""
    b = math.radians(bearing_deg)
    lat = CAM.lat + distance_m * math.cos(b) / 111_132.0
    lon = CAM.lon + distance_m * math.sin(b) / (111_320.0 * math.cos(math.radians(CAM.lat)))
    return lat, lon


def angle(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


CALIBRATIONS = [
    PtzConfig(
        height_m=8.0,
        pan0_heading_deg=90.0,
        pan_deg_per_unit=180.0,
        tilt0_depression_deg=45.0,
        tilt_deg_per_unit=-45.0,
    ),
    PtzConfig(
        height_m=25.0,
        pan0_heading_deg=300.0,
        pan_deg_per_unit=-180.0,
        tilt0_depression_deg=0.0,
        tilt_deg_per_unit=90.0,
    ),
    PtzConfig(
        height_m=3.5,
        pan0_heading_deg=0.0,
        pan_deg_per_unit=190.0,
        tilt0_depression_deg=30.0,
        tilt_deg_per_unit=60.0,
    ),
]
TABLE = [
    (d, b)
    for d in (3.0, 12.0, 40.0, 150.0, 600.0, 2500.0, 9000.0)
    for b in (0.0, 37.0, 90.0, 179.0, 181.0, 268.0, 333.0)
]


@pytest.mark.parametrize("cal", CALIBRATIONS, ids=["dome", "reversed", "wall"])
def test_within_one_degree_of_the_geometry(cal: PtzConfig) -> None:
    worst_pan = worst_tilt = 0.0
    for distance, bearing in TABLE:
        lat, lon = point(distance, bearing)
        az, dep = expected(CAM, cal.height_m, lat, lon)
        got = aim("dome", CAM, cal, lat, lon)
        assert -1.0 <= got.pan <= 1.0
        assert -1.0 <= got.tilt <= 1.0
        heading = cal.pan0_heading_deg + got.pan * cal.pan_deg_per_unit  # where the camera will face
        looks = cal.tilt0_depression_deg + got.tilt * cal.tilt_deg_per_unit
        worst_pan = max(worst_pan, angle(heading, az))
        worst_tilt = max(worst_tilt, abs(looks - dep))
        assert angle(heading, az) < 1.0, (distance, bearing, heading, az)
        assert abs(looks - dep) < 1.0, (distance, bearing, looks, dep)
    assert worst_pan < 0.05  # in practice far inside the 1° the issue asks for
    assert worst_tilt < 0.05


def test_out_of_reach_is_bad_request() -> None:
    narrow = PtzConfig(pan0_heading_deg=90.0, pan_deg_per_unit=60.0)  # 30..150
    with pytest.raises(CommandError) as behind:
        aim("dome", CAM, narrow, *point(100.0, 270.0))
    assert behind.value.code == "bad_request"
    assert "bearing 27" in behind.value.message
    level = PtzConfig(height_m=10.0, tilt0_depression_deg=45.0, tilt_deg_per_unit=-30.0)  # 15..75 down
    with pytest.raises(CommandError) as far:
        aim("dome", CAM, level, *point(2000.0, 90.0))  # 0.3° below the horizon
    assert far.value.code == "bad_request"
    assert "tilt" in far.value.message


def test_straight_below_the_camera() -> None:
    got = aim("dome", CAM, CALIBRATIONS[0], CAM.lat, CAM.lon)
    assert got.depression_deg == 90.0
    assert got.tilt == pytest.approx(-1.0)


# -- through the command, to the camera ------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with FakeOnvifCamera() as cam:
        yield from make_site(tmp_path, cam)


def test_look_at_sends_the_absolute_move(site: Site) -> None:
    from tests.test_ptz_commands import GEO

    geo = GeoConfig(**GEO)
    target = (37.5, 127.0005)  # ~44 m east of the camera, which cam-1's locate test sees too
    result = site.ok("ptz.look_at", {"camera": "dome", "lat": target[0], "lon": target[1], "zoom": 0.5})
    az, dep = expected(geo, 10.0, *target)
    assert result["bearing_deg"] == pytest.approx(az, abs=0.05)
    assert result["depression_deg"] == pytest.approx(dep, abs=0.05)
    (call,) = site.camera.calls("AbsoluteMove")
    position: dict[str, Any] = call.params["Position"]
    pan, tilt = float(position["PanTilt"]["x"]), float(position["PanTilt"]["y"])
    assert angle(90.0 + pan * 180.0, az) < 1.0  # pan0_heading_deg 90, default 180°/unit
    assert abs(45.0 - 45.0 * tilt - dep) < 1.0  # default tilt calibration
    assert position["Zoom"] == {"x": "0.5"}
    assert site.camera.position()[:2] == pytest.approx((pan, tilt), abs=1e-5)
    records = [json.loads(line) for line in site.audit.path.read_text().splitlines()]
    assert [(r["cmd"], r["camera"], r["outcome"]) for r in records] == [("ptz.look_at", "dome", "ok")]


def test_look_at_without_geo(tmp_path: Path) -> None:
    from agent.commands.audit import AuditLog
    from agent.commands.dispatcher import Dispatcher
    from agent.config import parse_config
    from agent.onvif import PtzService
    from tests.test_commands_dispatcher import NOW, RESP, req
    from tests.test_ptz_commands import PtzGatewayStandIn

    with FakeOnvifCamera() as cam:
        cfg = parse_config(
            {
                "gateway": {"district": "gangnam", "id": "gw-01"},
                "cameras": [
                    {
                        "id": "dome",
                        "source": "synthetic:street",
                        "allowed_agencies": ["police"],
                        "ptz_agencies": ["police"],
                        "onvif": cam.url,
                        "ptz": {"status_poll_s": 0.0},  # nothing but the command may reach it
                    }
                ],
            }
        )
        service = PtzService.from_config(cfg.cameras, [])
        assert service is not None
        service.start()
        try:
            with AuditLog.in_data_dir(tmp_path) as audit:
                d = Dispatcher(PtzGatewayStandIn(cfg, service), audit, clock=lambda: NOW)
                out = d.handle(
                    json.dumps(req("ptz.look_at", {"camera": "dome", "lat": 37.5, "lon": 127.0})).encode(),
                    RESP,
                    None,
                )
                assert out is not None
                reply = json.loads(out[1])
                assert reply["error"]["code"] == "bad_request"
                assert "no geo" in reply["error"]["message"]
                assert cam.requests == []
        finally:
            service.stop()
