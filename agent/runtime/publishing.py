"""What the cameras tell the platform: camera status, event phases and their snapshots.

Called from each camera's threads (status from its capture threads, phases from its detect
thread); everything here only queues messages on the link, which never blocks a frame thread.
The order of one phase is fixed: the clip recorder sees it first (an end phase gets its
clip_id), then the event is queued, then the open-events file notes it (so a crash after the
event is in the outbox can still be ended by the next start), then the retained snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from agent import __version__
from agent.analysis.events import EventPhase
from agent.clock import iso
from agent.contract.messages import CameraStatus, GatewayStatus
from agent.footage.images import SNAPSHOT_QUALITY, encode_outgoing
from agent.footage.privacy import PolygonLike
from agent.footage.recording import Recorder
from agent.mqtt.link import MqttLink
from agent.mqtt.topics import Topics
from agent.runtime.open_events import OpenEvents
from agent.runtime.recent_events import RecentEvents

log = logging.getLogger(__name__)

PrivacyMasks = Callable[[str], Sequence[PolygonLike]]
"""A camera's privacy masks, looked up per image so the one config in force is used."""


def gateway_status(state: str, reason: str | None, *, started_at: float, cameras: list[str]) -> bytes:
    """The retained `{root}/status` payload (also the Last Will, with state offline)."""
    return GatewayStatus.model_validate(
        {
            "state": state,
            "reason": reason,
            "agent_version": __version__,
            "started_at": iso(started_at),
            "cameras": cameras,
        }
    ).to_json()


class EventPublisher:
    """Turns camera callbacks into messages: status retained, events QoS 1, snapshots retained."""

    def __init__(
        self,
        link: MqttLink,
        topics: Topics,
        open_events: OpenEvents,
        privacy_masks: PrivacyMasks,
        recorder: Recorder | None = None,
        recent: RecentEvents | None = None,
    ) -> None:
        self._link = link
        self._recent = recent
        self._topics = topics
        self._open = open_events
        self._masks = privacy_masks
        self._recorder = recorder

    def camera_status(self, camera: str, status: CameraStatus) -> None:
        self._link.publish(
            self._topics.camera_status(camera), status.to_json(), retain=True, kind="status", camera=camera
        )

    def phase(self, camera: str, phase: EventPhase) -> None:
        if self._recorder is not None:
            try:
                phase = self._recorder.on_phase(phase)  # the end phase gets its clip_id
            except Exception:
                log.exception("camera %s: clip recorder failed on an event phase", camera)
        event = phase.event
        if event.phase == "end":
            self._open.ending(event)  # first: a kill before `note` re-sends this end, never another
        self._link.publish(self._topics.event(camera), event.to_json(), kind="event", camera=camera)
        self._open.note(event)
        if phase.frame is None:
            if self._recent is not None:
                self._recent.add(event, None)
            return
        try:
            jpeg = encode_outgoing(phase.frame, self._masks(camera), quality=SNAPSHOT_QUALITY)
        except ValueError:
            log.exception("camera %s: event snapshot could not be encoded", camera)
            return
        if self._recent is not None:
            self._recent.add(event, jpeg.data)
        self._link.publish(
            self._topics.snapshot(camera),
            jpeg.data,
            retain=True,
            kind="snapshot",
            camera=camera,
            properties={"event_id": event.event_id, "ts": event.ts},
        )

    def end_orphans(self, queued: Callable[[str, bytes], bool]) -> int:
        """Publish the `end` of every event a crash of the previous run left open; returns how many.

        `queued(topic, payload)` tells whether the outbox still holds a message: an end the crash
        caught after it was queued is delivered from there, so it is not queued twice.
        """
        sent = 0
        for end in self._open.ends_for_orphans():
            topic, payload = self._topics.event(end.camera), end.to_json()
            if queued(topic, payload):
                continue
            log.warning(
                "ending event %s of camera %s, left open by the previous run", end.event_id, end.camera
            )
            self._link.publish(topic, payload, kind="event", camera=end.camera)
            sent += 1
        return sent
