"""Moves the agent did not command: while no agency holds a camera, the agent asks its PTZ status
every `ptz.status_poll_s`; a camera that reports moving (or that stands somewhere else than at
the previous answer) counts as moving, so its pipeline raises no events, and the camera status'
`ptz` says when a move starts and ends, and whose it was. Real client, our fake camera."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.analysis.events import EventPhase
from agent.capture.synthetic import write_scene_video
from agent.config import CameraConfig, parse_config
from agent.config.models import DetectionSettings
from agent.contract.messages import CameraPtz, CameraStatus
from agent.onvif import PtzService
from agent.runtime.camera import CameraWorker
from tests.onvif_fake import FakeOnvifCamera


class Heard:
    """What the service's listener was told, in order."""

    def __init__(self) -> None:
        self.changes: list[CameraPtz] = []
        self.lock = threading.Lock()

    def __call__(self, _camera: str, ptz: CameraPtz) -> None:
        with self.lock:
            self.changes.append(ptz)

    def wait(self, what: Callable[[list[CameraPtz]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if what(list(self.changes)):
                    return True
            time.sleep(0.05)
        return False


def dome(fake: FakeOnvifCamera, tmp_path: Path, **ptz: Any) -> CameraConfig:
    pw = tmp_path / "pw"
    pw.write_text(fake.password)
    login = {"url": fake.url, "username": fake.username, "password_file": str(pw), "timeout_s": 1.0}
    camera = {
        "id": "dome",
        "source": "synthetic:street",
        "allowed_agencies": ["police"],
        "ptz_agencies": ["police"],
        "onvif": login,
        "ptz": {"status_poll_s": 0.5, **ptz},
    }
    return parse_config({"gateway": {"district": "gangnam", "id": "gw-01"}, "cameras": [camera]}).cameras[0]


@pytest.fixture
def fake() -> Iterator[FakeOnvifCamera]:
    with FakeOnvifCamera() as cam:
        yield cam


@pytest.fixture
def service(fake: FakeOnvifCamera, tmp_path: Path) -> Iterator[tuple[PtzService, Heard]]:
    svc = PtzService.from_config([dome(fake, tmp_path)], [])
    assert svc is not None
    heard = Heard()
    svc.on_change(heard)
    svc.start()
    yield svc, heard
    svc.stop()


def moves(fake: FakeOnvifCamera) -> list[str]:
    """Requests that would move the camera."""
    return [
        r.operation for r in fake.requests if "Move" in r.operation or r.operation in ("GotoPreset", "Stop")
    ]


def test_a_move_nobody_commanded_counts_as_moving_until_the_camera_says_it_stopped(
    fake: FakeOnvifCamera, service: tuple[PtzService, Heard]
) -> None:
    svc, heard = service
    assert heard.wait(lambda _: bool(fake.calls("GetStatus")), 5.0)  # asked while idle
    time.sleep(0.6)
    assert not svc.moving("dome") and heard.changes == []  # still since the start: nothing said
    fake.move_by_itself(0.2, seconds=2.0)
    assert heard.wait(lambda c: bool(c) and c[-1].moving, 3.0)
    assert svc.moving("dome")
    assert heard.changes[-1] == CameraPtz(moving=True, commanded=False, by=None, preset=None)
    assert heard.wait(lambda c: not c[-1].moving, 5.0)
    assert not svc.moving("dome")
    assert [c.moving for c in heard.changes] == [True, False]
    assert not fake.moving()
    assert moves(fake) == []  # the agent only watched


def test_a_jump_between_two_answers_is_a_move_too(
    fake: FakeOnvifCamera, service: tuple[PtzService, Heard]
) -> None:
    _, heard = service
    assert heard.wait(lambda _: len(fake.calls("GetStatus")) >= 2, 5.0)
    fake.move_head(0.5, -0.2)  # a preset recalled at the camera, done before the next question
    assert heard.wait(lambda c: [x.moving for x in c] == [True, False], 4.0), heard.changes
    assert not heard.changes[0].commanded


def test_commanded_moves_say_who_and_where_and_the_camera_is_not_asked_while_held(
    fake: FakeOnvifCamera, service: tuple[PtzService, Heard]
) -> None:
    svc, heard = service
    svc.goto_preset("dome", "police", "2")
    assert heard.changes[0] == CameraPtz(moving=True, commanded=True, by="police", preset="2")
    assert heard.wait(lambda c: not c[-1].moving, 3.0)
    assert heard.changes[-1] == CameraPtz(moving=False, commanded=True, by="police", preset="2")
    asked = len(fake.calls("GetStatus"))
    fake.move_by_itself(0.2, seconds=1.0)
    time.sleep(1.5)  # police holds the lease (5 s at least): no questions, the agency is in charge
    assert len(fake.calls("GetStatus")) == asked
    svc.move("dome", "police", mode="continuous", pan=0.3, tilt=0.0, zoom=0.0, timeout_s=0.5)
    assert heard.changes[-1] == CameraPtz(moving=True, commanded=True, by="police", preset=None)


def test_a_camera_without_ptz_is_asked_once_and_one_that_vanished_less_and_less(tmp_path: Path) -> None:
    with FakeOnvifCamera(ptz=False) as bullet, FakeOnvifCamera() as gone:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        vanished = dome(gone, tmp_path / "b").model_copy(update={"id": "gone"})
        svc = PtzService.from_config([dome(bullet, tmp_path / "a"), vanished], [])
        assert svc is not None
        gone.hang, gone.hang_s = {"GetStatus"}, 30.0  # no answer: each question times out (1 s)
        svc.start()
        time.sleep(6.0)
        t0 = time.monotonic()
        svc.stop()
        stopped = time.monotonic() - t0
        profiles_asked = len(bullet.calls("GetProfiles"))
        unanswered = len(gone.calls("GetStatus"))
    assert profiles_asked == 1  # found it has no PTZ, and never asked again
    assert bullet.calls("GetStatus") == []
    assert 1 <= unanswered <= 3  # 0.5 s apart, it would be about 8: 1, then after 1 s, 2 s, 4 s
    assert stopped < 2.0


# -- the camera's pipeline and status -------------------------------------------------------------


@pytest.mark.slow
def test_no_events_and_a_ptz_status_while_the_camera_moves_by_itself(
    fake: FakeOnvifCamera, service: tuple[PtzService, Heard], tmp_path: Path
) -> None:
    svc, _ = service
    video = tmp_path / "cross.mp4"
    write_scene_video(video, "cross", seconds=12.0, fps=10, size=(320, 180), seed=3)
    cfg = parse_config(
        {
            "gateway": {"district": "gangnam", "id": "gw-01"},
            "cameras": [{"id": "dome", "source": f"file://{video}", "motion": {"min_duration_s": 0.2}}],
        }
    ).cameras[0]
    phases: list[EventPhase] = []
    statuses: list[CameraStatus] = []
    worker = CameraWorker(
        cfg,
        lambda _c, s: statuses.append(s),
        lambda _c, p: phases.append(p),
        moving=lambda: svc.moving("dome"),
    )
    svc.on_change(lambda _c, ptz: worker.set_ptz(ptz))
    fake.move_by_itself(0.01, seconds=30.0)  # a slow tour from the camera's own keyboard
    deadline = time.monotonic() + 5.0
    while not svc.moving("dome") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert svc.moving("dome")
    worker.apply(cfg.motion, DetectionSettings(), None)
    worker.start()
    time.sleep(8.0)
    worker.stop()
    assert [p for p in phases if p.event.phase == "start"] == []  # the same crossing raises one when still
    assert statuses[-1].ptz == CameraPtz(moving=True, commanded=False, by=None, preset=None)
    assert (
        '"ptz":{"moving":true,"commanded":false,"by":null,"preset":null}' in statuses[-1].to_json().decode()
    )
