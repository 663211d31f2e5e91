"""Live streams to the platform: JPEG frames, or H.264 as fragmented MP4 (`format` "fmp4").

Every JPEG frame goes out through agent.footage.images.encode_outgoing (privacy masks at full
resolution, then downscale, then JPEG), like every other image that leaves the gateway.

`StreamManager` owns the stream sessions and ONE worker thread (`commands.streams`) that
publishes each session's frames at its fps on `{root}/cam/{camera}/stream/{session}`, QoS 0,
with user properties `seq` (0, 1, … per session) and `ts` (the frame's capture time). A frame
is sent only when the camera produced a new one since the session's last. Sessions end on their
own at `expires_at`; `stream.renew` moves that to now + `duration_s`.

A session belongs to the agency that opened it (`owner`): only that agency may renew it, and
only it, or a caller the command plane names an admin (`override`), may close it. The check is
made under the same lock as the lookup, so it holds for the session actually changed.

Limits: at most `max_sessions` sessions, and the sum over sessions of (JPEG bytes per frame
times fps) must stay under `max_bytes_per_s`, else `stream.start` answers `busy`. A new session's
frame size is measured by encoding the camera's newest frame at the requested width and quality
(that JPEG also becomes the session's first frame, so it goes out at once); afterwards each
session's estimate follows the frames it actually sends.

An fmp4 session (agent.commands.stream_fmp4) sends an init segment, then fragments, each one
message with user properties `seq`, `ts` and `part` ("init" | "fragment"). A packet-path camera's
own H.264 is copied from its `PacketRing` (no encode; the camera's size and rate) unless the
request names a `max_width` below the camera's width; every other camera's masked pixels are
encoded on this worker. Its bandwidth starts from the ring's byte rate (or a guess for the
encoder) and then follows the bytes the session sends, averaged over 2 s windows.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from agent.capture.source import Frame
from agent.clock import iso
from agent.commands.gateway import Gateway
from agent.commands.models import CommandError
from agent.footage.images import Jpeg, encode_outgoing, estimate_jpeg_bytes

if TYPE_CHECKING:
    from agent.commands.stream_fmp4 import EncodeFeed, PacketFeed

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5  # longest sleep of the worker: bounds how late an expiry is noticed
_RATE_WINDOW_S = 2.0  # an fmp4 session's byte rate is re-measured over windows this long
_VBV_HEADROOM = 1.5  # an encoded fmp4 stream may peak this far above the rate it was admitted for
DEFAULT_WIDTH = 640  # the contract's max_width default: an encoded stream given none
StreamFormat = Literal["jpeg", "fmp4"]


@dataclass(frozen=True, slots=True)
class StreamLimits:
    max_sessions: int = 4
    max_bytes_per_s: int = 1_500_000  # ~12 Mbit/s of uplink for all streams together


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session: str
    camera: str
    owner: str  # the agency that opened it
    topic: str
    fps: float
    expires_at: float  # epoch seconds
    frames_sent: int  # messages sent (frames, or fmp4 segments)
    bytes_per_s: float  # current estimate
    format: StreamFormat = "jpeg"
    codec: str | None = None  # fmp4: 'video/mp4; codecs="avc1.64001f"', once known
    width: int | None = None  # fmp4: the stream's picture size, once known
    height: int | None = None
    copied: bool = False  # fmp4: the camera's own packets (no encode)


@dataclass(slots=True)
class _Session:
    id: str
    camera: str
    owner: str
    topic: str
    fps: float
    rate_fps: float  # fps actually possible: min(fps, the camera's fps), for the bandwidth sum
    max_width: int | None
    quality: int
    expires_at: float  # wall clock (epoch s), from the injected clock
    next_due: float  # time.monotonic() of the next frame
    frame_bytes: float  # running estimate of one JPEG's size
    seq: int = 0
    last_frame: tuple[float, int] | None = None  # (ts, seq) of the last frame sent
    first: tuple[Jpeg, Frame] | None = None  # encoded at start, sent first
    failures: int = 0
    active: bool = True
    format: StreamFormat = "jpeg"
    feed: PacketFeed | EncodeFeed | None = None  # fmp4 only; touched only by the worker
    byte_rate: float = 0.0  # fmp4: measured bytes per second
    window: tuple[float, int] = (0.0, 0)  # fmp4: (monotonic start, bytes sent) of the window
    codec: str | None = None
    width: int | None = None
    height: int | None = None

    def bytes_per_s(self) -> float:
        return self.byte_rate if self.format == "fmp4" else self.frame_bytes * self.rate_fps


class StreamManager:
    """Owns the stream sessions and their single publishing thread; `start()`/`stop()` it once."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        limits: StreamLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._gw = gateway
        self._limits = limits or StreamLimits()
        self._clock = clock
        # _cond's lock guards _sessions, _limits and every _Session's fields except `first` and
        # `failures`, which only the worker touches. It is never held while encoding, only around
        # bookkeeping and the (non-blocking) publish call. set_limits swaps _limits under it, and
        # open() reads it under it, so a command worker's new limits are seen whole, never half.
        self._cond = threading.Condition()
        self._sessions: dict[str, _Session] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="commands.streams", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End all sessions and join the worker."""
        with self._cond:
            self._stopping = True
            for s in self._sessions.values():
                s.active = False
            self._sessions.clear()
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("stream worker did not stop within %.1f s", timeout)

    def wake(self) -> None:
        """Make the worker look at its sessions now (e.g. after the clock moved)."""
        with self._cond:
            self._cond.notify_all()

    # -- commands --------------------------------------------------------------------------

    def set_limits(self, limits: StreamLimits) -> None:
        """New limits apply to the next stream.start; running sessions go on. Safe from any thread."""
        with self._cond:
            self._limits = limits

    def open(
        self,
        camera: str,
        *,
        owner: str,
        fps: float,
        max_width: int | None,
        quality: int,
        duration_s: float,
        format: StreamFormat = "jpeg",
    ) -> SessionInfo:
        """Start a session owned by agency `owner`; raise CommandError(busy) past the limits.

        `max_width` None: full size (JPEG); for fmp4, the camera's own stream when it is a
        packet-path camera, else DEFAULT_WIDTH."""
        with self._cond:
            if self._stopping or self._thread is None:
                raise CommandError("busy", "streaming is not running on this gateway")
            self._reap(self._clock())
            limits = self._limits
            if len(self._sessions) >= limits.max_sessions:
                raise CommandError(
                    "busy", f"{len(self._sessions)} stream sessions are running (limit {limits.max_sessions})"
                )
        if format == "fmp4":
            return self._open_fmp4(
                camera, owner=owner, fps=fps, max_width=max_width, quality=quality, duration_s=duration_s
            )
        first = self._first_frame(camera, max_width, quality)
        state = self._gw.camera_state(camera)
        if first is not None:
            frame_bytes = float(len(first[0].data))
        elif state is not None and state.width and state.height:
            w = min(max_width or state.width, state.width)
            frame_bytes = float(estimate_jpeg_bytes(w, round(w * state.height / state.width), quality))
        else:
            w = max_width or DEFAULT_WIDTH
            frame_bytes = float(estimate_jpeg_bytes(w, w * 9 // 16, quality))
        eff_fps = min(fps, state.fps) if state is not None and state.fps else fps
        with self._cond:
            sid = self._admit(frame_bytes * eff_fps)
            now = self._clock()
            session = _Session(
                id=sid,
                camera=camera,
                owner=owner,
                topic=self._gw.topics.stream(camera, sid),
                fps=fps,
                rate_fps=eff_fps,
                max_width=max_width,
                quality=quality,
                expires_at=now + duration_s,
                next_due=time.monotonic(),
                frame_bytes=frame_bytes,
                first=first,
            )
            self._sessions[sid] = session
            self._cond.notify_all()
            return self._info(session)

    def _admit(self, need: float) -> str:
        """A new session id if one needing `need` bytes/s fits the limits (caller holds _cond)."""
        self._reap(self._clock())
        used = sum(s.bytes_per_s() for s in self._sessions.values())
        limits = self._limits
        if len(self._sessions) >= limits.max_sessions:
            raise CommandError(
                "busy", f"{len(self._sessions)} stream sessions are running (limit {limits.max_sessions})"
            )
        if used + need > limits.max_bytes_per_s:
            raise CommandError(
                "busy",
                f"stream would need ~{need / 1000:.0f} kB/s; {used / 1000:.0f} of "
                f"{limits.max_bytes_per_s / 1000:.0f} kB/s in use (lower fps, max_width or quality)",
            )
        return str(uuid.uuid4())

    def _open_fmp4(
        self, camera: str, *, owner: str, fps: float, max_width: int | None, quality: int, duration_s: float
    ) -> SessionInfo:
        """An fmp4 session: the camera's packets copied where it has them (and no smaller size is
        asked for), else its masked pixels encoded."""
        # Here, not at the top: PyAV costs ~25 MB, paid only once a gateway streams fmp4.
        from agent.commands.stream_fmp4 import (
            EncodeFeed,
            PacketFeed,
            encoded_size,
            estimate_h264_bytes_per_s,
        )

        state = self._gw.camera_state(camera)
        ring = self._gw.packets(camera)
        newest = ring.newest() if ring is not None else None
        cam_w = newest.info.width if newest is not None else state.width if state is not None else None
        cam_h = newest.info.height if newest is not None else state.height if state is not None else None
        copy = (
            ring is not None
            and (newest is None or newest.info.codec == "h264")
            and (max_width is None or cam_w is None or cam_w <= max_width)
        )
        feed: PacketFeed | EncodeFeed
        if copy:
            assert ring is not None
            feed = PacketFeed(ring)
            rate_fps = (feed.info.fps if feed.info else None) or (state.fps if state and state.fps else 25.0)
            stats = ring.stats()
            if stats.span_s >= 1.0:
                need = stats.bytes_used / stats.span_s
            else:
                need = estimate_h264_bytes_per_s(cam_w or 1280, cam_h or 720, rate_fps)
            cfg = feed.config
            codec = cfg.mime if cfg else None
            width, height = (cfg.width, cfg.height) if cfg else (cam_w, cam_h)
        else:
            rate_fps = min(fps, state.fps) if state is not None and state.fps else fps
            frame = self._gw.latest_frame(camera)
            if frame is not None:
                cam_h, cam_w = frame.image.shape[:2]
            width, height = encoded_size(cam_w or 1280, cam_h or 720, max_width or DEFAULT_WIDTH)
            need = estimate_h264_bytes_per_s(width, height, rate_fps)
            feed = EncodeFeed(
                max_width=max_width or DEFAULT_WIDTH,
                fps=rate_fps,
                quality=quality,
                max_bytes_per_s=need * _VBV_HEADROOM,
            )
            codec = None  # known from the first keyframe; the init segment carries it
        with self._cond:
            sid = self._admit(need)
            now = self._clock()
            session = _Session(
                id=sid,
                camera=camera,
                owner=owner,
                topic=self._gw.topics.stream(camera, sid),
                fps=rate_fps,
                rate_fps=rate_fps,
                max_width=max_width,
                quality=quality,
                expires_at=now + duration_s,
                next_due=time.monotonic(),
                frame_bytes=0.0,
                format="fmp4",
                feed=feed,
                byte_rate=need,
                window=(time.monotonic(), 0),
                codec=codec,
                width=width,
                height=height,
            )
            self._sessions[sid] = session
            self._cond.notify_all()
            return self._info(session)

    def renew(self, session_id: str, duration_s: float, *, agency: str) -> SessionInfo:
        """Move the expiry to now + duration_s; only the owning agency may (else forbidden)."""
        with self._cond:
            now = self._clock()
            self._reap(now)
            s = self._owned(session_id, agency, override=False, action="renew")
            s.expires_at = now + duration_s
            self._cond.notify_all()
            return self._info(s)

    def close(self, session_id: str, *, agency: str, override: bool = False) -> SessionInfo:
        """End a session of `agency`, or any session with `override` (an admin's stop)."""
        with self._cond:
            self._reap(self._clock())
            s = self._owned(session_id, agency, override=override, action="stop")
            del self._sessions[session_id]
            s.active = False
            self._cond.notify_all()
            info = self._info(s)
        if info.owner != agency:
            log.warning(
                "admin agency %r stopped stream session %s of agency %r (camera %s)",
                agency, session_id, info.owner, info.camera,
            )  # fmt: skip
        return info

    def session(self, session_id: str) -> SessionInfo | None:
        """The running session with this id, or None once it ended (or never existed)."""
        with self._cond:
            s = self._sessions.get(session_id)
            return self._info(s) if s is not None and s.expires_at > self._clock() else None

    def sessions(self) -> list[SessionInfo]:
        with self._cond:
            self._reap(self._clock())
            return [self._info(s) for s in self._sessions.values()]

    # -- worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        log.debug("stream worker started")
        while True:
            with self._cond:
                if self._stopping:
                    break
                self._reap(self._clock())
                now = time.monotonic()
                due = [s for s in self._sessions.values() if s.next_due <= now]
                if not due:
                    wait = min((s.next_due - now for s in self._sessions.values()), default=_IDLE_WAIT_S)
                    self._cond.wait(min(max(wait, 0.001), _IDLE_WAIT_S))
                    continue
                for s in due:
                    period = 1.0 / s.fps
                    s.next_due = s.next_due + period if s.next_due + period > now else now + period
            encoded: dict[tuple[str, float, int, int | None, int], Jpeg] = {}
            for s in due:
                self._send(s, encoded)
        log.debug("stream worker stopped")

    def _send(self, s: _Session, cache: dict[tuple[str, float, int, int | None, int], Jpeg]) -> None:
        if self._gw.config.camera(s.camera) is None:
            with self._cond:
                if self._sessions.pop(s.id, None) is not None:
                    s.active = False
                    log.info("stream session %s ended: camera %s was removed", s.id, s.camera)
            return
        if s.feed is not None:
            self._send_fmp4(s, s.feed)
            return
        try:
            if s.first is not None:
                jpeg, frame = s.first
                s.first = None
            else:
                got = self._gw.latest_frame(s.camera, s.fps)
                if got is None or (got.ts, got.seq) == s.last_frame:
                    return  # nothing new from the camera yet
                frame = got
                key = (s.camera, frame.ts, frame.seq, s.max_width, s.quality)
                jpeg = cache.get(key) or self._encode(s.camera, frame, s.max_width, s.quality)
                cache[key] = jpeg
            with self._cond:
                if not s.active:
                    return
                props = {"seq": str(s.seq), "ts": iso(frame.ts)}
                self._gw.publish(s.topic, jpeg.data, kind="snapshot", qos=0, properties=props)
                s.seq += 1
                s.last_frame = (frame.ts, frame.seq)
                s.frame_bytes = 0.8 * s.frame_bytes + 0.2 * len(jpeg.data)
        except Exception:
            s.failures += 1
            if s.failures in (1, 10, 100) or s.failures % 1000 == 0:
                log.exception(
                    "stream %s (camera %s): sending a frame failed (%d times)", s.id, s.camera, s.failures
                )

    def _send_fmp4(self, s: _Session, feed: PacketFeed | EncodeFeed) -> None:
        """Publish what the feed has made since the last call: an init segment alone, fragments
        together in one message."""
        from agent.commands.stream_fmp4 import PacketFeed, Segment

        try:
            if isinstance(feed, PacketFeed):
                segments = feed.poll()
            else:
                cam = self._gw.config.camera(s.camera)
                if cam is None:
                    return
                segments = feed.poll(self._gw.latest_frame(s.camera, s.fps), cam.privacy_masks)
        except Exception:
            s.failures += 1
            if s.failures in (1, 10, 100) or s.failures % 1000 == 0:
                log.exception(
                    "stream %s (camera %s): making fmp4 failed (%d times)", s.id, s.camera, s.failures
                )
            return
        messages: list[Segment] = []
        for seg in segments:
            if seg.part == "fragment" and messages and messages[-1].part == "fragment":
                messages[-1] = Segment("fragment", messages[-1].data + seg.data, messages[-1].ts)
            else:
                messages.append(seg)
        cfg = feed.config
        now = time.monotonic()
        with self._cond:
            if not s.active:
                return
            if cfg is not None:
                s.codec, s.width, s.height = cfg.mime, cfg.width, cfg.height
            for msg in messages:
                props = {"seq": str(s.seq), "ts": iso(msg.ts), "part": msg.part}
                try:
                    self._gw.publish(s.topic, msg.data, kind="snapshot", qos=0, properties=props)
                except Exception:
                    log.exception("stream %s (camera %s): publishing a segment failed", s.id, s.camera)
                    return
                s.seq += 1
            start, sent = s.window
            sent += sum(len(m.data) for m in messages)
            if now - start >= _RATE_WINDOW_S:
                s.byte_rate = 0.5 * s.byte_rate + 0.5 * sent / (now - start)
                start, sent = now, 0
            s.window = (start, sent)

    def _first_frame(self, camera: str, max_width: int | None, quality: int) -> tuple[Jpeg, Frame] | None:
        frame = self._gw.latest_frame(camera)
        if frame is None:
            return None
        return self._encode(camera, frame, max_width, quality), frame

    def _encode(self, camera: str, frame: Frame, max_width: int | None, quality: int) -> Jpeg:
        cam = self._gw.config.camera(camera)
        if cam is None:
            raise ValueError(f"camera {camera!r} is no longer configured")
        return encode_outgoing(frame.image, cam.privacy_masks, max_width=max_width, quality=quality)

    def _owned(self, session_id: str, agency: str, *, override: bool, action: str) -> _Session:
        """The session if `agency` may act on it; caller holds _cond. The owner is not named in
        the refusal: another agency learns nothing about who is watching."""
        s = self._sessions.get(session_id)
        if s is None:
            raise CommandError("not_found", f"no stream session {session_id!r} (ended or never started)")
        if s.owner != agency and not override:
            raise CommandError(
                "forbidden",
                f"stream session {session_id!r} was opened by another agency; only it may {action} it",
            )
        return s

    def _reap(self, now: float) -> None:
        """Drop expired sessions; caller holds _cond."""
        for sid in [sid for sid, s in self._sessions.items() if s.expires_at <= now]:
            self._sessions.pop(sid).active = False
            log.info("stream session %s ended at its expiry", sid)

    @staticmethod
    def _info(s: _Session) -> SessionInfo:
        return SessionInfo(
            s.id, s.camera, s.owner, s.topic, s.fps, s.expires_at, s.seq, s.bytes_per_s(),
            format=s.format, codec=s.codec, width=s.width, height=s.height,
            copied=s.feed is not None and s.feed.copied,
        )  # fmt: skip
