"""The MQTT side of the agent: topic names and the link to the broker."""

from agent.mqtt.link import MemoryOutbox, MqttLink, OutboxLike
from agent.mqtt.topics import Topics

__all__ = ["MemoryOutbox", "MqttLink", "OutboxLike", "Topics"]
