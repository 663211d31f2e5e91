"""Protocol timestamps: RFC 3339, UTC, milliseconds, `Z` suffix."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def iso(ts: float | None = None) -> str:
    """Format epoch seconds (default: now) as `2026-11-24T10:00:00.123Z`."""
    t = time.time() if ts is None else ts
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso(text: str) -> float:
    """Parse an RFC 3339 timestamp into epoch seconds; naive times are taken as UTC."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
