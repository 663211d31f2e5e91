"""The fake camera's HTTP/SOAP side: Device, Media and PTZ services on one 127.0.0.1 port."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

SOAP = "http://www.w3.org/2003/05/soap-envelope"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
NS = {
    "s": SOAP,
    "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl",
    "tptz": "http://www.onvif.org/ver20/ptz/wsdl",
    "tt": "http://www.onvif.org/ver10/schema",
    "ter": "http://www.onvif.org/ver10/error",
}
PATHS = {"/onvif/device_service": "device", "/onvif/media": "media", "/onvif/ptz": "ptz"}
OPEN_OPERATIONS = {"GetSystemDateAndTime"}  # answered without credentials, as cameras do


@dataclass(frozen=True)
class Recorded:
    """One request as the camera saw it: service, operation, its parameters as nested dicts
    (attributes and child elements by local name, text for leaves) and whether it was
    authenticated."""

    service: str
    operation: str
    params: dict[str, Any]
    authenticated: bool
    ts: float


@dataclass
class Head:
    """The simulated pan/tilt/zoom head (generic spaces)."""

    pan: float = 0.0
    tilt: float = 0.0
    zoom: float = 0.0
    velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)
    moving_until: float = 0.0
    last: float = field(default_factory=time.monotonic)


def _dict(el: ET.Element) -> Any:
    children = list(el)
    if not children and not el.attrib:
        return (el.text or "").strip()
    out: dict[str, Any] = {k.rsplit("}", 1)[-1]: v for k, v in el.attrib.items()}
    for child in children:
        out[child.tag.rsplit("}", 1)[-1]] = _dict(child)
    if el.text and el.text.strip():
        out["_text"] = el.text.strip()
    return out


def _clamp(v: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, v))


class FakeOnvifCamera:
    """An ONVIF camera on 127.0.0.1 (see the package docstring for what it does and does not do)."""

    def __init__(
        self,
        *,
        username: str = "agent",
        password: str = "s3cret-Pass",
        ptz: bool = True,
        presets: dict[str, str] | None = None,
        rtsp_main: str = "rtsp://127.0.0.1:8554/main",
        rtsp_sub: str | None = "rtsp://127.0.0.1:8554/sub",
        speed: float = 1.0,
        name: str = "FakeDome",
    ) -> None:
        self.username = username
        self.password = password
        self.ptz = ptz
        self.presets: dict[str, tuple[str, tuple[float, float, float]]] = {
            token: (label, (0.1 * i, -0.1 * i, 0.0))
            for i, (token, label) in enumerate((presets or {"1": "Home", "2": "Crossing"}).items())
        }
        # Profile token -> the URI GetStreamUri gives; change it to act out a reboot with new URIs.
        self.rtsp = {"main": rtsp_main} | ({"sub": rtsp_sub} if rtsp_sub is not None else {})
        self.speed = speed
        self.name = name
        self.unsupported: set[str] = set()
        self.hang: set[str] = set()
        self.hang_s = 10.0
        self.requests: list[Recorded] = []
        self.head = Head()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                status, body = camera._answer(self.path, self.rfile.read(length))
                data = body.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/soap+xml; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-onvif", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The device service address, as a camera announces it in WS-Discovery."""
        return f"http://127.0.0.1:{self.port}/onvif/device_service"

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> FakeOnvifCamera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def calls(self, operation: str) -> list[Recorded]:
        """The requests for `operation` received so far, oldest first."""
        with self._lock:
            return [r for r in self.requests if r.operation == operation]

    def position(self) -> tuple[float, float, float]:
        with self._lock:
            self._advance()
            return self.head.pan, self.head.tilt, self.head.zoom

    def move_head(self, pan: float, tilt: float, zoom: float = 0.0) -> None:
        """Turn the head as a person at the camera's own keyboard would (a move nobody commanded)."""
        with self._lock:
            self.head.pan, self.head.tilt, self.head.zoom = pan, tilt, zoom

    def move_by_itself(self, pan: float, tilt: float = 0.0, zoom: float = 0.0, *, seconds: float) -> None:
        """Start turning at these velocities for `seconds`, as a joystick on the camera's own
        keyboard or a tour would: GetStatus says MOVING meanwhile, and no request was received."""
        with self._lock:
            self._advance()
            self.head.velocity = (pan, tilt, zoom)
            self.head.moving_until = time.monotonic() + seconds

    def moving(self) -> bool:
        with self._lock:
            return time.monotonic() < self.head.moving_until

    # -- SOAP ---------------------------------------------------------------------------------

    def _answer(self, path: str, raw: bytes) -> tuple[int, str]:
        service = PATHS.get(path)
        try:
            root = ET.fromstring(raw)
        except ET.ParseError:
            return 400, _fault("Sender", "ter:WellFormed", "not XML")
        body = root.find("s:Body", NS)
        if service is None or body is None or not len(body):
            return 400, _fault("Sender", "ter:InvalidArgVal", f"nothing at {path}")
        request = body[0]
        op = request.tag.rsplit("}", 1)[-1]
        authenticated = self._authenticated(root)
        params = _dict(request)
        with self._lock:
            self.requests.append(
                Recorded(service, op, params if isinstance(params, dict) else {}, authenticated, time.time())
            )
        if op in self.hang:
            self._closing.wait(self.hang_s)
        if not authenticated and op not in OPEN_OPERATIONS:
            return 400, _fault("Sender", "ter:NotAuthorized", "Sender not Authorized")
        if op in self.unsupported or (service == "ptz" and not self.ptz):
            return 500, _fault("Receiver", "ter:ActionNotSupported", f"{op} is not supported")
        handler = getattr(self, f"_{service}_{_snake(op)}", None)
        if handler is None:
            return 500, _fault("Receiver", "ter:ActionNotSupported", f"{op} is not supported")
        with self._lock:
            result: str | tuple[int, str] = handler(params if isinstance(params, dict) else {})
        return result if isinstance(result, tuple) else (200, _envelope(result))

    def _authenticated(self, root: ET.Element) -> bool:
        token = root.find(f"s:Header/{{{WSSE}}}Security/{{{WSSE}}}UsernameToken", NS)
        if token is None:
            return False
        user = token.findtext(f"{{{WSSE}}}Username")
        password = token.find(f"{{{WSSE}}}Password")
        nonce = token.findtext(f"{{{WSSE}}}Nonce") or ""
        created = token.findtext(f"{{{WSU}}}Created") or ""
        if user != self.username or password is None:
            return False
        if password.get("Type", "").endswith("#PasswordText"):
            return (password.text or "") == self.password
        digest = hashlib.sha1(base64.b64decode(nonce) + created.encode() + self.password.encode()).digest()
        return base64.b64encode(digest).decode() == (password.text or "")

    # -- Device -------------------------------------------------------------------------------

    def _base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _device_get_system_date_and_time(self, p: dict[str, Any]) -> str:
        t = time.gmtime()
        return (
            "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>"
            "<tt:DateTimeType>NTP</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings>"
            f"<tt:UTCDateTime><tt:Time><tt:Hour>{t.tm_hour}</tt:Hour><tt:Minute>{t.tm_min}</tt:Minute>"
            f"<tt:Second>{t.tm_sec}</tt:Second></tt:Time><tt:Date><tt:Year>{t.tm_year}</tt:Year>"
            f"<tt:Month>{t.tm_mon}</tt:Month><tt:Day>{t.tm_mday}</tt:Day></tt:Date></tt:UTCDateTime>"
            "</tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
        )

    def _device_get_device_information(self, p: dict[str, Any]) -> str:
        return (
            "<tds:GetDeviceInformationResponse><tds:Manufacturer>Fakevision</tds:Manufacturer>"
            f"<tds:Model>{escape(self.name)}</tds:Model><tds:FirmwareVersion>1.2.3</tds:FirmwareVersion>"
            "<tds:SerialNumber>FV-0001</tds:SerialNumber><tds:HardwareId>FV-HW-9</tds:HardwareId>"
            "</tds:GetDeviceInformationResponse>"
        )

    def _services(self) -> list[tuple[str, str]]:
        out = [(NS["tds"], "/onvif/device_service"), (NS["trt"], "/onvif/media")]
        if self.ptz:
            out.append((NS["tptz"], "/onvif/ptz"))
        return out

    def _device_get_services(self, p: dict[str, Any]) -> str:
        items = "".join(
            f"<tds:Service><tds:Namespace>{ns}</tds:Namespace><tds:XAddr>{self._base()}{path}</tds:XAddr>"
            "<tds:Version><tt:Major>2</tt:Major><tt:Minor>60</tt:Minor></tds:Version></tds:Service>"
            for ns, path in self._services()
        )
        return f"<tds:GetServicesResponse>{items}</tds:GetServicesResponse>"

    def _device_get_capabilities(self, p: dict[str, Any]) -> str:
        ptz = f"<tt:PTZ><tt:XAddr>{self._base()}/onvif/ptz</tt:XAddr></tt:PTZ>" if self.ptz else ""
        return (
            "<tds:GetCapabilitiesResponse><tds:Capabilities>"
            f"<tt:Device><tt:XAddr>{self._base()}/onvif/device_service</tt:XAddr></tt:Device>"
            f"<tt:Media><tt:XAddr>{self._base()}/onvif/media</tt:XAddr><tt:StreamingCapabilities>"
            "<tt:RTPMulticast>false</tt:RTPMulticast><tt:RTP_TCP>true</tt:RTP_TCP>"
            "<tt:RTP_RTSP_TCP>true</tt:RTP_RTSP_TCP></tt:StreamingCapabilities></tt:Media>"
            f"{ptz}</tds:Capabilities></tds:GetCapabilitiesResponse>"
        )

    # -- Media --------------------------------------------------------------------------------

    def _media_get_profiles(self, p: dict[str, Any]) -> str:
        ptz = (
            '<tt:PTZConfiguration token="ptz0"><tt:Name>PTZ</tt:Name><tt:UseCount>2</tt:UseCount>'
            "<tt:NodeToken>node0</tt:NodeToken></tt:PTZConfiguration>"
            if self.ptz
            else ""
        )
        profiles = ""
        sizes = {"main": (1920, 1080), "sub": (640, 360)}
        for token, (w, h) in ((t, sizes[t]) for t in self.rtsp):
            profiles += (
                f'<trt:Profiles token="{token}" fixed="true"><tt:Name>{token}stream</tt:Name>'
                f'<tt:VideoEncoderConfiguration token="venc-{token}"><tt:Name>{token}</tt:Name>'
                "<tt:UseCount>1</tt:UseCount><tt:Encoding>H264</tt:Encoding>"
                f"<tt:Resolution><tt:Width>{w}</tt:Width><tt:Height>{h}</tt:Height></tt:Resolution>"
                "<tt:Quality>5</tt:Quality></tt:VideoEncoderConfiguration>"
                f"{ptz}</trt:Profiles>"
            )
        return f"<trt:GetProfilesResponse>{profiles}</trt:GetProfilesResponse>"

    def _media_get_stream_uri(self, p: dict[str, Any]) -> str | tuple[int, str]:
        token = p.get("ProfileToken")
        if token not in self.rtsp:
            return 400, _fault("Sender", "ter:NoProfile", f"no profile {token!r}")
        return (
            "<trt:GetStreamUriResponse><trt:MediaUri>"
            f"<tt:Uri>{escape(self.rtsp[str(token)])}</tt:Uri>"
            "<tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>"
            "<tt:InvalidAfterReboot>true</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout>"
            "</trt:MediaUri></trt:GetStreamUriResponse>"
        )

    # -- PTZ (called with the lock held) -----------------------------------------------------

    def _advance(self) -> None:
        now = time.monotonic()
        h = self.head
        until = min(now, h.moving_until)
        dt = max(0.0, until - h.last)
        if dt > 0.0:
            vp, vt, vz = h.velocity
            h.pan = _clamp(h.pan + vp * self.speed * dt, -1.0, 1.0)
            h.tilt = _clamp(h.tilt + vt * self.speed * dt, -1.0, 1.0)
            h.zoom = _clamp(h.zoom + vz * self.speed * dt, 0.0, 1.0)
        h.last = now

    def _ptz_get_presets(self, p: dict[str, Any]) -> str:
        items = "".join(
            f'<tptz:Preset token="{escape(t)}"><tt:Name>{escape(name)}</tt:Name></tptz:Preset>'
            for t, (name, _) in self.presets.items()
        )
        return f"<tptz:GetPresetsResponse>{items}</tptz:GetPresetsResponse>"

    def _ptz_goto_preset(self, p: dict[str, Any]) -> str | tuple[int, str]:
        token = str(p.get("PresetToken", ""))
        if token not in self.presets:
            return 400, _fault("Sender", "ter:NoEntity", f"no preset {token!r}")
        self._advance()
        self.head.pan, self.head.tilt, self.head.zoom = self.presets[token][1]
        self.head.moving_until = 0.0
        return "<tptz:GotoPresetResponse/>"

    def _ptz_continuous_move(self, p: dict[str, Any]) -> str:
        self._advance()
        v = p.get("Velocity", {})
        pt, z = v.get("PanTilt", {}), v.get("Zoom", {})
        self.head.velocity = (float(pt.get("x", 0)), float(pt.get("y", 0)), float(z.get("x", 0)))
        timeout = _seconds(str(p.get("Timeout", "PT10S")))
        self.head.moving_until = time.monotonic() + timeout
        return "<tptz:ContinuousMoveResponse/>"

    def _ptz_relative_move(self, p: dict[str, Any]) -> str:
        self._advance()
        t = p.get("Translation", {})
        pt, z = t.get("PanTilt", {}), t.get("Zoom", {})
        h = self.head
        h.pan = _clamp(h.pan + float(pt.get("x", 0)), -1.0, 1.0)
        h.tilt = _clamp(h.tilt + float(pt.get("y", 0)), -1.0, 1.0)
        h.zoom = _clamp(h.zoom + float(z.get("x", 0)), 0.0, 1.0)
        return "<tptz:RelativeMoveResponse/>"

    def _ptz_absolute_move(self, p: dict[str, Any]) -> str:
        self._advance()
        pos = p.get("Position", {})
        pt, z = pos.get("PanTilt", {}), pos.get("Zoom")
        h = self.head
        h.moving_until = 0.0
        h.pan = _clamp(float(pt.get("x", h.pan)), -1.0, 1.0)
        h.tilt = _clamp(float(pt.get("y", h.tilt)), -1.0, 1.0)
        if isinstance(z, dict):
            h.zoom = _clamp(float(z.get("x", h.zoom)), 0.0, 1.0)
        return "<tptz:AbsoluteMoveResponse/>"

    def _ptz_stop(self, p: dict[str, Any]) -> str:
        self._advance()
        self.head.moving_until = 0.0
        return "<tptz:StopResponse/>"

    def _ptz_get_status(self, p: dict[str, Any]) -> str:
        self._advance()
        h = self.head
        moving = "MOVING" if time.monotonic() < h.moving_until else "IDLE"
        return (
            "<tptz:GetStatusResponse><tptz:PTZStatus><tt:Position>"
            f'<tt:PanTilt x="{h.pan:.6f}" y="{h.tilt:.6f}"/><tt:Zoom x="{h.zoom:.6f}"/></tt:Position>'
            f"<tt:MoveStatus><tt:PanTilt>{moving}</tt:PanTilt><tt:Zoom>{moving}</tt:Zoom></tt:MoveStatus>"
            f"<tt:UtcTime>{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}</tt:UtcTime>"
            "</tptz:PTZStatus></tptz:GetStatusResponse>"
        )


def _snake(operation: str) -> str:
    """GetStreamUri -> get_stream_uri: the handler method's name."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


def _seconds(duration: str) -> float:
    """An xs:duration like PT1.5S or PT1M2S, in seconds (the forms ONVIF clients send)."""
    text = duration.upper().removeprefix("P").removeprefix("T")
    total, number = 0.0, ""
    for ch in text:
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in "HMS" and number:
            total += float(number) * {"H": 3600.0, "M": 60.0, "S": 1.0}[ch]
            number = ""
    return total


def _envelope(body: str) -> str:
    decls = " ".join(f'xmlns:{k}="{v}"' for k, v in NS.items())
    return f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope {decls}><s:Body>{body}</s:Body></s:Envelope>'


def _fault(code: str, subcode: str, reason: str) -> str:
    return _envelope(
        f"<s:Fault><s:Code><s:Value>s:{code}</s:Value><s:Subcode><s:Value>{subcode}</s:Value>"
        f'</s:Subcode></s:Code><s:Reason><s:Text xml:lang="en">{escape(reason)}</s:Text></s:Reason>'
        "</s:Fault>"
    )
