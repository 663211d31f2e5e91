"""Clips on disk: MP4 files under data_dir/clips, each with a JSON sidecar, plus evidence holds.

Layout (flat, so a clip is found by id alone)::

    clips/<clip_id>.mp4        the video, privacy masks burnt in
    clips/<clip_id>.json       sidecar: camera, start, end, event_id, sha256, bytes, held_until, ...
    clips/holds.json           evidence holds (camera, span, until), the source of truth for retention
    clips/discarded/           files the startup scan set aside (truncated, garbled, hash mismatch)

Writes are atomic: the MP4 is written to `<id>.part.mp4` and fsynced, the sidecar is written
(tmp + rename), then the MP4 is renamed into place. A crash at any point leaves either nothing, or
a `.part` file and/or a sidecar without its video, both of which the startup scan removes.

Encoding: H.264 (libx264, `+faststart` so players can start before the whole file arrives) via
the ffmpeg CLI when it is on PATH with libx264, else OpenCV's `mp4v`. Frames are resampled to a
constant rate (each output slot shows the newest frame at or before it), so a clip plays at true
speed even when the buffer kept frames irregularly.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from agent.capture.source import Image
from agent.clock import iso, parse_iso
from agent.config import ID_PATTERN
from agent.errors import AgentError
from agent.footage.privacy import PolygonLike, apply_privacy_masks

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "MAX_EXPORT_S",
    "ClipError",
    "ClipInfo",
    "ClipStore",
    "Discarded",
    "Hold",
    "HoldResult",
    "JpegFrame",
    "validate_clip_id",
]

log = logging.getLogger(__name__)

CLIP_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
CAMERA_RE = re.compile(ID_PATTERN)
MAX_EXPORT_S = 600.0
"""Longest span one export may cover: bounds the CPU and disk one command can demand."""
DEFAULT_CHUNK_BYTES = 256 * 1024
MIN_CHUNK_BYTES = 1024
MAX_CHUNK_BYTES = 16 * 1024 * 1024
MAX_FPS = 30
ENCODE_TIMEOUT_S = 120.0
"""An encoder still running after this (plus 0.5 s per frame) is killed and the clip fails."""

ErrorCode = Literal["bad_request", "not_found", "internal"]
Encoder = Literal["auto", "ffmpeg", "opencv"]


class ClipError(AgentError):
    """A clip request failed; `code` is the protocol error code to answer with."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code: ErrorCode = code
        super().__init__(message)


class JpegFrame(Protocol):
    """What a clip is made from: a capture time and JPEG bytes (e.g. prebuffer.BufferedFrame)."""

    @property
    def ts(self) -> float: ...

    @property
    def jpeg(self) -> bytes: ...


def validate_clip_id(clip_id: object) -> str:
    """Return the id if it is a canonical lowercase UUID; anything path-like is refused."""
    if not isinstance(clip_id, str) or not CLIP_ID_RE.fullmatch(clip_id):
        raise ClipError("bad_request", f"clip_id {clip_id!r:.80} is not a clip id (a lowercase UUID)")
    return clip_id


