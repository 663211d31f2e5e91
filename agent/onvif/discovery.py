"""`edge-agent discover`: find ONVIF cameras (WS-Discovery), read them, print `[[cameras]]` tables.

WS-Discovery is one UDP multicast Probe for NetworkVideoTransmitter to 239.255.255.250:3702 and
unicast ProbeMatches back, each naming the device service (XAddrs); a Probe is sent twice, since
UDP may lose one. With credentials each device is then read over ONVIF (agent.onvif.client):
device information, media profiles, the RTSP URI of the largest profile (`source`) and the
smallest (`detect_source`), PTZ and presets. The TOML names the password file, never the
password, and stream URIs are printed as the camera gives them (without credentials); a comment
says they may be left out, for the agent to ask the camera itself.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from agent.config.cameras import OnvifConfig
from agent.config.redact import redact
from agent.errors import ConfigError
from agent.onvif.client import DeviceInfo, OnvifDevice, OnvifError, OnvifLoop, Profile, main_and_sub

WSD_GROUP = "239.255.255.250"
WSD_PORT = 3702
MAX_DATAGRAM = 65_535
_NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "d": "http://schemas.xmlsoap.org/ws/2005/04/discovery",
}
PROBE = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"'
    ' xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"'
    ' xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery"'
    ' xmlns:dn="http://www.onvif.org/ver10/network/wsdl">'
    "<s:Header><a:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe</a:Action>"
    "<a:MessageID>urn:uuid:{id}</a:MessageID>"
    "<a:To>urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To></s:Header>"
    "<s:Body><d:Probe><d:Types>dn:NetworkVideoTransmitter</d:Types></d:Probe></s:Body></s:Envelope>"
)


@dataclass(frozen=True, slots=True)
class Found:
    """One device that answered the probe."""

    endpoint: str  # its WS-Addressing endpoint reference, e.g. urn:uuid:…
    xaddrs: tuple[str, ...]  # device service addresses
    scopes: tuple[str, ...]
    sender: str  # IP address the answer came from

    @property
    def name(self) -> str | None:
        """The `onvif://www.onvif.org/name/…` scope, if any."""
        for scope in self.scopes:
            if scope.startswith("onvif://www.onvif.org/name/"):
                return scope.rsplit("/", 1)[-1].replace("%20", " ").replace("_", " ") or None
        return None


@dataclass
class DeviceReport:
    """What `discover` learnt about one device; `error` says why it is incomplete."""

    url: str
    found: Found | None = None
    info: DeviceInfo | None = None
    profiles: list[Profile] = field(default_factory=list)
    uris: dict[str, str] = field(default_factory=dict)  # profile token → RTSP URI
    ptz: bool = False
    presets: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None


def probe(*, interface: str | None = None, port: int = WSD_PORT, timeout_s: float = 3.0) -> list[Found]:
    """Devices answering a WS-Discovery probe sent from `interface` (an IPv4 address; default: the
    system's choice) within `timeout_s`, in order of answer, each once."""
    message_id = str(uuid.uuid4())
    payload = PROBE.format(id=message_id).encode("utf-8")
    found: dict[str, Found] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)  # the gateway's LAN only
        if interface is not None:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
            sock.bind((interface, 0))
        for _ in range(2):
            sock.sendto(payload, (WSD_GROUP, port))
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, (sender, _) = sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                break
            for match in _matches(data, message_id, sender):
                found.setdefault(match.endpoint, match)
    return list(found.values())


def _matches(data: bytes, message_id: str, sender: str) -> list[Found]:
    """The ProbeMatch entries of an answer to our probe; anything else (garbage, other probes,
    answers to someone else's) gives none."""
    try:
        # expat >= 2.4.1 caps entity amplification and never fetches external entities; answers
        # are single datagrams (<= 64 KiB).
        root = ET.fromstring(data)  # noqa: S314
    except ET.ParseError:
        return []
    relates = root.findtext("s:Header/a:RelatesTo", default="", namespaces=_NS).strip()
    if relates != f"urn:uuid:{message_id}":
        return []
    out = []
    for match in root.iterfind("s:Body/d:ProbeMatches/d:ProbeMatch", _NS):
        xaddrs = tuple((match.findtext("d:XAddrs", default="", namespaces=_NS)).split())
        http = tuple(x for x in xaddrs if x.startswith(("http://", "https://")))
        if not http:
            continue
        endpoint = match.findtext("a:EndpointReference/a:Address", default="", namespaces=_NS).strip()
        scopes = tuple((match.findtext("d:Scopes", default="", namespaces=_NS)).split())
        out.append(Found(endpoint or http[0], http, scopes, sender))
    return out


