"""When the link tries the broker again: spread reconnects, the protocol `auto` settles on, and
another client taking this gateway's session.

Full jitter (AWS's name, `FullJitter`): the n-th wait after a lost connection is random in
[0, min(reconnect_max_s, reconnect_min_s * 2**n)], the first one included. Measured on a fleet
that lost its broker for 5 s, it still brought a third of the fleet back within one second:
after a few quick failures every gateway's cap is near twice the outage, so the attempts bunch
right after the broker returns. `SpreadJitter` (the default, `reconnect_spread_s` > 0) keeps
the quick first attempt (random in [0, reconnect_min_s]: a blip costs little) and then makes
exactly one attempt per window, the windows following each other, the first `reconnect_spread_s`
long and each doubling up to `reconnect_max_s`, at the same random fraction of each window. A
fleet's attempts then arrive at most fleet / `reconnect_spread_s` per second whenever the broker
returns, and no gateway waits longer than `reconnect_max_s` between two attempts; the price is
that one gateway whose broker restarted waits up to `reconnect_spread_s` (half on average).
A connection that ends within `STABLE_S` of its CONNACK does not reset either policy, so a
flapping link backs off too.

Everything here is touched only by the link's `mqtt.net` thread and paho's callbacks, which
never run at the same time as an attempt is being prepared, so there are no locks.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Literal, Protocol

log = logging.getLogger(__name__)

Version = Literal["5", "3.1.1"]

SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason code


class FullJitter:
    """Waits of capped exponential backoff with full jitter."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.min_s, self.max_s = min_s, max_s
        self.failures = 0  # attempts (or short-lived connections) since the last stable one
        self._rng = rng or random.Random()  # spreading load, not a secret

    def cap(self) -> float:
        return min(self.max_s, self.min_s * 2.0 ** min(self.failures, 32))

    def next_wait(self) -> float:
        """The wait before the next attempt; each call counts one more failure."""
        wait = self._rng.uniform(0.0, self.cap())
        self.failures += 1
        return wait

    def reset(self) -> None:
        self.failures = 0


class Backoff(Protocol):
    """What the link asks of a reconnect policy."""

    failures: int

    def next_wait(self) -> float: ...

    def reset(self) -> None: ...


