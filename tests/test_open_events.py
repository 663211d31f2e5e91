"""Exactly one end per event across a crash: what the next start owes, at each moment a kill can land.

The crash is simulated by dropping the objects and building new ones on the same files (the
outbox and open_events.json), as the next start of the agent does; messages are read back from the
outbox, which is what the broker would receive. A real SIGKILL soak is in test_durability_e2e.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.analysis.events import EventPhase
from agent.config import MqttConfig
from agent.contract.messages import Event
from agent.mqtt.link import MqttLink
from agent.mqtt.outbox import Outbox
from agent.mqtt.topics import Topics
from agent.runtime.open_events import OpenEvents
from agent.runtime.publishing import EventPublisher

TOPICS = Topics("cctv/v1/d/gw")


def event(phase: str, ts: str) -> Event:
    return Event.model_validate(
        {
            "event_id": "ev-1",
            "camera": "cam-1",
            "kind": "motion",
            "phase": phase,
            "started_at": "2026-11-27T10:00:00.000Z",
            "ts": ts,
            "ended_at": ts if phase == "end" else None,
            "regions": [[0.1, 0.2, 0.3, 0.4]],
            "score": 0.5,
        }
    )


class Gateway:
    """The publishing side of one run of the agent, on `data`'s files (the link never connects)."""

    def __init__(self, data: Path) -> None:
        self.outbox = Outbox(data / "outbox.db", 1000, 1 << 20)
        cfg = MqttConfig.model_validate({"host": "127.0.0.1", "port": 1})
        self.link = MqttLink(cfg, "gw", self.outbox, TOPICS.status, b"{}")
        self.open = OpenEvents(data / "open_events.json")
        self.events = EventPublisher(self.link, TOPICS, self.open, lambda _cam: [])

    def queued_events(self) -> list[dict[str, object]]:
        batch = self.outbox.next_batch(100)
        return [json.loads(m.payload) for m in batch if m.topic == TOPICS.event("cam-1")]

    def crash(self) -> None:
        self.outbox.close()


def phase(ev: Event) -> EventPhase:
    return EventPhase(event=ev, frame=None, offset_s=0.0)


def test_a_kill_after_the_start_gets_a_late_end(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    gw.events.phase("cam-1", phase(event("start", "2026-11-27T10:00:00.000Z")))
    gw.crash()
    again = Gateway(tmp_path)
    assert again.events.end_orphans(again.outbox.holds) == 1
    ends = [e for e in again.queued_events() if e["phase"] == "end"]
    assert len(ends) == 1 and ends[0]["ended_at"] == "2026-11-27T10:00:00.000Z"


def test_a_kill_while_the_end_is_being_queued_never_gives_a_second_different_end(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    gw.events.phase("cam-1", phase(event("start", "2026-11-27T10:00:00.000Z")))
    end = event("end", "2026-11-27T10:00:05.000Z")
    # The kill lands after the end is queued but before the open-events file forgets the event.
    gw.open.ending(end)
    gw.link.publish(TOPICS.event("cam-1"), end.to_json(), kind="event", camera="cam-1")
    gw.crash()
    again = Gateway(tmp_path)
    assert again.events.end_orphans(again.outbox.holds) == 0  # the queued end is delivered from the outbox
    ends = [e for e in again.queued_events() if e["phase"] == "end"]
    assert ends == [json.loads(end.to_json())]


def test_a_kill_before_the_end_is_queued_sends_that_same_end(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    gw.events.phase("cam-1", phase(event("start", "2026-11-27T10:00:00.000Z")))
    end = event("end", "2026-11-27T10:00:05.000Z")
    gw.open.ending(end)  # the kill lands here: recorded, not yet queued
    gw.crash()
    again = Gateway(tmp_path)
    assert again.events.end_orphans(again.outbox.holds) == 1
    ends = [e for e in again.queued_events() if e["phase"] == "end"]
    assert ends == [json.loads(end.to_json())]  # exactly the end the first run meant to send


def test_a_clean_end_owes_nothing(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    gw.events.phase("cam-1", phase(event("start", "2026-11-27T10:00:00.000Z")))
    gw.events.phase("cam-1", phase(event("end", "2026-11-27T10:00:05.000Z")))
    gw.crash()
    again = Gateway(tmp_path)
    assert again.events.end_orphans(again.outbox.holds) == 0
    assert [e["phase"] for e in again.queued_events()] == ["start", "end"]
