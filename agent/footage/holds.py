"""Evidence holds: the spans of a camera's footage retention must keep, stored in holds.json.

holds.json is the source of truth for retention; each clip's sidecar also carries `held_until`,
so recorded clips stay protected if the file is lost or garbled. What a hold is (`Hold`) lives
in agent.footage.clips.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.clock import iso, parse_iso
from agent.files import read_bytes, write_atomic
from agent.footage.clips import Hold

HOLDS_FILE = "holds.json"


class HoldBook:
    """The holds in holds.json. Not locked: the clip store calls it under its own lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._holds: list[Hold] = []

    def load(self) -> str | None:
        """Read the file if there is one; the problem when it is garbled (then no holds are kept)."""
        if not self.path.exists():
            return None
        try:
            raw = json.loads(read_bytes(self.path))
            self._holds = [
                Hold(h["camera"], parse_iso(h["start"]), parse_iso(h["end"]), parse_iso(h["until"]))
                for h in raw["holds"]
            ]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError) as exc:
            return f"garbled holds file: {exc}"
        return None

    def add(self, hold: Hold, now: float) -> None:
        """Keep `hold`, dropping those expired by `now`, and write the file (atomically)."""
        self._holds = [h for h in self._holds if h.until > now]
        self._holds.append(hold)
        data = {
            "holds": [
                {"camera": h.camera, "start": iso(h.start), "end": iso(h.end), "until": iso(h.until)}
                for h in self._holds
            ]
        }
        write_atomic(self.path, json.dumps(data, indent=1).encode())

    def active(self, now: float) -> list[Hold]:
        """Holds still in force at `now`."""
        return [h for h in self._holds if h.until > now]

    def untils(self, camera: str, start: float, end: float, now: float) -> list[float]:
        """The ends of the holds in force that cover `camera`'s footage overlapping [start, end]."""
        return [h.until for h in self._holds if h.until > now and h.covers(camera, start, end)]
