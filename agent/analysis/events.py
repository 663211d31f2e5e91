"""Event phases as the pipeline hands them to publishers (MQTT link, replay, clip recorder)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.capture.source import Image
from agent.contract.messages import Event


@dataclass(frozen=True, slots=True)
class EventPhase:
    """One phase of an event, plus the best frame so far when it improved (for the snapshot).

    `frame` is the full-resolution BGR frame that scored best for this event up to now, or None
    when the best frame has not changed since the previous phase of the same event.
    `offset_s` is the frame's position in the source (seconds), used by replay.
    """

    event: Event
    frame: Image | None
    offset_s: float
