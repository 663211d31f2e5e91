"""The gateway's footage, as the clip.* commands see it: buffers plus the clip store.

`clip.export` cuts from the pre-event buffer (and from clips already recorded, which the store
reads itself); `clip.hold` first exports whatever of the span is still only in the buffer, so
that the held footage exists on disk before the buffer moves on.
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
        return self.store.export(camera, start, end, frames, masks=self._masks(camera))

    def get(self, clip_id: str) -> ClipInfo:
        return self.store.get(clip_id)

    def chunks(self, clip_id: str, chunk_bytes: int) -> Iterator[tuple[int, int, bytes]]:
        return self.store.chunks(clip_id, chunk_bytes)

    def hold(self, camera: str, start: float, end: float, until: float) -> HoldResult:
        buffer = self.buffers.get(camera)
        if buffer is not None and buffer.frames_between(start, end):
            try:
                self.export(camera, start, end)
            except ClipError as exc:  # the hold itself must still be recorded
                log.warning("clip.hold: could not save the buffered part of the span: %s", exc)
        return self.store.hold(camera, start, end, until)
