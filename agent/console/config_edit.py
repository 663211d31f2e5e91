"""A camera's masks as the console edits them, and their place in the config file.

The config file stays the one source of truth: the console changes only a camera's
`privacy_masks`, `motion.masks` and `detection.masks`, through tomlkit so that every other line,
comment and blank keeps its place. The result is validated as a whole before it may be written;
writing keeps a backup and replaces the file atomically with the same mode.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import Field, ValidationError
from tomlkit.items import AoT, Array, InlineTable, Table

from agent.config import Polygon, Strict, format_errors
from agent.files import fsync_dir

MAX_POLYGONS = 32
BACKUPS_KEPT = 5

Poly = list[tuple[float, float]]


class MaskEdit(Strict):
    """What the page sends: a camera's three mask lists (normalised polygons)."""

    privacy: list[Polygon] = Field(default_factory=list, max_length=MAX_POLYGONS)
    motion: list[Polygon] = Field(default_factory=list, max_length=MAX_POLYGONS)
    detection: list[Polygon] = Field(default_factory=list, max_length=MAX_POLYGONS)
    confirm_loosen: bool = False


def parse_edit(body: Any) -> MaskEdit:
    """The request body as masks, points rounded to 4 decimals; ValueError lists what is wrong."""
    if not isinstance(body, dict):
        raise ValueError("<root>: expected a JSON object")  # noqa: TRY004 - the page's 422, as any fault
    try:
        edit = MaskEdit.model_validate(body)
    except ValidationError as exc:
        raise ValueError("; ".join(format_errors(exc))) from None
    return MaskEdit(
        privacy=_rounded(edit.privacy),
        motion=_rounded(edit.motion),
        detection=_rounded(edit.detection),
        confirm_loosen=edit.confirm_loosen,
    )


def _rounded(polygons: Sequence[Sequence[tuple[float, float]]]) -> list[Poly]:
    return [[(round(x, 4), round(y, 4)) for x, y in poly] for poly in polygons]


def mask_toml(camera: str, edit: MaskEdit) -> str:
    """The TOML of these keys as config.example.toml lays a camera out (for the page to show)."""
    lines = ["[[cameras]]", f'id = "{camera}"', f"privacy_masks = {_polygons_toml(edit.privacy)}"]
    lines += ["", "[cameras.motion]", f"masks = {_polygons_toml(edit.motion)}"]
    lines += ["", "[cameras.detection]", f"masks = {_polygons_toml(edit.detection)}"]
    return "\n".join(lines) + "\n"


def _polygons_toml(polygons: Sequence[Sequence[tuple[float, float]]]) -> str:
    if not polygons:
        return "[]"
    rows = ["  [" + ", ".join(f"[{_num(x)}, {_num(y)}]" for x, y in poly) + "]," for poly in polygons]
    return "[\n" + "\n".join(rows) + "\n]"


def _num(v: float) -> str:
    text = f"{v:.4f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


class EditError(Exception):
    """The file cannot take the edit (not TOML, no such camera); the message says why."""


def edited_text(text: str, camera: str, edit: MaskEdit) -> str:
    """`text` (the config file) with the camera's three mask lists replaced; nothing else changes."""
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.TOMLKitError as exc:
        raise EditError(f"the config file is not valid TOML: {exc}") from None
    cameras = doc.get("cameras")
    if not isinstance(cameras, (AoT, Array)):
        raise EditError("the config file has no [[cameras]]")
    entry = next((c for c in cameras if isinstance(c, (Table, InlineTable)) and c.get("id") == camera), None)
    if entry is None:
        raise EditError(f"the config file has no camera with id {camera!r}")
    inline = isinstance(entry, InlineTable)
    _set_list(entry, "privacy_masks", edit.privacy, inline)
    for section, polygons in (("motion", edit.motion), ("detection", edit.detection)):
        table = entry.get(section)
        if table is None:
            if not polygons:
                continue
            table = tomlkit.inline_table() if inline else tomlkit.table()
            entry[section] = table
        if not isinstance(table, (Table, InlineTable)):
            raise EditError(f"cameras.{section} of {camera!r} is not a table")
        _set_list(table, "masks", polygons, isinstance(table, InlineTable))
    return tomlkit.dumps(doc)


def _set_list(table: Table | InlineTable, key: str, polygons: list[Poly], inline: bool) -> None:
    if not polygons and key not in table:
        return
    value = tomlkit.array()
    for poly in polygons:
        value.append([[x, y] for x, y in poly])
    if polygons and not inline:
        value.multiline(True)
    table[key] = value


@dataclass(frozen=True)
class Written:
    backup: str


def write_config(path: Path, text: str, *, clock: float | None = None) -> Written:
    """Replace `path` with `text` atomically (same mode), keeping the old file as a timestamped
    backup beside it; the oldest backups beyond BACKUPS_KEPT are removed."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if clock is None else clock))
    backup = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while backup.exists():
        n += 1
        backup = path.with_name(f"{path.name}.bak-{stamp}-{n}")
    mode = path.stat().st_mode & 0o7777
    old = path.read_bytes()
    _write_new(backup, old, mode)
    tmp = path.with_name(f".{path.name}.console-{os.getpid()}")
    _write_new(tmp, text.encode("utf-8"), mode)
    try:
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    _prune(path)
    return Written(backup=backup.name)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(path: Path) -> None:
    backups = sorted(path.parent.glob(f"{path.name}.bak-*"), key=lambda p: p.stat().st_mtime)
    for old in backups[:-BACKUPS_KEPT]:
        old.unlink(missing_ok=True)
