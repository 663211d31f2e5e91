"""Clips on disk: MP4 files under data_dir/clips, each with a JSON sidecar, plus evidence holds.

Layout (flat, so a clip is found by id alone)::

    clips/<clip_id>.mp4        the video, privacy masks burnt in
    clips/<clip_id>.json       sidecar: camera, start, end, event_id, sha256, bytes, held_until,
                               source (event recording, buffer saved by a hold, or an export)
    clips/holds.json           evidence holds (camera, span, until), the source of truth for retention
    clips/discarded/           files the startup scan set aside (truncated, garbled, hash mismatch)

Writes are atomic: the MP4 is written to `<id>.part.mp4` and fsynced, the sidecar is written
(tmp + rename), then the MP4 is renamed into place. A crash at any point leaves either nothing, or
a `.part` file and/or a sidecar without its video, both of which the startup scan
(agent.footage.scan) removes.

Nothing here follows a symbolic link (agent.files): a link found in the folder is removed
(never its target) by the scan, and a clip whose file has become a link is `not_found`. Files
are 0600 and folders 0700 whatever the umask.

Exports read recordings only (event clips and buffer saved by holds, never earlier exports) and
at most `max_exports` run at once; the rest are answered `busy`. Saves of the buffer (the
recorder's, a hold's) are never refused: their size is bounded by the buffer, and a refusal would
lose footage the buffer is about to drop.
What a clip is (`ClipInfo`, holds) lives in agent.footage.clips; holds.json in agent.footage.holds;
how frames become an MP4 in agent.footage.encoding.

Network cameras' clips are remuxed from their packets instead (agent.footage.remux): a recorder
writes `part_path(id)` with a ClipWriter and `adopt`s the result; `export_packets` is `export` by
remux, from packet recordings and the packet ring.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.capture.packets import StreamInfo, StreamPacket
from agent.clock import iso
from agent.files import (
    LinkRefused,
    create_private,
    fsync_dir,
    is_regular,
    open_read,
    state_dir,
    write_atomic,
)
from agent.footage.clips import (
    RECORDED,
    ClipError,
    ClipInfo,
    ClipSource,
    Discarded,
    Hold,
    HoldResult,
    JpegFrame,
    check_camera,
    check_span,
    validate_clip_id,
)
from agent.footage.encoding import (
    Encoder,
    PlanItem,
    constant_rate,
    encode_clip,
    ffmpeg_has_x264,
    plan_frames,
)
from agent.footage.holds import HOLDS_FILE, HoldBook
from agent.footage.privacy import PolygonLike
from agent.footage.scan import Sweep, file_sha256

if TYPE_CHECKING:
    from agent.footage.remux import FormatKey, RemuxResult

__all__ = ["MAX_EXPORT_S", "ClipStore"]

log = logging.getLogger(__name__)

MAX_EXPORT_S = 600.0
"""Longest span one export may cover: bounds the CPU and disk one command can demand."""
MAX_EXPORTS = 1
"""clip.export runs at once, gateway-wide. One: the command plane has two workers, and the other
must stay free to answer everything else."""
MIN_CHUNK_BYTES = 1024
MAX_CHUNK_BYTES = 16 * 1024 * 1024


class ClipStore:
    """Clips and holds under one directory; safe to share between threads.

    Lock scope: `_lock` guards the in-memory index (`_clips`), the hold list and every sidecar or
    holds.json write, so readers see a clip only once its files are complete. Decoding and
    encoding video happen outside the lock; `_export_slots` bounds on-demand exports.
    """

    def __init__(
        self,
        root: Path,
        *,
        verify_sha256: bool = True,
        encoder: Encoder = "auto",
        ffmpeg_threads: int = 1,
        max_exports: int = MAX_EXPORTS,
    ) -> None:
        if max_exports < 1:
            raise ValueError("max_exports must be at least 1")
        self.root = state_dir(Path(root), parents=True)  # a file there set aside; LinkRefused for a link
        sweep = Sweep(self.root)
        self.discard_dir = sweep.discard_dir
        self.discarded: list[Discarded] = sweep.discarded  # what the start-up scan cleared away
        self._lock = threading.Lock()
        self._export_slots = threading.BoundedSemaphore(max_exports)
        if encoder == "auto":
            encoder = "ffmpeg" if ffmpeg_has_x264() else "opencv"
        self.encoder: Encoder = encoder
        self.ffmpeg_threads = ffmpeg_threads
        self._clips: dict[str, ClipInfo] = sweep.scan(verify_sha256)
        self._holds = HoldBook(self.root / HOLDS_FILE)
        problem = self._holds.load()
        if problem is not None:
            sweep.set_aside(self._holds.path, problem)

    # -- lookup ----------------------------------------------------------------------------------

    def get(self, clip_id: str) -> ClipInfo:
        """The clip's metadata; ClipError bad_request for a malformed id, not_found if absent."""
        validate_clip_id(clip_id)
        with self._lock:
            info = self._clips.get(clip_id)
        if info is None:
            raise ClipError("not_found", f"no clip {clip_id}")
        return info

    def path(self, clip_id: str) -> Path:
        return self.root / f"{validate_clip_id(clip_id)}.mp4"

    def clips(self, camera: str | None = None) -> list[ClipInfo]:
        """Stored clips, oldest first."""
        with self._lock:
            found = [c for c in self._clips.values() if camera is None or c.camera == camera]
        return sorted(found, key=lambda c: (c.start, c.clip_id))

    def usage_bytes(self) -> int:
        with self._lock:
            return sum(c.bytes for c in self._clips.values())

    def discarded_files(self) -> list[Path]:
        """Files in the discarded folder, oldest first (retention may reclaim them)."""
        if self.discard_dir.is_symlink() or not self.discard_dir.is_dir():
            return []
        found = [p for p in self.discard_dir.iterdir() if is_regular(p)]
        return sorted(found, key=lambda p: p.lstat().st_mtime)

    # -- holds -----------------------------------------------------------------------------------

    def hold(
        self, camera: str, start: float, end: float, until: float, *, now: float | None = None
    ) -> HoldResult:
        """Protect `camera`'s footage overlapping [start, end] from retention until `until`.

        The hold also covers clips written later for that span (e.g. an event still recording).
        """
        now = time.time() if now is None else now
        check_camera(camera)
        check_span(start, end)
        if not math.isfinite(until) or until <= now:
            raise ClipError(
                "bad_request", f"until {iso(until) if math.isfinite(until) else until} is not in the future"
            )
        hold = Hold(camera, start, end, until)
        with self._lock:
            self._holds.add(hold, now)
            marked: list[str] = []
            for info in list(self._clips.values()):
                if hold.covers(info.camera, info.start, info.end):
                    if info.held_until is None or info.held_until < until:
                        updated = replace(info, held_until=until)
                        self._write_sidecar(updated)
                        self._clips[info.clip_id] = updated
                    marked.append(info.clip_id)
        log.info(
            "hold on %s %s..%s until %s: %d clip(s)", camera, iso(start), iso(end), iso(until), len(marked)
        )
        return HoldResult(hold, tuple(sorted(marked)))

    def holds(self, *, now: float | None = None) -> list[Hold]:
        """Holds still in force."""
        now = time.time() if now is None else now
        with self._lock:
            return self._holds.active(now)

    def held_until(self, info: ClipInfo, *, now: float | None = None) -> float | None:
        """Until when the clip is protected, or None if it is not (any more)."""
        now = time.time() if now is None else now
        with self._lock:
            untils = self._holds.untils(info.camera, info.start, info.end, now)
        if info.held_until is not None and info.held_until > now:
            untils.append(info.held_until)
        return max(untils) if untils else None

    # -- delete ----------------------------------------------------------------------------------

    def delete(self, clip_id: str) -> int:
        """Remove a clip and its sidecar; returns the bytes freed (0 if it was already gone).

        A fetch in progress keeps reading its open file descriptor, so it still completes.
        """
        validate_clip_id(clip_id)
        with self._lock:
            info = self._clips.pop(clip_id, None)
            if info is None:
                return 0
            (self.root / f"{clip_id}.mp4").unlink(missing_ok=True)
            (self.root / f"{clip_id}.json").unlink(missing_ok=True)
        return info.bytes

    # -- fetch -----------------------------------------------------------------------------------

    def chunks(
        self, clip_id: str, chunk_bytes: int, start_index: int = 0
    ) -> Iterator[tuple[int, int, bytes]]:
        """Yield (index, count, data) from chunk `start_index` on, for a resumable `clip.fetch`.

        Arguments are checked before the first chunk, so a bad request fails on the call itself.
        A clip whose file has become a symbolic link is not_found: it is never followed.
        """
        info = self.get(clip_id)
        if not isinstance(chunk_bytes, int) or not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
            raise ClipError(
                "bad_request",
                f"chunk_bytes must be {MIN_CHUNK_BYTES}..{MAX_CHUNK_BYTES}, got {chunk_bytes!r}",
            )
        count = info.chunk_count(chunk_bytes)
        if not isinstance(start_index, int) or not 0 <= start_index < count:
            raise ClipError("bad_request", f"chunk index {start_index!r} is outside 0..{count - 1}")
        path = self.path(clip_id)
        try:
            handle = os.fdopen(open_read(path), "rb")
        except FileNotFoundError:
            raise ClipError("not_found", f"clip {clip_id} was deleted") from None
        except LinkRefused:
            log.warning("clip store: %s is not a regular file; refused", path.name)
            raise ClipError("not_found", f"no clip {clip_id}") from None
        if os.fstat(handle.fileno()).st_size != info.bytes:
            handle.close()
            raise ClipError("not_found", f"clip {clip_id} no longer matches its sidecar")
        return self._read_chunks(handle, chunk_bytes, start_index, count)

    @staticmethod
    def _read_chunks(
        handle: Any, chunk_bytes: int, start_index: int, count: int
    ) -> Iterator[tuple[int, int, bytes]]:
        with handle:
            handle.seek(start_index * chunk_bytes)
            for index in range(start_index, count):
                data = handle.read(chunk_bytes)
                if not data:
                    raise ClipError("internal", f"clip file ended before chunk {index} of {count}")
                yield index, count, data

    # -- export ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _admitted(
        self, camera: str, start: float, end: float, clip_id: str | None, source: ClipSource
    ) -> Iterator[str]:
        """The checks every export passes (camera, span, id), then an export slot for "export"
        clips (busy when none is free); yields the clip id to write."""
        check_camera(camera)
        check_span(start, end)
        if end - start > MAX_EXPORT_S:
            raise ClipError(
                "bad_request", f"span of {end - start:.0f} s exceeds the {MAX_EXPORT_S:.0f} s limit"
            )
        clip_id = validate_clip_id(clip_id) if clip_id is not None else str(uuid.uuid4())
        with self._lock:
            if clip_id in self._clips:
                raise ClipError("bad_request", f"clip {clip_id} already exists")
        bounded = source == "export"
        if bounded and not self._export_slots.acquire(blocking=False):
            raise ClipError("busy", "another clip export is running on this gateway; retry shortly")
        try:
            yield clip_id
        finally:
            if bounded:
                self._export_slots.release()

    def export(
        self,
        camera: str,
        start: float,
        end: float,
        frames: Sequence[JpegFrame],
        *,
        masks: Sequence[PolygonLike] = (),
        event_id: str | None = None,
        clip_id: str | None = None,
        source: ClipSource = "export",
        now: float | None = None,
    ) -> ClipInfo:
        """Write an MP4 of `camera` for [start, end] and return its metadata.

        `frames` are what is still buffered (any order; those outside the span are ignored).
        Footage older than the first buffered frame is taken from recordings of the camera (never
        from exports), so a span that has left the buffer can still be exported and the same span
        gives the same frames each time. `source` says what the clip is: "event" (the recorder),
        "hold" (a hold saving the buffer) or "export". Masks are applied to every frame. Raises
        ClipError: bad_request for a bad span or id, not_found when nothing covers the span, busy
        when `max_exports` other "export" clips are being written ("event" and "hold" ones are
        never refused), internal when encoding or writing fails (e.g. the disk is full).
        """
        with self._admitted(camera, start, end, clip_id, source) as chosen:
            info = self._export(chosen, camera, start, end, frames, masks, event_id, source, now)
        log.info(
            "clip %s (%s): %s %d frames @ %.0f fps, %d bytes",
            info.clip_id,
            source,
            camera,
            info.frames,
            info.fps,
            info.bytes,
        )
        return info

    def _export(
        self,
        clip_id: str,
        camera: str,
        start: float,
        end: float,
        frames: Sequence[JpegFrame],
        masks: Sequence[PolygonLike],
        event_id: str | None,
        source: ClipSource,
        now: float | None,
    ) -> ClipInfo:
        items, readers = plan_frames(self.root, self.clips(camera), start, end, frames)
        if not items:
            raise ClipError(
                "not_found", f"nothing buffered or recorded for {camera} between {iso(start)} and {iso(end)}"
            )
        try:
            stamp = time.time() if now is None else now
            return self._write(clip_id, camera, items, masks, event_id, source, stamp)
        finally:
            for reader in readers:
                reader.close()

    def _write(
        self,
        clip_id: str,
        camera: str,
        items: Sequence[PlanItem],
        masks: Sequence[PolygonLike],
        event_id: str | None,
        source: ClipSource,
        now: float,
    ) -> ClipInfo:
        """Encode `items` to `<id>.part.mp4`, write the sidecar, then rename the MP4 into place."""
        part = self.root / f"{clip_id}.part.mp4"
        try:
            os.close(create_private(part))  # 0600 before any encoder opens it
            fps, picks = constant_rate(items)
            width, height, codec = encode_clip(
                items, picks, fps, masks, part, encoder=self.encoder, ffmpeg_threads=self.ffmpeg_threads
            )
            info = ClipInfo(
                clip_id=clip_id,
                camera=camera,
                start=items[0].ts,
                end=items[-1].ts,
                event_id=event_id,
                sha256=file_sha256(part),
                bytes=os.lstat(part).st_size,
                frames=len(picks),
                width=width,
                height=height,
                fps=fps,
                codec=codec,
                created_at=now,
                source=source,
            )
            info = replace(info, held_until=self.held_until(info, now=now))
            with self._lock:
                self._write_sidecar(info)
                part.replace(self.root / f"{clip_id}.mp4")
                fsync_dir(self.root)
                self._clips[clip_id] = info
        except OSError as exc:
            part.unlink(missing_ok=True)
            (self.root / f"{clip_id}.json").unlink(missing_ok=True)
            raise ClipError("internal", f"cannot write clip {clip_id}: {exc.strerror or exc}") from None
        except ClipError:
            part.unlink(missing_ok=True)
            raise
        return info

    def _write_sidecar(self, info: ClipInfo) -> None:
        write_atomic(self.root / f"{info.clip_id}.json", json.dumps(info.to_sidecar(), indent=1).encode())

    # -- packet clips (remux) ----------------------------------------------------------------------

    def part_path(self, clip_id: str) -> Path:
        """Where a clip in progress is written: `<id>.part.mp4`, created empty and 0600 (whatever
        was there, a link included, is removed first). The start-up scan removes leftovers."""
        part = self.root / f"{validate_clip_id(clip_id)}.part.mp4"
        try:
            os.close(create_private(part))
        except OSError as exc:
            raise ClipError("internal", f"cannot create clip {clip_id}: {exc.strerror or exc}") from None
        return part

    def adopt(
        self,
        clip_id: str,
        camera: str,
        result: RemuxResult,
        *,
        event_id: str | None,
        source: ClipSource,
        now: float | None = None,
    ) -> ClipInfo:
        """Make the finished `part_path(clip_id)` a stored clip: sha256, sidecar, rename, index,
        with the same atomicity and errors as an encoded clip (ClipError internal when the disk
        refuses; the part file is then removed)."""
        check_camera(camera)
        validate_clip_id(clip_id)
        with self._lock:
            if clip_id in self._clips:
                raise ClipError("bad_request", f"clip {clip_id} already exists")
        part = self.root / f"{clip_id}.part.mp4"
        stamp = time.time() if now is None else now
        try:
            info = ClipInfo(
                clip_id=clip_id,
                camera=camera,
                start=result.first_ts,
                end=result.last_ts,
                event_id=event_id,
                sha256=file_sha256(part),
                bytes=os.lstat(part).st_size,
                frames=result.frames,
                width=result.width,
                height=result.height,
                fps=result.fps,
                codec=result.codec,
                created_at=stamp,
                source=source,
                gaps=result.gaps,
            )
            info = replace(info, held_until=self.held_until(info, now=stamp))
            with self._lock:
                self._write_sidecar(info)
                part.replace(self.root / f"{clip_id}.mp4")
                fsync_dir(self.root)
                self._clips[clip_id] = info
        except OSError as exc:
            part.unlink(missing_ok=True)
            (self.root / f"{clip_id}.json").unlink(missing_ok=True)
            raise ClipError("internal", f"cannot write clip {clip_id}: {exc.strerror or exc}") from None
        return info

    def export_packets(
        self,
        camera: str,
        start: float,
        end: float,
        buffered: Sequence[StreamPacket],
        *,
        event_id: str | None = None,
        clip_id: str | None = None,
        source: ClipSource = "export",
        now: float | None = None,
    ) -> ClipInfo:
        """`export` by remux: a clip of `camera` for [start, end] from the keyframe at or before
        `start`, made of the camera's own packets.

        Packets come from the camera's recordings (event and hold clips, never exports), then
        from `buffered` (the packet ring, in arrival order) for what is newer than the
        recordings, so the same span gives the same bytes each time, from the ring or, once it
        has left the ring, from recordings. Where recordings overlap, the earlier one supplies
        the overlap up to a keyframe of the next. A span is served in one format, the newest
        (the ring's, else the newest recording's): recordings of another codec, size or
        parameter sets (e.g. re-encoded by the pixel path) are left out. Same checks and errors
        as `export`.
        """
        # Here, not at the top: PyAV costs ~25 MB, paid only by gateways with packet cameras.
        from agent.footage.remux import FormatChanged, remux_span

        with self._admitted(camera, start, end, clip_id, source) as chosen:
            part = self.part_path(chosen)
            try:
                packets = self._span_packets(camera, start, end, buffered)
                result = remux_span(packets, start, end, part)
            except ClipError as exc:
                part.unlink(missing_ok=True)
                if exc.code == "not_found":
                    raise ClipError(
                        "not_found",
                        f"nothing buffered or recorded for {camera} between {iso(start)} and {iso(end)}",
                    ) from None
                raise
            except FormatChanged as exc:  # the filter below makes this a bug guard
                part.unlink(missing_ok=True)
                raise ClipError("internal", str(exc)) from None
            info = self.adopt(chosen, camera, result, event_id=event_id, source=source, now=now)
        log.info(
            "clip %s (%s, remux): %s %d frames @ %.0f fps, %d bytes",
            info.clip_id,
            source,
            camera,
            info.frames,
            info.fps,
            info.bytes,
        )
        return info

    def _span_packets(
        self, camera: str, start: float, end: float, buffered: Sequence[StreamPacket]
    ) -> Iterator[StreamPacket]:
        """The packets for [start, end] in one format, in Annex-B with one canonical info."""
        from agent.footage.remux import (
            canonical,
            format_key,
            normalised,
            probe_info,
            read_clip_packets,
            splice,
        )

        recordings = sorted(
            (c for c in self.clips(camera) if c.source in RECORDED and c.end >= start and c.start <= end),
            key=lambda c: (c.start, c.source != "event", c.clip_id),
        )
        sources: list[tuple[str, Iterable[StreamPacket], FormatKey, StreamInfo]] = []
        for rec in recordings:
            path = self.root / f"{rec.clip_id}.mp4"
            try:
                info = probe_info(path)
                first = next((p for p in read_clip_packets(path, rec.start) if p.keyframe), None)
            except (ClipError, OSError) as exc:
                log.warning("export: recording %s skipped: %s", rec.clip_id, exc)
                continue
            if first is not None:
                key = format_key(info, first.data)
                sources.append((rec.clip_id, read_clip_packets(path, rec.start), key, info))
        ring = [p for p in buffered if p.ts <= end]
        newest_key = next((p for p in reversed(ring) if p.keyframe), None)
        if newest_key is not None:
            key = format_key(newest_key.info, newest_key.data)
            sources.append(("the packet ring", ring, key, newest_key.info))
        if not sources:
            return iter(())
        _, _, wanted, info = sources[-1]
        kept = []
        for name, packets, key, _ in sources:
            if key == wanted:
                kept.append(packets)
            else:
                log.info("export of %s: %s left out (not in the newest format)", camera, name)
        return normalised(splice(kept), canonical(info, wanted[3]))
