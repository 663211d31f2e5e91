"""One ONVIF camera's operations over onvif-zeep-async, run on one event loop thread.

`OnvifLoop` is the thread: callers on any thread hand it a coroutine and wait at most the
request's timeout; at most `max_pending` calls wait at once (more are answered `busy`), so a
hung camera can hold neither a command worker nor unbounded memory. `OnvifDevice` is one camera
(its coroutines run only on the loop): it connects lazily, and after a failure that looks like a
reboot or a lost network it connects again on the next call. Failures become `OnvifError`
carrying a protocol error code (docs/protocol.md, "PTZ"): no answer → busy, the camera refusing
the gateway's credentials → internal (the gateway's configuration is at fault), an operation or
service the camera lacks → bad_request, an unknown preset or profile → not_found.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from agent.config.cameras import OnvifConfig
from agent.errors import AgentError

log = logging.getLogger(__name__)

T = TypeVar("T")
Code = Literal["busy", "internal", "bad_request", "not_found"]
CANCEL_CHECK_S = 0.1  # how often a waiting caller looks at its cancel event
STREAM_SETUP = {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}


class OnvifError(AgentError):
    """An ONVIF request failed; `code` is the protocol error code the platform is told."""

    def __init__(self, code: Code, message: str) -> None:
        self.code: Code = code
        self.message = message
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Profile:
    """A media profile: what one stream of the camera is."""

    token: str
    name: str
    encoding: str | None
    width: int | None
    height: int | None
    ptz: bool


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    manufacturer: str
    model: str
    firmware: str
    serial: str


@dataclass(frozen=True, slots=True)
class PtzStatus:
    pan: float | None
    tilt: float | None
    zoom: float | None
    moving: bool


class OnvifLoop:
    """The thread that runs every ONVIF request of its owner, with a bounded number waiting."""

    def __init__(self, name: str = "onvif", *, max_pending: int = 16) -> None:
        self._name = name
        self._max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []

    def start(self) -> None:
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
        self._thread.start()

    def on_stop(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run `closer` on the loop at `stop` (the devices' HTTP sessions)."""
        self._closers.append(closer)

    def stop(self, timeout: float = 3.0) -> None:
        """Cancel what is running, close the devices, end the thread (within `timeout`)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for closer in self._closers:
                try:
                    await asyncio.wait_for(closer(), 1.0)
                except Exception:
                    log.debug("closing an ONVIF session failed", exc_info=True)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            log.warning("ONVIF requests did not end within %.1f s at stop", timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    def run(
        self,
        coro: Coroutine[Any, Any, T],
        timeout: float,
        what: str,
        *,
        cancel: threading.Event | None = None,
    ) -> T:
        """Run `coro` on the loop and return its result; OnvifError after `timeout` seconds, when
        too many calls wait, when the loop is stopped, or as soon as `cancel` is set (the caller's
        owner is stopping)."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise OnvifError("internal", "ONVIF control is not running")
        with self._lock:
            if self._pending >= self._max_pending:
                coro.close()
                raise OnvifError("busy", f"{self._pending} ONVIF requests are waiting already; retry later")
            self._pending += 1
        try:
            future = asyncio.run_coroutine_threadsafe(_bounded(coro, timeout, what), loop)
            try:
                if cancel is None:
                    return future.result(timeout + 1.0)
                deadline = time.monotonic() + timeout + 1.0
                while not cancel.is_set() and time.monotonic() < deadline:
                    try:
                        return future.result(CANCEL_CHECK_S)
                    except concurrent.futures.TimeoutError:
                        continue
                future.cancel()
                if cancel.is_set():
                    raise OnvifError("busy", f"{what}: abandoned (stopping)")
                raise concurrent.futures.TimeoutError
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise OnvifError("busy", f"{what}: no answer within {timeout:g} s") from None
            except concurrent.futures.CancelledError:
                raise OnvifError("busy", f"{what}: cancelled (the agent is stopping)") from None
        finally:
            with self._lock:
                self._pending -= 1

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Start `coro` on the loop without waiting for it (periodic work of the owner)."""
        loop = self._loop
        if loop is None:
            coro.close()
            return
        asyncio.run_coroutine_threadsafe(coro, loop)


async def _bounded(coro: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
    try:
        return await asyncio.wait_for(coro, timeout)
    except TimeoutError:
        raise OnvifError("busy", f"{what}: the camera gave no answer within {timeout:g} s") from None


def _duration(seconds: float) -> str:
    """xs:duration of ContinuousMove's Timeout, e.g. PT1.5S."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"PT{text}S"


