"""The MQTT side of the agent: topic names, the link to the broker and its durable outbox."""

from agent.mqtt.link import MqttLink
from agent.mqtt.outbox import Outbox, OutboxError, OutboxMessage
from agent.mqtt.topics import Topics

__all__ = ["MqttLink", "Outbox", "OutboxError", "OutboxMessage", "Topics"]
