"""A camera's status is published retained, so the last one published is what the platform keeps
seeing. Its threads (main stream, substream, the disk and PTZ notes, the link republishing it on
reconnect) change or send it at once; a newer status must not be overtaken by an older one still
on its way to the broker. CI once saw a camera's status left at `connecting` while both its
streams were running."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from agent.config import CameraConfig
from agent.contract.messages import CameraStatus
from agent.runtime.camera import CameraWorker


class SlowSink:
    """The first call after `arm()` blocks (its thread slow to reach the broker) until `race`
    has let a second thread run; `race` returns once both are done."""

    def __init__(self) -> None:
        self.armed, self.in_sink, self.release = threading.Event(), threading.Event(), threading.Event()

    def arm(self) -> None:
        self.armed.set()

    def hold(self) -> None:
        """Called by the sink: block the first armed call."""
        if self.armed.is_set() and not self.in_sink.is_set():
            self.in_sink.set()
            self.release.wait(5.0)

    def race(self, older: Callable[[], object], newer: Callable[[], object]) -> None:
        """Run `older` into the sink, then `newer`, long enough for it to overtake were it let
        through; then let `older` finish."""
        first = threading.Thread(target=older)
        first.start()
        assert self.in_sink.wait(5.0)
        second = threading.Thread(target=newer)
        second.start()
        second.join(0.5)
        self.release.set()
        first.join(5.0)
        second.join(5.0)
        assert not first.is_alive() and not second.is_alive()


def note(text: str | None) -> Callable[[CameraWorker], None]:
    return lambda worker: worker.set_note(text)


@pytest.mark.parametrize(
    ("older", "newer", "current"),
    [
        (note("disk full"), note(None), None),  # two changes
        (CameraWorker.republish_status, note("disk full"), "disk full"),  # a resend, then a change
    ],
    ids=["change-change", "resend-change"],
)
def test_the_last_status_published_is_the_cameras_current_one(
    older: Callable[[CameraWorker], None], newer: Callable[[CameraWorker], None], current: str | None
) -> None:
    published: list[CameraStatus] = []
    sink = SlowSink()

    def on_status(_camera: str, status: CameraStatus) -> None:
        sink.hold()
        published.append(status)

    worker = CameraWorker(CameraConfig(id="cam-1", source="synthetic:street"), on_status, lambda _c, _p: None)
    sink.arm()
    sink.race(lambda: older(worker), lambda: newer(worker))

    assert worker.status.error == current
    assert published[-1].error == current, [s.error for s in published]


def test_a_stopped_camera_publishes_no_status_over_its_successors() -> None:
    """A console save replaces a camera's worker; the old one's capture thread, stuck in a read
    of a stalled stream, fails later and must not leave `failed` retained over the new one's."""
    published: list[tuple[str, CameraStatus]] = []
    cfg = CameraConfig(id="cam-1", source="synthetic:street")
    old = CameraWorker(cfg, lambda c, s: published.append(("old", s)), lambda _c, _p: None)
    old.stop()
    new = CameraWorker(cfg, lambda c, s: published.append(("new", s)), lambda _c, _p: None)
    new.republish_status()
    old.set_note("disk full")  # a change reaching the old worker after its stop

    assert [who for who, _ in published] == ["new"]
