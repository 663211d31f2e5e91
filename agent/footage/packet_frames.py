"""Pictures from kept packets: the frame of a packet-path camera at a given time, decoded on demand.

A packet-path camera keeps no decoded frames, so `snapshot {at}` decodes from the keyframe at or
before `at` up to the frame nearest it: at most one GOP (1-2 s of video), tens of milliseconds
for 1080p, paid only when a snapshot of the past is asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import numpy as np

from agent.capture.packets import StreamPacket
from agent.capture.source import Frame

if TYPE_CHECKING:
    from av.video.codeccontext import VideoCodecContext

__all__ = ["decode_nearest"]

log = logging.getLogger(__name__)

_REORDER_SLACK = 16  # packets decoded past the wanted one (B-frame reordering delay, generous)


def decode_nearest(packets: Sequence[StreamPacket], ts: float, max_gap_s: float) -> Frame | None:
    """The decoded frame whose packet is nearest `ts` (within `max_gap_s`), or None.

    `packets` start at a keyframe, in decode order, all of one session (the ring's `since(ts)`,
    cut at the first change of session). Garbled packets end the decode: None, never an exception.
    """
    if not packets:
        return None
    info = packets[0].info
    run = [p for p in packets if p.info.session == info.session]
    index = min(range(len(run)), key=lambda i: abs(run[i].ts - ts))
    best = run[index]
    if abs(best.ts - ts) > max_gap_s or best.pts is None:
        return None
    last = index + _REORDER_SLACK  # a frame may come out a few packets after its own
    import av  # here, not at the top: PyAV costs ~25 MB, paid only by gateways with packet cameras

    try:
        codec = cast("VideoCodecContext", av.CodecContext.create(info.codec, "r"))
        if info.extradata:
            codec.extradata = info.extradata
        for packet in [*run[: last + 1], None]:
            pkt = None
            if packet is not None:
                pkt = av.Packet(packet.data)
                pkt.pts, pkt.dts = packet.pts, packet.dts
            for frame in codec.decode(pkt):  # None drains the decoder
                if frame.pts == best.pts:
                    image = np.ascontiguousarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)
                    return Frame(image=image, ts=best.ts, pts=0.0, seq=0)
    except (av.FFmpegError, ValueError) as exc:
        log.warning("cannot decode kept packets of %s near %.3f: %s", info.codec, ts, exc)
    return None
