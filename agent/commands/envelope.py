"""Steps 1-3 of a command: size, UTF-8, JSON, the envelope against `Request`; and what little may
be read of a request that fails them.

Nothing here trusts the payload: a request that fails is answered bad_request with its `id` only
when that id is well formed, and `claimed_agency` reads the agency a request claims without
checking it (the command server queues per claimed account, on paho's thread).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from pydantic import ValidationError

from agent.commands import models as m
from agent.config import format_errors

_ID_RE = re.compile(m.REQUEST_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A request that failed steps 1-3, and why."""

    parsed: object  # the JSON value when the payload parsed, else None
    message: str

    @property
    def reply_to(self) -> object:
        """The `reply_to` it carries, unchecked (agent.commands.replies decides if it is usable)."""
        return self.parsed.get("reply_to") if isinstance(self.parsed, dict) else None

    @property
    def request_id(self) -> str | None:
        """Its `id` when well formed, so the bad_request reply can name it; else None."""
        rid = self.parsed.get("id") if isinstance(self.parsed, dict) else None
        ok = isinstance(rid, str) and len(rid) <= m.MAX_ID_CHARS and _ID_RE.match(rid)
        return rid if ok else None


@dataclass(frozen=True, slots=True)
class Parsed:
    """A request whose envelope is valid."""

    request: m.Request
    envelope: dict[str, Any]  # the JSON object as received, for the verifier


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def validation_message(exc: ValidationError, prefix: str = "") -> str:
    """The first five problems of `exc`, each field named with `prefix` (e.g. `args.`)."""
    lines = format_errors(exc)
    return "; ".join(f"{prefix}{line}" for line in lines[:5]) + (" …" if len(lines) > 5 else "")


def parse_request(payload: bytes, max_bytes: int) -> Parsed | Rejected:
    """Steps 1-3: over `max_bytes` is rejected without parsing; NaN and Infinity are not JSON."""
    if len(payload) > max_bytes:
        return Rejected(None, f"request is {len(payload)} bytes; the limit is {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(None, f"request is not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        return Rejected(None, f"request is not valid JSON: {exc}"[:300])
    if not isinstance(obj, dict):
        return Rejected(obj, f"request must be a JSON object, got {type(obj).__name__}")
    try:
        return Parsed(m.Request.model_validate(obj), obj)
    except ValidationError as exc:
        return Rejected(obj, validation_message(exc))


def claimed_agency(payload: bytes, max_bytes: int) -> str | None:
    """`requester.agency` as the request claims it, or None when it cannot be read."""
    if len(payload) > max_bytes:
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    requester = obj.get("requester") if isinstance(obj, dict) else None
    agency = requester.get("agency") if isinstance(requester, dict) else None
    return agency if isinstance(agency, str) else None
