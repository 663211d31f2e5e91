"""State files under data_dir, opened without following symbolic links, created 0600 / 0700.

Anyone who can plant a link in data_dir could otherwise have the agent serve another file as a
clip, or truncate one through a probe or a temporary file. Every open here uses O_NOFOLLOW (a link
fails with ELOOP), temporary files are created O_EXCL, and modes are set explicitly because the
umask of whoever starts the agent is not ours to trust.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from pathlib import Path

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "LinkRefused",
    "create_or_open_private",
    "create_private",
    "fsync_dir",
    "is_regular",
    "open_read",
    "private_dir",
    "read_bytes",
    "set_aside",
    "state_dir",
    "write_atomic",
]

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class LinkRefused(OSError):  # noqa: N818 - an OSError, named for what happened
    """A path inside data_dir is a symbolic link (or not a regular file) and was not used;
    `strerror` says which ("is a symbolic link, refused", "is a folder, not a file, refused")."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.ELOOP, f"{_kind(path)}, refused", str(path))


def _kind(path: Path) -> str:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "is a symbolic link"  # gone since: the open saw a link (ELOOP) or another kind
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISREG(mode):
        return "is a file, not a folder"
    return "is not a regular file"


def set_aside(path: Path) -> Path:
    """Rename `path` (a link itself, never its target; a folder with what it holds) to
    `<name>.corrupt-<UTC time>` beside it, for an operator to look at; return the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while os.path.lexists(target):
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.rename(path, target)
    return target


def state_dir(path: Path, *, parents: bool = False) -> Path:
    """`private_dir` for a folder the agent keeps state in: a file found in its place is set
    aside first (with a WARNING), so the state is kept again instead of lost for the whole run.
    A symbolic link is still refused (LinkRefused), never followed."""
    if os.path.lexists(path) and not path.is_symlink() and not path.is_dir():
        aside = set_aside(path)
        log.warning("%s %s; moved to %s and a new folder made", path, _kind(aside), aside.name)
    return private_dir(path, parents=parents)


def is_regular(path: Path) -> bool:
    """A regular file, not a link to one."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def open_read(path: Path) -> int:
    """A read-only descriptor of the regular file at `path`; LinkRefused for a link."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LinkRefused(path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LinkRefused(path)
    return fd


def read_bytes(path: Path) -> bytes:
    """The whole file; FileNotFoundError if absent, LinkRefused if it is a link."""
    with os.fdopen(open_read(path), "rb") as fh:
        return fh.read()


def create_private(path: Path) -> int:
    """A new, empty file at `path`, mode 0600, for writing; whatever was there (a link, a stale
    temporary) is removed first, never followed."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have taken bits away; never adds any
    except OSError:
        os.close(fd)
        raise
    return fd


def create_or_open_private(path: Path) -> int:
    """A descriptor of the regular file at `path` for writing, created 0600 if absent (an existing
    one is tightened to 0600); LinkRefused for a link. For files others open after us (SQLite)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LinkRefused(path) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LinkRefused(path)
        os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (0600): a fresh temporary file, fsynced, renamed over it.

    The rename replaces a link at `path` itself, never its target.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = create_private(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def private_dir(path: Path, *, parents: bool = False) -> Path:
    """Create `path` as a 0700 folder, or tighten an existing one to 0700; LinkRefused for a link."""
    if path.is_symlink():
        raise LinkRefused(path)
    if parents and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)  # above data_dir: not ours to lock down
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=DIR_MODE)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != DIR_MODE:
            os.fchmod(fd, DIR_MODE)
    finally:
        os.close(fd)
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable; best effort (some filesystems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
