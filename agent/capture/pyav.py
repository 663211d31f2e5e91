"""PyAV capture backend: RTSP cameras (and H.264/H.265 files) with their packets handed out.

A network camera already sends compressed video. PyAV exposes FFmpeg's demuxer, so this backend
can give every packet, as the camera sent it, to a `PacketSink` (the pre-event buffer and the clip
remuxer keep those, not re-encoded frames) and decode only what analysis needs: every frame, only
keyframes (one full picture per GOP for almost no CPU), or nothing.

Unlike OpenCV, PyAV opens a stream without a process-wide lock and releases the GIL while FFmpeg
waits, so one camera that hangs never holds up another's open or read. RTSP goes over TCP (UDP
drops packets on busy district links); FFmpeg's socket timeout and PyAV's interrupt timeout
(`timeout=(open, read)`) bound every open and read.

One source is read by one thread (open, read/skip, close); `close()` from another thread waits for
the read in progress (bounded by the read timeout) and ends a file's pacing wait at once.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast
from urllib.parse import urlsplit

import av
import av.codec.codec
import av.container
import av.error
import av.video.codeccontext
import av.video.stream

from agent.capture import h26x
from agent.capture.packets import PacketSink, StreamInfo, StreamPacket
from agent.capture.source import EndOfStream, Frame, Image
from agent.config.redact import redact
from agent.config.urls import file_path, url_problem
from agent.errors import SourceError

__all__ = ["DecodeMode", "PyAVSource", "parameter_sets"]

log = logging.getLogger(__name__)

DecodeMode = Literal["all", "keyframes", "none"]
if TYPE_CHECKING:
    _Packet = av.Packet[av.video.stream.VideoStream]
_Decoder = av.video.codeccontext.VideoCodecContext

FALLBACK_FPS = 25.0  # what FFmpeg itself assumes for a stream that declares no rate
MAX_PLAUSIBLE_FPS = 240.0  # above this a container reports a time base (1000, 90000), not a rate
REANCHOR_S = 1.0  # a packet mapped this long before its arrival re-anchors (a stall, a pts jump)
EARLY_S = 0.0  # a packet mapped this long after its arrival re-anchors (the open's backlog)
LATE_RESET_S = 0.5  # a paced file this far behind the clock restarts the clock instead of bursting
MAX_BAD_PACKETS = 50  # consecutive packets that fail to decode before the stream counts as broken
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322}

_sessions = itertools.count(1)  # StreamInfo.session: one process-wide count of successful opens
_sessions_lock = threading.Lock()


def _next_session() -> int:
    with _sessions_lock:
        return next(_sessions)


def sane_fps(value: float | Fraction | None) -> float:
    """`value` as a frame rate, or FALLBACK_FPS when it is missing, zero or a time base."""
    if value is None:
        return FALLBACK_FPS
    rate = float(value)
    return rate if math.isfinite(rate) and 0.0 < rate <= MAX_PLAUSIBLE_FPS else FALLBACK_FPS


# -- parameter sets ----------------------------------------------------------------------------


def parameter_sets(codec: str, data: bytes, nal_length_size: int = 0) -> frozenset[bytes]:
    """The parameter-set NAL units (H.264 SPS/PPS, HEVC VPS/SPS/PPS) in `data`.

    `data` is Annex-B when `nal_length_size` is 0, else MP4-style length-prefixed NAL units. An
    avcC/hvcC configuration record (extradata starting with 1) is read as such. Other codecs have
    none that this module knows: the empty set.
    """
    if codec not in h26x.PARAMETER_NALS or not data:
        return frozenset()
    if data[0] == 1 and nal_length_size == 0:  # an avcC / hvcC record, not a byte stream
        units = (h26x.config_record(codec, data) or (0, []))[1]
    elif nal_length_size:
        units = h26x.split_lengths(data, nal_length_size)[0]
    else:
        units = h26x.split_annexb(data)
    return frozenset(u for u in units if h26x.is_parameter_set(codec, u))


def _changed(reference: frozenset[bytes], seen: frozenset[bytes], codec: str) -> bool:
    """Whether `seen` (a keyframe's in-band sets) replaces a kind of set that `reference` has."""
    for kind in h26x.PARAMETER_NALS.get(codec, frozenset()):
        new = {u for u in seen if h26x.nal_type(codec, u) == kind}
        old = {u for u in reference if h26x.nal_type(codec, u) == kind}
        if new and old and new != old:
            return True
    return False


# -- URIs --------------------------------------------------------------------------------------


def _target(uri: str) -> tuple[Literal["network", "file"], str]:
    """The kind of `uri` and what FFmpeg opens: the URL itself, or a file's absolute path."""
    scheme = uri.partition(":")[0].lower()
    if scheme in DEFAULT_PORTS:
        problem = url_problem(uri)
        if problem is not None:
            raise SourceError(f"{redact(uri)!r}: {problem}")
        return "network", uri
    if scheme == "file":
        try:
            return "file", file_path(uri)
        except ValueError as exc:
            raise SourceError(f"{redact(uri)!r}: {exc}") from None
    if uri.startswith("/"):
        return "file", uri
    raise SourceError(
        f"{redact(uri)!r}: PyAV sources take rtsp://, rtsps://, file:///path or an absolute path"
    )


# -- the source --------------------------------------------------------------------------------


class _Session:
    """What one successful open holds: the container, its video stream, decoder and clocks."""

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> None:
        self.container = container
        self.stream = stream
        self.packets: Iterator[_Packet] = container.demux(stream)
        self.decoder: _Decoder = stream.codec_context
        self.time_base = stream.time_base or Fraction(1, 90000)
        self.info: StreamInfo | None = None
        self.nal_length_size = 0
        self.reference_sets: frozenset[bytes] = frozenset()
        self.inband_seen = False  # a keyframe with in-band parameter sets has been seen
        self.keyframes_seen = 0
        self.wall0: float | None = None  # wall time of stream position 0 (the mapping's anchor)
        self.pts0: float | None = None  # stream time (s) of position 0
        self.timeless = 0  # packets without any timestamp before the anchor was known
        self.last_pos: float | None = None  # position (s) of the latest packet
        self.last_frame_pos: float | None = None
        self.loop_offset = 0  # time_base ticks added to a looping file's later passes
        self.pass_end = 0  # largest pts + duration seen in the current pass over a file
        self.pass_packets = 0
        self.frames: deque[tuple[av.VideoFrame, float]] = deque()  # decoded, with positions
        self.drained = False  # the decoder's delayed frames were taken at the end of a pass
        self.bad_packets = 0
        self.need_key = True  # the decoder waits for a keyframe (after open or a mode change)
        self.stalled_s: float | None = None  # a read waited this long: the next one fails
        self.pace_anchor: float | None = None  # monotonic time of position 0, for a paced file


class PyAVSource:
    """A camera's RTSP stream (or an H.264/H.265 file) read through PyAV; see the module docstring.

    Decoding modes (`set_decode`, before or after open):

    - "all" (default): `read()` returns every frame; `skip()` decodes a frame without converting
      it to BGR (later frames reference it) and returns its `pts`.
    - "keyframes": only keyframes are decoded (the decoder skips the others, FFmpeg's
      skip_frame NONKEY); `read()`/`skip()` return only keyframes: one full picture per GOP.
    - "none": nothing is decoded; `skip()` demuxes the next video packet (feeding the sink) and
      returns its `pts`; `read()` raises RuntimeError.

    Packets (`set_packet_sink`): every demuxed video packet, in decode order and before decoding,
    is copied into a `StreamPacket` and handed to the sink on the reading thread. A packet without
    pts or dts (an RTSP session's first packet often has neither) is passed with None where the
    demuxer gave none; its `ts` is one frame after the previous packet's. A packet FFmpeg flags as
    corrupt is passed on too (it is what the camera sent, and dropping it would break the
    references of the frames after it) and decoded with FFmpeg's concealment; a packet the
    decoder rejects is skipped, and only MAX_BAD_PACKETS of them in a row fail the session.

    Times: each session maps stream time to wall time with one anchor, taken at its first packet,
    so a frame and the packet it came from carry the same `ts`. For a live stream the anchor moves
    when a packet arrives more than REANCHOR_S after its mapped time (a stall, a pts jump; logged
    at debug) or at all before it (a packet cannot be captured after it arrived; the backlog
    FFmpeg reads while opening comes in one burst): so `ts` never runs ahead of the arrival, the
    anchor settles on the fastest live packets, and in decode order `ts` never goes back.
    `Frame.pts` is seconds since the session's first packet (a looping file
    keeps counting up across its restarts); a file read with `realtime=False` keeps its first
    anchor, so its `ts` is a synthetic clock running at the video's own rate.

    A change of parameter sets (a keyframe whose in-band SPS/PPS differ from the session's) or
    of the decoded picture size raises SourceError("... changed resolution/parameters ...;
    reopening") before that packet (or, for a size found only by decoding, that frame) is
    delivered: the caller reopens and every consumer sees a new session with a new `StreamInfo`.
    """

    def __init__(
        self,
        uri: str,
        *,
        decoder: str | None = None,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 5.0,
        realtime: bool = True,
        loop: bool = False,
    ) -> None:
        if not (open_timeout_s > 0 and read_timeout_s > 0):
            raise ValueError("open_timeout_s and read_timeout_s must be positive")
        self.uri = uri
        self._kind, self._target = _target(uri)
        self._label = redact(uri)
        self._decoder_name = decoder or None
        self._open_timeout_s = open_timeout_s
        self._read_timeout_s = read_timeout_s
        self._realtime = realtime
        self._loop = loop
        self._mode: DecodeMode = "all"
        self._sink: PacketSink | None = None
        self._warned_decoder = False
        self._lock = threading.Lock()  # held by open/read/skip/close while they use the session
        self._closed = threading.Event()  # set by close(): ends a paced file's wait at once
        self._session: _Session | None = None
        self._fps = FALLBACK_FPS
        self._size = (0, 0)
        self._seq = 0
        self._decoder_in_use: str | None = None

    # -- public ----------------------------------------------------------------------------

    @property
    def fps(self) -> float:
        """Frames per second the stream declares (FALLBACK_FPS when it declares nothing usable)."""
        return self._fps

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the stream; (0, 0) before open()."""
        return self._size

    @property
    def info(self) -> StreamInfo | None:
        """The current session's stream, None before open() and after close()."""
        session = self._session
        return session.info if session is not None else None

    @property
    def decoder_in_use(self) -> str | None:
        """Name of the FFmpeg decoder of the current session (None before the first open)."""
        return self._decoder_in_use

    def set_packet_sink(self, sink: PacketSink | None) -> None:
        """Hand every demuxed video packet to `sink` (None: nobody wants packets)."""
        self._sink = sink

    def set_decode(self, mode: DecodeMode) -> None:
        """Choose what is decoded from the next packet on; see the class docstring."""
        if mode not in ("all", "keyframes", "none"):
            raise ValueError(f"decode mode must be 'all', 'keyframes' or 'none', got {mode!r}")
        if mode == self._mode:
            return
        self._mode = mode
        with self._lock:
            session = self._session
            if session is not None:
                self._configure_decoder(session)
                session.frames.clear()
                session.decoder.flush_buffers()
                session.need_key = True  # a decoder restarted mid-GOP would show broken frames

    def open(self) -> None:
        """Connect and read the stream's parameters; raise SourceError with the reason."""
        self.close()
        self._closed.clear()
        with self._lock:
            self._seq = 0
            session = self._connect()
            try:
                self._start(session)
            except BaseException:
                session.container.close()
                raise
            self._session = session
        info = session.info
        assert info is not None
        log.info(
            "opened %s: %s %dx%d at %.3g fps (decoder %s, session %d)",
            self._label, info.codec, info.width, info.height, info.fps, self._decoder_in_use, info.session,
        )  # fmt: skip

    def read(self) -> Frame:
        """The next decoded frame as BGR; SourceError on failure, stall, change or end of stream."""
        if self._mode == "none":
            raise RuntimeError(f"{self._label}: read() in decode mode 'none'; use skip() or set_decode()")
        frame, pos, ts, seq = self._next_frame()
        image = cast(Image, frame.to_ndarray(format="bgr24"))
        return Frame(image=image, ts=ts, pts=pos, seq=seq)

    def skip(self) -> float:
        """Advance without a BGR picture: one frame ("all", "keyframes") or one packet ("none").

        Returns the `pts` (seconds since the session's first packet) of what was passed. The
        packets read on the way reach the sink as with read(); the same errors are raised.
        """
        if self._mode == "none":
            with self._lock:
                session = self._require_open()
                while True:
                    packet = self._demux(session)
                    if packet is not None:
                        return packet[1]
        _, pos, _, _ = self._next_frame()
        return pos

    def close(self) -> None:
        """Release the connection or file; safe to call twice and from another thread."""
        self._closed.set()
        with self._lock:
            session, self._session = self._session, None
            if session is not None:
                session.frames.clear()
                try:
                    session.container.close()
                except av.error.FFmpegError as exc:  # a broken connection may fail its teardown
                    log.debug("%s: close: %s", self._label, exc)

    # -- opening -----------------------------------------------------------------------------

    def _connect(self) -> _Session:
        started = time.monotonic()
        options: dict[str, str] = {}
        if self._kind == "network":
            options = {"rtsp_transport": "tcp", "timeout": str(round(self._read_timeout_s * 1e6))}
        else:
            path = Path(self._target)
            if not path.exists():
                raise SourceError(f"{self._label}: file not found: {path}")
            if not path.is_file():
                raise SourceError(f"{self._label}: not a regular file: {path}")
            if not os.access(path, os.R_OK):
                raise SourceError(f"{self._label}: file not readable (permissions): {path}")
        try:
            container = av.open(
                self._target, options=options, timeout=(self._open_timeout_s, self._read_timeout_s)
            )
        except av.error.FFmpegError as exc:
            raise SourceError(self._open_failure(exc, time.monotonic() - started)) from None
        video = container.streams.video
        if not video:
            container.close()
            what = "the stream" if self._kind == "network" else "the file"
            raise SourceError(f"{self._label}: {what} has no video track")
        stream = video[0]
        if stream.codec_context is None:
            container.close()
            raise SourceError(f"{self._label}: no decoder for the stream's codec")
        return _Session(container, stream)

    def _open_failure(self, exc: av.error.FFmpegError, waited: float) -> str:
        """A readable reason for a failed open, without the URL's password."""
        if self._kind == "file":
            if isinstance(exc, av.error.InvalidDataError):
                return f"{self._label}: not a video file FFmpeg can read: {self._target}"
            return f"{self._label}: cannot open the file: {exc.strerror}"
        parts = urlsplit(self._target)
        hostport = f"{parts.hostname}:{parts.port or DEFAULT_PORTS[parts.scheme.lower()]}"
        if isinstance(exc, av.error.HTTPUnauthorizedError):
            why = "the camera refused the credentials (RTSP 401)"
        elif isinstance(exc, av.error.HTTPForbiddenError):
            why = "the camera forbids this stream to these credentials (RTSP 403)"
        elif isinstance(exc, av.error.HTTPNotFoundError):
            why = "no such stream path on the camera (RTSP 404)"
        elif isinstance(exc, av.error.HTTPError):
            why = f"the camera answered with an error ({exc.strerror})"
        elif isinstance(exc, av.error.ConnectionRefusedError):
            why = f"cannot connect to {hostport}: connection refused"
        elif isinstance(exc, av.error.TimeoutError | av.error.ExitError) or waited >= 0.9 * min(
            self._open_timeout_s, self._read_timeout_s
        ):
            why = f"{hostport} accepted but did not deliver a stream within {waited:.1f} s (the camera hangs)"
        elif isinstance(exc, av.error.ProtocolNotFoundError):
            why = "this FFmpeg build cannot open the URL's protocol"
        else:
            why = f"{exc.strerror or type(exc).__name__}"
        return redact(f"{self._label}: cannot open stream after {waited:.1f} s: {why}")

    def _start(self, session: _Session) -> None:
        """Choose the decoder and describe the session (`StreamInfo`)."""
        stream = session.stream
        base = stream.codec_context
        codec = base.name
        extradata = base.extradata
        session.nal_length_size = h26x.nal_length_size(codec, extradata)
        session.reference_sets = parameter_sets(codec, extradata or b"")
        fps = sane_fps(stream.average_rate or stream.guessed_rate or stream.base_rate)
        width, height = base.width, base.height
        if not (width > 0 and height > 0):
            raise SourceError(f"{self._label}: the stream does not say its picture size")
        session.decoder = self._make_decoder(base)
        self._configure_decoder(session)
        self._decoder_in_use = session.decoder.name
        self._fps = fps
        self._size = (width, height)
        session.info = StreamInfo(
            codec=codec,
            width=width,
            height=height,
            fps=fps,
            time_base=session.time_base,
            extradata=bytes(extradata) if extradata else None,
            session=_next_session(),
        )

    def _make_decoder(self, base: _Decoder) -> _Decoder:
        """The configured decoder for the stream, or the software one with a warning why not."""
        name = self._decoder_name
        if name is None or name == base.name:
            return base
        why: str
        try:
            codec = av.codec.Codec(name, "r")
        except av.codec.codec.UnknownCodecError:
            why = "this FFmpeg build has no decoder by that name"
        else:
            if codec.id != base.codec.id:
                why = f"it decodes {codec.canonical_name}, the stream is {base.name}"
            else:
                try:
                    ctx = cast(_Decoder, av.CodecContext.create(codec, "r"))
                    ctx.extradata = base.extradata
                    ctx.width = base.width
                    ctx.height = base.height
                    ctx.open()
                except (av.error.FFmpegError, ValueError, OSError) as exc:
                    why = f"it failed to open ({getattr(exc, 'strerror', None) or exc})"
                else:
                    return ctx
        self._decoder_failed(name, why)
        return base

    def _decoder_failed(self, name: str, why: str) -> None:
        if not self._warned_decoder:
            self._warned_decoder = True
            log.warning("%s: decoder %r not used: %s; decoding in software", self._label, name, why)
        else:
            log.debug("%s: decoder %r not used: %s", self._label, name, why)

    def _configure_decoder(self, session: _Session) -> None:
        session.decoder.skip_frame = "NONKEY" if self._mode == "keyframes" else "DEFAULT"

    def _require_open(self) -> _Session:
        if self._session is None:
            raise SourceError(f"{self._label}: not open")
        return self._session

    # -- reading -----------------------------------------------------------------------------

    def _next_frame(self) -> tuple[av.VideoFrame, float, float, int]:
        """The next decoded frame with its position, wall time and sequence number."""
        with self._lock:
            session = self._require_open()
            while not session.frames:
                packet = self._demux(session)
                if packet is not None:
                    self._decode(session, packet[0])
            frame, pos = session.frames.popleft()
            if (frame.width, frame.height) != self._size:
                raise SourceError(
                    f"{self._label}: the camera changed resolution/parameters "
                    f"({self._size[0]}x{self._size[1]} -> {frame.width}x{frame.height}); reopening"
                )
            assert session.wall0 is not None  # a frame comes from a packet, which set the anchor
            ts = session.wall0 + pos
            seq = self._seq
            self._seq += 1
        return frame, pos, ts, seq

    def _demux(self, session: _Session) -> tuple[_Packet, float] | None:
        """Read one video packet, stamp it and hand it to the sink; None for an empty packet."""
        if session.stalled_s is not None:
            raise SourceError(f"{self._label}: stalled: no data for {session.stalled_s:.1f} s")
        started = time.monotonic()
        try:
            packet = next(session.packets)
        except StopIteration:
            packet = None
        except av.error.EOFError:
            packet = None
        except (av.error.ExitError, av.error.TimeoutError):
            waited = time.monotonic() - started
            raise SourceError(f"{self._label}: stalled: no data for {waited:.1f} s") from None
        except av.error.FFmpegError as exc:
            raise SourceError(redact(f"{self._label}: the stream failed: {exc.strerror or exc}")) from None
        if packet is None or packet.size == 0:  # the demuxer's end-of-stream flush packet
            if not session.drained and self._mode != "none" and not session.need_key:
                session.drained = True  # first the frames a decoder holds back (B-frames, threads)
                self._queue(session, session.decoder.decode(None))
                if session.frames:
                    return None
            if self._kind == "file" and self._loop and session.pass_packets > 0:
                self._restart_file(session)
                return None
            if self._kind == "file":
                if session.pass_packets == 0:
                    raise SourceError(f"{self._label}: the file has no video packets")
                raise EndOfStream(f"{self._label}: end of file after {self._seq} frames")
            raise SourceError(f"{self._label}: the camera ended the stream")
        waited = time.monotonic() - started
        if self._kind == "network" and waited >= self._read_timeout_s:
            # FFmpeg's RTSP reader does not fail on its socket timeout while the camera keeps the
            # connection: it hands over the packet it held back and waits again. This packet is
            # delivered; the next read reports the stall, so the camera is reconnected.
            session.stalled_s = waited
        session.pass_packets += 1
        info = session.info
        assert info is not None
        data = bytes(packet)
        if packet.is_keyframe:
            self._check_parameters(session, data)
            session.keyframes_seen += 1
        pts = packet.pts if packet.pts is not None else packet.dts
        if pts is not None:
            session.pass_end = max(session.pass_end, pts + (packet.duration or 0))
        pos = self._packet_position(session, None if pts is None else pts + session.loop_offset)
        if self._kind == "file" and self._realtime:
            self._pace(session, pos)
        now = time.time()
        if session.wall0 is None:
            session.wall0 = now - pos
        elif self._kind == "network":
            drift = session.wall0 + pos - now  # > 0: mapped after its arrival, which cannot be
            if drift > EARLY_S or drift < -REANCHOR_S:
                if abs(drift) > REANCHOR_S:
                    log.debug("%s: stream time drifted %+.2f s from arrival; re-anchored", self._label, drift)
                session.wall0 = now - pos
        if self._sink is not None:
            offset = session.loop_offset
            self._sink(
                StreamPacket(
                    data=data,
                    pts=None if packet.pts is None else packet.pts + offset,
                    dts=None if packet.dts is None else packet.dts + offset,
                    keyframe=bool(packet.is_keyframe),
                    ts=session.wall0 + pos,
                    info=info,
                )
            )
        if packet.is_corrupt:
            log.debug("%s: a corrupt packet at %.3f s", self._label, pos)
        return packet, pos

    def _packet_position(self, session: _Session, pts: int | None) -> float:
        """Seconds since the session's first packet of a packet at `pts` (ticks; None: unknown)."""
        step = 1.0 / self._fps
        if pts is None:
            pos = session.last_pos + step if session.last_pos is not None else 0.0
            if session.pts0 is None:
                session.timeless += 1
        else:
            seconds = float(pts * session.time_base)
            if session.pts0 is None:  # packets without time came first: one frame apart each
                session.pts0 = seconds - session.timeless * step
            pos = seconds - session.pts0
        session.last_pos = pos
        return pos

    def _frame_position(self, session: _Session, frame: av.VideoFrame) -> float:
        step = 1.0 / self._fps
        if frame.pts is None or session.pts0 is None:
            pos = session.last_frame_pos + step if session.last_frame_pos is not None else 0.0
        else:
            pos = float((frame.pts + session.loop_offset) * session.time_base) - session.pts0
        session.last_frame_pos = pos
        return pos

    def _check_parameters(self, session: _Session, data: bytes) -> None:
        """Raise the reopen error when a keyframe carries parameter sets other than the session's."""
        info = session.info
        assert info is not None
        seen = parameter_sets(info.codec, data, session.nal_length_size)
        if not seen:
            return
        if not session.inband_seen:
            session.inband_seen = True
            if session.keyframes_seen == 0 or not session.reference_sets:
                # The stream's first in-band sets define it: some cameras' SDP or extradata
                # differ from what they send in-band without any change of picture.
                session.reference_sets = seen
                return
        if _changed(session.reference_sets, seen, info.codec):
            raise SourceError(
                f"{self._label}: the camera changed resolution/parameters "
                "(new SPS/PPS in the stream); reopening"
            )

    def _decode(self, session: _Session, packet: _Packet) -> None:
        """Decode `packet` as the mode asks, queueing its frames; bad packets are skipped."""
        if self._mode == "none":
            return
        if session.need_key:
            if not packet.is_keyframe:
                return  # a decoder starting mid-GOP shows grey smears until the next keyframe
            session.need_key = False
        if self._mode == "keyframes" and not packet.is_keyframe:
            return
        try:
            frames = session.decoder.decode(packet)
        except av.error.FFmpegError as exc:
            if self._fall_back(session, f"it failed to decode ({exc.strerror or exc})"):
                session.need_key = not packet.is_keyframe
                self._decode(session, packet)
                return
            session.bad_packets += 1
            log.debug("%s: a packet failed to decode: %s", self._label, exc)
            if session.bad_packets >= MAX_BAD_PACKETS:
                raise SourceError(
                    f"{self._label}: {session.bad_packets} packets in a row failed to decode "
                    f"({exc.strerror or exc})"
                ) from None
            return
        session.bad_packets = 0
        self._queue(session, frames)

    def _queue(self, session: _Session, frames: list[av.VideoFrame]) -> None:
        for frame in frames:
            session.frames.append((frame, self._frame_position(session, frame)))

    def _fall_back(self, session: _Session, why: str) -> bool:
        """Switch a session on a named decoder that fails to the software one; False if it is."""
        base = session.stream.codec_context
        if session.decoder is base:
            return False
        assert self._decoder_name is not None
        self._decoder_failed(self._decoder_name, why)
        session.decoder = base
        self._configure_decoder(session)
        self._decoder_in_use = base.name
        return True

    def _restart_file(self, session: _Session) -> None:
        """Start a looping file over, its timestamps continuing after the last pass's."""
        session.container.seek(0, stream=session.stream)
        session.packets = session.container.demux(session.stream)
        session.loop_offset += session.pass_end
        session.pass_end = 0
        session.pass_packets = 0
        session.drained = False
        session.decoder.flush_buffers()
        session.need_key = True

    def _pace(self, session: _Session, pos: float) -> None:
        """Wait until a file's packet at `pos` is due, as a camera would send it."""
        now = time.monotonic()
        if session.pace_anchor is None or now - (session.pace_anchor + pos) > LATE_RESET_S:
            session.pace_anchor = now - pos
            return
        delay = session.pace_anchor + pos - now
        if delay > 0 and self._closed.wait(delay):
            raise SourceError(f"{self._label}: closed while waiting for the next frame")
