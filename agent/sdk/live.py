"""A live stream session seen from the platform: subscribe first, start, iterate frames, renew, stop."""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt

from agent.clock import parse_iso
from agent.sdk.connection import Connection, user_properties
from agent.sdk.errors import CommandFailed, NoReply

__all__ = ["STREAM_INBOX", "LiveStream", "StreamFrame"]

log = logging.getLogger(__name__)

STREAM_INBOX = 64  # frames buffered for a slow consumer; older ones are dropped and counted
_RENEW_AHEAD_S = 10.0  # renew a long stream this long before the session would expire
_MAX_SESSION_S = 600.0  # the protocol's longest stream session


class StreamFrame(NamedTuple):
    """One live message: `seq` and `ts` from the agent's user properties (on MQTT 3.1.1, which has
    none, `seq` counts messages as they arrive and `ts` is None). A JPEG session's `jpeg` is one
    frame; an fmp4 session's is a segment (`data`), `part` "init" or "fragment": written in seq
    order, init first, they make an MP4 file (on 3.1.1 an init segment starts with an ftyp box)."""

    seq: int
    ts: str | None
    jpeg: bytes
    part: str | None = None

    @property
    def data(self) -> bytes:
        return self.jpeg


class LiveStream:
    """One stream session, from stream.start to stream.stop; an iterator of `StreamFrame`s.

    The subscription to `{root}/cam/{camera}/stream/+` is made before stream.start, and frames of
    other sessions are ignored. Frames wait in a bounded inbox (`STREAM_INBOX`); a consumer that
    falls behind loses the oldest, counted in `dropped`. Sessions longer than the protocol's 600 s
    are renewed shortly before they expire.
    """

    def __init__(
        self,
        client: Connection,
        camera: str,
        *,
        seconds: float,
        fps: float,
        max_width: int | None,
        quality: int | None,
        timeout: float,
        format: str = "jpeg",
    ) -> None:
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"seconds must be a positive number, got {seconds!r}")
        self._client = client
        self._timeout = timeout
        self.format = format
        self.dropped = 0
        self.received = 0
        self._inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue(maxsize=STREAM_INBOX)
        self._inbox_lock = threading.Lock()  # serialises drop-oldest-then-put against other puts
        self._filter = client.topics.stream_filter(camera)
        self._topic: str | None = None  # set once stream.start answered; guarded by _inbox_lock
        self._early: list[mqtt.MQTTMessage] = []  # frames that beat the reply; guarded by _inbox_lock
        self._closed = False
        self._end = time.monotonic() + seconds
        self._count = 0
        client.subscribe(self._filter, self._on_frame, timeout)
        try:
            args: dict[str, Any] = {
                "camera": camera,
                "fps": float(fps),
                "duration_s": float(min(_MAX_SESSION_S, math.ceil(seconds))),
            }
            if max_width is not None:  # fmp4 without it: the camera's own size where possible
                args["max_width"] = max_width
            if format != "jpeg":  # agents before fmp4 refuse the unknown key
                args["format"] = format
            if quality is not None:
                args["quality"] = quality
            self.result = client.request("stream.start", args, timeout=timeout)
        except BaseException:
            client.unsubscribe(self._filter)
            raise
        self.session: str = str(self.result["session"])
        self.expires_at: str = str(self.result["expires_at"])
        self._expires_mono = time.monotonic() + self._seconds_left(self.expires_at)
        with self._inbox_lock:
            self._topic = str(self.result["topic"])
            early, self._early = self._early, []
        for msg in early:
            if msg.topic == self._topic:
                self._put(msg)

    @staticmethod
    def _seconds_left(expires_at: str) -> float:
        return parse_iso(expires_at) - time.time()

    def _on_frame(self, msg: mqtt.MQTTMessage) -> None:
        with self._inbox_lock:
            if self._topic is None:
                if len(self._early) < STREAM_INBOX:
                    self._early.append(msg)
                return
            if msg.topic != self._topic:
                return
        self._put(msg)

    def _put(self, msg: mqtt.MQTTMessage) -> None:
        with self._inbox_lock:
            if self._inbox.full():
                try:
                    self._inbox.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass
            self._inbox.put_nowait(msg)

    def __iter__(self) -> LiveStream:
        return self

    def __next__(self) -> StreamFrame:
        while not self._closed:
            now = time.monotonic()
            if now >= self._end:
                break
            if self._end > self._expires_mono + 1.0 and self._expires_mono - now < _RENEW_AHEAD_S:
                self._renew()
            if now > self._expires_mono + 2.0:  # the session ended on its own; last frames are in
                break
            wait = min(self._end, self._expires_mono + 2.0) - now
            try:
                msg = self._inbox.get(timeout=max(0.01, min(wait, 0.5)))
            except queue.Empty:
                continue
            self.received += 1
            props = user_properties(msg)
            seq = int(props["seq"]) if props.get("seq", "").isdigit() else self._count
            self._count += 1
            part = props.get("part")
            if part is None and self.format == "fmp4":
                part = "init" if bytes(msg.payload[4:8]) == b"ftyp" else "fragment"
            return StreamFrame(seq, props.get("ts"), bytes(msg.payload), part)
        self.close()
        raise StopIteration

    def _renew(self) -> None:
        left = self._end - time.monotonic()
        duration = float(min(_MAX_SESSION_S, math.ceil(left)))
        result = self._client.request(
            "stream.renew", {"session": self.session, "duration_s": duration}, timeout=self._timeout
        )
        self.expires_at = str(result["expires_at"])
        self._expires_mono = time.monotonic() + self._seconds_left(self.expires_at)

    def close(self) -> None:
        """Stop the session (a session that already ended is fine) and unsubscribe."""
        if self._closed:
            return
        self._closed = True
        try:
            self._client.request("stream.stop", {"session": self.session}, timeout=self._timeout)
        except CommandFailed as exc:
            if exc.code != "not_found":  # not_found: it had ended at its expiry
                log.warning("stream.stop %s: %s", self.session, exc)
        except NoReply:
            log.warning(
                "stream.stop %s: no reply; the session ends at %s anyway", self.session, self.expires_at
            )
        finally:
            self._client.unsubscribe(self._filter)

    def __enter__(self) -> LiveStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
