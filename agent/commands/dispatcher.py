"""Turns one request payload from `{root}/cmd` into at most one reply, never raising.

The command server (agent.commands.server) calls `Dispatcher.handle(payload, response_topic,
correlation_data)` on one of its workers for every message on the command topic, and publishes
what it returns (QoS 1, not retained), echoing the correlation data as MQTT 5 Correlation Data.
The steps, in order:

1. size: more than `max_payload_bytes` (64 KiB) → bad_request, without parsing;
2. UTF-8, JSON (no NaN/Infinity), a JSON object → else bad_request;
3. the envelope against `Request` → bad_request naming the field;
4. idempotency: an id seen in the last 10 minutes gets the stored reply bytes again;
5. time: issued_at more than `max_skew_s` ahead of our clock → bad_request; now past
   issued_at + ttl_s → expired (not executed);
6. cmd → unknown_command; args against the command's model → bad_request naming `args.…`;
7. access: the camera's allowed_agencies / gateway.admin_agencies → forbidden;
8. execution; `CommandError` becomes its code, anything else `internal` (logged with traceback).

The reply goes where agent.commands.replies says: the MQTT 5 Response Topic when usable, else
the request's `reply_to`; with neither, the command still runs and `handle` returns None.
Requests failing steps 1-3 are not remembered for idempotency (their id cannot be trusted);
from step 4 on every reply is.

Commands that expose imagery or change state are audited from step 5 on whatever the outcome,
one record per camera whose imagery went out (or one with the requested camera / null), each
appended to the audit log and published on `{root}/audit` (QoS 1).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError

from agent.clock import iso, parse_iso
from agent.commands import models as m
from agent.commands.audit import AuditLog
from agent.commands.gateway import Gateway
from agent.commands.handlers import COMMANDS, CommandContext, CommandSpec
from agent.commands.idempotency import IdempotencyCache
from agent.commands.models import CommandError, ErrorCode
from agent.commands.replies import reply_error, reply_ok, usable_reply_to, valid_reply_topic
from agent.commands.streams import StreamManager
from agent.config import format_errors
from agent.errors import AgentError, ConfigError

log = logging.getLogger(__name__)

ReplyOut = tuple[str, bytes, bytes | None]
"""(reply topic, reply payload, correlation data to echo)"""

_ID_RE = re.compile(m.REQUEST_ID_PATTERN)


def _error_code(exc: Exception) -> ErrorCode | None:
    """The protocol code an AgentError carries in `.code` (CommandError, agent.footage.clips.ClipError)."""
    if not isinstance(exc, AgentError):
        return None
    code = getattr(exc, "code", None)
    return next((c for c in m.ERROR_CODES if c == code), None)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _validation_message(exc: ValidationError, prefix: str = "") -> str:
    lines = format_errors(exc)
    return "; ".join(f"{prefix}{line}" for line in lines[:5]) + (" …" if len(lines) > 5 else "")


@dataclass(frozen=True, slots=True)
class _Rejected:
    parsed: object  # the JSON value when the payload parsed, else None
    message: str


class Dispatcher:
    """Validates, authorises, executes and audits commands; thread-safe, never raises."""

    def __init__(
        self,
        gateway: Gateway,
        audit: AuditLog,
        *,
        streams: StreamManager | None = None,
        max_payload_bytes: int = m.MAX_REQUEST_BYTES,
        max_skew_s: float = 30.0,
        idempotency: IdempotencyCache | None = None,
        clock: Callable[[], float] = time.time,
        commands: dict[str, CommandSpec] | None = None,
    ) -> None:
        self._gw = gateway
        self._audit = audit
        self._streams = streams
        self._max_payload = max_payload_bytes
        self._max_skew_s = max_skew_s
        # Remember ids a little longer than the longest ttl plus skew: a forgotten id is expired.
        self._idem = idempotency or IdempotencyCache(ttl_s=m.MAX_TTL_S + max_skew_s)
        self._clock = clock
        self._commands = COMMANDS if commands is None else commands

    def handle(
        self, payload: bytes, response_topic: str | None = None, correlation_data: bytes | None = None
    ) -> ReplyOut | None:
        """Process one request; return where to send the reply, or None without a reply address."""
        address = valid_reply_topic(response_topic)
        if response_topic is not None and address is None:
            log.warning("command: ignoring unusable MQTT 5 response topic %.80r", response_topic)
        request_id: str | None = None
        try:
            request = self._parse(payload)
            if isinstance(request, _Rejected):
                obj = request.parsed
                if isinstance(obj, dict):  # salvage a reply address and the id for the answer
                    address = address or usable_reply_to(obj.get("reply_to"))
                    rid = obj.get("id")
                    request_id = rid if isinstance(rid, str) and _ID_RE.match(rid) else None
                log.info("command rejected: %r", request.message)
                reply = reply_error(request_id, "bad_request", request.message)
                return self._out(address, reply, correlation_data)
            request_id = request.id
            address = address or usable_reply_to(request.reply_to)
            claim = self._idem.claim(request.id)
            if claim.replay is not None:
                log.info(
                    "command %s (%r): repeated id, sending the first reply again", request.id, request.cmd
                )
                return self._out(address, claim.replay, correlation_data)
            if claim.timed_out:
                busy = reply_error(request.id, "busy", "a request with this id is still being executed")
                return self._out(address, busy, correlation_data)
            try:
                reply = self._execute(request)
            except BaseException:
                self._idem.release(request.id)
                raise
            self._idem.complete(request.id, reply)
            return self._out(address, reply, correlation_data)
        except Exception:
            log.exception("command dispatch failed unexpectedly")
            return self._out(address, reply_error(request_id, "internal", "internal error"), correlation_data)

    # -- steps -----------------------------------------------------------------------------

    def _parse(self, payload: bytes) -> m.Request | _Rejected:
        """Steps 1-3."""
        if len(payload) > self._max_payload:
            return _Rejected(None, f"request is {len(payload)} bytes; the limit is {self._max_payload}")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _Rejected(None, f"request is not UTF-8: {exc.reason} at byte {exc.start}")
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            return _Rejected(None, f"request is not valid JSON: {exc}"[:300])
        if not isinstance(obj, dict):
            return _Rejected(obj, f"request must be a JSON object, got {type(obj).__name__}")
        try:
            return m.Request.model_validate(obj)
        except ValidationError as exc:
            return _Rejected(obj, _validation_message(exc))

    def _execute(self, request: m.Request) -> bytes:
        """Steps 5-8 plus audit; returns the reply bytes."""
        now = self._clock()
        issued = parse_iso(request.issued_at)  # already validated as RFC 3339
        ahead = issued - now
        if ahead > self._max_skew_s:
            message = f"issued_at is {ahead:.1f} s in the future (tolerance {self._max_skew_s:g} s)"
            return reply_error(request.id, "bad_request", message)
        spec = self._commands.get(request.cmd)
        ctx = CommandContext(request=request, gateway=self._gw, streams=self._streams, now=now)
        outcome: m.Outcome = "ok"
        try:
            spec = self._admit(request, spec, now - issued)
            args = self._args(spec, request)
            self._authorise(spec, ctx, args)
            result = self._run(spec, ctx, args)
            reply = reply_ok(request.id, result)
        except Exception as exc:
            code = _error_code(exc)
            if code is None:
                log.exception("command %s (%r) failed", request.id, request.cmd)
                code, message = "internal", f"{request.cmd} failed ({type(exc).__name__}); see agent log"
            else:
                message = exc.message if isinstance(exc, CommandError) else str(exc)
                log.info(
                    "command %s (%r) by %s: %s: %r",
                    request.id,
                    request.cmd,
                    request.requester.agency,
                    code,
                    message,
                )
            outcome = code
            reply = reply_error(request.id, code, message)
        if spec is not None and spec.audited:
            cameras: list[str | None] = list(dict.fromkeys(ctx.audit_cameras)) or [ctx.subject]
            for cam in cameras:
                self._record(request, cam, outcome)
        return reply

    def _admit(self, request: m.Request, spec: CommandSpec | None, age_s: float) -> CommandSpec:
        """Raise expired or unknown_command."""
        ttl = min(request.ttl_s, m.MAX_TTL_S)
        if age_s > ttl:
            raise CommandError("expired", f"request expired {age_s - ttl:.1f} s ago (issued_at + ttl_s)")
        if spec is None:
            known = ", ".join(self._commands)
            raise CommandError("unknown_command", f"unknown command {request.cmd!r}; known: {known}")
        return spec

    def _args(self, spec: CommandSpec, request: m.Request) -> BaseModel:
        try:
            return spec.args.model_validate(request.args)
        except ValidationError as exc:
            raise CommandError("bad_request", _validation_message(exc, "args.")) from None

    def _authorise(self, spec: CommandSpec, ctx: CommandContext, args: BaseModel) -> None:
        """Raise forbidden/not_found; note in `ctx.subject` the camera the command is about."""
        agency = ctx.request.requester.agency
        if spec.access == "admin":
            if agency not in self._gw.config.gateway.admin_agencies:
                raise CommandError("forbidden", f"agency {agency!r} may not run {spec.name} (admin only)")
            return
        if spec.access != "camera" or spec.camera_of is None:
            return
        camera = ctx.subject = spec.camera_of(ctx, args)
        cam = ctx.camera(camera)
        if agency not in cam.allowed_agencies:
            raise CommandError("forbidden", f"agency {agency!r} is not allowed for camera {camera!r}")

    def _run(self, spec: CommandSpec, ctx: CommandContext, args: BaseModel) -> dict[str, Any]:
        try:
            return spec.run(ctx, args)
        except ConfigError as exc:
            raise CommandError("bad_request", "; ".join(exc.problems)) from None
        except ValidationError as exc:
            if spec.name != "config.set":
                raise
            raise CommandError("bad_request", _validation_message(exc)) from None
        except ValueError as exc:
            if spec.name != "config.set":
                raise
            raise CommandError("bad_request", str(exc)) from None

    def _record(self, request: m.Request, camera: str | None, outcome: m.Outcome) -> None:
        try:
            fields = {
                "ts": iso(),
                "id": request.id,
                "cmd": request.cmd,
                "camera": camera,
                "requester": request.requester.model_dump(mode="json"),
                "outcome": outcome,
            }
            record = m.AuditRecord.model_validate(self._audit.append(fields), strict=False)
        except Exception:
            log.exception("AUDIT LOG WRITE FAILED for command %s (%r)", request.id, request.cmd)
            return
        try:
            self._gw.publish(self._gw.topics.audit, record.model_dump_json().encode("utf-8"), kind="audit")
        except Exception:
            log.exception("publishing the audit record of %s failed", request.id)

    @staticmethod
    def _out(address: str | None, reply: bytes, correlation_data: bytes | None) -> ReplyOut | None:
        if address is None:
            return None
        return address, reply, correlation_data
