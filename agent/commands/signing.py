"""Signed commands: Ed25519 over the canonical envelope, checked against the platform's public keys.

Anyone who may publish on `{root}/cmd` could otherwise claim any `requester.agency`. With
`gateway.platform_keys` configured, a command must carry a signature by one of those keys (two
at once, so the platform can rotate); the agency is then the one the platform signed.

- Canonical envelope: the request's JSON object without `sig`, as
  `json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` in UTF-8.
- Signature: Ed25519 over those bytes, standard base64 (with padding) in the envelope's `sig`,
  or in the MQTT 5 user property `sig`; when both are present the envelope's is the one checked.
- Key files: PEM (SubjectPublicKeyInfo / PKCS#8, as `edge-agent keygen` writes them) or the raw
  32-byte key in base64 on one line.

The dispatcher calls `SignatureVerifier.verify` (agent.commands.dispatcher's CommandVerifier);
`sign_envelope` and `load_private_key` are the platform's side (agent.sdk).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.commands.models import CommandError
from agent.errors import AgentError, ConfigError

log = logging.getLogger(__name__)

SIG_FIELD = "sig"
"""The envelope field, and the MQTT 5 user property, that carries the signature."""
MAX_PLATFORM_KEYS = 2
SIGNATURE_BYTES = 64
_KEY_BYTES = 32
_MAX_SIG_CHARS = 128  # base64 of 64 bytes is 88 characters; anything longer is garbage
_MAX_KEY_FILE_BYTES = 16 * 1024


class KeyFileError(AgentError):
    """A key file cannot be used; the message names the file and why, never the key material."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def canonical_envelope(envelope: Mapping[str, Any]) -> bytes:
    """The signed bytes: the envelope without `sig`, sorted keys, no spaces, UTF-8.

    Raises UnicodeEncodeError for strings no UTF-8 encoder accepts (lone surrogates): such an
    envelope cannot have been signed.
    """
    body = {k: v for k, v in envelope.items() if k != SIG_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signature(envelope: Mapping[str, Any], key: Ed25519PrivateKey) -> str:
    """The base64 Ed25519 signature of `envelope`'s canonical form."""
    return base64.b64encode(key.sign(canonical_envelope(envelope))).decode("ascii")


def sign_envelope(envelope: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of `envelope` with its `sig` set (any earlier `sig` is replaced)."""
    return {**envelope, SIG_FIELD: signature(envelope, key)}


def key_id(key: Ed25519PublicKey) -> str:
    """A short fingerprint for logs (first 16 hex digits of the SHA-256 of the raw public key)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# -- key files -----------------------------------------------------------------------------------


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(path, f"cannot read: {exc.strerror or type(exc).__name__}") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(path, f"larger than {_MAX_KEY_FILE_BYTES} bytes: not a key file")
    return data


def _raw_base64(data: bytes) -> bytes | None:
    """The 32 bytes of a one-line base64 key file, else None."""
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == _KEY_BYTES else None


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM or raw-base64 file; KeyFileError names the file."""
    data = _read_key_file(path)
    if b"PRIVATE KEY" in data:
        raise KeyFileError(path, "holds a PRIVATE key: give the gateway only the public key (.pub)")
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise KeyFileError(path, "not a readable PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(path, f"not an Ed25519 key ({type(key).__name__.removesuffix('PublicKey')})")
        return key
    raw = _raw_base64(data)
    if raw is None:
        raise KeyFileError(path, "not an Ed25519 public key (PEM, or 32 bytes in base64 on one line)")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from an unencrypted PEM (PKCS#8) or raw-base64 file."""
    data = _read_key_file(path)
    if b"-----BEGIN" in data:
        if b"PRIVATE KEY" not in data:
            raise KeyFileError(path, "holds no private key (is it the .pub file?)")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise KeyFileError(path, "the private key is encrypted; give an unencrypted one") from None
        except (ValueError, UnsupportedAlgorithm):
            raise KeyFileError(path, "not a readable PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(path, f"not an Ed25519 key ({type(key).__name__.removesuffix('PrivateKey')})")
        return key
    raw = _raw_base64(data)
    if raw is None:
        raise KeyFileError(path, "not an Ed25519 private key (PEM, or 32 bytes in base64 on one line)")
    return Ed25519PrivateKey.from_private_bytes(raw)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` (never an existing file or a link) with exactly `mode`, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_keypair(prefix: Path) -> tuple[Path, Path]:
    """Write a new pair as PREFIX.key (PKCS#8 PEM, 0600) and PREFIX.pub (PEM, 0644).

    Refuses (AgentError) when either file exists, so a key in use is never replaced by accident.
    """
    private_path, public_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    existing = [str(p) for p in (private_path, public_path) if p.exists() or p.is_symlink()]
    if existing:
        raise AgentError(f"not overwriting an existing key: {', '.join(existing)}")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        _write_new(private_path, private_pem, 0o600)
    except OSError as exc:
        raise AgentError(f"cannot create {private_path}: {exc.strerror or exc}") from None
    try:
        _write_new(public_path, public_pem, 0o644)
    except OSError as exc:
        private_path.unlink(missing_ok=True)
        raise AgentError(f"cannot create {public_path}: {exc.strerror or exc}") from None
    return private_path, public_path


# -- verification --------------------------------------------------------------------------------


def _refused(reason: str) -> CommandError:
    return CommandError("unauthenticated", reason)


def _decode_signature(value: object) -> bytes | None:
    if not isinstance(value, str) or len(value) > _MAX_SIG_CHARS:
        return None
    try:
        sig = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return sig if len(sig) == SIGNATURE_BYTES else None


class SignatureVerifier:
    """Accepts an envelope signed by any one of the platform's keys; thread-safe (no state)."""

    def __init__(self, keys: Sequence[Ed25519PublicKey]) -> None:
        if not 1 <= len(keys) <= MAX_PLATFORM_KEYS:
            raise ValueError(f"give 1 to {MAX_PLATFORM_KEYS} platform keys, got {len(keys)}")
        self._keys = tuple(keys)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(key_id(k) for k in self._keys)

    def verify(self, envelope: Mapping[str, Any], user_properties: Mapping[str, str]) -> None:
        """Raise CommandError("unauthenticated", why) unless a trusted key signed `envelope`."""
        if SIG_FIELD in envelope:
            value: object = envelope[SIG_FIELD]
        elif SIG_FIELD in user_properties:
            value = user_properties[SIG_FIELD]
        else:
            raise _refused("the command is not signed; this gateway accepts only signed commands")
        sig = _decode_signature(value)
        if sig is None:
            raise _refused("sig is not a base64 Ed25519 signature (64 bytes, standard alphabet)")
        try:
            signed = canonical_envelope(envelope)
        except UnicodeEncodeError:
            raise _refused("the envelope has no UTF-8 form, so it cannot have been signed") from None
        for key in self._keys:
            try:
                key.verify(sig, signed)
            except InvalidSignature:
                continue
            return
        raise _refused("the signature does not match any platform key of this gateway")


def verifier_for(paths: Sequence[Path]) -> SignatureVerifier:
    """The verifier for these public key files; raises ConfigError naming every file that cannot
    be read or parsed (never its content)."""
    keys: list[Ed25519PublicKey] = []
    problems: list[str] = []
    for path in paths:
        try:
            keys.append(load_public_key(path))
        except KeyFileError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("gateway.platform_keys", problems)
    verifier = SignatureVerifier(keys)
    log.info(
        "commands must be signed: %d platform key(s) (%s)",
        len(keys),
        ", ".join(f"{p} id {k}" for p, k in zip(paths, verifier.key_ids, strict=True)),
    )
    return verifier
