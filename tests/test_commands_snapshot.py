"""snapshot: the JPEG that leaves the gateway has its privacy mask blanked, is sized and timed right."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from agent.clock import iso
from agent.commands.audit import AuditLog
from agent.commands.dispatcher import Dispatcher
from tests.test_commands_dispatcher import NOW, RESP, ROOT, req
from tests.test_commands_gateway import T0, FakeGateway, bikes_images, make_gateway


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[FakeGateway, Dispatcher]]:
    gw = make_gateway(tmp_path)
    with AuditLog.in_data_dir(tmp_path) as audit:
        yield gw, Dispatcher(gw, audit, clock=lambda: NOW)


def snap(d: Dispatcher, args: dict[str, object], rid: str = "s-1") -> dict[str, object]:
    out = d.handle(json.dumps(req("snapshot", args, id=rid)).encode(), RESP, None)
    assert out is not None
    reply = json.loads(out[1])
    assert reply["ok"] is True, reply
    result: dict[str, object] = reply["result"]
    return result


def decode(payload: bytes) -> npt.NDArray[np.uint8]:
    img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "not a JPEG"
    return np.asarray(img, np.uint8)


def test_snapshot_is_published_once_with_the_mask_blanked(setup: tuple[FakeGateway, Dispatcher]) -> None:
    gw, d = setup
    result = snap(d, {"camera": "cam-1"})
    (msg,) = gw.on("/snapshot/s-1")
    assert msg.topic == result["topic"] == ROOT + "/cam/cam-1/snapshot/s-1"
    assert (msg.qos, msg.retain, msg.kind) == (1, False, "snapshot")
    assert result["bytes"] == len(msg.payload)
    img = decode(msg.payload)
    assert img.shape == (272, 640, 3)
    assert (result["width"], result["height"]) == (640, 272)
    # mask covers x 160..480, y 68..204; JPEG may ring at the edge, the interior is exactly zero
    assert int(img[68 + 16 : 204 - 16, 160 + 16 : 480 - 16].max()) == 0
    # outside the mask the street is still there
    original = bikes_images()[-1]
    assert float(img[:50].mean()) > 20.0
    assert float(np.abs(img[:50].astype(int) - original[:50].astype(int)).mean()) < 8.0
    assert msg.properties is not None
    assert msg.properties["ts"] == result["ts"] == iso(T0 + 11 * 0.04)


def test_camera_without_masks_is_not_blanked(setup: tuple[FakeGateway, Dispatcher]) -> None:
    gw, d = setup
    snap(d, {"camera": "cam-2"})
    img = decode(gw.on("/snapshot/s-1")[0].payload)
    assert float(img[84:188, 176:464].mean()) > 20.0


def test_max_width_downscales_and_keeps_the_mask(setup: tuple[FakeGateway, Dispatcher]) -> None:
    gw, d = setup
    result = snap(d, {"camera": "cam-1", "max_width": 320})
    assert (result["width"], result["height"]) == (320, 136)
    img = decode(gw.on("/snapshot/s-1")[0].payload)
    assert img.shape == (136, 320, 3)
    assert int(img[34 + 16 : 102 - 16, 80 + 16 : 240 - 16].max()) == 0


def test_max_width_never_upscales(setup: tuple[FakeGateway, Dispatcher]) -> None:
    _, d = setup
    assert snap(d, {"camera": "cam-1", "max_width": 4000})["width"] == 640


def test_at_picks_the_nearest_buffered_frame(setup: tuple[FakeGateway, Dispatcher]) -> None:
    gw, d = setup
    result = snap(d, {"camera": "cam-2", "at": iso(T0 + 0.13)})
    assert result["ts"] == iso(T0 + 0.12)
    img = decode(gw.on("/snapshot/s-1")[0].payload)
    # it is frame 3's picture, not the newest one
    diff3 = np.abs(img.astype(int) - bikes_images()[3].astype(int)).mean()
    diff_last = np.abs(img.astype(int) - bikes_images()[-1].astype(int)).mean()
    assert diff3 < diff_last
