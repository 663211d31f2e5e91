"""The gateway's identity and its link to the broker: the `gateway`, `mqtt` and `mqtt.tls` sections.

Besides the models, this is where check-config learns what `run` would refuse in the files these
sections name (password file, TLS certificates and key): it reads them the way the link will.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from agent.config.base import Ident, Strict, read_small
from agent.errors import ConfigError


class GatewayConfig(Strict):
    district: Ident = Field(description="District this gateway belongs to, e.g. gangnam")
    id: Ident = Field(description="Gateway id, unique within the district")
    data_dir: Path = Field(
        default=Path("/var/lib/edge-agent"), description="Directory holding all the agent's state"
    )
    topic_prefix: str = Field(
        default="cctv/v1",
        max_length=128,
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        description="Topic prefix before {district}/{gateway}",
    )
    name: str = Field(default="", max_length=128, description="Human-readable gateway name")
    telemetry_interval_s: float = Field(
        default=30.0, ge=1.0, le=3600.0, description="Seconds between telemetry messages"
    )
    admin_agencies: list[Ident] = Field(
        default_factory=lambda: ["admin"], description="Agencies allowed to change settings"
    )
    audit_key_file: Path | None = Field(
        default=None,
        description=(
            "File holding this gateway's audit key (at least 32 bytes, e.g. `openssl rand -hex 32`;"
            " mode 0600 or 0640, never published): the audit chain is HMAC-SHA256 under it."
            " Absent: plain SHA-256, which whoever can write data_dir can re-chain"
        ),
    )
    platform_keys: list[Path] = Field(
        default_factory=list,
        max_length=2,
        description=(
            "Files holding the platform's Ed25519 public keys (PEM or base64); commands must be signed"
            " by one of them. Two during a key rotation; none: commands are not authenticated"
        ),
    )
    reply_prefixes: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+(/[A-Za-z0-9_.:-]+)*$")]] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "Topic prefixes besides {root}/reply under which command replies may go; a request"
            " naming any other reply topic is refused, audited and answered nowhere"
        ),
    )


class TlsConfig(Strict):
    ca_file: Path | None = Field(default=None, description="CA bundle to verify the broker")
    cert_file: Path | None = Field(default=None, description="Client certificate (PEM)")
    key_file: Path | None = Field(default=None, description="Client private key (PEM)")
    insecure: bool = Field(default=False, description="Skip hostname verification (testing only)")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self

    def file_problems(self, prefix: str = "mqtt.tls") -> list[str]:
        """What loading these files for the connection would fail on, one line per key.

        The model only checks that paths are given; `run` reads them when it connects. This reads
        them the same way (PEM, through `ssl`), so check-config can refuse what `run` would.
        """
        import ssl

        problems = []
        for name in ("ca_file", "cert_file", "key_file"):
            path: Path | None = getattr(self, name)
            if path is not None and (why := _unreadable(path)):
                problems.append(f"{prefix}.{name}: {why}")
        if problems:
            return problems
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.ca_file is not None:
            try:
                context.load_verify_locations(cafile=str(self.ca_file))
            except (ssl.SSLError, ValueError) as exc:
                problems.append(f"{prefix}.ca_file: {self.ca_file} holds no PEM CA certificate ({exc})")
        if self.cert_file is not None and self.key_file is not None:
            problems += _cert_key_problems(self.cert_file, self.key_file, prefix)
        return problems


def _unreadable(path: Path) -> str | None:
    """Why `path` cannot be read as a file, or None."""
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


def _cert_key_problems(cert: Path, key: Path, prefix: str) -> list[str]:
    """Faults of a client certificate and its key: not PEM, an encrypted key (the agent has no
    passphrase to give), or a key that is not the certificate's."""
    import ssl

    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    problems = []
    try:
        x509.load_pem_x509_certificates(read_small(cert))
    except OSError as exc:
        problems.append(f"{prefix}.cert_file: cannot read {cert}: {exc.strerror or exc}")
    except ValueError:
        problems.append(f"{prefix}.cert_file: {cert} holds no PEM certificate")
    try:
        serialization.load_pem_private_key(read_small(key), password=None)
    except OSError as exc:
        problems.append(f"{prefix}.key_file: cannot read {key}: {exc.strerror or exc}")
    except TypeError:
        problems.append(f"{prefix}.key_file: {key} is encrypted; the agent needs an unencrypted key")
    except (ValueError, UnsupportedAlgorithm):
        problems.append(f"{prefix}.key_file: {key} holds no PEM private key")
    if problems:
        return problems
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(cert), str(key), password=lambda: b"")
    except ssl.SSLError as exc:
        problems.append(f"{prefix}.key_file: {key} is not the private key of {cert} ({exc.reason or exc})")
    return problems


