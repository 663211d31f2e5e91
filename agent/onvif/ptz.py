"""PTZ control of the gateway's ONVIF cameras for the command plane.

One `PtzService` per agent (the runtime starts and stops it) owns an `OnvifLoop` and one
`OnvifDevice` per camera with `onvif` in its config. Command workers call its methods; each
waits at most the camera's `onvif.timeout_s` for the camera.

Leases: a move, preset or stop by an agency gives it the camera for `ptz.lease_s` after its last
command; meanwhile other agencies are answered `busy` naming the holder and when the lease ends,
unless they are admin agencies, which take the lease over (logged as a WARNING). `stop` with
`release` ends the lease at once. After `ptz.idle_return_s` without a command the camera goes to
its `ptz.home_preset`.

`moving(camera)` says whether the agent has the camera moving (from a command until the camera
reports its move done, or a continuous move's timeout): the camera's pipeline raises no motion or
object events then, since a turning camera sees everything move.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from agent.config import CameraConfig
from agent.config.cameras import PtzConfig
from agent.onvif.client import OnvifDevice, OnvifError, OnvifLoop

log = logging.getLogger(__name__)

T = TypeVar("T")
HOUSEKEEPING_S = 0.5  # how often leases, idle returns and moves in progress are looked at
SETTLE_S = 0.3  # a camera still counts as moving this long after it says it stopped
MAX_MOVE_WAIT_S = 30.0  # a camera that never reports its move done stops counting as moving then
MoveMode = Literal["continuous", "relative"]


@dataclass(frozen=True, slots=True)
class Lease:
    """Which agency controls a camera, until when (epoch seconds)."""

    agency: str
    until: float


@dataclass
class _Camera:
    device: OnvifDevice
    settings: PtzConfig
    timeout_s: float
    lease: Lease | None = None
    last_command: float = 0.0  # monotonic
    at_home: bool = True  # nothing to return from until a command moved it
    moving_until: float = 0.0  # monotonic; 0: still
    poll_status: bool = False  # ask the camera whether its move is done
    stop_handle: asyncio.TimerHandle | None = None
    generation: int = 0  # continuous moves: a later command supersedes a pending automatic stop


class PtzService:
    """PTZ of the ONVIF cameras of one gateway; thread-safe."""

    def __init__(
        self,
        cameras: list[CameraConfig],
        passwords: Mapping[str, str | None],
        *,
        admin_agencies: list[str],
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`passwords`: camera id → its ONVIF password (read from `onvif.password_file` by the caller,
        which reports an unreadable file as a configuration error)."""
        self._loop = OnvifLoop("ptz", max_pending=4 * max(1, len(cameras)))
        self._cams: dict[str, _Camera] = {}
        for cam in cameras:
            if cam.onvif is None:
                continue
            device = OnvifDevice(cam.id, cam.onvif, passwords.get(cam.id))
            self._cams[cam.id] = _Camera(device, cam.ptz_settings, cam.onvif.timeout_s)
            self._loop.on_stop(device.close)
        self._admins = set(admin_agencies)
        self._clock = clock
        self._mono = monotonic
        self._lock = threading.Lock()
        self._running = False

    @classmethod
    def from_config(cls, cameras: list[CameraConfig], admin_agencies: list[str]) -> PtzService | None:
        """The service for the cameras with `onvif`, or None when there are none; raises
        ConfigError when a password file cannot be read."""
        onvif = [c for c in cameras if c.onvif is not None and c.enabled]
        if not onvif:
            return None
        passwords = {c.id: c.onvif.resolved_password() for c in onvif if c.onvif is not None}
        return cls(onvif, passwords, admin_agencies=admin_agencies)

    @property
    def cameras(self) -> list[str]:
        return list(self._cams)

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._loop.start()
        self._loop.spawn(self._housekeeping())

    def stop(self, timeout: float = 1.0) -> None:
        """Cancel what is in flight and end the thread within about 2 x `timeout`; cameras are left
        where they are (a continuous move ends by its own Timeout)."""
        self._running = False
        self._loop.stop(timeout)

    # -- what the pipeline asks --------------------------------------------------------------

    def moving(self, camera: str) -> bool:
        """Whether the agent is moving the camera (no motion or object events then)."""
        cam = self._cams.get(camera)
        return cam is not None and self._mono() < cam.moving_until

    # -- what the commands ask ---------------------------------------------------------------

    def presets(self, camera: str) -> list[tuple[str, str]]:
        """(token, name) of each preset; takes no lease."""
        cam = self._camera(camera)
        return self._run(cam, cam.device.presets(), "GetPresets")

    def move(
        self,
        camera: str,
        agency: str,
        *,
        mode: MoveMode,
        pan: float,
        tilt: float,
        zoom: float,
        timeout_s: float,
    ) -> Lease:
        """Continuous (velocities, for `timeout_s`, then an automatic Stop) or relative move."""
        cam = self._camera(camera)
        lease = self._take(camera, cam, agency)
        if mode == "continuous":
            self._run(cam, cam.device.continuous_move(pan, tilt, zoom, timeout_s), "ContinuousMove")
            self._moved(cam, until=timeout_s + SETTLE_S, poll=False)
            self._loop.spawn(self._schedule_stop(cam, timeout_s))
        else:
            self._run(cam, cam.device.relative_move(pan, tilt, zoom), "RelativeMove")
            self._moved(cam, until=MAX_MOVE_WAIT_S, poll=True)
        return lease

    def absolute(self, camera: str, agency: str, *, pan: float, tilt: float, zoom: float | None) -> Lease:
        """Turn to a position in ONVIF's generic space (ptz.look_at)."""
        cam = self._camera(camera)
        lease = self._take(camera, cam, agency)
        self._run(cam, cam.device.absolute_move(pan, tilt, zoom), "AbsoluteMove")
        self._moved(cam, until=MAX_MOVE_WAIT_S, poll=True)
        return lease

    def goto_preset(self, camera: str, agency: str, preset: str) -> Lease:
        cam = self._camera(camera)
        lease = self._take(camera, cam, agency)
        self._run(cam, cam.device.goto_preset(preset), "GotoPreset")
        self._moved(cam, until=MAX_MOVE_WAIT_S, poll=True)
        return lease

    def stop_camera(self, camera: str, agency: str, *, release: bool) -> Lease | None:
        """Stop any movement; with `release` the agency's lease ends (None is returned then)."""
        cam = self._camera(camera)
        lease: Lease | None = self._take(camera, cam, agency)
        self._run(cam, cam.device.stop(), "Stop")
        with self._lock:
            cam.generation += 1
            cam.moving_until = self._mono() + SETTLE_S
            cam.poll_status = False
            if release:
                cam.lease = lease = None
        return lease

    def lease(self, camera: str) -> Lease | None:
        """The lease in force on `camera`, if any."""
        cam = self._cams.get(camera)
        with self._lock:
            if cam is None or cam.lease is None or cam.lease.until <= self._clock():
                return None
            return cam.lease

    # -- inside --------------------------------------------------------------------------------

    def _camera(self, camera: str) -> _Camera:
        cam = self._cams.get(camera)
        if cam is None:
            raise OnvifError("not_found", f"camera {camera!r} has no ONVIF control (no onvif in its config)")
        if not self._running:
            raise OnvifError("internal", "PTZ control is not running")
        return cam

    def _take(self, camera: str, cam: _Camera, agency: str) -> Lease:
        now = self._clock()
        with self._lock:
            held = cam.lease
            if held is not None and held.agency != agency and held.until > now:
                if agency not in self._admins:
                    raise OnvifError(
                        "busy",
                        f"camera {camera!r} is controlled by agency {held.agency!r} for another"
                        f" {held.until - now:.0f} s (until its lease ends or an admin agency takes it)",
                    )
                log.warning(
                    "admin agency %r took PTZ control of %r from agency %r", agency, camera, held.agency
                )
            cam.lease = Lease(agency, now + cam.settings.lease_s)
            cam.last_command = self._mono()
            cam.at_home = False
            return cam.lease

    def _moved(self, cam: _Camera, *, until: float, poll: bool) -> None:
        with self._lock:
            cam.generation += 1
            cam.moving_until = self._mono() + until
            cam.poll_status = poll

    def _run(self, cam: _Camera, coro: Coroutine[Any, Any, T], what: str) -> T:
        try:
            return self._loop.run(coro, cam.timeout_s, f"{cam.device.where}: {what}")
        except OnvifError as exc:
            if exc.code == "internal":
                log.warning("%s", exc.message)
            raise

    async def _schedule_stop(self, cam: _Camera, after_s: float) -> None:
        """Stop a continuous move at its timeout ourselves: not every camera honours Timeout."""
        with self._lock:
            generation = cam.generation
        await asyncio.sleep(after_s)
        with self._lock:
            if cam.generation != generation:
                return  # a later command took over
        try:
            await asyncio.wait_for(cam.device.stop(), cam.timeout_s)
        except (OnvifError, TimeoutError) as exc:
            log.warning("%s: the stop at the end of a continuous move failed: %s", cam.device.where, exc)

    async def _housekeeping(self) -> None:
        """Moves in progress, and the return to the home preset; runs on the loop until stop."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            for cam in self._cams.values():
                try:
                    await self._look_after(cam)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("%s: PTZ housekeeping failed: %s", cam.device.where, exc)

    async def _look_after(self, cam: _Camera) -> None:
        now = self._mono()
        with self._lock:
            poll = cam.poll_status and now < cam.moving_until
            home = cam.settings.home_preset
            go_home = (
                home is not None
                and not cam.at_home
                and now - cam.last_command >= cam.settings.idle_return_s
                and (cam.lease is None or cam.lease.until <= self._clock())
            )
        if poll:
            status = await asyncio.wait_for(cam.device.status(), cam.timeout_s)
            if not status.moving:
                with self._lock:
                    if cam.poll_status:
                        cam.poll_status = False
                        cam.moving_until = min(cam.moving_until, self._mono() + SETTLE_S)
        if go_home and home is not None:
            log.info(
                "%s: idle for %.0f s, returning to home preset %r",
                cam.device.where,
                now - cam.last_command,
                home,
            )
            with self._lock:
                cam.at_home = True
                cam.lease = None
                cam.generation += 1
                cam.moving_until = self._mono() + MAX_MOVE_WAIT_S
                cam.poll_status = True
            await asyncio.wait_for(cam.device.goto_preset(home), cam.timeout_s)