class SpreadJitter:
    """One quick attempt after a loss, then one attempt per window at a random phase.

    The first wait is random in [0, min_s]. Then the windows [min_s, min_s + w1], [.., .. + w2],
    … follow each other, w1 = min(spread_s, max_s) and each next one twice as long up to max_s;
    the gateway tries once in each, at the fraction `phase` of it, drawn anew at every reset.
    So the waits between attempts lie in [w_n, w_n+1] (never above max_s), and a fleet whose
    phases are uniform tries at most fleet / w1 times per second, whenever its broker returns.
    Waits are measured from the end of the previous attempt: an attempt's own duration shifts
    the windows after it, alike for the whole fleet.
    """

    def __init__(self, min_s: float, spread_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.min_s, self.spread_s, self.max_s = min_s, min(spread_s, max_s), max_s
        self.failures = 0  # attempts (or short-lived connections) since the last stable one
        self._rng = rng or random.Random()  # spreading load, not a secret
        self._phase = self._rng.random()
        self._rest = 0.0  # what is left of the current window after its attempt

    def window(self) -> float:
        """The length of the window the next attempt falls in."""
        if self.failures == 0:
            return self.min_s
        return min(self.max_s, self.spread_s * 2.0 ** min(self.failures - 1, 32))

    def next_wait(self) -> float:
        """The wait before the next attempt; each call counts one more failure."""
        width = self.window()
        phase = self._rng.random() if self.failures == 0 else self._phase
        wait = self._rest + phase * width
        self._rest = (1.0 - phase) * width
        self.failures += 1
        return wait

    def reset(self) -> None:
        self.failures = 0
        self._rest = 0.0
        self._phase = self._rng.random()


def backoff_of(min_s: float, spread_s: float, max_s: float) -> Backoff:
    """The configured policy: `SpreadJitter`, or plain `FullJitter` when spread_s is 0."""
    if spread_s > 0:
        return SpreadJitter(min_s, spread_s, max_s)
    return FullJitter(min_s, max_s)


class ProtocolChoice:
    """The MQTT version of the next attempt. `auto` starts with 5 and alternates while the broker
    drops the connection before CONNACK (or answers "unsupported protocol version"); the first
    version that gets a CONNACK is kept for the life of the link."""

    def __init__(self, configured: Literal["auto", "5", "3.1.1"], where: str) -> None:
        self.auto = configured == "auto"
        self.current: Version = "5" if configured == "auto" else configured
        self.settled = not self.auto
        self._where = where
        self._refused_5 = False

    def refused(self) -> bool:
        """The broker refused this version or closed before CONNACK; True if `auto` switches."""
        if self.settled:
            return False
        if self.current == "5":
            self._refused_5 = True
        self.current = "3.1.1" if self.current == "5" else "5"
        return True

    def accepted(self) -> None:
        """A CONNACK: keep this version, and say once what a fallback to 3.1.1 means."""
        if self.settled:
            return
        self.settled = True
        if self.current == "3.1.1" and self._refused_5:
            log.warning(
                "the broker at %s refused MQTT 5 (it closed the connection after CONNECT or said"
                " unsupported protocol version); connected with MQTT 3.1.1 instead: events and"
                " snapshots carry no user properties and replies no correlation data (the platform"
                ' matches them by id). Set mqtt.protocol = "3.1.1" to skip the MQTT 5 attempt',
                self._where,
            )


class TakeoverWatch:
    """Recognises another client with the same client id taking this gateway's session.

    MQTT 5 brokers may say so (DISCONNECT 0x8E). Under 3.1.1, and from brokers that just close
    the socket (Mosquitto 2.0.11 does under MQTT 5 too), `QUICK_REPEATS` connections in a row
    that end without a DISCONNECT within `QUICK_S` of their CONNACK, each followed by an attempt
    that succeeds at once, count as a takeover too. A failed attempt in between (the broker
    itself went away: refused, unreachable) starts the count again, so outages never look like
    a takeover. An ACL that disconnects on a denied publish looks the same; the ERROR says both.
    """

    QUICK_S = 10.0
    QUICK_REPEATS = 3
    LOG_INTERVAL_S = 60.0

    def __init__(self, client_id: str, where: str) -> None:
        self.client_id = client_id
        self.where = where
        self.takeovers = 0
        self.last_at: float | None = None  # wall clock of the last takeover, for telemetry
        self._connected_at: float | None = None
        self._quick = 0
        self._logged_at = -1e18

    def connected(self) -> None:
        self._connected_at = time.monotonic()

    def dropped_for_a_message(self) -> None:
        """The connection that just ended was dropped over a message the link sent (too large, or
        otherwise refused by the broker): not a twin, so it does not count towards a takeover."""
        self._connected_at = None
        self._quick = 0

    def attempt_failed(self) -> None:
        """A connection attempt failed: the broker, not a twin, is what ended the last one."""
        self._quick = 0

    def lasted(self) -> float:
        """Seconds the connection that just ended had lasted (0 if there was none)."""
        return 0.0 if self._connected_at is None else time.monotonic() - self._connected_at

    def disconnected(self, reason: int, *, by_packet: bool) -> bool:
        """A connection ended (not by us), `by_packet` if the broker sent DISCONNECT with
        `reason`; True if that was a takeover."""
        lasted, was_connected = self.lasted(), self._connected_at is not None
        self._connected_at = None
        if not was_connected:
            return False
        if by_packet and reason == SESSION_TAKEN_OVER:
            self._taken_over("the broker says the session was taken over (MQTT 5 reason 0x8E)")
            return True
        if by_packet or lasted >= self.QUICK_S:
            self._quick = 0
            return False
        self._quick += 1
        if self._quick < self.QUICK_REPEATS:
            return False
        self._quick = 0
        how = f"the broker dropped {self.QUICK_REPEATS} connections in a row within {self.QUICK_S:g} s"
        self._taken_over(how + " of accepting them (or its ACL disconnects on a denied publish)")
        return True

    def _taken_over(self, how: str) -> None:
        self.takeovers += 1
        self.last_at = time.time()
        now = time.monotonic()
        if now - self._logged_at < self.LOG_INTERVAL_S:
            return
        self._logged_at = now
        log.error(
            "another client took this gateway's MQTT session at %s: client id %r is in use twice"
            " (%s; %d takeovers so far). Two gateways share one identity (a cloned SD card, a"
            " copied seed?): give each its own gateway.id or mqtt.client_id. Backing off",
            self.where, self.client_id, how, self.takeovers,
        )  # fmt: skip