PASSWORD_MAX = 4096


class MqttConfig(Strict):
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9._:\[\]-]+$",  # a DNS name (an IDN in its xn-- form), IPv4 or IPv6
        description="Broker host name or address",
    )
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port")
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto",
        description=(
            "MQTT protocol version: auto tries 5 and falls back to 3.1.1 when the broker refuses 5"
            " (RabbitMQ 3.10's MQTT plugin, older brokers), with a WARNING; 5 or 3.1.1 fix it"
        ),
    )
    client_id: str | None = Field(
        default=None, max_length=128, description="Client id; default edge-{district}-{gateway}"
    )
    username: str | None = Field(default=None, max_length=1024, description="Username for the broker")
    password: str | None = Field(
        default=None, max_length=PASSWORD_MAX, description="Password (prefer password_file); needs username"
    )
    password_file: Path | None = Field(
        default=None, description="File whose first line is the password; needs username"
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive in seconds")
    reconnect_min_s: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description=(
            "The first attempt after a lost connection comes at a random time in [0, this]; with"
            " reconnect_spread_s 0 it is the first cap of full jitter (each wait random in [0, cap],"
            " the cap doubling per failed attempt)"
        ),
    )
    reconnect_spread_s: float = Field(
        default=20.0,
        ge=0,
        le=600,
        description=(
            "After the first attempt, one attempt per window at a random phase: the first window"
            " this long, each next twice as long up to reconnect_max_s. A fleet that lost its broker"
            " returns at most fleet/this per second; one gateway waits up to this long (half on"
            " average) after its broker restarts. 0: full jitter instead (docs/brokers.md)"
        ),
    )
    reconnect_max_s: float = Field(
        default=30.0, gt=0, le=600, description="Longest wait between two reconnect attempts"
    )
    takeover_backoff_s: float = Field(
        default=60.0,
        ge=1,
        le=3600,
        description=(
            "Wait (random in [half, all] of it) after another client with this client id took the"
            " session: two gateways sharing one identity then stop evicting each other every second"
        ),
    )
    tls: TlsConfig | None = Field(default=None, description="TLS settings; absent means plain TCP")

    @model_validator(mode="after")
    def _checks(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if self.username is None and (self.password is not None or self.password_file is not None):
            # MQTT 3.1.1 forbids a password without a username, and paho would drop it unsent
            raise ValueError("a password (password or password_file) needs a username")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self

    def resolved_password(self) -> str | None:
        if self.password_file is not None:
            try:
                lines = read_small(self.password_file).decode("utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
                raise ConfigError(
                    "mqtt.password_file", [f"cannot read {self.password_file}: {why}"]
                ) from None
            if not lines:
                raise ConfigError(
                    "mqtt.password_file", [f"{self.password_file} is empty (its first line is the password)"]
                )
            if len(lines[0]) > PASSWORD_MAX:  # MQTT carries at most 65535 bytes
                raise ConfigError(
                    "mqtt.password_file",
                    [f"{self.password_file}: its first line is over {PASSWORD_MAX} characters"],
                )
            return lines[0]
        return self.password

    def file_problems(self) -> list[str]:
        """What `run` would refuse in the files this section names (password_file, TLS files)."""
        problems = []
        if self.password_file is not None:
            try:
                self.resolved_password()
            except ConfigError as exc:
                problems += [f"mqtt.password_file: {line}" for line in exc.problems]
        if self.tls is not None:
            problems += self.tls.file_problems()
        return problems
