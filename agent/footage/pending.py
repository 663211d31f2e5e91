"""Clips the pixel recorder could not encode before a stop, kept as their frames until the next start.

Encoding takes about 2 s of CPU per 10 s clip, more than the agent's whole stop budget, so at a
stop every clip not yet written is saved as it is: its buffered JPEG bytes, unchanged
(milliseconds), and what the clip needs (event_id, clip_id, camera, span, masks). The next start
encodes it under the same clip_id, so a clip_id published in an end phase before the stop still
becomes a clip that `clip.fetch` finds.

Layout, beside the clips folder::

    clips-pending/<clip_id>/job.json     what the clip is, and each frame's time and byte length
    clips-pending/<clip_id>/frames.jpg   the frames' JPEG bytes, one after another

An entry is written under `.<clip_id>.tmp/`, fsynced, then renamed into place: a stop cut short
leaves only a temporary folder, which the next start removes. A camera with privacy masks has its
frames masked before they are written (`masked_frames`): masked pixels never reach the disk.
Nothing here follows a symbolic link. An entry that cannot be read back (garbled job.json, frames
missing or short, a link) is moved into the clip store's `discarded/` folder, where retention
reclaims it, with a log line naming the problem.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.files import (
    LinkRefused,
    create_private,
    fsync_dir,
    private_dir,
    read_bytes,
    state_dir,
    write_atomic,
)
from agent.footage.clips import CAMERA_RE, CLIP_ID_RE, JpegFrame
from agent.footage.privacy import apply_privacy_masks

__all__ = [
    "MASKED_QUALITY",
    "KeptFrame",
    "Masks",
    "PendingClip",
    "PendingClips",
    "PendingError",
    "masked_frames",
]

log = logging.getLogger(__name__)

VERSION = 1
JOB_FILE = "job.json"
FRAMES_FILE = "frames.jpg"
MAX_JOB_BYTES = 8 * 1024 * 1024
"""A job.json larger than this is not one we wrote (a frame costs ~40 bytes of it)."""
MASKED_QUALITY = 90
"""JPEG quality of frames masked before they are kept: one more lossy step, kept light."""

Masks = tuple[tuple[tuple[float, float], ...], ...]


@dataclass(frozen=True, slots=True)
class KeptFrame:
    """A frame read back from a pending entry (satisfies `JpegFrame`)."""

    ts: float
    jpeg: bytes


@dataclass(frozen=True, slots=True)
class PendingClip:
    """One clip to finish: `frames` in time order, `masks` to burn in (already burnt into the
    frames when `masked`), `promised` when its clip_id went out in an end phase."""

    clip_id: str
    event_id: str
    camera: str
    start: float
    end: float
    promised: bool
    masks: Masks
    masked: bool
    frames: Sequence[JpegFrame]


class PendingError(Exception):
    """A pending entry cannot be used; the message names the problem."""


def masked_frames(frames: Sequence[JpegFrame], masks: Masks, deadline: float) -> list[KeptFrame] | None:
    """`frames` with `masks` blanked (decoded, masked, re-encoded), or None once `deadline`
    (time.monotonic) passes: about 1.5 ms a 640x360 frame, 13 ms a 1080p one on a small x86 core."""
    out: list[KeptFrame] = []
    for frame in frames:
        if time.monotonic() >= deadline:
            return None
        img = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            continue  # the encoder would refuse it too; the clip keeps the frames that decode
        blank = apply_privacy_masks(np.asarray(img, dtype=np.uint8), masks)
        ok, buf = cv2.imencode(".jpg", blank, [cv2.IMWRITE_JPEG_QUALITY, MASKED_QUALITY])
        if ok:
            out.append(KeptFrame(frame.ts, buf.tobytes()))
    return out


class PendingClips:
    """The `clips-pending` folder. `discard_dir` is where unreadable entries go (the clip store's
    `discarded/`, which retention reclaims). One thread at a time: the recorder's stop writes,
    its encode thread reads and removes, never both at once for one entry."""

    def __init__(self, root: Path, discard_dir: Path) -> None:
        self.root = root
        self.discard_dir = discard_dir

    # -- writing -------------------------------------------------------------------------------------

    def save(self, clip: PendingClip) -> int:
        """Write `clip` as an entry (replacing one of the same id); returns the frame bytes written.

        OSError (e.g. ENOSPC, a link in the way) leaves no entry and no temporary folder behind.
        """
        state_dir(self.root, parents=True)  # a file in its place is set aside
        tmp = self.root / f".{clip.clip_id}.tmp"
        _remove_tree(tmp)
        try:
            private_dir(tmp)
            fd = create_private(tmp / FRAMES_FILE)
            with os.fdopen(fd, "wb") as fh:
                for frame in clip.frames:
                    fh.write(frame.jpeg)
                fh.flush()
                os.fsync(fh.fileno())
            write_atomic(tmp / JOB_FILE, json.dumps(_to_json(clip)).encode())
            final = self.root / clip.clip_id
            _remove_tree(final)
            tmp.rename(final)
            fsync_dir(self.root)
        except BaseException:
            _remove_tree(tmp)
            raise
        return sum(len(f.jpeg) for f in clip.frames)

    def remove(self, clip_id: str) -> None:
        """Forget an entry (its clip is written); absent is fine."""
        _remove_tree(self.root / clip_id)

    # -- reading -------------------------------------------------------------------------------------

    def entries(self, limit: int) -> list[str]:
        """The clip_ids of entries, oldest first, at most `limit`; clears away what a cut-short save
        left (temporary folders) and anything that is not an entry (a link, a stray file)."""
        if self.root.is_symlink():
            self.root.unlink()
            log.warning("pending clips: %s was a symbolic link; removed (never followed)", self.root)
            return []
        if not self.root.exists():
            return []
        if not self.root.is_dir():
            with contextlib.suppress(OSError):  # logged there; else the next save tries again
                state_dir(self.root)
            return []
        found: list[tuple[float, str]] = []
        for path in sorted(self.root.iterdir()):
            name = path.name
            if name.startswith(".") and name.endswith(".tmp"):
                _remove_tree(path)
                log.warning("pending clips: removed %s (a save cut short)", name)
            elif not CLIP_ID_RE.fullmatch(name):
                self.set_aside(name, "not a pending clip (name is not a clip id)")
            elif not stat.S_ISDIR(path.lstat().st_mode):
                self.set_aside(name, "not a folder (a symbolic link or a file)")
            else:
                found.append((path.lstat().st_mtime, name))
        found.sort()
        if len(found) > limit:
            log.warning(
                "pending clips: %d entries; %d left for a later start", len(found), len(found) - limit
            )
        return [name for _, name in found[:limit]]

    def load(self, clip_id: str) -> PendingClip:
        """Read an entry back; PendingError naming the problem if it cannot be used."""
        entry = self.root / clip_id
        try:
            raw = read_bytes(entry / JOB_FILE)
            if len(raw) > MAX_JOB_BYTES:
                raise PendingError(f"{JOB_FILE} is {len(raw)} bytes, more than any we write")
            data = json.loads(raw)
            blob = read_bytes(entry / FRAMES_FILE)
        except LinkRefused as exc:
            raise PendingError(f"{Path(exc.filename).name} {exc.strerror}") from None
        except FileNotFoundError as exc:
            raise PendingError(f"{Path(str(exc.filename)).name} is missing") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PendingError(f"{JOB_FILE} is not JSON ({exc})") from None
        except OSError as exc:
            raise PendingError(f"cannot read the entry: {exc.strerror or exc}") from None
        return _from_json(data, clip_id, blob)

    def set_aside(self, clip_id: str, reason: str) -> None:
        """Move an unusable entry's files and folders into `discard_dir` (links removed, never
        followed)."""
        entry = self.root / clip_id
        log.warning("pending clip %s set aside: %s", clip_id, reason)
        try:
            if entry.is_symlink() or not entry.is_dir():
                if entry.is_symlink() or not _is_regular_file(entry):
                    entry.unlink(missing_ok=True)
                    return
                self._discard(entry, f"pending-{clip_id}")
                return
            for path in sorted(entry.iterdir()):
                if not path.is_symlink():
                    self._discard(path, f"pending-{clip_id}-{path.name}")
            _remove_tree(entry)  # what is left: links
        except OSError as exc:  # never a crash: at worst the entry is tried again next start
            log.warning("pending clip %s could not be set aside: %s", clip_id, exc.strerror or exc)

    def _discard(self, path: Path, name: str) -> None:
        if self.discard_dir.is_symlink():
            self.discard_dir.unlink()
        private_dir(self.discard_dir)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path.replace(self.discard_dir / f"{name}.{stamp}")


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _remove_tree(path: Path) -> None:
    """Remove a folder and what is in it, or a file or link; links are removed, never followed."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)  # does not follow links inside (fd-based on Linux)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _to_json(clip: PendingClip) -> dict[str, Any]:
    return {
        "version": VERSION,
        "clip_id": clip.clip_id,
        "event_id": clip.event_id,
        "camera": clip.camera,
        "start": clip.start,
        "end": clip.end,
        "promised": clip.promised,
        "masks": [[list(p) for p in poly] for poly in clip.masks],
        "masked": clip.masked,
        "frames": [[f.ts, len(f.jpeg)] for f in clip.frames],
    }


