"""The platform's side of the contract: `PlatformClient` for integrators, `edge-agent ctl` and `watch`.

The agent never imports this package (a test holds it to that); it may use the shared contract
(agent.contract, agent.commands.models, agent.mqtt.topics) so both ends speak the same messages.
"""
