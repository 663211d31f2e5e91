"""End to end with a real RTSP camera: `edge-agent run` records the main stream's own H.264,
analyses the substream, and the platform fetches clips that ffprobe judges.

The camera is GStreamer's RTSP server (tests/rtsp_camera), serving /main (1280x720, 25 fps, a
keyframe every 2 s) and /sub (640x360, 10 fps) of one scene whose motion the test switches.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from agent.clock import iso, parse_iso
from agent.sdk import PlatformClient
from tests.conftest import Broker, free_port
from tests.console_client import ConsoleClient, console_section
from tests.harness import GatewayRun, wait_answering
from tests.rtsp_camera.fixture import RtspCamera

pytestmark = pytest.mark.broker

DISTRICT = "testdistrict"
FPS = 25
GOP_S = 2.0
PRE_S, POST_S = 2.0, 1.0


def camera_toml(cam: RtspCamera, extra: str = "") -> str:
    return f"""
[[cameras]]
id = "cam-1"
source = "{cam.main_url}"
detect_source = "{cam.sub_url}"
allowed_agencies = ["police"]
detect_fps = 5
{extra}
[cameras.motion]
end_delay_s = 1.0
min_duration_s = 0.5
[cameras.clips]
pre_roll_s = {PRE_S}
post_roll_s = {POST_S}
"""


@pytest.fixture
def camera(tmp_path: Path) -> Iterator[RtspCamera]:
    cam = RtspCamera.start(tmp_path / "camera", gop_s=GOP_S, motion=False)
    yield cam
    cam.stop()


@pytest.fixture
def start_gateway(
    tmp_path: Path, broker: Broker, unique_gateway: str, camera: RtspCamera, platform: PlatformClient
) -> Iterator[Callable[..., GatewayRun]]:
    """`edge-agent run` on the test camera (extra TOML for the camera), answering and camera ok."""
    runs: list[GatewayRun] = []

    def start(extra: str = "") -> GatewayRun:
        toml = camera_toml(camera, extra)
        run = GatewayRun(tmp_path, broker.host, broker.port, DISTRICT, unique_gateway, toml)
        runs.append(run)
        wait_answering(platform)
        wait_ok(run)
        return run

    yield start
    for run in runs:
        run.close()


@pytest.fixture
def platform(broker: Broker, unique_gateway: str) -> Iterator[PlatformClient]:
    root = f"cctv/v1/{DISTRICT}/{unique_gateway}"
    client = PlatformClient(broker.host, broker.port, root, agency="police", operator="op-7").connect()
    yield client
    client.close()


def probe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [
            "ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
            "stream=codec_name,width,height,r_frame_rate,nb_read_frames:format=duration", "-of", "json",
            str(path),
        ],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    data = json.loads(out.stdout)
    return {**data["streams"][0], "duration": float(data["format"]["duration"])}


def log_tail(run: GatewayRun) -> str:
    """The agent's log without its DEBUG chatter, for assertion messages."""
    return "\n".join(line for line in run.agent.log().splitlines() if " DEBUG " not in line)[-4000:]


def ended_events(run: GatewayRun) -> list[dict[str, Any]]:
    return [e for e in run.events("cam-1") if e["phase"] == "end"]


def make_event(run: GatewayRun, cam: RtspCamera, seconds: float, during: Any = None) -> dict[str, Any]:
    """Motion for `seconds` (calling `during` halfway), then still until the event's end is published."""
    before = len(ended_events(run))
    cam.motion(True)
    time.sleep(seconds / 2)
    if during is not None:
        during()
    time.sleep(seconds / 2)
    cam.motion(False)
    assert run.sub.wait_for(lambda _ms: len(ended_events(run)) > before, 30), log_tail(run)
    return ended_events(run)[-1]


def wait_ok(run: GatewayRun) -> None:
    assert run.sub.wait_for(
        lambda ms: any(m.topic.endswith("/cam/cam-1/status") and m.json()["state"] == "ok" for m in ms), 30
    ), log_tail(run)


