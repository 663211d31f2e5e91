"""`config/reported` is retained: the last report published is what the platform reads back after
a `config.set`. A reconnect reports from paho's thread while a command worker applies a change;
the older report must not reach the broker after the newer one."""

from __future__ import annotations

import json
from pathlib import Path

from agent.config import parse_config
from agent.config.settings import SettingsStore
from agent.runtime.camera import CameraWorker
from agent.runtime.settings import SettingsApplier, SharedDetector
from tests.test_camera_status_order import SlowSink


def test_a_reconnects_report_never_follows_a_newer_config_set(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "gateway": {"district": "gangnam", "id": "gw-01"},
            "cameras": [{"id": "cam-1", "source": "synthetic:street"}],
        }
    )
    worker = CameraWorker(cfg.cameras[0], lambda _c, _s: None, lambda _c, _p: None)
    reports: list[int] = []
    sink = SlowSink()
    sink.arm()

    def publish(payload: bytes) -> None:
        threshold = json.loads(payload)["cameras"]["cam-1"]["motion"]["threshold"]
        sink.hold()  # the reconnect's report is slow to reach the outbox
        reports.append(threshold)

    applier = SettingsApplier(
        SettingsStore(cfg, tmp_path / "settings.json"), {"cam-1": worker}, SharedDetector(None), publish
    )
    before = applier.current.cameras["cam-1"].motion.threshold
    sink.race(applier.report, lambda: applier.apply({"cameras": {"cam-1": {"motion": {"threshold": 40}}}}))

    assert before != 40
    assert applier.current.cameras["cam-1"].motion.threshold == 40
    assert reports[-1] == 40, reports
