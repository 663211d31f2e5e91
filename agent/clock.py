"""Protocol timestamps (RFC 3339, UTC, milliseconds, `Z` suffix), and whether the clock behind
them is synchronised (the kernel's adjtimex state)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime


def iso(ts: float | None = None) -> str:
    """Format epoch seconds (default: now) as `2026-11-24T10:00:00.123Z`."""
    t = time.time() if ts is None else ts
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso(text: str) -> float:
    """Parse an RFC 3339 timestamp into epoch seconds; naive times are taken as UTC."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


# -- how far the clock can be trusted -------------------------------------------------------------
#
# A Raspberry Pi has no real-time clock: until timesyncd (or chrony) has synchronised it, the time
# the agent stamps on events, audit records and command TTL checks may be hours off. The kernel
# says whether it is synchronised through adjtimex(2), which is what `timedatectl` reports as
# "System clock synchronized": systemd counts the clock synchronised while the kernel's maximum
# error is below 16 s (the kernel sets it to 16 s and STA_UNSYNC when nothing disciplines the
# clock, and raises it by 500 ppm while nothing does). The process-wide state below is set by the
# runtime's clock watch (agent.runtime.clock_sync); it stays unknown (None) in tools that run no
# watch (replay, the simulator), and then nothing is marked.

STA_UNSYNC = 0x0040  # status bit: the clock is not synchronised
MAX_SYNCED_ERROR_US = 16_000_000  # systemd's ntp_synced(): maxerror below 16 s


@dataclass(frozen=True)
class ClockSync:
    """The kernel's view of the system clock (adjtimex)."""

    synced: bool  # as timedatectl's "System clock synchronized"
    max_error_s: float  # the kernel's bound on the clock's error
    est_error_s: float  # its estimate of the error
    unsync_flag: bool  # STA_UNSYNC in the status word


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> (Linux, glibc), with the kernel's 11 spare ints."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_spare", ctypes.c_int * 11),
    ]


def read_kernel_clock() -> ClockSync:
    """The kernel's synchronisation state through adjtimex(2) with no mode bits set (a read:
    no privilege needed, nothing changed). OSError where the call is unavailable or fails."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError) as exc:
        raise OSError(f"adjtimex is not available here: {exc}") from None
    tx = _Timex()
    tx.modes = 0
    if adjtimex(ctypes.byref(tx)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"adjtimex failed: {os.strerror(err)}")
    return ClockSync(
        synced=tx.maxerror < MAX_SYNCED_ERROR_US,
        max_error_s=tx.maxerror / 1e6,
        est_error_s=tx.esterror / 1e6,
        unsync_flag=bool(tx.status & STA_UNSYNC),
    )


class _Trust:
    """The last state the runtime's watch saw (None: nobody watches); one per process, like the clock."""

    synced: bool | None = None


_trust = _Trust()


def note_synced(synced: bool | None) -> None:
    """Set by the runtime's clock watch whenever it reads the kernel's state."""
    _trust.synced = synced


def clock_synced() -> bool | None:
    """Whether the clock was synchronised at the last check; None when nobody checks."""
    return _trust.synced


def unsynced_mark() -> bool | None:
    """What a message stamped now carries as `clock_unsynced`: True while the clock is known to
    be unsynchronised, else None (the field is left out)."""
    return True if _trust.synced is False else None


def skew_hint() -> str:
    """Appended to a refusal for time (expired, issued_at in the future): while this gateway's
    clock is unsynchronised, it rather than the platform is the likely fault."""
    if _trust.synced is not False:
        return ""
    return (
        "; this gateway's clock is not synchronised (no NTP sync since boot, or lost): its clock,"
        " not the platform's, is the likely fault"
    )
