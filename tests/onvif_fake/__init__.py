"""A small ONVIF camera of our own for tests: the real client (onvif-zeep-async) talks to it.

`FakeOnvifCamera` serves the Device, Media and PTZ operations the agent uses over HTTP/SOAP 1.2
on 127.0.0.1, checks WS-UsernameToken digests, moves a simulated pan/tilt/zoom head and records
every request it received (`requests`), so a test asserts that the right ONVIF request reached
the camera. `WsDiscoveryResponder` answers WS-Discovery probes on loopback multicast.

Limits (it is a stand-in, not a conformance target): one video source with a main and (unless
`rtsp_sub=None`) a sub profile, whose GetStreamUri answers are `rtsp` (change it to act out a
reboot that hands out new URIs); positions only in the generic spaces (-1..1, zoom 0..1);
`move_by_itself` turns the head without a request (GetStatus says MOVING), `move_head` jumps it;
no events, imaging, snapshot, HTTP digest or TLS; GetCapabilities and GetServices list Device,
Media and (with PTZ) PTZ only; a continuous move runs at `speed` generic units per second per
unit of velocity until its timeout or Stop; faults: bad credentials (ter:NotAuthorized),
operations listed in `unsupported` (ter:ActionNotSupported), operations listed in `hang`
answered after `hang_s`, an unknown preset (ter:NoEntity).
"""

from tests.onvif_fake.device import FakeOnvifCamera, Recorded
from tests.onvif_fake.discovery import WsDiscoveryResponder

__all__ = ["FakeOnvifCamera", "Recorded", "WsDiscoveryResponder"]