def check_clip(path: Path, event: dict[str, Any], size: tuple[int, int] = (1280, 720)) -> dict[str, Any]:
    """The clip is the camera's stream: codec, size, rate; frames = duration x fps within 2 %."""
    meta = probe(path)
    assert (meta["codec_name"], meta["width"], meta["height"]) == ("h264", *size)
    assert meta["r_frame_rate"] == f"{FPS}/1"
    frames = int(meta["nb_read_frames"])
    expected = meta["duration"] * FPS
    assert abs(frames - expected) <= 0.02 * expected, (frames, expected)
    return meta


def test_an_event_clip_is_the_main_streams_own_h264_starting_at_the_keyframe_before_its_pre_roll(
    tmp_path: Path,
    start_gateway: Callable[..., GatewayRun],
    camera: RtspCamera,
    platform: PlatformClient,
) -> None:
    run = start_gateway()
    time.sleep(PRE_S + GOP_S)  # the ring holds a full pre-roll
    footage = [m.json()["cameras"]["cam-1"]["footage"] for m in run.sub.on("/telemetry")][-1]
    assert footage["kept"] == "packets" and footage["bytes"] > 0 and footage["span_s"] >= PRE_S
    event = make_event(run, camera, 3.0)
    clip_id = event["clip_id"]
    assert clip_id, event
    out = fetch(platform, clip_id, tmp_path / "clip.mp4")  # written once the post-roll arrived
    meta = check_clip(out, event)
    sidecar = json.loads((tmp_path / "data" / "clips" / f"{clip_id}.json").read_text())
    wanted = parse_iso(event["started_at"]) - PRE_S
    start = parse_iso(sidecar["start"])
    assert wanted - GOP_S - 0.2 <= start <= wanted + 0.2, (sidecar["start"], event["started_at"])
    ended = parse_iso(event["ended_at"])
    assert meta["duration"] >= ended + POST_S - wanted - 0.5
    # The analysis ran on the substream: the main stream was never decoded, and the clip's
    # picture is the main stream's (1280 wide), not the substream's.
    with av.open(str(out)) as clip:
        first = next(clip.decode(video=0)).to_ndarray(format="rgb24")
    assert first.shape == (720, 1280, 3) and float(np.std(first)) > 5.0
    code, took = run.agent.terminate()
    assert code == 0 and took < 6.0


@pytest.mark.slow
def test_clips_survive_a_camera_restart_and_a_resolution_change_mid_clip(
    tmp_path: Path,
    start_gateway: Callable[..., GatewayRun],
    camera: RtspCamera,
    platform: PlatformClient,
) -> None:
    run = start_gateway()
    time.sleep(PRE_S + GOP_S)
    restarted = make_event(run, camera, 8.0, during=lambda: camera.restart(down_s=1.0))
    resized = make_event(run, camera, 6.0, during=lambda: camera.resize(960, 540))
    for n, (event, size) in enumerate(((restarted, (1280, 720)), (resized, (1280, 720)))):
        assert event["clip_id"], event
        check_clip(fetch(platform, event["clip_id"], tmp_path / f"clip{n}.mp4"), event, size)
    assert "Traceback" not in run.agent.log()


@pytest.mark.slow
def test_a_sigterm_during_an_event_keeps_its_clip(
    tmp_path: Path,
    start_gateway: Callable[..., GatewayRun],
    camera: RtspCamera,
    platform: PlatformClient,
) -> None:
    run = start_gateway()
    time.sleep(PRE_S)
    camera.motion(True)
    assert run.sub.wait_for(lambda _ms: any(e["phase"] == "start" for e in run.events("cam-1")), 20), (
        log_tail(run)
    )
    time.sleep(2.0)
    code, took = run.agent.terminate()
    assert code == 0 and took < 5.5, took
    ends = ended_events(run)
    assert ends and ends[-1]["clip_id"], log_tail(run)
    clip_id = ends[-1]["clip_id"]
    clips = tmp_path / "data" / "clips"
    assert (clips / f"{clip_id}.mp4").exists(), log_tail(run)
    assert not list(clips.glob("*.part*"))
    meta = check_clip(clips / f"{clip_id}.mp4", ends[-1])
    assert meta["duration"] >= 2.0
    assert "pending clips are lost" not in run.agent.log()


