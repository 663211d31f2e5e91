"""`config/reported` is retained: the last report published is what the platform reads back after
a `config.set`. A reconnect reports from paho's thread while a command worker applies a change;
the older report must not reach the broker after the newer one."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from agent.config import parse_config
from agent.config.settings import SettingsStore
from agent.runtime.camera import CameraWorker
from agent.runtime.settings import SettingsApplier, SharedDetector


def test_a_reconnects_report_never_follows_a_newer_config_set(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "gateway": {"district": "gangnam", "id": "gw-01"},
            "cameras": [{"id": "cam-1", "source": "synthetic:street"}],
        }
    )
    worker = CameraWorker(cfg.cameras[0], lambda _c, _s: None, lambda _c, _p: None)
    reports: list[int] = []
    first_in_sink, release = threading.Event(), threading.Event()

    def publish(payload: bytes) -> None:
        threshold = json.loads(payload)["cameras"]["cam-1"]["motion"]["threshold"]
        if not first_in_sink.is_set():
            first_in_sink.set()
            release.wait(5.0)  # the reconnect's report is slow to reach the outbox
        reports.append(threshold)

    applier = SettingsApplier(
        SettingsStore(cfg, tmp_path / "settings.json"), {"cam-1": worker}, SharedDetector(None), publish
    )
    before = applier.current.cameras["cam-1"].motion.threshold
    reconnect = threading.Thread(target=applier.report)
    reconnect.start()
    assert first_in_sink.wait(5.0)
    change = {"cameras": {"cam-1": {"motion": {"threshold": 40}}}}
    command = threading.Thread(target=applier.apply, args=(change,))
    command.start()
    command.join(0.5)  # long enough for the newer report to overtake, were it let through
    release.set()
    reconnect.join(5.0)
    command.join(5.0)
    assert not reconnect.is_alive() and not command.is_alive()

    assert before != 40
    assert applier.current.cameras["cam-1"].motion.threshold == 40
    assert reports[-1] == 40, reports
