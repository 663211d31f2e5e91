"""Topic names of the contract (protocol.md, version 1), built in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    """Topics under one gateway's root `{prefix}/{district}/{gateway}`."""

    root: str

    @classmethod
    def of_gateway(cls, prefix: str, district: str, gateway: str) -> Topics:
        """The root the contract gives a gateway: `{prefix}/{district}/{gateway}`."""
        return cls(f"{prefix}/{district}/{gateway}")

    @property
    def everything(self) -> str:
        """Every topic of the gateway (`{root}/#`): what a watcher subscribes to."""
        return f"{self.root}/#"

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    @property
    def telemetry(self) -> str:
        return f"{self.root}/telemetry"

    @property
    def cmd(self) -> str:
        return f"{self.root}/cmd"

    @property
    def config_reported(self) -> str:
        return f"{self.root}/config/reported"

    @property
    def audit(self) -> str:
        return f"{self.root}/audit"

    def camera_status(self, camera: str) -> str:
        return f"{self.root}/cam/{camera}/status"

    def event(self, camera: str) -> str:
        return f"{self.root}/cam/{camera}/event"

    def snapshot(self, camera: str) -> str:
        return f"{self.root}/cam/{camera}/snapshot"

    def snapshot_reply(self, camera: str, request_id: str) -> str:
        return f"{self.root}/cam/{camera}/snapshot/{request_id}"

    def stream(self, camera: str, session: str) -> str:
        return f"{self.root}/cam/{camera}/stream/{session}"

    def stream_filter(self, camera: str) -> str:
        """Every stream session of `camera`: subscribe before stream.start to see the first frame."""
        return f"{self.root}/cam/{camera}/stream/+"

    @property
    def reply_prefix(self) -> str:
        """Where platform clients take replies: the gateway's broker ACL allows only its root."""
        return f"{self.root}/reply"

    def reply(self, client_id: str) -> str:
        return f"{self.reply_prefix}/{client_id}"

    def clip(self, clip_id: str) -> str:
        return f"{self.root}/clips/{clip_id}"
