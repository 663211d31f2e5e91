"""The `console` section: the commissioning web page a technician opens on the gateway.

Off by default. It binds to localhost unless told otherwise, and any other address needs a TLS
certificate: the page carries passwords and shows camera pictures. There is no default user or
password; each user's scrypt hash comes from `edge-agent console-user NAME`.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator

from agent.config.base import Ident, Strict

PASSWORD_HASH_PATTERN = r"^scrypt\$\d{4,8}\$\d{1,2}\$\d{1,2}\$[A-Za-z0-9+/=]{16,64}\$[A-Za-z0-9+/=]{32,128}$"  # noqa: S105 - a hash format


class ConsoleUser(Strict):
    name: Ident = Field(description="Login name, also written in every audit record of the user's changes")
    password_hash: Annotated[str, Field(pattern=PASSWORD_HASH_PATTERN)] = Field(
        description="scrypt hash of the password, from `edge-agent console-user NAME` (never the password)"
    )


class ConsoleConfig(Strict):
    enabled: bool = Field(default=False, description="Serve the commissioning page (off by default)")
    bind: str = Field(
        default="127.0.0.1",
        description=(
            "Address to listen on; the default is reached over an SSH port-forward."
            " Any address other than loopback needs tls_cert_file and tls_key_file"
        ),
    )
    port: int = Field(default=8088, ge=1, le=65535, description="TCP port")
    users: list[ConsoleUser] = Field(default_factory=list, description="Who may log in (at least one)")
    tls_cert_file: Path | None = Field(default=None, description="Server certificate chain (PEM)")
    tls_key_file: Path | None = Field(default=None, description="Its private key (PEM, unencrypted)")
    allowed_hosts: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list,
        description=(
            "Extra Host names the page answers to (besides the bind address, localhost and 127.0.0.1),"
            " e.g. the gateway's LAN name; any other Host is refused (DNS rebinding)"
        ),
    )
    session_idle_s: float = Field(
        default=900.0, ge=60.0, le=86400.0, description="A session unused this long must log in again"
    )

    @model_validator(mode="after")
    def _safe(self) -> ConsoleConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be given together")
        if not self.enabled:
            return self
        if not self.users:
            raise ValueError("an enabled console needs at least one [[console.users]] (no default login)")
        names = [u.name for u in self.users]
        if len(set(names)) != len(names):
            raise ValueError("console user names must be unique")
        if not self.loopback and self.tls_cert_file is None:
            raise ValueError(
                f"bind = {self.bind!r} is reachable from the network: give tls_cert_file and tls_key_file"
                " (or bind to 127.0.0.1 and use an SSH port-forward)"
            )
        for host in self.allowed_hosts:
            if not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", host):
                raise ValueError(f"allowed_hosts: {host!r} is not a host name")
        return self

    @property
    def loopback(self) -> bool:
        if self.bind == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.bind).is_loopback
        except ValueError:
            return False

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    def file_problems(self) -> list[str]:
        """What `run` would refuse in the TLS files this section names."""
        if not self.enabled or self.tls_cert_file is None or self.tls_key_file is None:
            return []
        import ssl

        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
                str(self.tls_cert_file), str(self.tls_key_file), password=lambda: b""
            )
        except OSError as exc:
            return [f"console.tls_cert_file/tls_key_file: cannot read them: {exc.strerror or exc}"]
        except ssl.SSLError as exc:
            return [f"console.tls_key_file: not the unencrypted key of tls_cert_file ({exc.reason or exc})"]
        return []
