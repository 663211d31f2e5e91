"""The gateway's footage, as the clip.* commands see it: buffers plus the clip store.

`clip.export` cuts from the pre-event buffer (and from recordings, which the store reads itself;
never from earlier exports); `clip.hold` first saves whatever of the span is still only in the
buffer, as a recording (source "hold") later exports may read, so that the held footage exists on
disk before the buffer moves on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

from agent.config import AgentConfig
from agent.footage.clips import ClipError, ClipInfo, HoldResult
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
    ) -> None:
        self.store = store
        self.buffers = buffers
        self._config = config

    def _masks(self, camera: str) -> list[list[tuple[float, float]]]:
        cam = self._config().camera(camera)
        return [list(poly) for poly in cam.privacy_masks] if cam is not None else []

    def export(self, camera: str, start: float, end: float) -> ClipInfo:
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
        buffer = self.buffers.get(camera)
        frames = buffer.frames_between(start, end) if buffer is not None else []
        if frames:
            lo = min(max(start, min(f.ts for f in frames)), end - 0.001)  # not the recorded part
            try:
                self.store.export(camera, lo, end, frames, masks=self._masks(camera), source="hold")
            except ClipError as exc:
                log.warning("clip.hold: could not save the buffered part of the span: %s", exc)
        return self.store.hold(camera, start, end, until)
