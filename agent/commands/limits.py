"""Per-agency rate limits of the command plane: a flood from one agency costs only that agency.

Two token buckets per account. `requests`: every request whose envelope is valid (and, with
signed commands, authentic) takes a token before anything else is done with it. `refusals`: a
request about to be answered with an error before anything ran (expired, unknown command, bad
arguments, forbidden, retained, unauthenticated, a reply topic it may not use) takes one more.
Without a token the request is answered `rate_limited` instead: it is not run, not remembered for
idempotency and not audited one by one. The limiter counts those per account, and
`due_summaries` hands the count out at most once per `summary_interval_s` per account, for one
audit record each.

An account is an agency the configuration names (any camera's `allowed_agencies`, or
`gateway.admin_agencies`); every other agency shares the one account `*`, so made-up agency
names cannot multiply the limits, and a flood under them never slows a configured agency.

The defaults bound what one agency can make the gateway write: an audit record is about 0.5 KiB,
so 50 refusals at once and then 5 a second are at most ~175 KiB of audit log a minute however
fast it sends; and what it can make the gateway remember: `window_capacity` (1,000 + 50/s over
the 630 s idempotency window) replies, which is why that window never fills while the limiter holds.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

SHARED_ACCOUNT = "*"
"""The account of every agency the configuration does not name."""


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Token-bucket rates (per second) and bursts per account; see the module docstring."""

    requests_per_s: float = 50.0
    requests_burst: int = 1000
    refusals_per_s: float = 5.0
    refusals_burst: int = 50
    summary_interval_s: float = 10.0

    def __post_init__(self) -> None:
        if min(self.requests_per_s, self.refusals_per_s, self.summary_interval_s) <= 0:
            raise ValueError("rates and the summary interval must be positive")
        if min(self.requests_burst, self.refusals_burst) < 1:
            raise ValueError("bursts must be at least 1")

    def window_capacity(self, window_s: float) -> int:
        """The most requests one account can get admitted within any `window_s` seconds."""
        return self.requests_burst + math.ceil(self.requests_per_s * window_s)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float

    def take(self, now: float, rate: float, burst: int) -> bool:
        self.tokens = min(float(burst), self.tokens + max(0.0, now - self.at) * rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass(slots=True)
class _Account:
    requests: _Bucket
    refusals: _Bucket
    refused: int = 0  # refusals answered as themselves
    rate_limited: int = 0  # answered rate_limited, in all
    pending: int = 0  # answered rate_limited since the last summary
    pending_since: float = 0.0


@dataclass(frozen=True, slots=True)
class Summary:
    """How many requests of one account were answered `rate_limited` over `seconds`."""

    account: str
    refused: int
    seconds: float


class RateLimiter:
    """Buckets and counters per account; thread-safe."""

    def __init__(
        self, limits: RateLimits, agencies: Iterable[str], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self._known = frozenset(agencies)
        self._clock = clock
        self._lock = threading.Lock()  # guards _accounts
        self._accounts: dict[str, _Account] = {}

    def account(self, agency: str) -> str:
        return agency if agency in self._known else SHARED_ACCOUNT

    def admit(self, agency: str) -> bool:
        """Take a request token; False: answer `rate_limited` (and call `limited`)."""
        now = self._clock()
        with self._lock:
            acc = self._get(agency, now)
            return acc.requests.take(now, self.limits.requests_per_s, self.limits.requests_burst)

    def refuse(self, agency: str) -> bool:
        """Take a refusal token: True, answer the refusal as it is; False, answer `rate_limited`."""
        now = self._clock()
        with self._lock:
            acc = self._get(agency, now)
            if acc.refusals.take(now, self.limits.refusals_per_s, self.limits.refusals_burst):
                acc.refused += 1
                return True
            return False

    def limited(self, agency: str) -> None:
        """Count a request answered `rate_limited`, for the next summary and for telemetry."""
        now = self._clock()
        with self._lock:
            acc = self._get(agency, now)
            if acc.pending == 0:
                acc.pending_since = now
            acc.pending += 1
            acc.rate_limited += 1

    def due_summaries(self, *, force: bool = False) -> list[Summary]:
        """Counts whose interval has passed (all of them with `force`), each handed out once."""
        now = self._clock()
        due: list[Summary] = []
        with self._lock:
            for name, acc in self._accounts.items():
                elapsed = now - acc.pending_since
                if acc.pending and (force or elapsed >= self.limits.summary_interval_s):
                    due.append(Summary(name, acc.pending, elapsed))
                    acc.pending = 0
        return due

    def stats(self) -> dict[str, dict[str, int]]:
        """Totals per account since start: `refused` (answered as such) and `rate_limited`."""
        with self._lock:
            return {
                "refused": {n: a.refused for n, a in self._accounts.items() if a.refused},
                "rate_limited": {n: a.rate_limited for n, a in self._accounts.items() if a.rate_limited},
            }

    def _get(self, agency: str, now: float) -> _Account:
        name = self.account(agency)
        acc = self._accounts.get(name)
        if acc is None:
            lim = self.limits
            acc = _Account(_Bucket(float(lim.requests_burst), now), _Bucket(float(lim.refusals_burst), now))
            self._accounts[name] = acc
        return acc
