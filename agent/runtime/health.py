"""Gateway health for the `telemetry` topic: what an operator needs to see a box is well."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import psutil


def read_temperature_c() -> float | None:
    """The SoC/CPU temperature where the kernel exposes one (Pi, Jetson, most x86), else None."""
    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        sensors = {}
    for name in ("cpu_thermal", "coretemp", "k10temp", "soc_thermal", "thermal-fan-est", "acpitz"):
        for entry in sensors.get(name, []):
            if entry.current:
                return round(float(entry.current), 1)
    zone = Path("/sys/class/thermal/thermal_zone0/temp")
    try:
        return round(int(zone.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


class GatewayHealth:
    """Samples process and system figures; cpu_percent is measured between two calls."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.started = time.monotonic()
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)
        psutil.cpu_percent(None)

    def sample(self) -> dict[str, Any]:
        try:
            disk_free: int | None = shutil.disk_usage(self.data_dir).free
        except OSError:
            disk_free = None
        vm = psutil.virtual_memory()
        return {
            "uptime_s": round(time.monotonic() - self.started, 1),
            "cpu_percent": psutil.cpu_percent(None),
            "process_cpu_percent": self._proc.cpu_percent(None),
            "memory_used_percent": vm.percent,
            "process_rss_bytes": self._proc.memory_info().rss,
            "temperature_c": read_temperature_c(),
            "disk_free_bytes": disk_free,
        }
