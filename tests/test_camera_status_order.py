"""A camera's status is published retained, so the last one published is what the platform keeps
seeing. Its threads (main stream, substream, the disk and PTZ notes) change it at once; the one
whose status is newer must not be overtaken by an older one still on its way to the broker.
CI once saw the camera's status left at `connecting` while both its streams were running."""

from __future__ import annotations

import threading

from agent.config import CameraConfig
from agent.contract.messages import CameraStatus
from agent.runtime.camera import CameraWorker


def test_the_last_status_published_is_the_cameras_current_one() -> None:
    published: list[CameraStatus] = []
    first_in_sink = threading.Event()
    release = threading.Event()

    def on_status(_camera: str, status: CameraStatus) -> None:
        if status.error == "disk full" and not first_in_sink.is_set():
            first_in_sink.set()
            release.wait(5.0)  # this thread is slow to reach the broker
        published.append(status)

    worker = CameraWorker(CameraConfig(id="cam-1", source="synthetic:street"), on_status, lambda _c, _p: None)
    older = threading.Thread(target=worker.set_note, args=("disk full",))
    older.start()
    assert first_in_sink.wait(5.0)
    newer = threading.Thread(target=worker.set_note, args=(None,))
    newer.start()
    newer.join(0.5)  # long enough for the newer status to overtake, were it let through
    release.set()
    older.join(5.0)
    newer.join(5.0)
    assert not older.is_alive() and not newer.is_alive()

    assert worker.status.error is None
    assert published[-1].error is None, [s.error for s in published]
