"""The schema models cover the whole contract, and the generated reference matches docs/protocol.md."""

from __future__ import annotations

import json
from pathlib import Path

from agent.commands.handlers import COMMANDS
from agent.commands.models import COMMAND_MODELS, ERROR_CODES, StreamStartArgs
from agent.contract.schema import all_schemas, render_markdown

CONTRACT_COMMANDS = [
    "ping",
    "describe",
    "snapshot",
    "stream.start",
    "stream.renew",
    "stream.stop",
    "clip.export",
    "clip.fetch",
    "clip.hold",
    "locate",
    "config.get",
    "config.set",
]
AGENT_COMMANDS = ["ptz.move", "ptz.stop", "ptz.presets", "ptz.goto_preset", "ptz.look_at"]
"""Commands this agent adds to version 1 (docs/protocol.md, "PTZ (ONVIF cameras)")."""
DOCS = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def test_every_contract_command_has_models_and_a_handler() -> None:
    assert list(COMMAND_MODELS) == CONTRACT_COMMANDS + AGENT_COMMANDS
    assert list(COMMANDS) == CONTRACT_COMMANDS + AGENT_COMMANDS
    for name, spec in COMMANDS.items():
        assert spec.args is COMMAND_MODELS[name][0]


def test_error_codes_are_the_contracts_then_the_agents_additions() -> None:
    contract = ("bad_request", "unknown_command", "not_found", "forbidden", "expired", "busy", "internal")
    assert (*contract, "rate_limited", "unauthenticated") == ERROR_CODES
    assert "Codes: " + ", ".join(f"`{c}`" for c in contract) + "." in DOCS.read_text(encoding="utf-8")


def test_stream_defaults_follow_the_contract() -> None:
    args = StreamStartArgs.model_validate({"camera": "cam-1"})
    assert (args.fps, args.max_width, args.duration_s) == (5.0, 640, 60.0)


def test_all_schemas_are_json_and_complete() -> None:
    schemas = all_schemas()
    for name in ["request", "reply", "error", "audit_record", "event", "gateway_status", "camera_status"]:
        assert name in schemas
    for cmd in CONTRACT_COMMANDS:
        assert f"args/{cmd}" in schemas
        assert f"result/{cmd}" in schemas
    json.dumps(schemas)
    assert schemas["args/stream.start"]["properties"]["fps"]["maximum"] == 30.0
    assert schemas["args/stream.start"]["additionalProperties"] is False
    codes = schemas["error"]["$defs"]["ErrorBody"]["properties"]["code"]["enum"]
    assert codes == list(ERROR_CODES)


def test_markdown_names_every_command_and_code() -> None:
    text = render_markdown()
    assert text == render_markdown()
    for cmd in CONTRACT_COMMANDS:
        assert f"### `{cmd}`" in text
    for code in ERROR_CODES:
        assert f"`{code}`" in text
    assert "| `fps` | number | no | `5.0` | > 0.0, ≤ 30.0 |" in text


def test_docs_carry_the_generated_reference() -> None:
    assert render_markdown() in DOCS.read_text(encoding="utf-8"), (
        "run `edge-agent schema` and update the docs"
    )
