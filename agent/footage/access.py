"""The gateway's footage, as the clip.* commands see it: buffers (packet rings of packet-path cameras,
JPEG buffers of the others) plus the clip store.

`clip.export` cuts from the pre-event buffer (and from recordings, which the store reads itself;
never from earlier exports); `clip.hold` first saves whatever of the span is still only in the
buffer, as a recording (source "hold") later exports may read, so that the held footage exists on
disk before the buffer moves on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

from agent.capture.packets import StreamPacket
from agent.config import AgentConfig
from agent.footage.clips import ClipError, ClipInfo, HoldResult
from agent.footage.packet_ring import PacketRing
from agent.footage.prebuffer import PreEventBuffer
from agent.footage.store import ClipStore

log = logging.getLogger(__name__)


class Footage:
    """Implements agent.commands.gateway.ClipAccess over the real store and the buffers."""

    def __init__(
        self,
        store: ClipStore,
        buffers: Mapping[str, PreEventBuffer],
        config: Callable[[], AgentConfig],
        *,
        rings: Mapping[str, PacketRing] | None = None,
    ) -> None:
        self.store = store
        self.buffers = buffers
        self.rings: Mapping[str, PacketRing] = rings or {}
        self._config = config

    def _masks(self, camera: str) -> list[list[tuple[float, float]]]:
        cam = self._config().camera(camera)
        return [list(poly) for poly in cam.privacy_masks] if cam is not None else []

    def _packets(self, camera: str, start: float) -> list[StreamPacket] | None:
        """The ring's packets from the keyframe at or before `start`; None: a pixel-path camera, or
        one whose privacy masks came after its packets (never remuxed: they cannot be masked)."""
        ring = self.rings.get(camera)
        if ring is not None and self._masks(camera):
            return None
        return None if ring is None else [packet for _, packet in ring.since(start)]

    def export(self, camera: str, start: float, end: float) -> ClipInfo:
        packets = self._packets(camera, start)
        if packets is not None:
            return self.store.export_packets(camera, start, end, packets, source="export")
        buffer = self.buffers.get(camera)
        frames = buffer.frames_between(start, end) if buffer is not None else []
        return self.store.export(camera, start, end, frames, masks=self._masks(camera), source="export")

    def get(self, clip_id: str) -> ClipInfo:
        return self.store.get(clip_id)

    def chunks(self, clip_id: str, chunk_bytes: int) -> Iterator[tuple[int, int, bytes]]:
        return self.store.chunks(clip_id, chunk_bytes)

    def hold(self, camera: str, start: float, end: float, until: float) -> HoldResult:
        """Save the buffered part of the span (from the buffer alone: first-generation footage),
        then record the hold; a failure to save still records the hold over what is on disk."""
        packets = self._packets(camera, start)
        if packets:
            lo = min(max(start, packets[0].ts), end - 0.001)
            try:
                self.store.export_packets(camera, lo, end, packets, source="hold")
            except ClipError as exc:
                log.warning("clip.hold: could not save the buffered part of the span: %s", exc)
            return self.store.hold(camera, start, end, until)
        buffer = self.buffers.get(camera)
        frames = buffer.frames_between(start, end) if buffer is not None else []
        if frames:
            lo = min(max(start, min(f.ts for f in frames)), end - 0.001)  # not the recorded part
            try:
                self.store.export(camera, lo, end, frames, masks=self._masks(camera), source="hold")
            except ClipError as exc:
                log.warning("clip.hold: could not save the buffered part of the span: %s", exc)
        return self.store.hold(camera, start, end, until)
