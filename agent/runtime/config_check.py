"""What `run` would refuse in a config beyond its schema: the files it names and the detector.

One place for `edge-agent check-config` and for the console, which checks a config file before it
writes one: the MQTT password and TLS files, the audit and platform keys, ONVIF password files, the
console's TLS files, and the detector's model and labels.
"""

from __future__ import annotations

from agent.analysis.objects.files import detector_problems
from agent.commands.audit import load_key
from agent.commands.signing import KeyFileError, load_public_key
from agent.config import AgentConfig
from agent.errors import ConfigError


def config_problems(cfg: AgentConfig, *, files: bool = True) -> list[str]:
    """One line per problem, naming the key; `files=False` skips the files (a config checked before
    they are in place, as the firmware does with a seed) but not the detector."""
    problems = []
    if files:
        data_dir = cfg.gateway.data_dir
        if data_dir.exists() and not data_dir.is_dir():  # absent is fine: `run` creates it
            problems.append(f"gateway.data_dir: {data_dir} is not a folder")
        problems += cfg.mqtt.file_problems() + key_problems(cfg) + onvif_problems(cfg)
        problems += cfg.console.file_problems()
    return problems + detector_problems(cfg)


def onvif_problems(cfg: AgentConfig) -> list[str]:
    """Each ONVIF camera's password file, read as `run` would read it."""
    return [
        f"cameras[{i}].onvif.password_file: {problem}"
        for i, cam in enumerate(cfg.cameras)
        if cam.onvif is not None
        for problem in cam.onvif.file_problems()
    ]


def key_problems(cfg: AgentConfig) -> list[str]:
    """The audit key and the platform's public keys, loaded as `run` would load them."""
    problems: list[str] = []
    if cfg.gateway.audit_key_file is not None:
        try:
            load_key(cfg.gateway.audit_key_file)
        except ConfigError as exc:
            problems += [f"gateway.audit_key_file: {line}" for line in exc.problems]
    for i, path in enumerate(cfg.gateway.platform_keys):
        try:
            load_public_key(path)
        except KeyFileError as exc:
            problems.append(f"gateway.platform_keys[{i}]: {exc}")
    return problems
