"""A fleet of simulated gateways for load-testing a platform and measuring brokers.

Owns `edge-agent simulate` (`run`: its arguments and lifecycle): N gateways in one process
(`fleet.Fleet`, which paces their traffic), each its own MQTT connection through the agent's own
link and outbox (`gateway.SimGateway`: Last Will, retained status, camera statuses, telemetry,
events at a given rate, answers to `ping` and `describe`). May use mqtt, contract, config and the
commands' message models and reply rules; may not touch capture, analysis, footage, the runtime
or the SDK: there are no cameras behind it. Nothing is imported here, so the CLI stays quick.
"""
