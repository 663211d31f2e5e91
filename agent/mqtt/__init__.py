"""The MQTT side of the agent: topic names, the link to the broker and its durable outbox.

Owns: every topic name (`topics`), the connection to the broker with its pump, its connecting
thread and paho's network thread (`link`; the paho client built from the config in `paho_client`,
failed connections' reasons and rate-limited warnings in `connect_failures`, full-jitter
reconnects, protocol `auto` and session takeovers in `reconnect`), and the outbox that keeps
each QoS 1 message until the broker acknowledges it (`outbox`; its SQLite file, opening and
corrupt-file recovery are `outbox_file`). May not touch capture, analysis, footage, commands,
the runtime or the SDK: they hand it messages, never the reverse.
"""

from agent.mqtt.link import MqttLink
from agent.mqtt.outbox import Outbox, OutboxError, OutboxMessage
from agent.mqtt.topics import Topics

__all__ = ["MqttLink", "Outbox", "OutboxError", "OutboxMessage", "Topics"]
