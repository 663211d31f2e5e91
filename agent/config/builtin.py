"""The built-in default config, the one `edge-agent run` and `demo` use without a file, and the
TOML the demo writes it out as, so that its agent subprocess reads a real config file.

Here rather than in the CLI because what a config holds and how its file is spelt is this
package's concern; the CLI only decides when the default applies.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.config.models import AgentConfig, parse_config


def default_config(data_dir: Path, port: int = 1883) -> AgentConfig:
    """The built-in default: one synthetic street camera and a broker on this machine."""
    return parse_config(
        {
            "gateway": {
                "district": "demo",
                "id": "gw-01",
                "data_dir": str(data_dir),
                "telemetry_interval_s": 10,
            },
            "mqtt": {"host": "127.0.0.1", "port": port},
            "cameras": [
                {
                    "id": "cam-1",
                    "name": "Synthetic street",
                    "source": "synthetic:street",
                    "allowed_agencies": ["police", "fire"],
                    "geo": {
                        "lat": 37.5172,
                        "lon": 127.0473,
                        "heading_deg": 90.0,
                        "fov_deg": 90.0,
                        "range_m": 80.0,
                    },
                }
            ],
        },
        "<built-in default>",
    )


def to_toml(cfg: AgentConfig) -> str:
    """Just enough TOML for a config built in code (the demo's): the gateway and mqtt tables and the
    cameras; other sections are left out, so they take their defaults when the file is read back."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str | Path):
            return json.dumps(str(v))
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items() if x is not None) + " }"
        raise TypeError(type(v))

    data = cfg.model_dump(mode="json", exclude_none=True)
    lines: list[str] = []
    for table in ("gateway", "mqtt"):
        lines.append(f"[{table}]")
        lines += [f"{k} = {value(v)}" for k, v in data[table].items()]
        lines.append("")
    for cam in data["cameras"]:
        lines.append("[[cameras]]")
        lines += [f"{k} = {value(v)}" for k, v in cam.items()]
        lines.append("")
    return "\n".join(lines)
