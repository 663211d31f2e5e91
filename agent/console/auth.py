"""Who may use the console: password hashes, sessions with their CSRF tokens, and login throttling.

Passwords are kept only as scrypt hashes in the config (`hash_password`, behind `edge-agent
console-user`). A session is a random token in an HttpOnly, SameSite=Strict cookie, held in memory
only (a restart logs everyone out), with its own CSRF token that every state-changing request must
echo. Failed logins are throttled per user name and per client address, so a guessed password costs
minutes, not milliseconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.config import ConsoleUser

# scrypt at N=2^14, r=8, p=1: about 16 MiB and tens of milliseconds per guess on a Pi.
_N, _R, _P = 2**14, 8, 1
_DUMMY_SALT = secrets.token_bytes(16)

MAX_SESSIONS = 32
MAX_FAILURES = 5  # per user name
MAX_FAILURES_PER_ADDRESS = 20  # behind an SSH port-forward every technician is 127.0.0.1
LOCKOUT_S = 60.0


def hash_password(password: str, *, n: int = _N) -> str:
    """The `password_hash` line for a console user: `scrypt$N$r$p$salt$hash`, base64 parts."""
    if not password:
        raise ValueError("an empty password is not a password")
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, n, _R, _P)
    return f"scrypt${n}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches `stored` (a hash from `hash_password`); constant time in the digest."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        got = _scrypt(password, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    secret = password.encode("utf-8")
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@dataclass
class Session:
    user: str
    csrf: str
    last_seen: float


class Sessions:
    """The logged-in sessions, by cookie token; `_lock` guards `_sessions` (HTTP threads share it)."""

    def __init__(self, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, user: str) -> tuple[str, Session]:
        """A new session for `user`; the oldest is dropped beyond MAX_SESSIONS."""
        token = secrets.token_urlsafe(32)
        session = Session(user=user, csrf=secrets.token_urlsafe(32), last_seen=self._clock())
        with self._lock:
            self._sessions[token] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session behind `token` (touched), or None when unknown or idle too long."""
        if not token:
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            if now - session.last_seen > self.idle_s:
                del self._sessions[token]
                return None
            session.last_seen = now
            self._sessions.move_to_end(token)
            return session

    def alive(self, token: str) -> bool:
        """Whether `token` is still a live session, without counting this as a use (a live view
        streaming for an hour does not keep an abandoned session open)."""
        with self._lock:
            session = self._sessions.get(token)
            return session is not None and self._clock() - session.last_seen <= self.idle_s

    def end(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._sessions.pop(token, None)


class Throttle:
    """Counts failed logins per key: `user:NAME` may fail MAX_FAILURES times in a row, `ip:ADDR`
    MAX_FAILURES_PER_ADDRESS times, before it is refused for LOCKOUT_S. Bounded: the table forgets
    its oldest keys beyond 1024."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def locked(self, keys: Sequence[str]) -> float:
        """Seconds until every key in `keys` may try again (0: none is locked)."""
        now = self._clock()
        with self._lock:
            waits = [
                LOCKOUT_S - (now - at)
                for key in keys
                for count, at in [self._failures.get(key, (0, 0.0))]
                if count >= _limit(key) and now - at < LOCKOUT_S
            ]
        return max(waits, default=0.0)

    def failed(self, keys: Sequence[str]) -> None:
        now = self._clock()
        with self._lock:
            for key in keys:
                count, at = self._failures.pop(key, (0, now))
                if now - at >= LOCKOUT_S:
                    count = 0
                self._failures[key] = (count + 1, now)
            while len(self._failures) > 1024:
                self._failures.popitem(last=False)

    def succeeded(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


def _limit(key: str) -> int:
    return MAX_FAILURES_PER_ADDRESS if key.startswith("ip:") else MAX_FAILURES


def check_login(users: Sequence[ConsoleUser], name: str, password: str) -> str | None:
    """The user's name when `password` is theirs, else None. An unknown name costs the same scrypt
    as a known one, so timing does not tell which names exist."""
    user = next((u for u in users if hmac.compare_digest(u.name.encode(), name.encode())), None)
    if user is None:
        _scrypt(password, _DUMMY_SALT, _N, _R, _P)
        return None
    return user.name if verify_password(password, user.password_hash) else None