def _from_json(data: object, clip_id: str, blob: bytes) -> PendingClip:
    """Check every field (the folder is on disk: anything may be in it) and split the frames."""
    if not isinstance(data, dict):
        raise PendingError(f"{JOB_FILE} is not a JSON object")
    if data.get("version") != VERSION:
        raise PendingError(f"{JOB_FILE} has version {data.get('version')!r:.20}, not {VERSION}")

    def field(key: str, kind: type | tuple[type, ...]) -> Any:
        value = data.get(key)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise PendingError(f"{JOB_FILE} field {key!r} is missing or has the wrong type")
        return value

    def instant(key: str) -> float:
        value = float(field(key, (int, float)))
        if not math.isfinite(value):
            raise PendingError(f"{JOB_FILE} field {key!r} is not a finite time")
        return value

    if field("clip_id", str) != clip_id:
        raise PendingError(f"{JOB_FILE} names clip {data['clip_id']!r:.60}, not its folder's {clip_id}")
    camera = field("camera", str)
    if not CAMERA_RE.fullmatch(camera):
        raise PendingError(f"{JOB_FILE} field 'camera' {camera!r:.60} is not a camera id")
    start, end = instant("start"), instant("end")
    if end < start:
        raise PendingError(f"{JOB_FILE} has an inverted span")
    masks = _masks(field("masks", list))
    frames: list[KeptFrame] = []
    offset = 0
    for item in field("frames", list):
        ok = isinstance(item, list) and len(item) == 2
        ts, size = (item[0], item[1]) if ok else (None, None)
        if not (isinstance(ts, (int, float)) and math.isfinite(ts) and isinstance(size, int) and size > 0):
            raise PendingError(f"{JOB_FILE} frame {len(frames)} is not [time, length]")
        jpeg = blob[offset : offset + size]
        if len(jpeg) < size:
            raise PendingError(
                f"{FRAMES_FILE} is {len(blob)} bytes, shorter than its {len(frames) + 1} frames"
            )
        if not jpeg.startswith(b"\xff\xd8"):
            raise PendingError(f"{FRAMES_FILE} frame {len(frames)} is not a JPEG")
        frames.append(KeptFrame(float(ts), jpeg))
        offset += size
    if offset != len(blob):
        raise PendingError(f"{FRAMES_FILE} is {len(blob)} bytes, its frames add up to {offset}")
    if not frames:
        raise PendingError("the entry holds no frames")
    return PendingClip(
        clip_id=clip_id,
        event_id=field("event_id", str),
        camera=camera,
        start=start,
        end=end,
        promised=field("promised", bool),
        masks=masks,
        masked=field("masked", bool),
        frames=frames,
    )


def _masks(raw: list[Any]) -> Masks:
    polys: list[tuple[tuple[float, float], ...]] = []
    for poly in raw:
        points: list[tuple[float, float]] = []
        for point in poly if isinstance(poly, list) else [None]:
            if not (
                isinstance(point, list)
                and len(point) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)
                and all(0.0 <= v <= 1.0 for v in point)
            ):
                raise PendingError(f"{JOB_FILE} mask {len(polys)} is not a list of [x, y] in 0..1")
            points.append((float(point[0]), float(point[1])))
        if len(points) < 3:
            raise PendingError(f"{JOB_FILE} mask {len(polys)} has fewer than 3 points")
        polys.append(tuple(points))
    return tuple(polys)