@dataclass(frozen=True, slots=True)
class ClipInfo:
    """A stored clip as its sidecar describes it. start/end are the first/last frame's times."""

    clip_id: str
    camera: str
    start: float
    end: float
    event_id: str | None
    sha256: str
    bytes: int
    frames: int
    width: int
    height: int
    fps: float
    codec: str
    created_at: float
    held_until: float | None = None

    @property
    def duration_s(self) -> float:
        """Playing time of the MP4 (frames at the constant rate)."""
        return self.frames / self.fps

    def chunk_count(self, chunk_bytes: int) -> int:
        return max(1, math.ceil(self.bytes / chunk_bytes))

    def export_result(self) -> dict[str, Any]:
        """The `clip.export` result of the protocol."""
        return {
            "clip_id": self.clip_id,
            "duration_s": round(self.duration_s, 3),
            "bytes": self.bytes,
            "sha256": self.sha256,
        }

    def fetch_result(self, topic: str, chunk_bytes: int) -> dict[str, Any]:
        """The `clip.fetch` result of the protocol, for chunks of `chunk_bytes` sent on `topic`."""
        return {
            "topic": topic,
            "count": self.chunk_count(chunk_bytes),
            "bytes": self.bytes,
            "sha256": self.sha256,
        }

    def to_sidecar(self) -> dict[str, Any]:
        return {
            "clip_id": self.clip_id,
            "camera": self.camera,
            "start": iso(self.start),
            "end": iso(self.end),
            "event_id": self.event_id,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "frames": self.frames,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "codec": self.codec,
            "created_at": iso(self.created_at),
            "held_until": iso(self.held_until) if self.held_until is not None else None,
        }

    @classmethod
    def from_sidecar(cls, data: object, expected_id: str | None = None) -> ClipInfo:
        """Parse a sidecar; raise ValueError or TypeError naming the first bad field."""
        if not isinstance(data, dict):
            raise TypeError("sidecar is not a JSON object")

        def need(key: str, kind: type | tuple[type, ...]) -> Any:
            value = data.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise TypeError(f"sidecar field {key!r} is missing or has the wrong type")
            return value

        def when(key: str) -> float:
            try:
                return parse_iso(need(key, str))
            except ValueError:
                raise ValueError(f"sidecar field {key!r} is not a timestamp") from None

        held = data.get("held_until")
        info = cls(
            clip_id=validate_clip_id(need("clip_id", str)),
            camera=need("camera", str),
            start=when("start"),
            end=when("end"),
            event_id=data.get("event_id") if isinstance(data.get("event_id"), str) else None,
            sha256=need("sha256", str),
            bytes=need("bytes", int),
            frames=need("frames", int),
            width=need("width", int),
            height=need("height", int),
            fps=float(need("fps", (int, float))),
            codec=need("codec", str),
            created_at=when("created_at"),
            held_until=when("held_until") if held is not None else None,
        )
        if expected_id is not None and info.clip_id != expected_id:
            raise ValueError(f"sidecar names clip {info.clip_id}, not {expected_id}")
        if not re.fullmatch(r"[0-9a-f]{64}", info.sha256):
            raise ValueError("sidecar field 'sha256' is not a hex digest")
        if info.bytes <= 0 or info.frames <= 0 or info.fps <= 0 or info.end < info.start:
            raise ValueError("sidecar has non-positive sizes or an inverted span")
        return info


@dataclass(frozen=True, slots=True)
class Hold:
    """Footage of `camera` overlapping [start, end] is kept from retention until `until`."""

    camera: str
    start: float
    end: float
    until: float

    def covers(self, camera: str, start: float, end: float) -> bool:
        return camera == self.camera and start <= self.end and end >= self.start


@dataclass(frozen=True, slots=True)
class HoldResult:
    hold: Hold
    clip_ids: tuple[str, ...]

    def result(self) -> dict[str, Any]:
        """The `clip.hold` result (the protocol leaves it open; this is what we answer)."""
        return {
            "camera": self.hold.camera,
            "start": iso(self.hold.start),
            "end": iso(self.hold.end),
            "until": iso(self.hold.until),
            "clip_ids": list(self.clip_ids),
        }


@dataclass(frozen=True, slots=True)
class Discarded:
    """A file the scan removed or set aside, and why."""

    path: Path
    reason: str


# -- frame plans: what goes into a clip, decoded lazily in time order -------------------------------


class _Item(Protocol):
    ts: float

    def image(self) -> Image: ...


