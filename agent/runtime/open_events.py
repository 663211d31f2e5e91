"""Events that have started but not ended, kept on disk so a crash cannot orphan them.

The protocol promises exactly one `end` per event_id. A clean stop ends every open event; a
SIGKILL or a power cut cannot, so the last phase published of each open event is written here
(atomically, after it is in the outbox) and the next start of the agent publishes the missing
`end`, with `ended_at` the time of that last phase. The file is read and written without
following symbolic links and created 0600; one that cannot be used (a link, a folder, bytes that
are not a list of events) is set aside with an ERROR, never overwritten: what it held may be owed
an `end` an operator can still send.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from pydantic import ValidationError

from agent.clock import iso
from agent.contract.messages import Event
from agent.files import LinkRefused, read_bytes, set_aside, write_atomic

log = logging.getLogger(__name__)


class OpenEvents:
    """The open events of all cameras; `_lock` guards `_open` and every write of the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._open: dict[str, Event] = {}
        self.orphans = self._load()

    def _load(self) -> list[Event]:
        try:
            raw = json.loads(read_bytes(self.path))
        except FileNotFoundError:
            return []
        except LinkRefused as exc:
            self._set_aside(exc.strerror or "refused")
            return []
        except OSError as exc:
            log.error("open events file %s cannot be read (%s); ignoring it", self.path, exc.strerror or exc)
            return []
        except ValueError as exc:
            self._set_aside(f"not JSON: {exc}")
            return []
        if not isinstance(raw, list):
            self._set_aside(f"a JSON {type(raw).__name__}, not a list of events")
            return []
        found = []
        for item in raw:
            try:
                found.append(Event.model_validate(item))
            except ValidationError:
                log.warning("open events file %s: skipping a malformed entry", self.path)
        return found

    def _set_aside(self, reason: str) -> None:
        try:
            aside = set_aside(self.path)
        except OSError as exc:
            log.error(
                "open events file %s is unusable (%s) and cannot be moved aside: %s", self.path, reason, exc
            )
            return
        log.error(
            "open events file %s is unusable (%s); moved to %s: events it held get no late end",
            self.path,
            reason,
            aside.name,
        )

    def ending(self, end: Event) -> None:
        """Record an end phase about to be queued, before it is: a kill from here until `note(end)`
        leaves this very end in the file, so the next start sends it again (identical, so never a
        second, different end) unless the outbox still holds it."""
        with self._lock:
            if end.event_id not in self._open:
                return
            self._open[end.event_id] = end
            self._write()

    def note(self, event: Event) -> None:
        """Record the phase just queued for publishing: start/update keep it open, end closes it."""
        with self._lock:
            if event.phase == "end":
                if self._open.pop(event.event_id, None) is None:
                    return
            else:
                self._open[event.event_id] = event
            self._write()

    def ends_for_orphans(self) -> list[Event]:
        """The `end` phases owed for events a previous run left open; the file is cleared.

        An event whose end was being queued at the crash gets that end again, unchanged; any other
        gets a late end with `ended_at` the time of its last phase.
        """
        now = iso(time.time())
        ends = [
            e
            if e.phase == "end"
            else e.model_copy(update={"phase": "end", "ts": now, "ended_at": e.ts, "clip_id": None})
            for e in self.orphans
        ]
        self.orphans = []
        with self._lock:
            self._write()
        return ends

    def _write(self) -> None:
        data = json.dumps([e.model_dump(mode="json") for e in self._open.values()]).encode()
        try:
            write_atomic(self.path, data)
        except OSError as exc:
            log.error("cannot record open events in %s: %s", self.path, exc)
