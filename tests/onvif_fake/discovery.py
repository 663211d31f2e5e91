"""The fake camera's WS-Discovery side: answers Probes on loopback multicast like a camera on a LAN."""

from __future__ import annotations

import socket
import struct
import threading
import uuid
import xml.etree.ElementTree as ET

GROUP = "239.255.255.250"
NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "d": "http://schemas.xmlsoap.org/ws/2005/04/discovery",
}
MATCH = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<s:Envelope xmlns:s="{s}" xmlns:a="{a}" xmlns:d="{d}" xmlns:dn="http://www.onvif.org/ver10/network/wsdl">'
    "<s:Header><a:MessageID>urn:uuid:{mid}</a:MessageID><a:RelatesTo>{relates}</a:RelatesTo>"
    "<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
    "<a:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</a:Action></s:Header>"
    "<s:Body><d:ProbeMatches><d:ProbeMatch><a:EndpointReference><a:Address>urn:uuid:{epr}</a:Address>"
    "</a:EndpointReference><d:Types>dn:NetworkVideoTransmitter</d:Types><d:Scopes>{scopes}</d:Scopes>"
    "<d:XAddrs>{xaddrs}</d:XAddrs><d:MetadataVersion>1</d:MetadataVersion></d:ProbeMatch>"
    "</d:ProbeMatches></s:Body></s:Envelope>"
)


class WsDiscoveryResponder:
    """Answers WS-Discovery Probes sent to 239.255.255.250:`port` on the loopback interface with
    one ProbeMatch per device (`devices`: (device service URL, name)); counts the probes seen.

    Tests use a port of their own rather than 3702, so that runs in parallel do not answer each
    other's probes (the probe's RelatesTo check would drop them anyway)."""

    def __init__(self, devices: list[tuple[str, str]], port: int = 0) -> None:
        self.devices = [(url, name, str(uuid.uuid4())) for url, name in devices]
        self.probes = 0
        self.garbage = b""  # sent before each real answer when set: a broken device on the LAN
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("", port))
        self.port = int(self._sock.getsockname()[1])
        membership = struct.pack("4s4s", socket.inet_aton(GROUP), socket.inet_aton("127.0.0.1"))
        self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-wsd", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> WsDiscoveryResponder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            try:
                root = ET.fromstring(data)
            except ET.ParseError:
                continue
            if root.find("s:Body/d:Probe", NS) is None:
                continue
            self.probes += 1
            message_id = root.findtext("s:Header/a:MessageID", default="", namespaces=NS)
            for url, name, epr in self.devices:
                if self.garbage:
                    self._sock.sendto(self.garbage, sender)
                scopes = f"onvif://www.onvif.org/type/ptz onvif://www.onvif.org/name/{name}"
                reply = MATCH.format(
                    **NS, mid=uuid.uuid4(), relates=message_id, epr=epr, scopes=scopes, xaddrs=url
                )
                self._sock.sendto(reply.encode("utf-8"), sender)
