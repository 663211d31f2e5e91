"""What every config section is built from: the strict base model and the id and polygon types.

Kept apart from the sections so that each section module imports only this, never another section.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"

Ident = Annotated[str, Field(pattern=ID_PATTERN, description="An id matching " + ID_PATTERN)]
Point = Annotated[
    tuple[Annotated[float, Field(ge=0.0, le=1.0)], Annotated[float, Field(ge=0.0, le=1.0)]],
    Field(description="A point [x, y] normalised to 0..1 of the frame"),
]
Polygon = Annotated[
    list[Point], Field(min_length=3, max_length=64, description="A polygon of 3 to 64 normalised points")
]


class Strict(BaseModel):
    """Base of all config models: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
