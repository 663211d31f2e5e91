"""What every config section is built from: the strict base model and the id and polygon types.

Kept apart from the sections so that each section module imports only this, never another section.
"""

from __future__ import annotations

import errno
import os
import stat
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"

Ident = Annotated[str, Field(pattern=ID_PATTERN, description="An id matching " + ID_PATTERN)]


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a number is expected, not true or false")  # noqa: TRY004 - pydantic reports ValueError
    return value


_Coordinate = Annotated[float, BeforeValidator(_no_bool), Field(ge=0.0, le=1.0)]
Point = Annotated[
    tuple[_Coordinate, _Coordinate],
    Field(description="A point [x, y] normalised to 0..1 of the frame"),
]
Polygon = Annotated[
    list[Point], Field(min_length=3, max_length=64, description="A polygon of 3 to 64 normalised points")
]


SMALL_FILE_BYTES = 1 << 20  # password, key, certificate and label files are far smaller


def read_small(path: Path, limit: int = SMALL_FILE_BYTES) -> bytes:
    """The bytes of a file a config names (a password, a certificate, labels), or OSError with a
    reason: a folder, a device (`/dev/zero` would be read until memory runs out) or a file over
    `limit` bytes is never read whole."""
    with path.open("rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a device or pipe"
            raise OSError(errno.EINVAL, f"{kind}, not a regular file", str(path))
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes, not the file expected", str(path))
    return data


class Strict(BaseModel):
    """Base of all config models: unknown keys are errors, values are checked on assignment.

    Pydantic's lax mode would also take TOML's `true` for the number 1 (`port = true` is port 1)
    and "" for the path "." (the folder the agent happens to start in); and a NUL in any text
    is cut off by the C libraries below (a host name, a URL, a path) or breaks them.
    `lax_problems` refuses each in a config file, naming the key."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def lax_problems(model: type[BaseModel], data: Any, path: str = "") -> list[str]:
    """What pydantic's lax mode would take but a config must not (see `Strict`), one line per key,
    found by walking the raw TOML data along `model`'s fields. Not a validator on every field:
    pydantic would then check config.set's JSON in Python mode, where a JSON array is no tuple
    (a mask's points)."""
    if not isinstance(data, dict):
        return []
    problems = []
    for name, value in data.items():
        field = model.model_fields.get(name)
        if field is None:
            continue  # an unknown key: pydantic names it
        key = f"{path}.{name}" if path else name
        kinds = _kinds(field.annotation)
        if isinstance(value, bool) and bool not in kinds and (int in kinds or float in kinds):
            problems.append(f"{key}: a number is expected, not true or false (got {value})")
        elif value == "" and Path in kinds:
            problems.append(f"{key}: an empty path: name a file or folder")
        elif isinstance(value, str) and "\x00" in value:
            problems.append(f"{key}: text holds a NUL character")
        for sub in (k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)):
            problems += lax_problems(sub, value, key)
        for item in (k for kind in kinds if get_origin(kind) is list for k in get_args(kind)):
            if isinstance(value, list) and isinstance(item, type) and issubclass(item, BaseModel):
                for i, element in enumerate(value):
                    problems += lax_problems(item, element, f"{key}[{i}]")
    return problems


def _kinds(annotation: Any) -> tuple[Any, ...]:
    """The types a field takes (`float | None`: float, NoneType)."""
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)
