"""A parked car that pulls out slowly, on real imagery (tests/scenes.py) through the vendored model:
its motion region holds the car and the place it is leaving, the crop around both is scaled down,
and the model loses the car while its box still overlaps the parked one (docs/objects.md)."""

from __future__ import annotations

from pathlib import Path

from tests.scenes import write_pulling_out
from tests.test_objects_budget import run


def test_a_parked_car_pulling_out_slowly_is_one_event(tmp_path: Path) -> None:
    video = write_pulling_out(tmp_path / "pulling_out.mp4", parked_s=12.0, seconds=20.0)
    phases, stats, _ = run(video)  # default settings: stationary after 10 s
    assert stats.analysed == 200
    assert phases == [("start", "car"), ("end", "car")]


def test_a_car_parked_throughout_raises_nothing(tmp_path: Path) -> None:
    video = write_pulling_out(tmp_path / "parked.mp4", parked_s=20.0, seconds=12.0)
    phases, stats, _ = run(video)
    assert stats.analysed == 120
    assert phases == []