class OnvifDevice:
    """One camera's ONVIF services; its coroutines run on an `OnvifLoop`, one at a time."""

    def __init__(self, camera: str, cfg: OnvifConfig, password: str | None) -> None:
        self.camera = camera
        self.cfg = cfg
        self._password = password
        self._cam: Any = None  # onvif.ONVIFCamera once connected
        self._media: Any = None
        self._ptz: Any = None
        self._ptz_token: str | None = None
        self._lock: asyncio.Lock | None = None

    @property
    def where(self) -> str:
        """How messages name the device: the camera id and the address (`discover`: the address)."""
        if not self.camera:
            return f"ONVIF device at {self.cfg.url}"
        return f"camera {self.camera!r} (ONVIF at {self.cfg.url})"

    async def close(self) -> None:
        cam, self._cam, self._media, self._ptz, self._ptz_token = self._cam, None, None, None, None
        if cam is not None:
            await cam.close()

    # -- reads ----------------------------------------------------------------------------------

    async def info(self) -> DeviceInfo:
        async def op() -> DeviceInfo:
            dm = await self._cam.create_devicemgmt_service()
            i = await dm.GetDeviceInformation()
            return DeviceInfo(
                manufacturer=str(i.Manufacturer or ""),
                model=str(i.Model or ""),
                firmware=str(i.FirmwareVersion or ""),
                serial=str(i.SerialNumber or ""),
            )

        return await self._call("GetDeviceInformation", op)

    async def profiles(self) -> list[Profile]:
        async def op() -> list[Profile]:
            out = []
            for p in await self._media.GetProfiles() or []:
                enc = getattr(p, "VideoEncoderConfiguration", None)
                res = getattr(enc, "Resolution", None) if enc is not None else None
                out.append(
                    Profile(
                        token=str(p.token),
                        name=str(getattr(p, "Name", "") or ""),
                        encoding=str(enc.Encoding) if enc is not None and enc.Encoding else None,
                        width=int(res.Width) if res is not None and res.Width else None,
                        height=int(res.Height) if res is not None and res.Height else None,
                        ptz=getattr(p, "PTZConfiguration", None) is not None,
                    )
                )
            return out

        return await self._call("GetProfiles", op)

    async def stream_uri(self, profile: str) -> str:
        async def op() -> str:
            got = await self._media.GetStreamUri({"StreamSetup": STREAM_SETUP, "ProfileToken": profile})
            return str(got.Uri)

        return await self._call("GetStreamUri", op)

    async def stream_uris(self) -> tuple[str, str | None]:
        """RTSP URIs of the largest profile (main stream) and, when the camera has another, the
        smallest (substream), as the camera gives them (no login added)."""
        chosen = main_and_sub(await self.profiles())
        if not chosen:
            raise OnvifError("not_found", f"{self.where} has no media profile (GetProfiles is empty)")
        main_uri = await self.stream_uri(chosen[0].token)
        sub_uri = await self.stream_uri(chosen[1].token) if len(chosen) > 1 else None
        return main_uri, (sub_uri if sub_uri != main_uri else None)

    async def has_ptz(self) -> bool:
        """Whether the device offers a PTZ service and a profile with a PTZ configuration."""
        try:
            await self._ptz_profile()
        except OnvifError as exc:
            if exc.code == "bad_request":
                return False
            raise
        return True

    async def presets(self) -> list[tuple[str, str]]:
        token = await self._ptz_profile()

        async def op() -> list[tuple[str, str]]:
            found = await self._ptz.GetPresets({"ProfileToken": token}) or []
            return [(str(p.token), str(getattr(p, "Name", "") or "")) for p in found]

        return await self._call("GetPresets", op)

    async def status(self) -> PtzStatus:
        token = await self._ptz_profile()

        async def op() -> PtzStatus:
            st = await self._ptz.GetStatus({"ProfileToken": token})
            pos = getattr(st, "Position", None)
            pt = getattr(pos, "PanTilt", None) if pos is not None else None
            zm = getattr(pos, "Zoom", None) if pos is not None else None
            ms = getattr(st, "MoveStatus", None)
            moving = ms is not None and "MOVING" in (str(ms.PanTilt or ""), str(ms.Zoom or ""))
            return PtzStatus(
                pan=float(pt.x) if pt is not None and pt.x is not None else None,
                tilt=float(pt.y) if pt is not None and pt.y is not None else None,
                zoom=float(zm.x) if zm is not None and zm.x is not None else None,
                moving=moving,
            )

        return await self._call("GetStatus", op)

    # -- moves ----------------------------------------------------------------------------------

    async def continuous_move(self, pan: float, tilt: float, zoom: float, timeout_s: float) -> None:
        token = await self._ptz_profile()
        velocity = {"PanTilt": {"x": pan, "y": tilt}, "Zoom": {"x": zoom}}
        args = {"ProfileToken": token, "Velocity": velocity, "Timeout": _duration(timeout_s)}
        await self._call("ContinuousMove", lambda: self._ptz.ContinuousMove(args))

    async def relative_move(self, pan: float, tilt: float, zoom: float) -> None:
        token = await self._ptz_profile()
        translation = {"PanTilt": {"x": pan, "y": tilt}, "Zoom": {"x": zoom}}
        args = {"ProfileToken": token, "Translation": translation}
        await self._call("RelativeMove", lambda: self._ptz.RelativeMove(args))

    async def absolute_move(self, pan: float, tilt: float, zoom: float | None) -> None:
        token = await self._ptz_profile()
        position: dict[str, Any] = {"PanTilt": {"x": pan, "y": tilt}}
        if zoom is not None:
            position["Zoom"] = {"x": zoom}
        args = {"ProfileToken": token, "Position": position}
        await self._call("AbsoluteMove", lambda: self._ptz.AbsoluteMove(args))

    async def goto_preset(self, preset: str) -> None:
        token = await self._ptz_profile()
        args = {"ProfileToken": token, "PresetToken": preset}
        await self._call("GotoPreset", lambda: self._ptz.GotoPreset(args))

    async def stop(self) -> None:
        token = await self._ptz_profile()
        args = {"ProfileToken": token, "PanTilt": True, "Zoom": True}
        await self._call("Stop", lambda: self._ptz.Stop(args))

    # -- plumbing -------------------------------------------------------------------------------

    async def _ptz_profile(self) -> str:
        if self._ptz_token is not None and self._ptz is not None:
            return self._ptz_token
        profiles = await self.profiles()
        token = next((p.token for p in profiles if p.ptz), None)
        if token is None:
            raise OnvifError(
                "bad_request", f"{self.where} has no PTZ (no media profile with a PTZ configuration)"
            )
        self._ptz = await self._call("PTZ service", self._cam.create_ptz_service)
        self._ptz_token = token
        return token

    async def _connect(self) -> None:
        if self._cam is not None:
            return
        from onvif import ONVIFCamera  # type: ignore[import-untyped]  # lazily: only ONVIF cameras load zeep

        # No username: an empty login, which cameras that do not check credentials ignore (the
        # client cannot leave the header out).
        user, password = self.cfg.username or "", self._password or ""
        cam = ONVIFCamera(self.cfg.host, self.cfg.port, user, password, no_cache=True)
        try:
            await cam.update_xaddrs()
            self._media = await cam.create_media_service()
        except BaseException:
            await cam.close()
            raise
        self._cam = cam

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Connect if needed, run `op`, and turn the client's failures into OnvifError."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        try:
            if self._cam is None:
                async with self._lock:
                    await self._connect()
            return await op()
        except OnvifError:
            raise
        except Exception as exc:
            error = _translate(exc, what, self.where)
            if error.code in ("busy", "internal"):
                await self.close()  # maybe a reboot: connect again next time
            raise error from None