def test_a_camera_that_refuses_the_password_or_has_no_such_stream_is_reported(
    tmp_path: Path, broker: Broker, unique_gateway: str
) -> None:
    cam = RtspCamera.start(tmp_path / "camera", user="admin", password="right-one", motion=False)
    try:
        wrong = cam.url("/main", user="admin", password="hunter2")
        missing = cam.url("/nope", user="admin", password="right-one")
        cameras = (
            f'[[cameras]]\nid = "cam-1"\nsource = "{wrong}"\n'
            f'[[cameras]]\nid = "cam-2"\nsource = "{missing}"\n'
        )
        run = GatewayRun(tmp_path, broker.host, broker.port, DISTRICT, unique_gateway, cameras)
        try:

            def failed(camera: str) -> list[dict[str, Any]]:
                return [
                    m.json() for m in run.sub.on(f"/cam/{camera}/status") if m.json()["state"] == "failed"
                ]

            both = run.sub.wait_for(lambda _ms: bool(failed("cam-1") and failed("cam-2")), 30)
            assert both, run.agent.log()
            assert "401" in failed("cam-1")[0]["error"]
            assert "404" in failed("cam-2")[0]["error"]
            assert "hunter2" not in run.agent.log() and "right-one" not in run.agent.log()
            assert all("hunter2" not in m.payload.decode(errors="replace") for m in run.sub.messages)
        finally:
            run.close()
    finally:
        cam.stop()


def fetch(platform: PlatformClient, clip_id: str, out: Path) -> Path:
    """clip.fetch, retried while the clip is still being written."""
    deadline = time.monotonic() + 30
    while True:
        try:
            platform.clip_fetch(clip_id, out, timeout=10)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        else:
            return out


def decode_frames(data: bytes | Path) -> list[np.ndarray]:
    source: Any = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    with av.open(source) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def stream_bytes(platform: PlatformClient, seconds: float, **kw: Any) -> tuple[bytes, list[str | None]]:
    parts: list[tuple[int, bytes, str | None]] = []
    with platform.stream("cam-1", seconds=seconds, fps=10, format="fmp4", **kw) as live:
        for frame in live:
            parts.append((frame.seq, frame.data, frame.part))
    parts.sort(key=lambda p: p[0])
    return b"".join(p[1] for p in parts), [p[2] for p in parts]


