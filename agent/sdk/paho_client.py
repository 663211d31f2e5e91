"""The paho client under every SDK connection: protocol, credentials, TLS, Nagle off, quiet close."""

from __future__ import annotations

import logging

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.config import TlsConfig
from agent.mqtt.link import disable_nagle

__all__ = ["new_paho_client"]


class _QuietClose(logging.Filter):
    """paho 2.2 logs an ERROR 'Client is not connected' when its loop thread runs once more
    after a deliberate disconnect; that is noise for a short-lived client, so it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_paho_log = logging.getLogger("agent.sdk.client.paho")
_paho_log.addFilter(_QuietClose())


def new_paho_client(
    client_id: str,
    *,
    v5: bool,
    tls: TlsConfig | None,
    username: str | None,
    password: str | None,
) -> mqtt.Client:
    """A paho client ready to connect, Nagle off (`disable_nagle` says why); the caller adds callbacks."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else True,
    )
    client.enable_logger(_paho_log)
    if username is not None:
        client.username_pw_set(username, password)
    if tls is not None:
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
        )
        client.tls_insecure_set(tls.insecure)
    client.on_socket_open = disable_nagle
    return client
