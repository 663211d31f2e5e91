"""The link's paho client as the config asks for it: protocol, credentials, TLS, Last Will, Nagle off.

Building it is separate from running it (agent.mqtt.link) because it is where the config's mistakes
surface: TLS files that cannot be loaded raise ConfigError naming `mqtt.tls`, before anything
connects, and `mqtt.tls.insecure` is warned about once, at start-up.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.config import MqttConfig
from agent.errors import ConfigError
from agent.mqtt.connect_failures import quiet_paho_socket_errors

__all__ = ["disable_nagle", "paho_client"]

log = logging.getLogger(__name__)
_paho_log = logging.getLogger("agent.mqtt.paho")


def disable_nagle(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """paho's `on_socket_open`: turn Nagle's algorithm off. paho leaves it on, so a small reply
    or stream frame written while an earlier segment awaits its delayed ACK waited ~40 ms in
    the kernel (measured: a command round trip on loopback took ~90 ms instead of ~1 ms; the
    broker needs the same, Mosquitto's `set_tcp_nodelay true`)."""
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def paho_client(
    cfg: MqttConfig,
    client_id: str,
    will_topic: str,
    will_payload: bytes,
    *,
    inflight: int,
    protocol: Literal["5", "3.1.1"],
    will_retain: bool = True,
) -> mqtt.Client:
    """A client ready to connect, with no callbacks but `on_socket_open`; ConfigError for TLS
    files it cannot load. Nothing is queued inside paho (`max_queued_messages` 0): the link's
    outbox is the queue, and at most `inflight` QoS 1 messages await their PUBACK. paho does not
    reconnect by itself (`reconnect_on_failure` off): the link's `mqtt.net` thread decides when,
    with jitter, and with which `protocol` (`mqtt.protocol = "auto"` may change it). The Last Will
    is retained unless `will_retain` is False: a broker without retained messages refuses a
    retained Will in its CONNACK (MQTT 5 reason 0x9A)."""
    proto = MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=proto,
        reconnect_on_failure=False,
    )
    client.enable_logger(_paho_log)
    quiet_paho_socket_errors(_paho_log)
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.resolved_password())
    if cfg.tls is not None:
        try:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            files = ", ".join(str(f) for f in (cfg.tls.ca_file, cfg.tls.cert_file, cfg.tls.key_file) if f)
            raise ConfigError("mqtt.tls", [f"cannot load TLS files ({files}): {exc}"]) from None
        client.tls_insecure_set(cfg.tls.insecure)
        if cfg.tls.insecure:
            log.warning(
                "mqtt.tls.insecure = true: the broker's host name is not checked against its"
                " certificate, so anyone holding a certificate from that CA (any host, any"
                " gateway) can impersonate the broker and read or send this gateway's commands"
                " and footage; for testing only"
            )
    client.will_set(will_topic, will_payload, qos=1, retain=will_retain)
    client.on_socket_open = disable_nagle
    return client
