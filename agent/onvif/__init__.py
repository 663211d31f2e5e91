"""ONVIF cameras: finding them (WS-Discovery), reading their profiles and stream URIs, and turning
PTZ cameras for the command plane.

The ONVIF client is onvif-zeep-async (the `onvif` extra), which is asyncio: every call to a
camera runs on one event loop in one thread (`OnvifLoop`), owned by `PtzService` (the runtime
starts and stops it) or by `edge-agent discover`, with a timeout per request. The client is
imported only when a camera is contacted, so a gateway without ONVIF cameras never loads zeep.
Modules: `client` (the loop, one device's operations, faults as protocol error codes), `ptz`
(leases per camera, return to the home preset, whether a camera is moving, commanded or not, and
the stream URIs of cameras configured without `source`), `discovery` (probe, device report,
ready-to-paste TOML).
May not touch: capture, analysis, footage, mqtt, commands, runtime or the SDK; it sees the
config only. Command handlers reach it through agent.commands.gateway.PtzAccess.
"""

from agent.onvif.client import OnvifDevice, OnvifError, OnvifLoop, Profile
from agent.onvif.ptz import Lease, PtzService

__all__ = ["Lease", "OnvifDevice", "OnvifError", "OnvifLoop", "Profile", "PtzService"]
