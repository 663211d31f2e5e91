"""The clip store's start-up scan: index the sidecars and clear away whatever a crash or a
tamperer left in the clips folder.

A symbolic link is removed first, whatever it is called or points at (never its target); an
unfinished write (`.part.mp4`, `.tmp`) or a sidecar without its video is removed; a garbled
sidecar, a truncated video, a hash mismatch or a video without a sidecar is moved into
`discarded/` with a timestamp, where retention may reclaim it. Each is logged at WARNING and
listed in `Sweep.discarded`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from agent.files import is_regular, open_read, private_dir, read_bytes
from agent.footage.clips import CLIP_ID_RE, ClipInfo, Discarded

log = logging.getLogger(__name__)


class Sweep:
    """Sets files of the clips folder aside or removes them, and lists what it did."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.discard_dir = root / "discarded"
        self.discarded: list[Discarded] = []

    def set_aside(self, path: Path, reason: str) -> None:
        """Move `path` into `discarded/`, recreated if it has become a link (nothing moves out
        of the clips folder through one)."""
        if self.discard_dir.is_symlink():
            self.remove(self.discard_dir, "symbolic link refused")
        private_dir(self.discard_dir)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.discard_dir / f"{path.name}.{stamp}"
        path.replace(target)
        log.warning("clip store: moved %s aside to %s (%s)", path.name, target, reason)
        self.discarded.append(Discarded(target, reason))

    def remove(self, path: Path, reason: str) -> None:
        path.unlink(missing_ok=True)  # a link is removed itself, never its target
        log.warning("clip store: removed %s (%s)", path.name, reason)
        self.discarded.append(Discarded(path, reason))

    def scan(self, verify_sha256: bool) -> dict[str, ClipInfo]:
        """The clips whose sidecar and video are complete and match, by id; the rest is cleared."""
        for path in sorted(self.root.iterdir()):
            if path.is_symlink():
                self.remove(path, "symbolic link refused")
        entries = sorted(p for p in self.root.iterdir() if is_regular(p))
        for path in entries:
            if path.name.endswith((".part.mp4", ".tmp")):
                self.remove(path, "unfinished write")
        clips: dict[str, ClipInfo] = {}
        for path in entries:
            if path.suffix != ".json" or not CLIP_ID_RE.fullmatch(path.stem) or not path.exists():
                continue  # not a sidecar: holds.json and anything else are left alone
            info = self._check(path, verify_sha256)
            if info is not None:
                clips[info.clip_id] = info
        for path in entries:
            orphan = CLIP_ID_RE.fullmatch(path.stem) and path.stem not in clips
            if path.suffix == ".mp4" and orphan and path.exists():
                self.set_aside(path, "video without a sidecar")
        return clips

    def _check(self, sidecar: Path, verify_sha256: bool) -> ClipInfo | None:
        """The clip of one sidecar, or None once it and its video are cleared away."""
        video = sidecar.with_suffix(".mp4")
        try:
            info = ClipInfo.from_sidecar(json.loads(read_bytes(sidecar)), sidecar.stem)
        except (ValueError, TypeError, OSError) as exc:
            reason = f"garbled sidecar: {exc}"
            self.set_aside(sidecar, reason)
            if video.exists():
                self.set_aside(video, reason)
            return None
        if not is_regular(video):
            self.remove(sidecar, "sidecar without its video")
            return None
        size = video.stat().st_size
        if size != info.bytes:
            reason = f"truncated video: {size} bytes, sidecar says {info.bytes}"
        elif verify_sha256 and file_sha256(video) != info.sha256:
            reason = "sha256 does not match the sidecar"
        else:
            return info
        self.set_aside(video, reason)
        self.set_aside(sidecar, reason)
        return None


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a regular file (LinkRefused for a link), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with os.fdopen(open_read(path), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
