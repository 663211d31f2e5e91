"""The platform's side of the command protocol, as a small client for integrators and `edge-agent ctl`.

One `PlatformClient` holds one MQTT connection to the broker and talks to one gateway (its topic
root). The connection, the reply topic and `request()` (send a command on `{root}/cmd`, wait for
the matching reply, raise `CommandFailed` or `NoReply`) are agent.sdk.connection's; this module
adds one method per command.

Imagery arrives on other topics, which the helpers subscribe to BEFORE sending the command, since
the agent may publish the JPEG (or the first stream frame, or clip chunks) before its reply:
`snapshot()`, `stream()` (agent.sdk.live) and `clip_fetch()` (agent.sdk.clip_download). Each
helper's inbox has its own lock, so one client may be shared by several threads.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agent.commands.models import DEFAULT_CHUNK_BYTES
from agent.sdk.clip_download import ClipDownload
from agent.sdk.connection import Connection
from agent.sdk.errors import ClientError, CommandFailed, ConnectFailed, NoReply
from agent.sdk.live import LiveStream, StreamFrame

# The errors and the stream types are re-exported: `from agent.sdk.client import NoReply` predates the split.
__all__ = [
    "ClientError",
    "CommandFailed",
    "ConnectFailed",
    "LiveStream",
    "NoReply",
    "PlatformClient",
    "StreamFrame",
]


class PlatformClient(Connection):
    """A client of one gateway's commands (arguments: `Connection`); use as a context manager."""

    # -- commands --------------------------------------------------------------------------------

    def ping(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.request("ping", timeout=timeout)

    def describe(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.request("describe", timeout=timeout)

    def locate(
        self,
        lat: float,
        lon: float,
        radius_m: float | None = None,
        at: str | None = None,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        args: dict[str, Any] = {"lat": float(lat), "lon": float(lon)}
        if radius_m is not None:
            args["radius_m"] = float(radius_m)
        if at is not None:
            args["at"] = at
        return self.request("locate", args, timeout=timeout)

    def config_get(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.request("config.get", timeout=timeout)

    def config_set(self, partial: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        return self.request("config.set", partial, timeout=timeout)

    def clip_export(self, camera: str, start: str, end: str, timeout: float = 60.0) -> dict[str, Any]:
        return self.request("clip.export", {"camera": camera, "start": start, "end": end}, timeout=timeout)

    def clip_hold(
        self, camera: str, start: str, end: str, until: str, timeout: float = 10.0
    ) -> dict[str, Any]:
        args = {"camera": camera, "start": start, "end": end, "until": until}
        return self.request("clip.hold", args, timeout=timeout)

    # PTZ: each call waits for the camera (the agent's ONVIF timeout), hence the longer defaults.

    def ptz_move(
        self,
        camera: str,
        *,
        pan: float = 0.0,
        tilt: float = 0.0,
        zoom: float = 0.0,
        mode: str = "continuous",
        timeout_s: float | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Continuous (speeds -1..1 for `timeout_s`) or relative (steps -1..1) pan/tilt/zoom."""
        args: dict[str, Any] = {"camera": camera, "mode": mode}
        args.update({k: float(v) for k, v in (("pan", pan), ("tilt", tilt), ("zoom", zoom)) if v})
        if timeout_s is not None:
            args["timeout_s"] = float(timeout_s)
        return self.request("ptz.move", args, timeout=timeout)

    def ptz_stop(self, camera: str, *, release: bool = False, timeout: float = 10.0) -> dict[str, Any]:
        return self.request("ptz.stop", {"camera": camera, "release": release}, timeout=timeout)

    def ptz_presets(self, camera: str, timeout: float = 10.0) -> dict[str, Any]:
        return self.request("ptz.presets", {"camera": camera}, timeout=timeout)

    def ptz_goto_preset(self, camera: str, preset: str, timeout: float = 10.0) -> dict[str, Any]:
        return self.request("ptz.goto_preset", {"camera": camera, "preset": preset}, timeout=timeout)

    def ptz_look_at(
        self, camera: str, lat: float, lon: float, zoom: float | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Turn `camera` to a point on the ground (e.g. one `locate` listed it for)."""
        args: dict[str, Any] = {"camera": camera, "lat": float(lat), "lon": float(lon)}
        if zoom is not None:
            args["zoom"] = float(zoom)
        return self.request("ptz.look_at", args, timeout=timeout)

    def snapshot(
        self, camera: str, max_width: int | None = None, at: str | None = None, timeout: float = 5.0
    ) -> tuple[dict[str, Any], bytes]:
        """Ask for a snapshot and return (result, JPEG bytes); the JPEG topic is subscribed first."""
        request_id = str(uuid.uuid4())
        topic = self.topics.snapshot_reply(camera, request_id)
        got: list[bytes] = []
        arrived = threading.Event()

        def on_jpeg(msg: mqtt.MQTTMessage) -> None:
            if not got:
                got.append(bytes(msg.payload))
                arrived.set()

        args: dict[str, Any] = {"camera": camera}
        if max_width is not None:
            args["max_width"] = max_width
        if at is not None:
            args["at"] = at
        deadline = time.monotonic() + timeout
        with self.subscription(topic, on_jpeg, deadline):
            result = self.request("snapshot", args, timeout=timeout, request_id=request_id)
            if not arrived.wait(max(0.0, deadline - time.monotonic())):
                raise NoReply(f"snapshot {request_id} answered but its JPEG did not arrive on {topic}")
        return result, got[0]

    def stream(
        self,
        camera: str,
        seconds: float,
        fps: float = 5.0,
        max_width: int | None = 640,
        *,
        quality: int | None = None,
        timeout: float = 5.0,
        format: str = "jpeg",
    ) -> LiveStream:
        """Start a live stream and return it: iterate it for `StreamFrame`s (`seq, ts, jpeg`) until
        `seconds` have passed or the session ended; leaving it (or `close()`) sends stream.stop.

        `format="fmp4"`: H.264 segments (`part` "init", then "fragment"s); `max_width=None` asks
        for the camera's own stream (copied, no encode, where the camera allows)."""
        return LiveStream(
            self,
            camera,
            seconds=seconds,
            fps=fps,
            max_width=max_width,
            quality=quality,
            timeout=timeout,
            format=format,
        )

    def clip_fetch(
        self,
        clip_id: str,
        out_path: str | Path,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Download a clip to `out_path`, checking its SHA-256; return clip.fetch's result.

        Chunks are written where they belong in `out_path.part` as they arrive and remembered in
        `out_path.part.json`; when chunks are missing at `timeout` NoReply is raised and the next
        call with the same clip id and chunk size keeps what was received (the agent sends the
        whole clip again: the protocol has no ranges, but a flaky link only has to deliver each
        chunk once). On MQTT 3.1.1, which carries no `index` user property, chunks are taken in
        arrival order and a partial download is not resumed.
        """
        return ClipDownload(self, clip_id, Path(out_path), chunk_bytes).run(timeout)
