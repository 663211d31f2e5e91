"""Turns one request payload from `{root}/cmd` into at most one reply, never raising.

The command server (agent.commands.server) calls `Dispatcher.handle(payload, response_topic,
correlation_data, retained=…, user_properties=…)` on one of its workers for every message on the
command topic, and publishes what it returns (QoS 1, not retained), echoing the correlation data
as MQTT 5 Correlation Data. The steps, in order:

1. size: more than `max_payload_bytes` (64 KiB) → bad_request, without parsing;
2. UTF-8, JSON (no NaN/Infinity), a JSON object → else bad_request;
3. the envelope against `Request` → bad_request naming the field (1-3: agent.commands.envelope);
4. with a verifier (signed commands): a missing or bad signature → unauthenticated;
5. reply address (agent.commands.replies): one outside the reply prefixes → refused, never answered;
6. idempotency: an (agency, id) seen in the last 630 s gets the stored reply bytes again;
7. rate limit (agent.commands.limits): the agency's request bucket empty → rate_limited;
8. a retained message → bad_request (a retained command would run on every reconnect);
9. time: issued_at more than `max_skew_s` ahead of our clock → bad_request; now past
   issued_at + ttl_s → expired;
10. cmd → unknown_command; args against the command's model → bad_request naming `args.…`;
11. access: the camera's allowed_agencies / gateway.admin_agencies → forbidden;
12. execution; `CommandError` becomes its code, anything else `internal` (logged with traceback).

A refusal (steps 4, 5, 8-11: an error before anything ran) takes a token from the agency's
refusal bucket too; without one it is answered rate_limited instead. Rate-limited requests are
neither remembered nor audited one by one: `flush_summaries` writes one record per agency per
interval with their count (it runs on every request; the runtime also calls it periodically).

The reply goes where agent.commands.replies says: the MQTT 5 Response Topic when usable, else the
request's `reply_to`; with neither, the command still runs and `handle` returns None. Requests
failing steps 1-5 or 7 are not remembered for idempotency (their id cannot be trusted, or was
never admitted); from step 8 on every reply is, before it is sent, in `{state_dir}/replies.db`.

Audit: commands that expose imagery or change state are audited from step 8 on whatever the
outcome, one record per camera whose imagery went out (or one with the requested camera / null);
refusals at steps 4, 5 and 8 are audited whatever the command. Each record is appended to the
audit log and published on `{root}/audit` (QoS 1) by agent.commands.audit_records. Untrusted
strings are logged with %r only, so no request can start a log line of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.clock import parse_iso, skew_hint
from agent.commands import models as m
from agent.commands.audit import AuditLog
from agent.commands.audit_records import AuditRecorder
from agent.commands.envelope import Parsed, Rejected, claimed_agency, parse_request, validation_message
from agent.commands.gateway import Gateway
from agent.commands.handlers import COMMANDS, CommandContext, CommandSpec
from agent.commands.idempotency import Claim, IdempotencyCache
from agent.commands.limits import SHARED_ACCOUNT, RateLimiter, RateLimits
from agent.commands.models import CommandError, ErrorCode
from agent.commands.replies import Address, ReplyTopics, choose_address, reply_error, reply_ok
from agent.commands.streams import StreamManager
from agent.commands.verifying import CommandVerifier
from agent.errors import AgentError, ConfigError

__all__ = ["CommandVerifier", "Dispatcher", "ReplyOut"]

log = logging.getLogger(__name__)

ReplyOut = tuple[str, bytes, bytes | None]
"""(reply topic, reply payload, correlation data to echo)"""

REPLIES_FILE = "replies.db"
RETAINED_MESSAGE = "retained commands are refused: publish commands without the retain flag"
SHARED_AGENCY = "unlisted"  # the requester of the shared account's rate_limited summaries
UNREADABLE_ACCOUNT = "?"  # requests whose agency cannot be read, for the server's queues


def _error_code(exc: Exception) -> ErrorCode | None:
    """The protocol code an AgentError carries in `.code` (CommandError, agent.footage.clips.ClipError)."""
    if not isinstance(exc, AgentError):
        return None
    code = getattr(exc, "code", None)
    return next((c for c in m.ERROR_CODES if c == code), None)


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
        state_dir: Path | None = None,
        rate_limits: RateLimits | None = None,
        verifier: CommandVerifier | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        commands: dict[str, CommandSpec] | None = None,
    ) -> None:
        self._gw = gateway
        self._audit = AuditRecorder(audit, gateway, clock)
        self._streams = streams
        self._max_payload = max_payload_bytes
        self._max_skew_s = max_skew_s
        self._verifier = verifier
        self._clock = clock
        self._commands = COMMANDS if commands is None else commands
        cfg = gateway.config
        limits = rate_limits or RateLimits()
        agencies = {a for cam in cfg.cameras for a in cam.allowed_agencies} | set(cfg.gateway.admin_agencies)
        self._limiter = RateLimiter(limits, agencies, clock=monotonic)
        # Remember ids a little longer than the longest ttl plus skew: a forgotten id is expired.
        window_s = m.MAX_TTL_S + max_skew_s
        self._idem = IdempotencyCache(
            None if state_dir is None else state_dir / REPLIES_FILE,
            window_s=window_s,
            capacity=limits.window_capacity(window_s),
            clock=clock,
        )
        self.reply_topics = ReplyTopics.of(gateway.topics.reply_prefix, cfg.gateway.reply_prefixes)
        """Where replies may go; the server answers busy/internal by the same rule."""

    def handle(
        self,
        payload: bytes,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        *,
        retained: bool = False,
        user_properties: Mapping[str, str] | None = None,
    ) -> ReplyOut | None:
        """Process one request; return where to send the reply, or None when it goes nowhere."""
        self.flush_summaries()
        address = choose_address(self.reply_topics, response_topic, None)
        request_id: str | None = None
        try:
            parsed = parse_request(payload, self._max_payload)
            if isinstance(parsed, Rejected):
                return self._rejected(parsed, response_topic, correlation_data)
            request = parsed.request
            request_id = request.id
            address = choose_address(self.reply_topics, response_topic, request.reply_to)
            reply = self._admitted(parsed, address, retained, user_properties or {})
            return None if reply is None else self._out(address.topic, reply, correlation_data)
        except Exception:
            log.exception("command dispatch failed unexpectedly")
            return self._out(
                address.topic, reply_error(request_id, "internal", "internal error"), correlation_data
            )

    def account_of(self, payload: bytes) -> str:
        """The rate-limit account a request claims (`?` when unreadable): the command server
        queues per account. Cheap enough for paho's thread; the agency is not yet checked."""
        agency = claimed_agency(payload, self._max_payload)
        return UNREADABLE_ACCOUNT if agency is None else self._limiter.account(agency)

    def flush_summaries(self, *, force: bool = False) -> None:
        """Audit the count of rate-limited requests of every agency whose interval has passed
        (of all of them with `force`, e.g. at stop)."""
        for summary in self._limiter.due_summaries(force=force):
            agency = SHARED_AGENCY if summary.account == SHARED_ACCOUNT else summary.account
            log.warning(
                "agency %r: %d requests answered rate_limited in %.0f s",
                agency,
                summary.refused,
                summary.seconds,
            )
            self._audit.rate_limited(agency, summary.refused)

    def stats(self) -> dict[str, Any]:
        """For telemetry: per agency (`*`: those the config does not name) the requests refused as
        such and those answered rate_limited since start; the reply store's size and durability."""
        return {
            **self._limiter.stats(),
            "replies": {"entries": len(self._idem), "durable": self._idem.durable},
        }

    def close(self) -> None:
        """Write pending rate-limit summaries and close the reply store (after the server stopped)."""
        self.flush_summaries(force=True)
        self._idem.close()

    # -- steps -----------------------------------------------------------------------------

    def _rejected(
        self, rejected: Rejected, response_topic: str | None, corr: bytes | None
    ) -> ReplyOut | None:
        """Steps 1-3 failed: answer bad_request where the request's address allows."""
        address = choose_address(self.reply_topics, response_topic, rejected.reply_to)
        if address.hostile is not None:
            log.warning(
                "command rejected and not answered: reply topic %.200r is not allowed", address.hostile
            )
            return None
        log.info("command rejected: %r", rejected.message)
        return self._out(
            address.topic, reply_error(rejected.request_id, "bad_request", rejected.message), corr
        )

    def _admitted(
        self, parsed: Parsed, address: Address, retained: bool, user_properties: Mapping[str, str]
    ) -> bytes | None:
        """Steps 4-12 for a valid envelope; the reply bytes, or None for a request not answered."""
        request = parsed.request
        agency = request.requester.agency
        if self._verifier is not None:
            try:
                self._verifier.verify(parsed.envelope, user_properties)
            except CommandError as exc:
                return self._refuse_early(request, exc.code, exc.message, answered=address.hostile is None)
        if address.hostile is not None:
            message = (
                f"reply topic {address.hostile!r} is not under {' or '.join(self.reply_topics.prefixes)}"
            )
            return self._refuse_early(request, "forbidden", message, answered=False)
        key = f"{agency}/{request.id}"
        stored = self._idem.lookup(key)  # a repeat costs no more than a rate_limited answer
        if stored is None and not self._limiter.admit(agency):
            return self._rate_limited(request)
        claim = (
            Claim(key, stored) if stored is not None else self._idem.claim(self._limiter.account(agency), key)
        )
        if claim.replay is not None:
            log.info(
                "command %r (%r) by %r: repeated id, sending the first reply again",
                request.id,
                request.cmd,
                agency,
            )
            return claim.replay
        return self._once(request, retained, key, claim)

    def _once(self, request: m.Request, retained: bool, key: str, claim: Claim) -> bytes:
        """Steps 8-12 for a request seen for the first time; the reply is stored before it is sent."""
        if claim.timed_out:
            return reply_error(request.id, "busy", "a request with this id is still being executed")
        if claim.full:
            return self._rate_limited(request)
        try:
            reply = self._execute(request, retained)
        except BaseException:
            self._idem.release(key)
            raise
        if reply is None:  # rate-limited refusal: not remembered
            self._idem.release(key)
            return self._rate_limited(request)
        self._idem.complete(key, reply)
        return reply

    def _refuse_early(
        self, request: m.Request, code: ErrorCode, message: str, *, answered: bool
    ) -> bytes | None:
        """A refusal before idempotency (steps 4-5): audited whatever the command, not remembered."""
        if not self._limiter.refuse(request.requester.agency):
            reply = self._rate_limited(request)
        else:
            self._log_refusal(request, code, message)
            self._audit.record(request, None, code)
            reply = reply_error(request.id, code, message)
        return reply if answered else None

    def _rate_limited(self, request: m.Request) -> bytes:
        agency = request.requester.agency
        self._limiter.limited(agency)
        return reply_error(
            request.id, "rate_limited", f"too many requests from agency {agency!r}; retry later"
        )

    def _execute(self, request: m.Request, retained: bool) -> bytes | None:
        """Steps 8-12 plus audit: the reply bytes, or None when a refusal is over the limit."""
        now = self._clock()
        spec = self._commands.get(request.cmd)
        ctx = CommandContext(request=request, gateway=self._gw, streams=self._streams, now=now)
        try:
            if retained:
                raise CommandError("bad_request", RETAINED_MESSAGE)
            spec = self._admit(request, spec, now)
            args = self._args(spec, request)
            self._authorise(spec, ctx, args)
        except Exception as exc:
            if _error_code(exc) is not None and not self._limiter.refuse(request.requester.agency):
                return None
            return self._failed(request, spec, ctx, exc, audit=retained)
        try:
            reply = reply_ok(request.id, self._run(spec, ctx, args))
        except Exception as exc:
            return self._failed(request, spec, ctx, exc, audit=False)
        self._audit.outcome(request, spec, ctx, "ok")
        return reply

    def _failed(
        self,
        request: m.Request,
        spec: CommandSpec | None,
        ctx: CommandContext,
        exc: Exception,
        *,
        audit: bool,
    ) -> bytes:
        """The error reply for `exc` (its code, else internal, logged with traceback), audited
        when the command is (or `audit`)."""
        code = _error_code(exc)
        if code is None:
            log.exception("command %r (%r) failed", request.id, request.cmd)
            code, message = "internal", f"{request.cmd} failed ({type(exc).__name__}); see agent log"
        else:
            message = exc.message if isinstance(exc, CommandError) else str(exc)
            self._log_refusal(request, code, message)
        if audit:
            self._audit.record(request, ctx.subject, code)
        else:
            self._audit.outcome(request, spec, ctx, code)
        return reply_error(request.id, code, message)

    def _admit(self, request: m.Request, spec: CommandSpec | None, now: float) -> CommandSpec:
        """Raise bad_request (clock skew), expired or unknown_command."""
        issued = parse_iso(request.issued_at)  # already validated as RFC 3339
        ahead = issued - now
        if ahead > self._max_skew_s:
            message = f"issued_at is {ahead:.1f} s in the future (tolerance {self._max_skew_s:g} s)"
            raise CommandError("bad_request", message + skew_hint())
        ttl = min(request.ttl_s, m.MAX_TTL_S)
        if now - issued > ttl:
            raise CommandError(
                "expired", f"request expired {now - issued - ttl:.1f} s ago (issued_at + ttl_s)" + skew_hint()
            )
        if spec is None:
            known = ", ".join(self._commands)
            raise CommandError("unknown_command", f"unknown command {request.cmd!r}; known: {known}")
        return spec

    def _args(self, spec: CommandSpec, request: m.Request) -> BaseModel:
        try:
            return spec.args.model_validate(request.args)
        except ValidationError as exc:
            raise CommandError("bad_request", validation_message(exc, "args.")) from None

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
            raise CommandError("bad_request", validation_message(exc)) from None
        except ValueError as exc:
            if spec.name != "config.set":
                raise
            raise CommandError("bad_request", str(exc)) from None

    @staticmethod
    def _log_refusal(request: m.Request, code: str, message: str) -> None:
        log.info(
            "command %r (%r) by %r: %s: %r", request.id, request.cmd, request.requester.agency, code, message
        )

    @staticmethod
    def _out(address: str | None, reply: bytes, correlation_data: bytes | None) -> ReplyOut | None:
        if address is None:
            return None
        return address, reply, correlation_data
