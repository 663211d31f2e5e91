"""How long a commissioning-console save takes to be in force, on a running `edge-agent run`.

For a pixel camera (synthetic) and a packet camera (the GStreamer RTSP test camera, whose first
privacy mask moves it to the pixel path), it times: the save's reply (the file checked, written
with a backup, audited, the camera's masks in force), then the first snapshot over MQTT that is
blank inside the new mask. Prints a table; asserts nothing.

    .venv/bin/python bench/console_save_bench.py [--saves 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.sdk.client import CommandFailed, PlatformClient
from tests.conftest import free_port, start_mosquitto, stop_mosquitto
from tests.console_client import ConsoleClient, console_section
from tests.harness import AgentProcess, wait_answering, wait_frames, write_config
from tests.rtsp_camera.fixture import RtspCamera

LEFT = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]
RIGHT = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]


def blank_left(client: PlatformClient) -> bool:
    try:
        _, jpeg = client.snapshot("cam-1", timeout=5)
    except CommandFailed:  # not_found: a camera moved to the pixel path is reconnecting
        return False
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        return False
    w = image.shape[1]
    return bool(image[4:-4, 4 : w // 2 - 8].max() <= 24)


def run(camera_toml: str, saves: int, work: Path, broker_port: int) -> list[tuple[float, float]]:
    """(reply s, reply-to-blank-snapshot s) of each save, alternating the mask left and right."""
    gateway = "gw-" + uuid.uuid4().hex[:8]
    port = free_port()
    cfg = write_config(
        work / "agent.toml",
        district="bench",
        gateway=gateway,
        port=broker_port,
        data_dir=work / "data",
        cameras=camera_toml,
        extra=console_section(port),
    )
    agent = AgentProcess(cfg, work / "agent.log", log_level="info")
    root = f"cctv/v1/bench/{gateway}"
    client = PlatformClient("127.0.0.1", broker_port, root, agency="police", operator="bench")
    client = client.connect()
    out = []
    try:
        wait_answering(client, 30)
        wait_frames(client, "cam-1", 30)
        console = ConsoleClient(port)
        cookie, csrf = console.session()
        for i in range(saves):
            mask = LEFT if i % 2 == 0 else RIGHT
            t0 = time.perf_counter()
            status, reply = console.post_json(
                "/api/cameras/cam-1/masks", {"privacy": [mask], "confirm_loosen": True}, cookie, csrf
            )
            t1 = time.perf_counter()
            assert status == 200, reply
            if mask is LEFT:
                while not blank_left(client):
                    time.sleep(0.05)
                out.append((t1 - t0, time.perf_counter() - t1))
            time.sleep(1.0)
    finally:
        client.close()
        agent.terminate()
        agent.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--saves", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="console-bench-") as tmp:
        work = Path(tmp)
        broker = start_mosquitto(work / "broker")
        camera = RtspCamera.start(work / "camera")
        rows = []
        try:
            synthetic = (
                '[[cameras]]\nid = "cam-1"\nsource = "synthetic:street?fps=10&width=1280&height=720"\n'
                'allowed_agencies = ["police"]\n'
            )
            (work / "a").mkdir()
            rows.append(
                ("pixel camera (synthetic 1280x720)", run(synthetic, args.saves, work / "a", broker.port))
            )
            rtsp = (
                f'[[cameras]]\nid = "cam-1"\nsource = "{camera.main_url}"\n'
                f'detect_source = "{camera.sub_url}"\nallowed_agencies = ["police"]\n'
            )
            (work / "b").mkdir()
            rows.append(
                (
                    "RTSP packet camera: the first mask moves it to pixels",
                    run(rtsp, 1, work / "b", broker.port),
                )
            )
        finally:
            camera.stop()
            stop_mosquitto(broker)
    print("\nconsole saves, one run (2 shared cores)\n")
    print("| camera | saves | reply p50 s | reply max s | then a blank snapshot, p50 s |")
    print("|---|---|---|---|---|")
    for name, times in rows:
        replies, blanks = [t[0] for t in times], [t[1] for t in times]
        print(
            f"| {name} | {len(times)} | {statistics.median(replies):.3f} | {max(replies):.3f} |"
            f" {statistics.median(blanks):.3f} |"
        )


if __name__ == "__main__":
    main()
