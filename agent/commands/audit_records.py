"""The dispatcher's audit records: what one command (or one agency's rate-limited requests) adds
to the audit log, and its copy on `{root}/audit`.

Which commands and outcomes are audited is the dispatcher's rule (agent.commands.dispatcher); the
hash chain and the file are agent.commands.audit's. A record that cannot be written is logged and
the command's reply still goes out: an audit failure must not turn into a second outage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agent.clock import iso
from agent.commands import models as m
from agent.commands.audit import AuditLog
from agent.commands.gateway import Gateway
from agent.commands.handlers import CommandContext, CommandSpec

log = logging.getLogger(__name__)


class AuditRecorder:
    """Appends records to `audit` and publishes each through `gateway`; thread-safe as both are."""

    def __init__(self, audit: AuditLog, gateway: Gateway, clock: Callable[[], float]) -> None:
        self._audit = audit
        self._gw = gateway
        self._clock = clock

    def outcome(
        self, request: m.Request, spec: CommandSpec | None, ctx: CommandContext, outcome: m.Outcome
    ) -> None:
        """For an audited command: one record per camera whose imagery went out, or one for the
        requested camera / null."""
        if spec is None or not spec.audited:
            return
        cameras: list[str | None] = list(dict.fromkeys(ctx.audit_cameras)) or [ctx.subject]
        for cam in cameras:
            self.record(request, cam, outcome)

    def record(self, request: m.Request, camera: str | None, outcome: m.Outcome) -> None:
        """One record for `request` about `camera`, whatever the command."""
        fields = {
            "ts": iso(),
            "id": request.id,
            "cmd": request.cmd,
            "camera": camera,
            "requester": request.requester.model_dump(mode="json"),
            "outcome": outcome,
        }
        self._append(fields, request.id)

    def rate_limited(self, agency: str, refused: int) -> None:
        """One record for the `refused` requests of `agency` answered rate_limited in an interval."""
        self._append(
            {
                "ts": iso(self._clock()),
                "id": "rate_limited",
                "cmd": "rate_limited",
                "camera": None,
                "requester": {"agency": agency, "operator": None, "incident": None},
                "outcome": "rate_limited",
                "refused": refused,
            },
            "rate_limited",
        )

    def _append(self, fields: dict[str, Any], what: str) -> None:
        """Append one record to the audit log and publish it on `{root}/audit`."""
        try:
            record = m.AuditRecord.model_validate(self._audit.append(fields), strict=False)
        except Exception:
            log.exception("AUDIT LOG WRITE FAILED for %r", what)
            return
        try:
            payload = record.model_dump_json(exclude_unset=True).encode("utf-8")
            self._gw.publish(self._gw.topics.audit, payload, kind="audit")
        except Exception:
            log.exception("publishing the audit record of %r failed", what)
