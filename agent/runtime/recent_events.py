"""The last few events of each camera with their snapshots, for the commissioning console.

Fed by the event publisher on the cameras' detect threads, read by the console's request threads;
`_lock` guards both tables. Bounded: RECENT events per camera, snapshots of those only. The
snapshots are the masked JPEGs that were published, nothing more.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from agent.contract.messages import Event

RECENT = 10


class RecentEvents:
    def __init__(self, per_camera: int = RECENT) -> None:
        self._per_camera = per_camera
        self._lock = threading.Lock()
        self._events: dict[str, OrderedDict[str, Event]] = {}
        self._snapshots: dict[str, tuple[str, bytes]] = {}  # event_id -> (camera, JPEG)

    def add(self, event: Event, snapshot: bytes | None) -> None:
        with self._lock:
            events = self._events.setdefault(event.camera, OrderedDict())
            events[event.event_id] = event  # the newest phase stands for the event
            events.move_to_end(event.event_id)
            if snapshot is not None:
                self._snapshots[event.event_id] = (event.camera, snapshot)
            while len(events) > self._per_camera:
                gone, _ = events.popitem(last=False)
                self._snapshots.pop(gone, None)

    def for_camera(self, camera: str) -> list[dict[str, Any]]:
        """Newest first, as the console's /events lists them."""
        with self._lock:
            events = list(self._events.get(camera, {}).values())
            with_snapshot = {e.event_id for e in events if e.event_id in self._snapshots}
        return [
            {
                "event_id": e.event_id,
                "kind": e.kind,
                "phase": e.phase,
                "started_at": e.started_at,
                "ended_at": e.ended_at,
                "labels": sorted({o.label for o in e.objects}),
                "snapshot": f"/api/events/{e.event_id}/snapshot.jpg" if e.event_id in with_snapshot else None,
            }
            for e in reversed(events)
        ]

    def last(self, camera: str) -> dict[str, Any] | None:
        events = self.for_camera(camera)
        return events[0] if events else None

    def snapshot(self, event_id: str) -> tuple[str, bytes] | None:
        with self._lock:
            return self._snapshots.get(event_id)