@pytest.mark.slow
def test_a_masked_cameras_clip_snapshot_and_fmp4_stream_carry_no_unmasked_pixel(
    tmp_path: Path,
    start_gateway: Callable[..., GatewayRun],
    camera: RtspCamera,
    platform: PlatformClient,
) -> None:
    mask = "privacy_masks = [[[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]]"
    run = start_gateway(mask)
    time.sleep(PRE_S)
    event = make_event(run, camera, 3.0)
    clip = fetch(platform, event["clip_id"], tmp_path / "masked.mp4")
    _, jpeg = platform.snapshot("cam-1")
    snap = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert snap is not None, "the snapshot is not a JPEG"
    data, parts = stream_bytes(platform, 3.0, max_width=640)
    assert parts[0] == "init" and "fragment" in parts
    pictures = {
        "clip": decode_frames(clip),
        "snapshot": [np.dstack([snap] * 3)],
        "fmp4 stream": decode_frames(data),
    }
    for what, frames in pictures.items():
        assert frames, what
        for img in frames:
            w = img.shape[1]
            left, right = img[4:-4, 4 : w // 2 - 8], img[4:-4, w // 2 + 8 : -4]
            assert left.max() <= 24, f"{what}: unmasked pixels in the masked half"
            assert float(right.std()) > 5.0, f"{what}: the unmasked half should show the scene"
    sidecar = json.loads((tmp_path / "data" / "clips" / f"{event['clip_id']}.json").read_text())
    assert sidecar["codec"] != "copy"


@pytest.mark.slow
def test_an_fmp4_stream_of_a_packet_camera_is_its_own_h264_and_shows_the_scene(
    tmp_path: Path,
    start_gateway: Callable[..., GatewayRun],
    camera: RtspCamera,
    platform: PlatformClient,
    broker: Broker,
    unique_gateway: str,
) -> None:
    start_gateway()
    time.sleep(GOP_S)
    data, parts = stream_bytes(platform, 4.0, max_width=None)
    out = tmp_path / "live.mp4"
    out.write_bytes(data)
    meta = probe(out)
    assert (meta["codec_name"], meta["width"], meta["height"]) == ("h264", 1280, 720)
    assert parts[0] == "init" and parts.count("init") == 1
    frames = decode_frames(data)
    assert len(frames) >= 3 * FPS, len(frames)  # the camera's full rate, copied
    _, jpeg = platform.snapshot("cam-1")
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None, "the snapshot is not a JPEG"
    snap = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    last = cv2.resize(frames[-1], (snap.shape[1], snap.shape[0]), interpolation=cv2.INTER_AREA)
    # The scene is still: the stream's last frame and a snapshot show the same street.
    assert float(np.mean(np.abs(last.astype(np.int16) - snap.astype(np.int16)))) < 12.0

    # The operator's tool writes the same stream as a playable file.
    ctl_out = tmp_path / "ctl.mp4"
    done = subprocess.run(
        [
            sys.executable, "-m", "agent", "ctl", "--host", broker.host, "--port", str(broker.port),
            "--root", f"cctv/v1/{DISTRICT}/{unique_gateway}", "--agency", "police", "--operator", "op-7",
            "stream", "cam-1", "--format", "fmp4", "--seconds", "3", "-o", str(ctl_out),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    meta = probe(ctl_out)
    assert (meta["codec_name"], meta["width"], meta["height"]) == ("h264", 1280, 720)
    assert int(meta["nb_read_frames"]) >= 2 * FPS


@pytest.mark.slow
def test_a_camera_that_stalls_or_drops_its_clients_is_reported_and_comes_back(
    tmp_path: Path,
    start_gateway: Callable[..., GatewayRun],
    camera: RtspCamera,
    platform: PlatformClient,
) -> None:
    run = start_gateway()

    def states() -> list[str]:
        return [m.json()["state"] for m in run.sub.on("/cam/cam-1/status")]

    camera.stall(8.0)
    assert run.sub.wait_for(lambda _ms: "failed" in states(), 20), log_tail(run)
    failed = [m.json() for m in run.sub.on("/cam/cam-1/status") if m.json()["state"] == "failed"]
    assert failed[0]["error"], failed
    assert run.sub.wait_for(lambda _ms: states()[-1] == "ok", 40), log_tail(run)
    seen = len(states())
    camera.drop_clients()
    assert run.sub.wait_for(lambda _ms: len(states()) > seen and states()[-1] == "ok", 40), log_tail(run)
    event = make_event(run, camera, 3.0)  # and it still records
    check_clip(fetch(platform, event["clip_id"], tmp_path / "after.mp4"), event)
    assert "Traceback" not in run.agent.log()


@pytest.mark.slow
def test_clip_export_of_a_span_is_the_cameras_packets_and_the_same_span_gives_the_same_bytes(
    tmp_path: Path,
    start_gateway: Callable[..., GatewayRun],
    camera: RtspCamera,
    platform: PlatformClient,
) -> None:
    run = start_gateway()
    time.sleep(PRE_S)
    event = make_event(run, camera, 3.0)
    fetch(platform, event["clip_id"], tmp_path / "event.mp4")  # the recording exists
    start = parse_iso(event["started_at"])
    span = (iso(start + 0.5), iso(start + 2.5))
    first = platform.clip_export("cam-1", *span)
    time.sleep(PRE_S + GOP_S + 8)  # the span has left the ring: only the recording has it now
    second = platform.clip_export("cam-1", *span)
    assert first["sha256"] == second["sha256"] and first["bytes"] == second["bytes"]
    out = fetch(platform, second["clip_id"], tmp_path / "export.mp4")
    meta = check_clip(out, event)
    assert 2.0 <= meta["duration"] <= 2.0 + GOP_S + 0.2  # from the keyframe at or before the start


@pytest.mark.slow
def test_a_privacy_mask_saved_in_the_console_moves_a_packet_camera_to_masked_pixels(
    tmp_path: Path,
    broker: Broker,
    unique_gateway: str,
    camera: RtspCamera,
    platform: PlatformClient,
) -> None:
    """The camera keeps its own H.264 until a technician masks part of it; from the save on, no
    unmasked pixel leaves: its next clip and its snapshots are masked pixels, without a restart."""
    port = free_port()
    run = GatewayRun(
        tmp_path,
        broker.host,
        broker.port,
        DISTRICT,
        unique_gateway,
        camera_toml(camera),
        console_section(port),
    )
    try:
        wait_answering(platform)
        wait_ok(run)
        console = ConsoleClient(port)
        cookie, csrf = console.session()
        _, listed = console.get_json("/api/cameras", cookie)
        assert listed["cameras"][0]["footage"] == "packets"
        left = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]
        status, reply = console.post_json("/api/cameras/cam-1/masks", {"privacy": [left]}, cookie, csrf)
        assert status == 200, reply
        _, listed = console.get_json("/api/cameras", cookie)
        assert listed["cameras"][0]["footage"] == "pixels"
        assert "moved to the pixel path" in run.agent.log()
        wait_ok(run)
        time.sleep(PRE_S + 0.5)
        event = make_event(run, camera, 3.0)
        clip = fetch(platform, event["clip_id"], tmp_path / "after-save.mp4")
        _, jpeg = platform.snapshot("cam-1")
        snap = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert snap is not None
        for what, frames in {"clip": decode_frames(clip), "snapshot": [snap]}.items():
            assert frames, what
            for img in frames:
                w = img.shape[1]
                assert img[4:-4, 4 : w // 2 - 8].max() <= 24, f"{what}: unmasked pixels in the masked half"
                assert float(img[4:-4, w // 2 + 8 : -4].std()) > 5.0, f"{what}: the rest shows the scene"
        sidecar = json.loads((tmp_path / "data" / "clips" / f"{event['clip_id']}.json").read_text())
        assert sidecar["codec"] != "copy"
    finally:
        run.close()


@pytest.mark.slow
def test_an_h265_camera_with_a_microphone_gives_clips_of_its_own_h265_and_a_live_stream(
    tmp_path: Path, broker: Broker, unique_gateway: str, platform: PlatformClient
) -> None:
    """Many cameras sold now stream H.265 on their main stream, and G.711 audio from a microphone
    (listed first in the SDP here): the clip is the video's own packets, playable, at its full
    rate, without the audio; the fMP4 live stream is H.264 encoded from its pictures (what
    browsers' MSE plays, docs/protocol.md); the analysis runs on the H.264 substream."""
    cam = RtspCamera.start(tmp_path / "camera", gop_s=GOP_S, motion=False, main_codec="h265", audio=True)
    run = GatewayRun(tmp_path, broker.host, broker.port, DISTRICT, unique_gateway, camera_toml(cam))
    try:
        wait_answering(platform)
        wait_ok(run)
        time.sleep(PRE_S + GOP_S)
        event = make_event(run, cam, 3.0)
        clip = fetch(platform, event["clip_id"], tmp_path / "clip.mp4")
        meta = probe(clip)
        assert (meta["codec_name"], meta["width"], meta["height"]) == ("hevc", 1280, 720)
        with av.open(str(clip)) as container:
            assert [s.type for s in container.streams] == ["video"]
        assert abs(int(meta["nb_read_frames"]) - meta["duration"] * FPS) <= 0.02 * meta["duration"] * FPS
        frames = decode_frames(clip)
        assert frames and float(np.std(frames[0])) > 5.0
        data, parts = stream_bytes(platform, 3.0, max_width=None)
        live = tmp_path / "live.mp4"
        live.write_bytes(data)
        streamed = probe(live)
        assert parts[0] == "init" and (streamed["codec_name"], streamed["width"]) == ("h264", 640)
        pictures = decode_frames(data)
        # 10 a second asked: the substream's full rate, not only the frames analysed (5 a second)
        assert len(pictures) >= 20 and float(np.std(pictures[-1])) > 5.0
        code, _took = run.agent.terminate()
        assert code == 0, log_tail(run)
    finally:
        run.close()
        cam.stop()
