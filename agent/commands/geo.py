"""Distances and bearings on the WGS84 ellipsoid, and whether a camera's view covers a point.

`inverse` uses Vincenty's inverse formula (1975), accurate to about 0.5 mm on WGS84. It does not
converge for nearly antipodal points, where we fall back to the haversine formula on the mean
Earth radius (error up to ~0.5 %); cameras see at most 10 km, so locate never gets there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.config import GeoConfig

WGS84_A = 6_378_137.0  # semi-major axis, m
WGS84_F = 1 / 298.257223563  # flattening
WGS84_B = WGS84_A * (1 - WGS84_F)
MEAN_RADIUS_M = 6_371_008.8  # IUGG mean radius, for the haversine fallback
AT_CAMERA_M = 0.5  # closer than this the point is taken to be at the camera (bearing undefined)


@dataclass(frozen=True, slots=True)
class Geodesic:
    distance_m: float
    bearing_deg: float  # initial bearing from the first point to the second, 0..360 from north


def inverse(lat1: float, lon1: float, lat2: float, lon2: float) -> Geodesic:
    """Distance and initial bearing from point 1 to point 2 (degrees, WGS84)."""
    f, a, b = WGS84_F, WGS84_A, WGS84_B
    big_l = math.radians(_wrap180(lon2 - lon1))
    u1 = math.atan((1 - f) * math.tan(math.radians(lat1)))
    u2 = math.atan((1 - f) * math.tan(math.radians(lat2)))
    sin_u1, cos_u1 = math.sin(u1), math.cos(u1)
    sin_u2, cos_u2 = math.sin(u2), math.cos(u2)
    lam = big_l
    for _ in range(200):
        sin_lam, cos_lam = math.sin(lam), math.cos(lam)
        sin_sigma = math.hypot(cos_u2 * sin_lam, cos_u1 * sin_u2 - sin_u1 * cos_u2 * cos_lam)
        if sin_sigma == 0.0:
            return Geodesic(0.0, 0.0)  # the same point
        cos_sigma = sin_u1 * sin_u2 + cos_u1 * cos_u2 * cos_lam
        sigma = math.atan2(sin_sigma, cos_sigma)
        sin_alpha = cos_u1 * cos_u2 * sin_lam / sin_sigma
        cos2_alpha = 1 - sin_alpha * sin_alpha
        cos_2sm = cos_sigma - 2 * sin_u1 * sin_u2 / cos2_alpha if cos2_alpha != 0.0 else 0.0
        c = f / 16 * cos2_alpha * (4 + f * (4 - 3 * cos2_alpha))
        lam_prev = lam
        lam = big_l + (1 - c) * f * sin_alpha * (
            sigma + c * sin_sigma * (cos_2sm + c * cos_sigma * (-1 + 2 * cos_2sm * cos_2sm))
        )
        if abs(lam - lam_prev) < 1e-12:
            break
    else:
        return haversine(lat1, lon1, lat2, lon2)
    u_sq = cos2_alpha * (a * a - b * b) / (b * b)
    big_a = 1 + u_sq / 16384 * (4096 + u_sq * (-768 + u_sq * (320 - 175 * u_sq)))
    big_b = u_sq / 1024 * (256 + u_sq * (-128 + u_sq * (74 - 47 * u_sq)))
    delta_sigma = (
        big_b
        * sin_sigma
        * (
            cos_2sm
            + big_b
            / 4
            * (
                cos_sigma * (-1 + 2 * cos_2sm * cos_2sm)
                - big_b / 6 * cos_2sm * (-3 + 4 * sin_sigma * sin_sigma) * (-3 + 4 * cos_2sm * cos_2sm)
            )
        )
    )
    distance = b * big_a * (sigma - delta_sigma)
    alpha1 = math.atan2(cos_u2 * sin_lam, cos_u1 * sin_u2 - sin_u1 * cos_u2 * cos_lam)
    return Geodesic(distance, math.degrees(alpha1) % 360.0)


def haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> Geodesic:
    """Great-circle distance and initial bearing on a sphere of the mean Earth radius."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(_wrap180(lon2 - lon1))
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    distance = 2 * MEAN_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return Geodesic(distance, math.degrees(math.atan2(y, x)) % 360.0)


def angle_between(a_deg: float, b_deg: float) -> float:
    """Smallest absolute difference between two bearings, 0..180."""
    d = abs(a_deg - b_deg) % 360.0
    return 360.0 - d if d > 180.0 else d


def covers(geo: GeoConfig, lat: float, lon: float) -> Geodesic | None:
    """The camera-to-point geodesic when the camera sees the point, else None.

    The point is seen when it lies within `range_m` of the camera and within `fov_deg / 2` of
    `heading_deg` (edges included); a point within half a metre of the camera always counts.
    """
    g = inverse(geo.lat, geo.lon, lat, lon)
    if g.distance_m > geo.range_m:
        return None
    if g.distance_m < AT_CAMERA_M or geo.fov_deg >= 360.0:
        return g
    return g if angle_between(g.bearing_deg, geo.heading_deg) <= geo.fov_deg / 2 else None


def _wrap180(deg: float) -> float:
    return (deg + 180.0) % 360.0 - 180.0
