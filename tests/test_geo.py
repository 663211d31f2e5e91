"""Geodesics against values computed independently with GeographicLib (WGS84), and coverage rules."""

from __future__ import annotations

import pytest

from agent.commands.geo import angle_between, covers, haversine, inverse
from agent.config import GeoConfig

CITY_HALL = (37.566535, 126.977969)
GWANGHWAMUN = (37.575929, 126.976849)
NAMSAN = (37.551169, 126.988227)
GANGNAM = (37.497942, 127.027621)


@pytest.mark.parametrize(
    ("a", "b", "distance", "bearing"),
    [
        (CITY_HALL, GWANGHWAMUN, 1047.3090, 354.579357),
        (GWANGHWAMUN, CITY_HALL, 1047.3090, 174.578674),
        (CITY_HALL, NAMSAN, 1931.3259, 152.008523),
        (CITY_HALL, GANGNAM, 8787.3376, 150.022941),
        ((37.5665, 126.9780), (37.5665, 126.9790), 88.346966, 89.999695),
        ((37.5665, 126.9780), (37.5675, 126.9780), 110.988299, 0.0),
        ((-33.8688, 151.2093), (51.5074, -0.1278), 16989295.7705, 319.292633),  # Sydney → London
    ],
)
def test_vincenty_matches_geographiclib(
    a: tuple[float, float], b: tuple[float, float], distance: float, bearing: float
) -> None:
    g = inverse(*a, *b)
    assert g.distance_m == pytest.approx(distance, abs=0.001)
    assert angle_between(g.bearing_deg, bearing) < 1e-5


def test_same_point_is_zero() -> None:
    assert inverse(*CITY_HALL, *CITY_HALL).distance_m == 0.0


def test_nearly_antipodal_falls_back_without_failing() -> None:
    g = inverse(0.0, 0.0, 0.5, 179.7)  # Vincenty does not converge here
    assert g.distance_m == pytest.approx(19944127.42, rel=0.005)  # GeographicLib's value


def test_haversine_is_within_half_a_percent() -> None:
    g = haversine(*CITY_HALL, *NAMSAN)
    assert g.distance_m == pytest.approx(1931.3259, rel=0.005)


def test_angle_between_wraps() -> None:
    assert angle_between(350, 10) == 20
    assert angle_between(10, 350) == 20
    assert angle_between(0, 180) == 180


def geo(heading: float, fov: float, rng: float) -> GeoConfig:
    return GeoConfig(lat=37.5700, lon=126.9837, heading_deg=heading, fov_deg=fov, range_m=rng)


TARGET = (37.5700, 126.9780)  # 503.5541 m away at bearing 270.001738


@pytest.mark.parametrize(
    ("heading", "fov", "rng", "seen"),
    [
        (270, 10, 600, True),
        (250, 40, 600, False),  # edge at 270.0000, the point is 0.0017° beyond
        (250, 40.01, 600, True),
        (289.999, 40, 600, True),  # lower edge at 269.999
        (290.003, 40, 600, False),  # lower edge at 270.003
        (90, 90, 600, False),  # facing away
        (90, 360, 600, True),  # all-round camera
        (270, 10, 503.5, False),  # 5 cm short
        (270, 10, 503.6, True),
    ],
)
def test_covers(heading: float, fov: float, rng: float, seen: bool) -> None:
    assert (covers(geo(heading, fov, rng), *TARGET) is not None) is seen


def test_point_at_the_camera_is_covered_whatever_the_heading() -> None:
    assert covers(geo(90, 10, 50), 37.5700, 126.9837) is not None
