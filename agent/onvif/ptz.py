"""PTZ control of the gateway's ONVIF cameras for the command plane.

One `PtzService` per agent (the runtime starts and stops it) owns an `OnvifLoop` and one
`OnvifDevice` per camera with `onvif` in its config. Command workers call its methods; each
waits at most the camera's `onvif.timeout_s` for the camera.

Leases: a move, preset or stop by an agency gives it the camera for `ptz.lease_s` after its last
command; meanwhile other agencies are answered `busy` naming the holder and when the lease ends,
unless they are admin agencies, which take the lease over (logged as a WARNING). `stop` with
`release` ends the lease at once. After `ptz.idle_return_s` without a command the camera goes to
its `ptz.home_preset`.

`moving(camera)` says whether the camera is moving (from a command until the camera reports its
move done, or a continuous move's timeout; or a move nobody commanded): the camera's pipeline
raises no motion or object events then, since a turning camera sees everything move. Moves
nobody commanded (someone at the camera's keyboard, a camera's own tour) are found by asking
the camera's PTZ status every `ptz.status_poll_s` while no agency holds it: MOVING, or a position
that changed since the last answer. Listeners (`on_change`) hear when a move starts and ends
(the camera status' `ptz`). A camera that does not answer is asked less often (up to
POLL_BACKOFF_MAX_S); one without PTZ is not asked again.

It also owns the cameras' other ONVIF requests: `stream_uris` for cameras whose config leaves
`source` out (the capture thread asks, at start and after the stream failed repeatedly).
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
from agent.config.cameras import OnvifConfig, PtzConfig
from agent.contract.messages import CameraPtz
from agent.errors import SourceError
from agent.onvif.client import OnvifDevice, OnvifError, OnvifLoop, PtzStatus, with_login

log = logging.getLogger(__name__)

T = TypeVar("T")
HOUSEKEEPING_S = 0.5  # how often leases, idle returns and moves in progress are looked at
SETTLE_S = 0.3  # a camera still counts as moving this long after it says it stopped
MAX_MOVE_WAIT_S = 30.0  # a camera that never reports its move done stops counting as moving then
POLL_BACKOFF_MAX_S = 60.0  # longest pause between status requests to a camera that does not answer
MOVED_EPSILON = 1e-3  # generic-space change between two idle answers that counts as a move
STREAM_REQUESTS = 3  # GetProfiles and two GetStreamUri: the budget of a stream URI lookup
ChangeListener = Callable[[str, CameraPtz], None]
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
    rtsp_login: tuple[str, str | None] | None  # added to the stream URIs the camera gives
    lease: Lease | None = None
    last_command: float = 0.0  # monotonic
    at_home: bool = True  # nothing to return from until a command moved it
    moving_until: float = 0.0  # monotonic; 0: still
    poll_status: bool = False  # ask the camera whether its move is done
    stop_handle: asyncio.TimerHandle | None = None
    generation: int = 0  # continuous moves: a later command supersedes a pending automatic stop
    by: str | None = None  # agency whose command moved it last
    preset: str | None = None  # preset it went to last (None after any other move)
    commanded: bool = True  # False: the latest move was found in the camera's status
    external: bool = False  # a move nobody commanded is in progress
    position: tuple[float | None, float | None, float | None] | None = None  # last idle answer
    next_poll: float = 0.0  # monotonic
    poll_failures: int = 0
    no_ptz: bool = False  # the camera has no PTZ: its status is not asked
    published: CameraPtz | None = None


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
            self._cams[cam.id] = _Camera(
                device, cam.ptz_settings, cam.onvif.timeout_s, _rtsp_login(cam.onvif, passwords.get(cam.id))
            )
            self._loop.on_stop(device.close)
        self._admins = set(admin_agencies)
        self._clock = clock
        self._mono = monotonic
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()  # listeners hear changes in order
        self._listeners: list[ChangeListener] = []
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

    def on_change(self, listener: ChangeListener) -> None:
        """Call `listener(camera, ptz)` when a camera starts or stops moving (register before start);
        it runs on a command worker or the ONVIF thread and must not block."""
        self._listeners.append(listener)

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
        """Whether the camera is moving, by a command or not (no motion or object events then)."""
        cam = self._cams.get(camera)
        return cam is not None and self._mono() < cam.moving_until

    # -- what the capture threads ask ----------------------------------------------------------

    def stream_uris(self, camera: str, cancel: threading.Event | None = None) -> tuple[str, str | None]:
        """The camera's main stream and substream (None: it has one profile) RTSP URIs, with the
        ONVIF login added unless `onvif.rtsp_login` is false; SourceError naming the camera when
        the camera cannot say (the capture thread retries with backoff), or at once when `cancel`
        is set (the asking camera is stopping)."""
        cam = self._cams.get(camera)
        if cam is None:
            raise SourceError(f"camera {camera!r} has no onvif in its config: give it a source")
        if not self._running:
            raise SourceError(f"camera {camera!r}: ONVIF control is not running")
        what = f"{cam.device.where}: stream URIs"
        try:
            main, sub = self._loop.run(
                cam.device.stream_uris(), STREAM_REQUESTS * cam.timeout_s, what, cancel=cancel
            )
        except OnvifError as exc:
            raise SourceError(f"ONVIF: {exc.message}") from None
        if cam.rtsp_login is None:
            return main, sub
        user, password = cam.rtsp_login
        return with_login(main, user, password), None if sub is None else with_login(sub, user, password)

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
            self._moved(cam, agency, None, until=timeout_s + SETTLE_S, poll=False)
            self._loop.spawn(self._schedule_stop(cam, timeout_s))
        else:
            self._run(cam, cam.device.relative_move(pan, tilt, zoom), "RelativeMove")
            self._moved(cam, agency, None, until=MAX_MOVE_WAIT_S, poll=True)
        return lease

    def absolute(self, camera: str, agency: str, *, pan: float, tilt: float, zoom: float | None) -> Lease:
        """Turn to a position in ONVIF's generic space (ptz.look_at)."""
        cam = self._camera(camera)
        lease = self._take(camera, cam, agency)
        self._run(cam, cam.device.absolute_move(pan, tilt, zoom), "AbsoluteMove")
        self._moved(cam, agency, None, until=MAX_MOVE_WAIT_S, poll=True)
        return lease

    def goto_preset(self, camera: str, agency: str, preset: str) -> Lease:
        cam = self._camera(camera)
        lease = self._take(camera, cam, agency)
        self._run(cam, cam.device.goto_preset(preset), "GotoPreset")
        self._moved(cam, agency, preset, until=MAX_MOVE_WAIT_S, poll=True)
        return lease

    def stop_camera(self, camera: str, agency: str, *, release: bool) -> Lease | None:
        """Stop any movement; with `release` the agency's lease ends (None is returned then)."""
        cam = self._camera(camera)
        lease: Lease | None = self._take(camera, cam, agency)
        self._run(cam, cam.device.stop(), "Stop")
        with self._lock:
            if self._mono() < cam.moving_until:
                cam.preset = None  # stopped on its way
            cam.generation += 1
            cam.moving_until = self._mono() + SETTLE_S
            cam.poll_status = False
            cam.by, cam.commanded, cam.external = agency, True, False
            cam.position = None
            if release:
                cam.lease = lease = None
        self._publish(camera, cam)
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

    def _moved(self, cam: _Camera, by: str | None, preset: str | None, *, until: float, poll: bool) -> None:
        """Record a commanded move (None `by`: the agent's own, the return home) and say so."""
        with self._lock:
            cam.generation += 1
            cam.moving_until = self._mono() + until
            cam.poll_status = poll
            cam.by, cam.preset, cam.commanded, cam.external = by, preset, True, False
            cam.position = None  # the next idle answer is the new reference, not a move
        self._publish(cam.device.camera, cam)

    def _publish(self, camera: str, cam: _Camera) -> None:
        """Tell the listeners when the camera's move state differs from what they heard last."""
        with self._publish_lock:
            with self._lock:
                state = CameraPtz(
                    moving=self._mono() < cam.moving_until,
                    commanded=cam.commanded,
                    by=cam.by,
                    preset=cam.preset,
                )
                if state == cam.published or (cam.published is None and not state.moving):
                    return  # no change, or still since the start: nothing to say
                cam.published = state
            for listener in self._listeners:
                try:
                    listener(camera, state)
                except Exception:
                    log.exception("%s: a PTZ listener failed", cam.device.where)

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
        """Moves in progress, moves nobody commanded, the return to the home preset, and telling
        the listeners; runs on the loop until stop, each camera on its own so that one that does
        not answer delays no other."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            await asyncio.gather(*(self._look_after_one(cam) for cam in self._cams.values()))

    async def _look_after_one(self, cam: _Camera) -> None:
        try:
            await self._look_after(cam)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: PTZ housekeeping failed: %s", cam.device.where, exc)
        self._publish(cam.device.camera, cam)

    async def _look_after(self, cam: _Camera) -> None:
        now = self._mono()
        with self._lock:
            poll = cam.poll_status and now < cam.moving_until
            home = cam.settings.home_preset
            leased = cam.lease is not None and cam.lease.until > self._clock()
            go_home = (
                home is not None
                and not cam.at_home
                and now - cam.last_command >= cam.settings.idle_return_s
                and not leased
            )
            watch = (
                not poll
                and not leased
                and not cam.no_ptz
                and cam.settings.status_poll_s > 0
                and now >= cam.next_poll
                and (now >= cam.moving_until or cam.external)
            )
        if poll:
            status = await asyncio.wait_for(cam.device.status(), cam.timeout_s)
            if not status.moving:
                with self._lock:
                    if cam.poll_status:
                        cam.poll_status = False
                        cam.moving_until = min(cam.moving_until, self._mono() + SETTLE_S)
        elif watch:
            await self._watch(cam)
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
            self._moved(cam, None, home, until=MAX_MOVE_WAIT_S, poll=True)
            await asyncio.wait_for(cam.device.goto_preset(home), cam.timeout_s)

    async def _watch(self, cam: _Camera) -> None:
        """Ask an idle camera whether it moves (a move the agent did not command)."""
        interval = cam.settings.status_poll_s
        try:
            status = await asyncio.wait_for(cam.device.status(), cam.timeout_s)
        except (OnvifError, TimeoutError) as exc:
            with self._lock:
                if isinstance(exc, OnvifError) and exc.code == "bad_request":
                    cam.no_ptz = True  # no PTZ (or no GetStatus): nothing will ever move it
                cam.poll_failures += 1
                failures = cam.poll_failures
                cam.next_poll = self._mono() + min(POLL_BACKOFF_MAX_S, interval * 2.0**failures)
            if cam.no_ptz:
                log.info("%s: no PTZ status (%s); not asked again", cam.device.where, exc)
            elif failures == 1:
                log.warning("%s: PTZ status unavailable, asking less often: %s", cam.device.where, exc)
            return
        now = self._mono()
        with self._lock:
            if cam.poll_status or (cam.lease is not None and cam.lease.until > self._clock()):
                return  # a command came in meanwhile: it is the agent's move
            cam.poll_failures = 0
            cam.next_poll = now + interval
            moved = _moved_between(cam.position, status)
            cam.position = (status.pan, status.tilt, status.zoom)
            if status.moving or moved:
                if not cam.external:
                    log.info("%s: moving without a command from the agent", cam.device.where)
                cam.external = status.moving
                cam.commanded, cam.by, cam.preset = False, None, None
                cam.at_home = False
                # Still moving at the next answer, or (a move seen only as a new position) for the
                # pipeline to re-learn the view.
                hold = interval + SETTLE_S if status.moving else SETTLE_S
                cam.moving_until = max(cam.moving_until, now + hold)
            elif cam.external:
                cam.external = False
                cam.moving_until = min(cam.moving_until, now + SETTLE_S)


def _moved_between(before: tuple[float | None, float | None, float | None] | None, now: PtzStatus) -> bool:
    """Whether the position differs from the previous idle answer (None: no previous answer)."""
    if before is None:
        return False
    after = (now.pan, now.tilt, now.zoom)
    return any(
        a is not None and b is not None and abs(a - b) > MOVED_EPSILON
        for a, b in zip(before, after, strict=True)
    )


def _rtsp_login(cfg: OnvifConfig, password: str | None) -> tuple[str, str | None] | None:
    return (cfg.username, password) if cfg.rtsp_login and cfg.username is not None else None
