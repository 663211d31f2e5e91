"""The package boundaries the `__init__` docstrings promise, held by reading every module's imports.

A change that makes, say, the clip store import the MQTT link, or the agent import the platform's
SDK, fails here with the offending module named, instead of slowly turning the packages back into
one hub.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "agent"

# package -> packages of agent it must never import (directly, at any point in the module)
FORBIDDEN: dict[str, set[str]] = {
    "capture": {"analysis", "footage", "mqtt", "commands", "runtime", "sdk"},
    "analysis": {"footage", "mqtt", "commands", "runtime", "sdk"},
    "footage": {"mqtt", "commands", "runtime", "sdk"},  # the recorder follows event phases
    "mqtt": {"capture", "analysis", "footage", "commands", "runtime", "sdk"},
    "commands": {"analysis", "runtime", "sdk"},
    "config": {"capture", "analysis", "footage", "mqtt", "commands", "runtime", "sdk"},
    "contract": {"capture", "analysis", "footage", "mqtt", "runtime", "sdk"},
    "runtime": {"sdk"},
    "sdk": {"runtime", "capture", "analysis", "footage"},
    "simulate": {"capture", "analysis", "footage", "runtime", "sdk"},  # the agent's MQTT face, no cameras
    "onvif": {"capture", "analysis", "footage", "mqtt", "commands", "runtime", "sdk"},
    # the commissioning page sees the agent only through its ConsoleGateway protocol
    "console": {"capture", "analysis", "mqtt", "commands", "runtime", "sdk", "onvif", "simulate"},
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "vendored" not in p.parts)


def _agent_imports(path: Path) -> set[str]:
    """Second-level package names of `agent.*` imported anywhere in the module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "agent" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_package_says_what_it_owns() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 60, (
            f"{init.relative_to(PACKAGE.parent)} needs a docstring saying what it owns"
        )


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_boundaries(package: str) -> None:
    offenders = []
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] != package:
            continue
        bad = _agent_imports(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{rel}: imports agent.{', agent.'.join(sorted(bad))}")
    assert not offenders, "\n".join(offenders)


def test_only_the_cli_reaches_the_sdk_and_the_runtime() -> None:
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("sdk", "runtime") or rel.name == "cli.py":
            continue
        assert not _agent_imports(path) & {"sdk", "runtime"}, f"{rel} imports the SDK or the runtime"


def test_no_loose_modules_beyond_the_entry_points() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "cli.py", "clock.py", "errors.py", "files.py"], loose
