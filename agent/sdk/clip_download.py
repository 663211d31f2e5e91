"""The resumable clip download behind `PlatformClient.clip_fetch`: chunks land in a part file as they
arrive, progress survives a timeout, and the result is checked against the agent's SHA-256."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import paho.mqtt.client as mqtt

from agent.sdk.connection import Connection, user_properties
from agent.sdk.errors import ClientError, NoReply

__all__ = ["ClipDownload"]


class ClipDownload:
    """State of one clip download; chunks are written to the part file from paho's thread."""

    def __init__(self, client: Connection, clip_id: str, out: Path, chunk_bytes: int) -> None:
        if chunk_bytes < 1024:
            raise ValueError(f"chunk_bytes must be at least 1024, got {chunk_bytes}")
        self._client = client
        self.clip_id = clip_id
        self.out = out
        self.part = out.with_name(out.name + ".part")
        self.state_path = out.with_name(out.name + ".part.json")
        self.chunk_bytes = chunk_bytes
        # _cond guards _have, _count, _file and _arrivals; the paho thread writes chunks under it.
        self._cond = threading.Condition()
        self._have: set[int] = set()
        self._count: int | None = None
        self._arrivals = 0
        self._file: BinaryIO | None = None

    def _load_state(self) -> None:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = None
        resumable = (
            self._client.v5
            and isinstance(state, dict)
            and state.get("clip_id") == self.clip_id
            and state.get("chunk_bytes") == self.chunk_bytes
            and self.part.exists()
        )
        if resumable:
            assert isinstance(state, dict)
            self._have = {int(i) for i in state.get("have", []) if isinstance(i, int)}
            count = state.get("count")
            self._count = count if isinstance(count, int) else None
        else:
            self._have = set()
            self.part.write_bytes(b"")

    def _save_state(self) -> None:
        with self._cond:
            state = {
                "clip_id": self.clip_id,
                "chunk_bytes": self.chunk_bytes,
                "count": self._count,
                "have": sorted(self._have),
            }
        self.state_path.write_text(json.dumps(state), encoding="utf-8")

    def _on_chunk(self, msg: mqtt.MQTTMessage) -> None:
        props = user_properties(msg)
        with self._cond:
            if self._file is None:
                return
            index_text, count_text = props.get("index", ""), props.get("count", "")
            if index_text.isdigit() and count_text.isdigit():
                index, count = int(index_text), int(count_text)
                self._count = count
            else:  # MQTT 3.1.1: no user properties, the broker keeps the agent's order
                index = self._arrivals
            self._arrivals += 1
            if index not in self._have:
                self._file.seek(index * self.chunk_bytes)
                self._file.write(msg.payload)
                self._have.add(index)
            self._cond.notify_all()

    def run(self, timeout: float) -> dict[str, Any]:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._load_state()
        deadline = time.monotonic() + timeout
        topic = self._client.topics.clip(self.clip_id)
        with self.part.open("r+b") as f:
            with self._cond:
                self._file = f
            try:
                with self._client.subscription(topic, self._on_chunk, deadline):
                    args = {"clip_id": self.clip_id, "chunk_bytes": self.chunk_bytes}
                    left = max(0.5, deadline - time.monotonic())
                    result = self._client.request("clip.fetch", args, timeout=left)
                    count = int(result["count"])
                    with self._cond:
                        self._count = count
                        while len(self._have & set(range(count))) < count:
                            left = deadline - time.monotonic()
                            if left <= 0:
                                break
                            self._cond.wait(left)
                        missing = count - len(self._have & set(range(count)))
            except NoReply:
                self._detach_and_save()
                raise
            finally:
                with self._cond:
                    self._file = None
        if missing:
            self._detach_and_save()
            raise NoReply(
                f"clip {self.clip_id}: {missing} of {count} chunks did not arrive in time; "
                f"call again to resume ({self.part})"
            )
        return self._finish(result)

    def _detach_and_save(self) -> None:
        with self._cond:
            if self._file is not None:
                self._file.flush()
            self._file = None
        self._save_state()

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        size = int(result["bytes"])
        digest = hashlib.sha256()
        with self.part.open("r+b") as f:
            f.truncate(size)
            while block := f.read(1024 * 1024):
                digest.update(block)
        self.state_path.unlink(missing_ok=True)
        if digest.hexdigest() != result["sha256"]:
            self.part.unlink(missing_ok=True)
            raise ClientError(
                f"clip {self.clip_id}: SHA-256 {digest.hexdigest()} does not match the agent's "
                f"{result['sha256']}; the partial file was deleted"
            )
        self.part.replace(self.out)
        return result
