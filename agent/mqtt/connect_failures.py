"""Why the link cannot reach the broker, in words an operator can act on, logged without flooding.

paho reports a failed connection as "Client is not connected" on every retry. The link instead
logs at WARNING the reason (unknown CA, host name mismatch, expired certificate, no client
certificate, bad credentials, not authorized, refused, unreachable): each reason once when it
first occurs, then at most every `interval_s` with the number of attempts, so a broker down for a
day does not fill the journal.
paho's own per-retry socket errors become DEBUG records (`quiet_paho_socket_errors`).
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import time

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

# OpenSSL's X509_V_ERR_* codes, as ssl.SSLCertVerificationError.verify_code carries them.
_UNKNOWN_CA = {2, 18, 19, 20, 21}  # issuer not found, self-signed, self-signed in chain, …
_EXPIRED, _NOT_YET_VALID, _HOST_MISMATCH, _IP_MISMATCH = 10, 9, 62, 64


def connect_failure_reason(exc: BaseException | None, host: str) -> str:  # noqa: PLR0911 - one per kind
    """Why connecting to `host` failed, in words an operator can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code, detail = exc.verify_code, exc.verify_message
        if code in (_HOST_MISMATCH, _IP_MISMATCH):
            return f"host name mismatch: the broker's certificate is not valid for {host!r} ({detail})"
        if code == _EXPIRED:
            return f"the broker's certificate has expired ({detail})"
        if code == _NOT_YET_VALID:
            return f"the broker's certificate is not valid yet (check the clock; {detail})"
        if code in _UNKNOWN_CA:
            return f"unknown CA: the broker's certificate is not signed by mqtt.tls.ca_file ({detail})"
        return f"the broker's certificate was rejected: {detail}"
    if isinstance(exc, ssl.SSLError):
        return tls_alert_reason(str(exc))
    if isinstance(exc, ssl.CertificateError):  # paho's own host name check (insecure off, old contexts)
        return f"host name mismatch: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running and listening on this port?)"
    if isinstance(exc, socket.gaierror):
        return f"unreachable: the host name does not resolve ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "unreachable: no answer (timed out)"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"unreachable ({exc.strerror})"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}"
    return "unknown reason" if exc is None else f"{type(exc).__name__}: {exc}"


def tls_alert_reason(text: str) -> str:
    """A TLS error (ours, or the broker's alert) in words: paho reports the latter only as text."""
    lowered = text.lower()
    if "certificate required" in lowered:
        return "the broker requires a client certificate (set mqtt.tls.cert_file and key_file)"
    if "alert unknown ca" in lowered or "alert bad certificate" in lowered:
        return f"the broker rejected our client certificate ({text})"
    if "alert certificate expired" in lowered:
        return f"the broker says our client certificate has expired ({text})"
    if "wrong version number" in lowered or "record layer failure" in lowered:
        return f"the broker does not speak TLS on this port ({text})"
    return f"TLS failed: {text}"


class _QuietPahoSocketErrors(logging.Filter):
    """Turns paho's per-retry socket errors into DEBUG records: the link logs their reason."""

    NOISE = ("Client is not connected", "failed to receive on socket")

    def __init__(self, paho_log: logging.Logger) -> None:
        super().__init__()
        self._paho_log = paho_log

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and str(record.msg).startswith(self.NOISE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self._paho_log.isEnabledFor(logging.DEBUG)
        return True


def quiet_paho_socket_errors(paho_log: logging.Logger) -> None:
    """Demote paho's per-retry socket errors on `paho_log` to DEBUG (once per logger)."""
    if not any(isinstance(f, _QuietPahoSocketErrors) for f in paho_log.filters):
        paho_log.addFilter(_QuietPahoSocketErrors(paho_log))


# CONNACK reason codes (paho maps MQTT 3.1.1's return codes onto the MQTT 5 ones).
UNSUPPORTED_PROTOCOL_VERSION = 0x84
_CONNACK_WORDS = {
    0x84: "the broker does not support this MQTT version (set mqtt.protocol)",
    0x85: "the broker rejected the client id (mqtt.client_id)",
    0x86: "bad credentials: the broker rejected mqtt.username / password",
    0x87: "not authorized: bad credentials (mqtt.username / password) or the broker refuses this client",
    0x88: "the broker is unavailable",
    0x89: "the broker is busy",
    0x8A: "banned by the broker",
    0x8C: "bad authentication method",
    0x97: "the broker's quota for this client is exceeded",
    0x9F: "the broker limits the connection rate: too many connections at once",
}


def connack_failure_reason(code: int, text: str) -> str:
    """A refused CONNACK in words an operator can act on."""
    words = _CONNACK_WORDS.get(code)
    return f"refused: {words} ({text})" if words else f"refused by the broker: {text}"


class ConnectFailures:
    """The failed attempts of one link and their rate-limited WARNINGs: each reason at once the
    first time, then at most every `interval_s` with the number of attempts in between (per
    reason, so attempts that alternate between two reasons do not flood the journal either).

    Touched only by the link's `mqtt.net` thread and paho's callbacks, never at once: no lock.
    """

    def __init__(self, where: str, interval_s: float) -> None:
        self.where = where  # host:port, as the WARNING names it
        self.interval_s = interval_s  # a failure that lasts is repeated this often, with a count
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (logged at, attempts since)
        self.paho_error: str | None = None  # paho's last ERROR text (a TLS alert, a reset)
        self.last_reason: str | None = None  # of the last failed attempt, None once connected

    def connected(self) -> None:
        """A CONNACK: the next failure is new, whatever its reason."""
        self._logged.clear()
        self.paho_error = None
        self.last_reason = None

    def paho_log(self, level: int, buf: str) -> None:
        """paho's `on_log`: keep the text of a socket error, the only place paho says why."""
        if level == mqtt.MQTT_LOG_ERR and buf.startswith("failed to receive on socket"):
            self.paho_error = buf.removeprefix("failed to receive on socket: ")

    def dropped(self, *, before_connack: bool) -> str | None:
        """A disconnect; before CONNACK, the failed attempt's reason (also logged). After a paho
        error the broker ended the TLS session (e.g. it wants a client certificate); without
        one it closed the connection after reading CONNECT (a version it does not speak, a
        client id or credentials it refuses without saying so)."""
        error, self.paho_error = self.paho_error, None
        if not before_connack:
            return None
        reason = (
            tls_alert_reason(error)
            if error is not None
            else "the broker closed the connection right after CONNECT, before its CONNACK"
        )
        self.failed(reason)
        return reason

    def failed(self, reason: str) -> None:
        """Log a failed connection attempt: at once when new, then at most every interval."""
        now = time.monotonic()
        self.last_reason = reason
        logged_at, attempts = self._logged.get(reason, (None, 0))
        if logged_at is not None and now - logged_at < self.interval_s:
            self._logged[reason] = (logged_at, attempts + 1)
            return
        if logged_at is not None:
            log.warning(
                "cannot connect to the broker at %s: %s (%d attempts since the last report; retrying)",
                self.where, reason, attempts + 1,
            )  # fmt: skip
        else:
            log.warning("cannot connect to the broker at %s: %s (retrying)", self.where, reason)
        self._logged[reason] = (now, 0)
