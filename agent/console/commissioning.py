"""Checking and saving a camera's masks: validate the whole file, refuse a silent loosening of the
privacy masks, write the file with a backup, audit, and hand the result to the running agent.

Saves are serialised by `_lock`, so two technicians saving at once cannot interleave their reads
and writes of the file.
"""

from __future__ import annotations

import hashlib
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

from agent.config import AgentConfig, parse_config
from agent.console.config_edit import EditError, MaskEdit, edited_text, mask_toml, write_config
from agent.console.gateway import ConsoleGateway
from agent.errors import ConfigError
from agent.footage.privacy import exposed_pixels

DEFAULT_SIZE = (1920, 1080)  # a camera not yet seen is checked at a common full-HD raster


@dataclass(frozen=True)
class Checked:
    toml: str
    problems: list[str]
    loosens_privacy: bool
    config: AgentConfig | None  # the whole new config when it is valid
    text: str | None  # the new file's text when it could be built


class SaveRefusedError(Exception):
    """A save that must not happen; `code` is the page's error name."""

    def __init__(self, code: str, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.problems = problems or []


class MaskService:
    """The console's one way to change the config file."""

    def __init__(self, gateway: ConsoleGateway, config_path: Path | None) -> None:
        self._gw = gateway
        self._path = config_path.resolve() if config_path is not None else None
        self._lock = threading.Lock()

    def current(self, camera: str) -> MaskEdit | None:
        cam = self._gw.config().camera(camera)
        if cam is None:
            return None
        return MaskEdit(privacy=cam.privacy_masks, motion=cam.motion.masks, detection=cam.detection.masks)

    def check(self, camera: str, edit: MaskEdit) -> Checked:
        """What saving `edit` would write, and what is wrong with it (nothing is written)."""
        toml = mask_toml(camera, edit)
        loosens = self._exposed(camera, edit) > 0
        if self._path is None:
            return Checked(toml, [], loosens, None, None)
        try:
            text = edited_text(self._path.read_text(encoding="utf-8"), camera, edit)
        except (OSError, UnicodeDecodeError) as exc:
            return Checked(toml, [f"cannot read the config file: {exc}"], loosens, None, None)
        except EditError as exc:
            return Checked(toml, [str(exc)], loosens, None, None)
        try:
            new = parse_config(tomllib.loads(text), str(self._path))
        except ConfigError as exc:
            return Checked(toml, exc.problems, loosens, None, text)
        problems = self._gw.config_problems(new)
        return Checked(toml, problems, loosens, None if problems else new, text)

    def save(self, camera: str, edit: MaskEdit, *, user: str, remote: str) -> tuple[Checked, str]:
        """Write `edit` to the file and put it in force; returns the check and the backup's name.
        Raises SaveRefusedError naming why nothing was written."""
        if self._path is None:
            raise SaveRefusedError(
                "read_only", "the agent runs without a config file (built-in default): nothing to save to"
            )
        with self._lock:
            checked = self.check(camera, edit)
            if checked.config is None or checked.text is None:
                raise SaveRefusedError("invalid", "check-config refuses the result", checked.problems)
            if checked.loosens_privacy and not edit.confirm_loosen:
                raise SaveRefusedError(
                    "loosens_privacy",
                    "the new privacy masks show part of the picture the current ones hide; confirm to save",
                )
            before = self.current(camera)
            try:
                written = write_config(self._path, checked.text)
            except OSError as exc:
                raise SaveRefusedError(
                    "read_only",
                    f"cannot write {self._path.name} beside its backup: {exc.strerror or exc}"
                    " (the agent's user needs write access to the file and its directory)",
                ) from None
            record = {
                "action": "console.masks",
                "user": user,
                "remote": remote,
                "camera": camera,
                "loosened": checked.loosens_privacy,
                "before": before.model_dump(mode="json", exclude={"confirm_loosen"}) if before else None,
                "after": edit.model_dump(mode="json", exclude={"confirm_loosen"}),
                "backup": written.backup,
                "config_sha256": hashlib.sha256(checked.text.encode("utf-8")).hexdigest(),
            }
            try:
                self._gw.audit(record)
            except (OSError, ValueError) as exc:
                # No unaudited change: put the old file back and say so.
                (self._path.parent / written.backup).replace(self._path)
                raise SaveRefusedError(
                    "internal", f"the audit log cannot be written ({exc}); the change was undone"
                ) from None
            self._gw.apply_camera(checked.config, camera)
            return checked, written.backup

    def _exposed(self, camera: str, edit: MaskEdit) -> int:
        cam = self._gw.config().camera(camera)
        if cam is None:
            return 0
        size = next(
            ((c["width"], c["height"]) for c in self._gw.cameras() if c["id"] == camera and c.get("width")),
            DEFAULT_SIZE,
        )
        return exposed_pixels(cam.privacy_masks, edit.privacy, int(size[0]), int(size[1]))
