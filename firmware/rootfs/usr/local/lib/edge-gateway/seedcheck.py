"""Check a staged seed against the image: the layout `edge-agent check-config` cannot know about.

Run by the agent's own interpreter (so `agent.config` is the installed release's) as
`seedcheck.py STAGED_DIR`. The agent may write only under /var/lib/edge-agent, and every file
the config names under /etc/edge-agent must come with the seed, and the platform's public keys
(gateway.platform_keys) must parse, so a wrong file never leaves the gateway unable to start
(check-config sees the staged config before its files are in place). On success prints
`district gateway-id camera-id...`; on failure one problem per line on stderr, exit status 1.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from pydantic import BaseModel

from agent.commands.signing import KeyFileError, load_public_key
from agent.config import load_config
from agent.errors import ConfigError

CONFIG_DIR = PurePosixPath("/etc/edge-agent")
DATA_DIR = PurePosixPath("/var/lib/edge-agent")


def named_paths(node: object, where: str = "") -> Iterator[tuple[str, PurePosixPath]]:
    """Every Path value in the config, with its dotted key, e.g. ("mqtt.tls.ca_file", ...)."""
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from named_paths(getattr(node, name), f"{where}.{name}" if where else name)
    elif isinstance(node, list | tuple):
        for index, item in enumerate(node):
            yield from named_paths(item, f"{where}[{index}]")
    elif isinstance(node, Path):
        yield where, PurePosixPath(node)


def problems(staged: Path) -> tuple[list[str], list[str]]:
    """(problems, identity words) for the seed staged in `staged`."""
    try:
        cfg = load_config(staged / "config.toml")
    except ConfigError as exc:
        return [f"config.toml: {line}" for line in exc.problems] or [str(exc)], []
    found: list[str] = []
    if PurePosixPath(cfg.gateway.data_dir) != DATA_DIR:
        found.append(f"gateway.data_dir must be {DATA_DIR} (the data partition), not {cfg.gateway.data_dir}")
    for key, path in named_paths(cfg):
        if key == "gateway.data_dir":
            continue
        if path.is_relative_to(CONFIG_DIR):
            relative = path.relative_to(CONFIG_DIR)
            local = staged / relative
            if not local.is_file():
                found.append(f"{key} names {path}, but the seed has no edge-agent/{relative}")
                continue
        elif not Path(path).exists():
            found.append(f"{key} names {path}, which is not on this gateway (seed files: {CONFIG_DIR}/...)")
            continue
        else:
            local = Path(path)
        if key.startswith("gateway.platform_keys["):
            try:
                load_public_key(local)
            except KeyFileError as exc:  # its reason never quotes the file
                found.append(f"{key} names {path}: {exc.reason}")
    identity = [cfg.gateway.district, cfg.gateway.id, *(c.id for c in cfg.cameras)]
    return found, identity


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: seedcheck.py STAGED_DIR", file=sys.stderr)
        return 2
    found, identity = problems(Path(argv[1]))
    for line in found:
        print(line, file=sys.stderr)
    if found:
        return 1
    print(" ".join(identity))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
