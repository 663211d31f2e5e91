"""Print one JSON object describing a gateway's on-disk state, for diagnostics.yml.

Run with the installed release's interpreter so that the audit chain is checked by the agent's
own `agent.commands.audit.verify`, the same code that wrote it. The outbox is found by its schema (a
SQLite file with a `messages` table) rather than by name, and opened read-only, so the report
works across releases and never changes what it inspects.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

SQLITE_MAGIC = b"SQLite format 3\x00"


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def outbox_depths(data_dir: Path) -> list[dict[str, Any]]:
    """Queued messages per kind in every outbox-shaped SQLite file in data_dir."""
    found: list[dict[str, Any]] = []
    # Two levels deep only: recordings may hold many thousands of files further down.
    shallow = [*data_dir.glob("*"), *data_dir.glob("*/*")]
    candidates = sorted(p for p in shallow if p.suffix not in {".mp4", ".jpg"} and _is_sqlite(p))
    for path in candidates[:20]:
        entry: dict[str, Any] = {"file": str(path), "bytes": path.stat().st_size}
        try:
            conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=2.0)
            try:
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if "messages" not in tables:
                    continue
                rows = conn.execute("SELECT kind, COUNT(*) FROM messages GROUP BY kind").fetchall()
                entry["depth"] = sum(int(n) for _, n in rows)
                entry["by_kind"] = {str(kind): int(n) for kind, n in rows}
                if "drops" in tables:
                    drops = conn.execute("SELECT kind, count FROM drops").fetchall()
                    entry["dropped"] = {str(kind): int(n) for kind, n in drops}
            finally:
                conn.close()
        except sqlite3.Error as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
        found.append(entry)
    return found


def audit_check(data_dir: Path, key_file: Path | None = None) -> dict[str, Any]:
    """The agent's own verdict on the hash chain of {data_dir}/audit/audit.log (keyed when the
    gateway has an audit key: its file is passed by the playbook, read here, never printed)."""
    log_file = data_dir / "audit" / "audit.log"
    if not log_file.exists():
        return {"file": str(log_file), "present": False}
    try:
        from agent.commands.audit import verify  # noqa: PLC0415 - releases since the package split
    except ImportError:
        try:
            from agent.audit import verify  # type: ignore[no-redef]  # noqa: PLC0415 - older releases
        except ImportError as exc:
            return {"file": str(log_file), "present": True, "error": f"this release cannot verify: {exc}"}
    if key_file is not None and key_file.exists():
        try:
            from agent.commands.audit import load_key  # noqa: PLC0415 - releases with keyed chains

            result = verify(log_file, key=load_key(key_file, private=False))  # type: ignore[call-arg]
        except ImportError as exc:
            return {"file": str(log_file), "present": True, "error": f"this release cannot verify: {exc}"}
    else:
        result = verify(log_file)
    return {
        "file": str(log_file),
        "present": True,
        "ok": result.ok,
        "records": result.records,
        "first_bad_line": result.first_bad_line,
        "reason": result.reason,
        "torn_lines": list(result.torn_lines),
    }


def report(data_dir: Path, key_file: Path | None = None) -> dict[str, Any]:
    if not data_dir.is_dir():
        return {"data_dir": str(data_dir), "error": "data_dir does not exist"}
    usage = shutil.disk_usage(data_dir)
    return {
        "data_dir": str(data_dir),
        "disk": {"total": usage.total, "free": usage.free},
        "outbox": outbox_depths(data_dir),
        "audit": audit_check(data_dir, key_file),
    }


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: gateway_report.py DATA_DIR [AUDIT_KEY_FILE]", file=sys.stderr)
        return 2
    key_file = Path(argv[2]) if len(argv) == 3 else None
    print(json.dumps(report(Path(argv[1]), key_file), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
