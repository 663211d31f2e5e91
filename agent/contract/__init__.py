"""The contract with the platform as code: the messages the agent publishes and their JSON Schema.

Owns: the pydantic models of status, camera status and events (`messages`) and the schema
rendering that docs/protocol.md embeds (`schema`). Shared by the agent and its SDK (agent.sdk);
depends on nothing that runs.
"""