@dataclass(slots=True)
class _JpegItem:
    ts: float
    jpeg: bytes

    def image(self) -> Image:
        img = cv2.imdecode(np.frombuffer(self.jpeg, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ClipError("internal", f"a buffered frame at {iso(self.ts)} is not a decodable JPEG")
        return np.asarray(img, dtype=np.uint8)


class _SequentialReader:
    """Decodes a recorded clip front to back; items ask for frame numbers in increasing order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cap: cv2.VideoCapture | None = None
        self._pos = -1
        self._last: Image | None = None

    def frame(self, index: int) -> Image:
        if self._cap is None:
            self._cap = cv2.VideoCapture(str(self.path))
        while self._pos < index:
            ok, img = self._cap.read()
            if not ok:
                break
            self._pos += 1
            self._last = np.asarray(img, dtype=np.uint8)
        if self._last is None:
            raise ClipError("internal", f"recorded clip {self.path.name} cannot be decoded")
        return self._last

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


@dataclass(slots=True)
class _RecordedItem:
    ts: float
    reader: _SequentialReader
    index: int

    def image(self) -> Image:
        return self.reader.frame(self.index)


def _constant_rate(items: Sequence[_Item]) -> tuple[float, list[int]]:
    """Pick a frame rate from the median gap and map each output slot to an input item."""
    if len(items) == 1:
        return 1.0, [0]
    gaps = sorted(b.ts - a.ts for a, b in itertools.pairwise(items) if b.ts > a.ts)
    median = gaps[len(gaps) // 2] if gaps else 1.0
    fps = float(min(MAX_FPS, max(1, round(1.0 / median))))
    span = items[-1].ts - items[0].ts
    slots = math.floor(span * fps + 0.5) + 1
    picks: list[int] = []
    j = 0
    for k in range(slots):
        t = items[0].ts + k / fps + 0.5 / fps
        while j + 1 < len(items) and items[j + 1].ts <= t:
            j += 1
        picks.append(j)
    return fps, picks


@functools.cache
def _ffmpeg_has_x264() -> bool:
    """Whether ffmpeg on PATH can encode H.264 (asked once per process)."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        return False
    try:
        out = subprocess.run(
            [exe, "-hide_banner", "-encoders"], capture_output=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return b" libx264 " in out


class ClipStore:
    """Clips and holds under one directory; safe to share between threads.

    Lock scope: `_lock` guards the in-memory index (`_clips`), the hold list and every sidecar or
    holds.json write, so readers see a clip only once its files are complete. Decoding and
    encoding video happen outside the lock.
    """

    def __init__(
        self,
        root: Path,
        *,
        verify_sha256: bool = True,
        encoder: Encoder = "auto",
        ffmpeg_threads: int = 1,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.discard_dir = self.root / "discarded"
        self._lock = threading.Lock()
        self._clips: dict[str, ClipInfo] = {}
        self._holds: list[Hold] = []
        if encoder == "auto":
            encoder = "ffmpeg" if _ffmpeg_has_x264() else "opencv"
        self.encoder: Encoder = encoder
        self.ffmpeg_threads = ffmpeg_threads
        self.discarded: list[Discarded] = []
        self._scan(verify_sha256)
        self._load_holds()

    # -- startup ---------------------------------------------------------------------------------

    def _set_aside(self, path: Path, reason: str) -> None:
        self.discard_dir.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.discard_dir / f"{path.name}.{stamp}"
        path.replace(target)
        log.warning("clip store: moved %s aside to %s (%s)", path.name, target, reason)
        self.discarded.append(Discarded(target, reason))

    def _remove(self, path: Path, reason: str) -> None:
        path.unlink(missing_ok=True)
        log.warning("clip store: removed %s (%s)", path.name, reason)
        self.discarded.append(Discarded(path, reason))

    def _scan(self, verify_sha256: bool) -> None:
        """Index the sidecars; set aside or remove whatever is incomplete or does not match."""
        entries = sorted(p for p in self.root.iterdir() if p.is_file())
        for path in entries:
            name = path.name
            if name.endswith((".part.mp4", ".tmp")):
                self._remove(path, "unfinished write")
        for path in entries:
            if path.suffix != ".json" or not CLIP_ID_RE.fullmatch(path.stem) or not path.exists():
                continue  # not a sidecar: holds.json and anything else are left alone
            video = path.with_suffix(".mp4")
            try:
                info = ClipInfo.from_sidecar(json.loads(path.read_bytes()), path.stem)
            except (ValueError, TypeError, OSError) as exc:
                reason = f"garbled sidecar: {exc}"
                self._set_aside(path, reason)
                if video.exists():
                    self._set_aside(video, reason)
                continue
            if not video.exists():
                self._remove(path, "sidecar without its video")
                continue
            size = video.stat().st_size
            if size != info.bytes:
                reason = f"truncated video: {size} bytes, sidecar says {info.bytes}"
                self._set_aside(video, reason)
                self._set_aside(path, reason)
                continue
            if verify_sha256 and _sha256(video) != info.sha256:
                reason = "sha256 does not match the sidecar"
                self._set_aside(video, reason)
                self._set_aside(path, reason)
                continue
            self._clips[info.clip_id] = info
        for path in entries:
            orphan = CLIP_ID_RE.fullmatch(path.stem) and path.stem not in self._clips
            if path.suffix == ".mp4" and orphan and path.exists():
                self._set_aside(path, "video without a sidecar")

    def _load_holds(self) -> None:
        path = self.root / "holds.json"
        if not path.exists():
            return
        try:
            raw = json.loads(path.read_bytes())
            holds = [
                Hold(h["camera"], parse_iso(h["start"]), parse_iso(h["end"]), parse_iso(h["until"]))
                for h in raw["holds"]
            ]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError) as exc:
            # Holds also live in each clip's sidecar (held_until), so recorded clips stay protected.
            self._set_aside(path, f"garbled holds file: {exc}")
            return
        self._holds = holds

    def _save_holds(self) -> None:
        data = {
            "holds": [
                {"camera": h.camera, "start": iso(h.start), "end": iso(h.end), "until": iso(h.until)}
                for h in self._holds
            ]
        }
        _write_atomic(self.root / "holds.json", json.dumps(data, indent=1).encode())

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
        if not self.discard_dir.is_dir():
            return []
        return sorted((p for p in self.discard_dir.iterdir() if p.is_file()), key=lambda p: p.stat().st_mtime)

    # -- holds -----------------------------------------------------------------------------------

    def hold(
        self, camera: str, start: float, end: float, until: float, *, now: float | None = None
    ) -> HoldResult:
        """Protect `camera`'s footage overlapping [start, end] from retention until `until`.

        The hold also covers clips written later for that span (e.g. an event still recording).
        """
        now = time.time() if now is None else now
        _check_camera(camera)
        _check_span(start, end)
        if not math.isfinite(until) or until <= now:
            raise ClipError(
                "bad_request", f"until {iso(until) if math.isfinite(until) else until} is not in the future"
            )
        hold = Hold(camera, start, end, until)
        with self._lock:
            self._holds = [h for h in self._holds if h.until > now]
            self._holds.append(hold)
            self._save_holds()
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
            return [h for h in self._holds if h.until > now]

    def held_until(self, info: ClipInfo, *, now: float | None = None) -> float | None:
        """Until when the clip is protected, or None if it is not (any more)."""
        now = time.time() if now is None else now
        with self._lock:
            untils = [
                h.until for h in self._holds if h.until > now and h.covers(info.camera, info.start, info.end)
            ]
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
        self, clip_id: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES, start_index: int = 0
    ) -> Iterator[tuple[int, int, bytes]]:
        """Yield (index, count, data) from chunk `start_index` on, for a resumable `clip.fetch`.

        Arguments are checked before the first chunk, so a bad request fails on the call itself.
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
        try:
            handle = self.path(clip_id).open("rb")
        except FileNotFoundError:
            raise ClipError("not_found", f"clip {clip_id} was deleted") from None
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
        now: float | None = None,
    ) -> ClipInfo:
        """Write an MP4 of `camera` for [start, end] and return its metadata.

        `frames` are what is still buffered (any order; those outside the span are ignored).
        Footage older than the first buffered frame is taken from recorded clips of the camera,
        so a span that has left the buffer can still be exported. Masks are applied to every
        frame. Raises ClipError: bad_request for a bad span or id, not_found when nothing covers
        the span, internal when encoding or writing fails (e.g. the disk is full).
        """
        _check_camera(camera)
        _check_span(start, end)
        if end - start > MAX_EXPORT_S:
            raise ClipError(
                "bad_request", f"span of {end - start:.0f} s exceeds the {MAX_EXPORT_S:.0f} s limit"
            )
        clip_id = validate_clip_id(clip_id) if clip_id is not None else str(uuid.uuid4())
        with self._lock:
            if clip_id in self._clips:
                raise ClipError("bad_request", f"clip {clip_id} already exists")
        buffered: list[_Item] = sorted(
            (_JpegItem(f.ts, f.jpeg) for f in frames if start <= f.ts <= end), key=lambda i: i.ts
        )
        first_buffered = buffered[0].ts if buffered else math.inf
        readers: list[_SequentialReader] = []
        items: list[_Item] = []
        for rec in self.clips(camera):
            if rec.end < start or rec.start > min(end, first_buffered):
                continue
            reader = _SequentialReader(self.root / f"{rec.clip_id}.mp4")
            readers.append(reader)
            for k in range(rec.frames):
                ts = rec.start + k / rec.fps
                if start <= ts <= end and ts < first_buffered - 0.5 / rec.fps:
                    items.append(_RecordedItem(ts, reader, k))
        items.sort(key=lambda i: i.ts)
        items.extend(buffered)
        if not items:
            raise ClipError(
                "not_found", f"nothing buffered or recorded for {camera} between {iso(start)} and {iso(end)}"
            )
        part = self.root / f"{clip_id}.part.mp4"
        try:
            fps, picks = _constant_rate(items)
            width, height, codec = self._encode(items, picks, fps, masks, part)
            digest, size = _sha256(part), part.stat().st_size
            info = ClipInfo(
                clip_id=clip_id,
                camera=camera,
                start=items[0].ts,
                end=items[-1].ts,
                event_id=event_id,
                sha256=digest,
                bytes=size,
                frames=len(picks),
                width=width,
                height=height,
                fps=fps,
                codec=codec,
                created_at=time.time() if now is None else now,
            )
            info = replace(info, held_until=self.held_until(info, now=info.created_at))
            with self._lock:
                self._write_sidecar(info)
                part.replace(self.root / f"{clip_id}.mp4")
                _fsync_dir(self.root)
                self._clips[clip_id] = info
        except OSError as exc:
            part.unlink(missing_ok=True)
            (self.root / f"{clip_id}.json").unlink(missing_ok=True)
            raise ClipError("internal", f"cannot write clip {clip_id}: {exc.strerror or exc}") from None
        except ClipError:
            part.unlink(missing_ok=True)
            raise
        finally:
            for reader in readers:
                reader.close()
        log.info("clip %s: %s %d frames @ %.0f fps, %d bytes", clip_id, camera, info.frames, fps, size)
        return info

    def _write_sidecar(self, info: ClipInfo) -> None:
        _write_atomic(self.root / f"{info.clip_id}.json", json.dumps(info.to_sidecar(), indent=1).encode())

    def _frames(
        self, items: Sequence[_Item], picks: Sequence[int], masks: Sequence[PolygonLike]
    ) -> Iterator[Image]:
        """Decoded, masked frames for each output slot, all at the first frame's (even) size."""
        cache: tuple[int, Image] | None = None
        size: tuple[int, int] | None = None
        for j in picks:
            if cache is None or cache[0] != j:
                img = items[j].image()
                if size is None:
                    h, w = img.shape[:2]
                    size = (w - w % 2, h - h % 2)  # yuv420p needs even dimensions
                    if size[0] < 2 or size[1] < 2:
                        raise ClipError("internal", f"frame of {w}x{h} is too small for a video")
                h, w = img.shape[:2]
                if (w - w % 2, h - h % 2) == size:
                    img = img[: size[1], : size[0]]
                else:  # the source changed resolution mid-clip
                    img = np.asarray(cv2.resize(img, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
                cache = (j, np.ascontiguousarray(apply_privacy_masks(img, masks)))
            yield cache[1]

    def _encode(
        self,
        items: Sequence[_Item],
        picks: Sequence[int],
        fps: float,
        masks: Sequence[PolygonLike],
        out: Path,
    ) -> tuple[int, int, str]:
        frames = self._frames(items, picks, masks)
        first = next(frames)
        height, width = first.shape[:2]
        if self.encoder == "ffmpeg":
            _encode_ffmpeg(first, frames, count=len(picks), fps=fps, out=out, threads=self.ffmpeg_threads)
            codec = "h264"
        else:
            _encode_opencv(first, frames, fps, out)
            codec = "mp4v"
        with out.open("rb") as fh:
            os.fsync(fh.fileno())
        return width, height, codec


def _encode_ffmpeg(
    first: Image, rest: Iterator[Image], *, count: int, fps: float, out: Path, threads: int
) -> None:
    height, width = first.shape[:2]
    exe = shutil.which("ffmpeg") or "ffmpeg"
    cmd = [
        exe, "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-framerate", f"{fps:g}",
        "-i", "pipe:0",
        "-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", "26", "-pix_fmt", "yuv420p",
        "-threads", str(threads), "-movflags", "+faststart", "-f", "mp4", str(out),
    ]  # fmt: skip
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
        killer = threading.Timer(ENCODE_TIMEOUT_S + 0.5 * count, proc.kill)
        killer.name = "clips.encode-watchdog"
        killer.daemon = True
        killer.start()
        try:
            assert proc.stdin is not None
            try:
                proc.stdin.write(first.tobytes())
                for img in rest:
                    proc.stdin.write(img.tobytes())
                proc.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg died; its exit status and stderr say why
            except BaseException:
                proc.kill()
                raise
            code = proc.wait()
        finally:
            killer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if code != 0:
            errors.seek(0)
            detail = errors.read().decode("utf-8", "replace").strip().splitlines()
            raise ClipError("internal", f"ffmpeg failed ({code}): {detail[-1] if detail else 'killed'}")


def _encode_opencv(first: Image, rest: Iterator[Image], fps: float, out: Path) -> None:
    height, width = first.shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise ClipError("internal", f"OpenCV cannot write {out.name}")
    try:
        writer.write(first)
        for img in rest:
            writer.write(img)
    finally:
        writer.release()


def _check_camera(camera: object) -> None:
    if not isinstance(camera, str) or not CAMERA_RE.fullmatch(camera):
        raise ClipError("bad_request", f"camera {camera!r:.80} is not a camera id")


def _check_span(start: float, end: float) -> None:
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ClipError("bad_request", "start and end must be finite times")
    if end <= start:
        raise ClipError("bad_request", f"end {iso(end)} is not after start {iso(start)}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
