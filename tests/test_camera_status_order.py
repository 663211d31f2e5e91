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
    armed = threading.Event()
    first_in_sink = threading.Event()
    release = threading.Event()

    def on_status(_camera: str, status: CameraStatus) -> None:
        if armed.is_set() and not first_in_sink.is_set():
            first_in_sink.set()
            release.wait(5.0)  # this thread is slow to reach the broker
        published.append(status)

    worker = CameraWorker(CameraConfig(id="cam-1", source="synthetic:street"), on_status, lambda _c, _p: None)
    armed.set()
    first = threading.Thread(target=older, args=(worker,))
    first.start()
    assert first_in_sink.wait(5.0)
    second = threading.Thread(target=newer, args=(worker,))
    second.start()
    second.join(0.5)  # long enough for the newer status to overtake, were it let through
    release.set()
    first.join(5.0)
    second.join(5.0)
    assert not first.is_alive() and not second.is_alive()

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
