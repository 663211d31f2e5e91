"""Where a PTZ camera must point to see a place on the ground: ptz.look_at's geometry.

The bearing and distance come from `geo.inverse` (Vincenty on WGS84), so `locate` and `look_at`
agree on where a point is. The point is taken to be on the ground at the camera's foot level:
it lies `height_m` below the camera, plus the drop of the Earth's curvature over the distance
(d²/2R: 8 m at 10 km, where it changes the angle by 0.05°), and its depression below the
horizon is atan((height + drop) / distance). The camera's calibration (agent.config.cameras.PtzConfig)
turns bearing and depression into ONVIF's generic pan/tilt (-1..1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.commands.geo import AT_CAMERA_M, MEAN_RADIUS_M, inverse
from agent.commands.models import CommandError
from agent.config import GeoConfig
from agent.config.cameras import PtzConfig

SLACK = 1e-6  # rounding at the ends of the -1..1 range


@dataclass(frozen=True, slots=True)
class Aim:
    """The ONVIF position that shows a point, and the geometry it came from."""

    pan: float  # generic space, -1..1
    tilt: float  # generic space, -1..1
    bearing_deg: float  # from the camera to the point, from north
    distance_m: float  # geodesic, along the ground
    depression_deg: float  # below the horizon


def depression_deg(height_m: float, distance_m: float) -> float:
    """Angle below the horizon of a ground point `distance_m` away from a camera `height_m` up."""
    drop = distance_m * distance_m / (2.0 * MEAN_RADIUS_M)
    return math.degrees(math.atan2(height_m + drop, distance_m))


def aim(camera: str, geo: GeoConfig, ptz: PtzConfig, lat: float, lon: float) -> Aim:
    """The pan/tilt showing (lat, lon); bad_request when the camera cannot turn that far."""
    g = inverse(geo.lat, geo.lon, lat, lon)
    bearing = geo.heading_deg if g.distance_m < AT_CAMERA_M else g.bearing_deg  # straight down
    depression = 90.0 if g.distance_m < AT_CAMERA_M else depression_deg(ptz.height_m, g.distance_m)
    turn = (bearing - ptz.pan0_heading_deg + 180.0) % 360.0 - 180.0  # -180..180, clockwise
    candidates = [turn / ptz.pan_deg_per_unit, (turn - 360.0) / ptz.pan_deg_per_unit]
    candidates.append((turn + 360.0) / ptz.pan_deg_per_unit)
    reachable = [p for p in candidates if abs(p) <= 1.0 + SLACK]
    if not reachable:
        span = abs(ptz.pan_deg_per_unit)
        raise CommandError(
            "bad_request",
            f"camera {camera!r} cannot turn to bearing {bearing:.1f}° (its pan covers"
            f" {ptz.pan0_heading_deg:g}° ± {span:g}°)",
        )
    pan = min(reachable, key=abs)
    tilt = (depression - ptz.tilt0_depression_deg) / ptz.tilt_deg_per_unit
    if abs(tilt) > 1.0 + SLACK:
        low = ptz.tilt0_depression_deg - abs(ptz.tilt_deg_per_unit)
        high = ptz.tilt0_depression_deg + abs(ptz.tilt_deg_per_unit)
        raise CommandError(
            "bad_request",
            f"camera {camera!r} cannot tilt to {depression:.1f}° below the horizon (it covers"
            f" {low:g}°..{high:g}°); the point is {g.distance_m:.0f} m away",
        )
    return Aim(
        pan=max(-1.0, min(1.0, pan)),
        tilt=max(-1.0, min(1.0, tilt)),
        bearing_deg=bearing,
        distance_m=g.distance_m,
        depression_deg=depression,
    )
