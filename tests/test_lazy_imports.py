"""A gateway pays for PyAV (~25 MB of RSS) only when it has packet cameras, streams fmp4 or
opens a video file (a file camera, probed for interlacing): a Raspberry Pi with its own camera or
USB cameras never loads it. Nor does any gateway load the
commissioning console's web libraries (Werkzeug, tomlkit) unless `[console]` enables it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_a_gateway_without_packet_cameras_never_imports_pyav(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[gateway]\ndistrict = "d"\nid = "gw"\ndata_dir = "{tmp_path / "data"}"\n'
        '[mqtt]\nhost = "127.0.0.1"\nport = 1\n'
        '[[cameras]]\nid = "cam-1"\nsource = "synthetic:street"\n'
        '[[cameras]]\nid = "cam-2"\nsource = "usb:0"\nenabled = false\n',
        encoding="utf-8",
    )
    code = (
        "import sys\n"
        "from agent.config import load_config\n"
        "from agent.runtime.agent import Agent\n"
        "import agent.cli\n"
        f"agent = Agent(load_config({str(config)!r}))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('av', 'werkzeug', 'tomlkit')))\n"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