def main_and_sub(profiles: list[Profile]) -> list[Profile]:
    """The largest profile (main stream) and, when different, the smallest (substream)."""
    if not profiles:
        return []
    by_size = sorted(profiles, key=lambda p: (p.width or 0) * (p.height or 0), reverse=True)
    return [by_size[0]] if len(by_size) == 1 else [by_size[0], by_size[-1]]


def with_login(uri: str, username: str | None, password: str | None) -> str:
    """`uri` with `username:password@` in its authority (percent-encoded), unless it carries a
    login already or there is no username: cameras check the same accounts for ONVIF and RTSP."""
    parts = urlsplit(uri)
    if username is None or parts.username is not None or not parts.netloc:
        return uri
    login = quote(username, safe="") + (":" + quote(password, safe="") if password is not None else "")
    return urlunsplit(parts._replace(netloc=f"{login}@{parts.netloc}"))


def _translate(exc: Exception, what: str, where: str) -> OnvifError:  # noqa: PLR0911 - one case per failure
    """The client's exception as an OnvifError with a code and a message naming the camera."""
    import aiohttp
    from zeep.exceptions import Fault, TransportError

    if isinstance(exc, Fault):
        codes = [str(getattr(q, "localname", q)) for q in (getattr(exc, "subcodes", None) or [])]
        reason = str(exc.message or "")
        if "NotAuthorized" in codes:
            return OnvifError(
                "internal",
                f"{where} refused the gateway's credentials ({what}): check onvif.username and"
                " onvif.password_file",
            )
        if "ActionNotSupported" in codes:
            return OnvifError("bad_request", f"{where} does not support {what}")
        if any(c in codes for c in ("NoEntity", "NoProfile", "NoToken")):
            return OnvifError("not_found", f"{where}: {what}: {reason or codes[-1]}")
        if "InvalidArgVal" in codes or "InvalidArgs" in codes:
            return OnvifError("bad_request", f"{where} refused {what}: {reason}")
        return OnvifError("internal", f"{where}: {what} failed: {reason or ', '.join(codes) or 'SOAP fault'}")
    if isinstance(exc, TimeoutError):
        return OnvifError("busy", f"{where}: no answer to {what} in time")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return OnvifError("busy", f"{where} cannot be reached ({what}): {exc}")
    if isinstance(exc, TransportError):
        return OnvifError("internal", f"{where}: {what}: HTTP {exc.status_code}")
    text = str(exc)
    if "support service" in text:
        return OnvifError("bad_request", f"{where} does not offer the service {what} needs")
    name = type(exc).__name__
    if name == "ONVIFAuthError":
        return OnvifError("internal", f"{where} refused the gateway's credentials ({what})")
    if name == "ONVIFTimeoutError":
        return OnvifError("busy", f"{where}: no answer to {what} in time")
    log.warning("%s: %s failed unexpectedly", where, what, exc_info=exc)
    return OnvifError("internal", f"{where}: {what} failed ({name})")