def describe(
    url: str,
    username: str | None,
    password_file: Path | None,
    *,
    timeout_s: float = 5.0,
    found: Found | None = None,
) -> DeviceReport:
    """Read one device over ONVIF; failures end up in `error`, never raised."""
    report = DeviceReport(url=url, found=found)
    try:
        cfg = OnvifConfig(url=url, username=username, password_file=password_file, timeout_s=timeout_s)
        password = cfg.resolved_password()
    except ConfigError as exc:
        report.error = "; ".join(exc.problems)
        return report
    except ValueError as exc:  # pydantic's ValidationError: a bad address
        report.error = str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
        return report
    loop = OnvifLoop("discover", max_pending=1)
    device = OnvifDevice("", cfg, password)
    loop.on_stop(device.close)
    loop.start()
    try:
        report.info = loop.run(device.info(), timeout_s, f"{url}: GetDeviceInformation")
        report.profiles = loop.run(device.profiles(), timeout_s, f"{url}: GetProfiles")
        for p in main_and_sub(report.profiles):
            report.uris[p.token] = loop.run(device.stream_uri(p.token), timeout_s, f"{url}: GetStreamUri")
        report.ptz = loop.run(device.has_ptz(), timeout_s, f"{url}: PTZ")
        if report.ptz:
            report.presets = loop.run(device.presets(), timeout_s, f"{url}: GetPresets")
    except OnvifError as exc:
        report.error = exc.message
    finally:
        loop.stop()
    return report


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-_")
    return slug[:28].strip("-") or "camera"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(reports: list[DeviceReport], username: str | None, password_file: Path | None) -> str:
    """Ready-to-paste `[[cameras]]` tables for the devices read fully, comments for the others."""
    lines: list[str] = []
    used: set[str] = set()
    for r in reports:
        where = redact(r.url)
        if r.error is not None or not r.uris:
            lines += [f"# ONVIF device at {where}: not read: {r.error or 'it has no media profile'}", ""]
            continue
        info = r.info
        title = " ".join(x for x in (info.manufacturer, info.model) if x) if info else ""
        name = (r.found.name if r.found else None) or title or where
        base = _slug(name)
        cid, n = base, 2
        while cid in used:
            cid, n = f"{base}-{n}", n + 1
        used.add(cid)
        main, *rest = main_and_sub(r.profiles)
        sizes = ", ".join(
            f"{p.token} {p.width}x{p.height} {p.encoding or '?'}" if p.width else p.token for p in r.profiles
        )
        if info:
            lines.append(f"# {title}, firmware {info.firmware}, serial {info.serial}; ONVIF at {where}")
        lines.append(f"# profiles: {sizes}")
        if r.ptz:
            presets = ", ".join(f"{t} {_quote(n)}" for t, n in r.presets) or "none"
            lines.append(f"# PTZ: yes; presets: {presets}")
        else:
            lines.append("# PTZ: no")
        lines.append(
            "# The stream URIs are as the camera gave them: add its RTSP login if it needs one, or leave"
        )
        lines.append(
            "# source and detect_source out: the agent then asks the camera (with the ONVIF login) at start."
        )
        lines += ["[[cameras]]", f"id = {_quote(cid)}", f"name = {_quote(name[:128])}"]
        lines.append(f"source = {_quote(r.uris[main.token])}")
        if rest and r.uris.get(rest[0].token) and r.uris[rest[0].token] != r.uris[main.token]:
            lines.append(f"detect_source = {_quote(r.uris[rest[0].token])}")
        lines.append("allowed_agencies = []                # agencies that may see it")
        login = [f"url = {_quote(r.url)}"]
        if username is not None:
            login.append(f"username = {_quote(username)}")
        if password_file is not None:
            login.append(f"password_file = {_quote(str(password_file))}")
        lines.append(f"onvif = {{ {', '.join(login)} }}")
        if r.ptz:
            home = _quote(r.presets[0][0]) if r.presets else None
            lines.append(
                "# ptz_agencies = []                 # agencies that may turn it (also in allowed_agencies)"
            )
            lines.append(
                "# geo = { lat = …, lon = …, heading_deg = …, fov_deg = …, range_m = … }  # for look_at"
            )
            ptz = "height_m = 6.0, pan0_heading_deg = 0.0" + (f", home_preset = {home}" if home else "")
            lines.append(f"# ptz = {{ {ptz} }}   # measure on site")
        lines.append("")
    return "\n".join(lines)
