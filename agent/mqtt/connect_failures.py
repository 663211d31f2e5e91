"""Why the link cannot reach the broker, in words an operator can act on, logged without flooding.

paho reports a failed connection as "Client is not connected" on every retry. The link instead
logs at WARNING the reason (unknown CA, host name mismatch, expired certificate, no client
certificate, refused, unreachable): once when it starts or its reason changes, then at most every
`interval_s` with the number of attempts, so a broker down for a day does not fill the journal.
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


class ConnectFailures:
    """The failed attempts of one link and their rate-limited WARNINGs.

    Touched only on paho's network thread (its callbacks), so it needs no lock.
    """

    def __init__(self, where: str, interval_s: float) -> None:
        self.where = where  # host:port, as the WARNING names it
        self.interval_s = interval_s  # a failure that lasts is repeated this often, with a count
        self._reason: str | None = None  # the reason last logged, None while connected
        self._attempts = 0  # failed attempts since it was logged
        self._logged_at = 0.0
        self._paho_error: str | None = None  # paho's last ERROR text (a TLS alert, a reset)

    def connected(self) -> None:
        """A CONNACK: the next failure is new, whatever its reason."""
        self._reason, self._attempts, self._paho_error = None, 0, None

    def paho_log(self, level: int, buf: str) -> None:
        """paho's `on_log`: keep the text of a socket error, the only place paho says why."""
        if level == mqtt.MQTT_LOG_ERR and buf.startswith("failed to receive on socket"):
            self._paho_error = buf.removeprefix("failed to receive on socket: ")

    def dropped(self, *, before_connack: bool) -> None:
        """A disconnect. Dropped before CONNACK after a paho error, the broker ended the TLS
        session (e.g. it wants a client certificate): that is a failed attempt with its reason."""
        if before_connack and self._paho_error is not None:
            self.failed(tls_alert_reason(self._paho_error))
        self._paho_error = None

    def failed(self, reason: str) -> None:
        """Log a failed connection attempt: at once when new, then at most every interval."""
        now = time.monotonic()
        self._attempts += 1
        if reason == self._reason and now - self._logged_at < self.interval_s:
            return
        if reason == self._reason:
            log.warning(
                "cannot connect to the broker at %s: %s (%d attempts since the last report; retrying)",
                self.where, reason, self._attempts,
            )  # fmt: skip
        else:
            log.warning("cannot connect to the broker at %s: %s (retrying)", self.where, reason)
        self._reason, self._attempts, self._logged_at = reason, 0, now
