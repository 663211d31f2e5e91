"""One function per command, and the table (`COMMANDS`) that tells the dispatcher how to run each.

A handler gets validated arguments and a `CommandContext`, returns the result as a JSON-ready
dict, and raises `CommandError` for anything the platform should be told. Access control is
done by the dispatcher before a handler runs, from the spec's `access` and `camera_of`; only
`locate`, which spans cameras, filters by agency itself, and the `ptz.*` commands check the
camera's `ptz_agencies` (or an admin agency) themselves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel

from agent.capture.source import Frame
from agent.clock import iso, parse_iso
from agent.commands import models as m
from agent.commands.aim import aim
from agent.commands.gateway import ClipAccess, Gateway, PtzAccess, PtzGateway, PtzLease
from agent.commands.geo import covers
from agent.commands.models import DEFAULT_CHUNK_BYTES, CommandError
from agent.commands.streams import StreamManager
from agent.config import CameraConfig
from agent.footage.images import SNAPSHOT_QUALITY, encode_outgoing


@dataclass(slots=True)
class CommandContext:
    """What a handler may use; `audit_cameras` collects cameras whose imagery it exposed."""

    request: m.Request
    gateway: Gateway
    streams: StreamManager | None
    now: float  # epoch seconds when the request was taken up
    subject: str | None = None  # the camera the command is about, once the dispatcher knows it
    audit_cameras: list[str] = field(default_factory=list)

    def camera(self, camera_id: str) -> CameraConfig:
        cam = self.gateway.config.camera(camera_id)
        if cam is None:
            raise CommandError("not_found", f"no camera {camera_id!r} on this gateway")
        return cam


Handler = Callable[[CommandContext, Any], dict[str, Any]]
CameraOf = Callable[[CommandContext, Any], str]
Access = Literal["any", "camera", "admin", "per_camera"]
CameraState = Literal["ok", "connecting", "failed", "disabled"]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """How to run one command.

    access: "any" (any agency), "camera" (the agency must be allowed for `camera_of`'s camera),
    "admin" (gateway.admin_agencies), "per_camera" (the handler filters cameras itself).
    audited: the command exposes imagery or changes state, so every attempt is audited.
    """

    name: str
    args: type[BaseModel]
    run: Handler
    access: Access
    audited: bool
    camera_of: CameraOf | None = None


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def _streams(ctx: CommandContext) -> StreamManager:
    if ctx.streams is None:
        raise CommandError("not_found", "streaming is not available on this gateway")
    return ctx.streams


def _clips(ctx: CommandContext) -> ClipAccess:
    store = ctx.gateway.clips
    if store is None:
        raise CommandError("not_found", "this gateway keeps no clips (no clip store configured)")
    return store


# --------------------------------------------------------------------------- gateway


def ping(ctx: CommandContext, args: m.NoArgs) -> dict[str, Any]:
    gw = ctx.gateway
    return _dump(m.PingResult(agent_version=gw.agent_version, uptime_s=round(gw.uptime_s(), 3)))


def describe(ctx: CommandContext, args: m.NoArgs) -> dict[str, Any]:
    gw = ctx.gateway
    cfg = gw.config
    cameras = []
    for cam in cfg.cameras:
        status = gw.camera_state(cam.id)
        fallback: CameraState = "connecting" if cam.enabled else "disabled"  # before the first report
        state = status.state if status is not None else fallback
        width, height = (status.width, status.height) if status else (None, None)
        cameras.append(
            m.CameraInfo(
                id=cam.id,
                name=cam.name,
                state=state,
                resolution=m.Resolution(width=width, height=height) if width and height else None,
                fps=status.fps if status else None,
                geo=cam.geo,
            )
        )
    info = m.GatewayInfo(
        district=cfg.gateway.district,
        id=cfg.gateway.id,
        name=cfg.gateway.name,
        topic_root=gw.topic_root,
        agent_version=gw.agent_version,
        uptime_s=round(gw.uptime_s(), 3),
    )
    return _dump(m.DescribeResult(gateway=info, cameras=cameras))


def config_get(ctx: CommandContext, args: m.NoArgs) -> dict[str, Any]:
    return ctx.gateway.get_settings()


def config_set(ctx: CommandContext, args: m.ConfigSetArgs) -> dict[str, Any]:
    partial = dict(args.model_extra or {})
    if not partial:
        raise CommandError("bad_request", "config.set needs at least one setting in args")
    return ctx.gateway.apply_settings(partial)  # errors are mapped by the dispatcher


# --------------------------------------------------------------------------- imagery


def _pick_frame(ctx: CommandContext, camera: str, at: str | None) -> Frame | None:
    gw = ctx.gateway
    return gw.frame_at(camera, parse_iso(at)) if at is not None else gw.latest_frame(camera)


@runtime_checkable
class PayloadLimited(Protocol):
    """A `Gateway` that knows the largest payload its broker accepts (agent.mqtt.MqttLink's
    `max_payload`, from the MQTT 5 CONNACK's Maximum Packet Size); one without need not
    implement it, and clip chunks are then as large as asked."""

    def max_payload(self, topic: str, properties: dict[str, str] | None = None) -> int | None:
        """The largest payload on `topic` the broker accepts, None when it announced no limit."""


MIN_SNAPSHOT_WIDTH = 160


def _payload_limit(gateway: Gateway, topic: str, properties: dict[str, str]) -> int | None:
    return gateway.max_payload(topic, properties) if isinstance(gateway, PayloadLimited) else None


def _publish_snapshot(
    ctx: CommandContext, cam: CameraConfig, frame: Frame, max_width: int | None
) -> m.SnapshotResult:
    jpeg = encode_outgoing(frame.image, cam.privacy_masks, max_width=max_width, quality=SNAPSHOT_QUALITY)
    topic = ctx.gateway.topics.snapshot_reply(cam.id, ctx.request.id)
    ts = iso(frame.ts)
    limit = _payload_limit(ctx.gateway, topic, {"ts": ts, "id": ctx.request.id})
    # A picture the broker would refuse is made smaller (the reply says its size), never lost.
    while limit is not None and len(jpeg.data) > limit and jpeg.width > MIN_SNAPSHOT_WIDTH:
        smaller = max(MIN_SNAPSHOT_WIDTH, jpeg.width // 2)
        jpeg = encode_outgoing(frame.image, cam.privacy_masks, max_width=smaller, quality=SNAPSHOT_QUALITY)
    if limit is not None and len(jpeg.data) > limit:
        raise CommandError(
            "internal",
            f"even a {jpeg.width}px snapshot ({len(jpeg.data)} bytes) is more than the broker accepts"
            f" in one message ({limit} bytes, its Maximum Packet Size)",
        )
    ctx.gateway.publish(topic, jpeg.data, kind="snapshot", properties={"ts": ts, "id": ctx.request.id})
    ctx.audit_cameras.append(cam.id)
    return m.SnapshotResult(topic=topic, ts=ts, width=jpeg.width, height=jpeg.height, bytes=len(jpeg.data))


def snapshot(ctx: CommandContext, args: m.SnapshotArgs) -> dict[str, Any]:
    cam = ctx.camera(args.camera)
    frame = _pick_frame(ctx, cam.id, args.at)
    if frame is None:
        if args.at is not None:
            raise CommandError("not_found", f"no frame of camera {cam.id!r} near {args.at} is still buffered")
        raise CommandError("not_found", f"camera {cam.id!r} has no frame yet")
    return _dump(_publish_snapshot(ctx, cam, frame, args.max_width))


def locate(ctx: CommandContext, args: m.LocateArgs) -> dict[str, Any]:
    agency = ctx.request.requester.agency
    found: list[tuple[float, float, CameraConfig]] = []
    for cam in ctx.gateway.config.cameras:
        if cam.geo is None or agency not in cam.allowed_agencies:
            continue
        g = covers(cam.geo, args.lat, args.lon)
        if g is not None and g.distance_m <= args.radius_m:
            found.append((g.distance_m, g.bearing_deg, cam))
    found.sort(key=lambda hit: (hit[0], hit[2].id))
    hits = []
    for distance, bearing, cam in found:
        frame = _pick_frame(ctx, cam.id, args.at)
        topic = _publish_snapshot(ctx, cam, frame, None).topic if frame is not None else None
        hits.append(
            m.LocateHit(
                camera=cam.id,
                distance_m=round(distance, 2),
                bearing_deg=round(bearing, 2),
                snapshot_topic=topic,
            )
        )
    return _dump(m.LocateResult(cameras=hits))


def stream_start(ctx: CommandContext, args: m.StreamStartArgs) -> dict[str, Any]:
    """fmp4 without an explicit max_width: the camera's own stream where it can be copied."""
    ctx.camera(args.camera)
    fmp4_own_size = args.format == "fmp4" and "max_width" not in args.model_fields_set
    info = _streams(ctx).open(
        args.camera,
        owner=ctx.request.requester.agency,
        fps=args.fps,
        max_width=None if fmp4_own_size else args.max_width,
        quality=args.quality,
        duration_s=args.duration_s,
        format=args.format,
    )
    ctx.audit_cameras.append(info.camera)
    result = m.StreamStartResult(session=info.session, topic=info.topic, expires_at=iso(info.expires_at))
    if info.format == "fmp4":
        result = m.StreamStartResult(
            session=info.session,
            topic=info.topic,
            expires_at=iso(info.expires_at),
            format="fmp4",
            codec=info.codec,
            width=info.width,
            height=info.height,
        )
    return _dump(result)


def stream_renew(ctx: CommandContext, args: m.StreamRenewArgs) -> dict[str, Any]:
    """Only the agency that opened the session may extend it (checked by the StreamManager)."""
    agency = ctx.request.requester.agency
    _session_access(ctx, args.session, admin=False)
    info = _streams(ctx).renew(args.session, args.duration_s, agency=agency)
    return _dump(m.StreamRenewResult(expires_at=iso(info.expires_at)))


def stream_stop(ctx: CommandContext, args: m.StreamStopArgs) -> dict[str, Any]:
    """The owning agency may stop its session; an admin agency may stop any, whatever the camera."""
    agency = ctx.request.requester.agency
    admin = agency in ctx.gateway.config.gateway.admin_agencies
    _session_access(ctx, args.session, admin=admin)
    _streams(ctx).close(args.session, agency=agency, override=admin)
    return _dump(m.EmptyResult())


def _session_access(ctx: CommandContext, session: str, *, admin: bool) -> None:
    """The access check of stream.renew/stop (spec access "per_camera"): note the session's camera
    for the audit record, then require the agency to be allowed for it unless it acts as admin.
    Ownership is checked by the StreamManager under its lock, on the session it changes."""
    info = _streams(ctx).session(session)
    if info is None:
        raise CommandError("not_found", f"no stream session {session!r} (ended or never started)")
    ctx.subject = info.camera
    agency = ctx.request.requester.agency
    if not admin and agency not in ctx.camera(info.camera).allowed_agencies:
        raise CommandError("forbidden", f"agency {agency!r} is not allowed for camera {info.camera!r}")


# --------------------------------------------------------------------------- clips


def clip_export(ctx: CommandContext, args: m.ClipExportArgs) -> dict[str, Any]:
    ctx.camera(args.camera)
    info = _clips(ctx).export(args.camera, parse_iso(args.start), parse_iso(args.end))
    return _dump(
        m.ClipExportResult(
            clip_id=info.clip_id, duration_s=round(info.duration_s, 3), bytes=info.bytes, sha256=info.sha256
        )
    )


def _chunk_bytes(gateway: Gateway, topic: str, requested: int | None) -> int:
    """The clip chunk size: as asked (or the default), but never more than the broker accepts,
    since the link would refuse such a chunk and leave a hole in the clip. A size the platform
    asked for is refused rather than shrunk (it may place chunks at index * chunk_bytes)."""
    chunk = requested or DEFAULT_CHUNK_BYTES
    if not isinstance(gateway, PayloadLimited):
        return chunk
    limit = gateway.max_payload(topic, {"index": "9" * 10, "count": "9" * 10})  # the widest
    if limit is None or chunk <= limit:
        return chunk
    if requested is not None or limit < 1:
        raise CommandError(
            "bad_request",
            f"chunk_bytes {chunk} is more than the broker accepts in one message"
            f" (its Maximum Packet Size): ask for at most {max(limit, 0)}",
        )
    return limit


def clip_fetch(ctx: CommandContext, args: m.ClipFetchArgs) -> dict[str, Any]:
    store = _clips(ctx)
    info = store.get(args.clip_id)
    topic = ctx.gateway.topics.clip(info.clip_id)
    chunk_bytes = _chunk_bytes(ctx.gateway, topic, args.chunk_bytes)
    digest = hashlib.sha256()
    sent = count = 0
    for index, count, data in store.chunks(info.clip_id, chunk_bytes):
        digest.update(data)
        sent += len(data)
        ctx.gateway.publish(topic, data, kind="clip", properties={"index": str(index), "count": str(count)})
    return _dump(m.ClipFetchResult(topic=topic, count=count, bytes=sent, sha256=digest.hexdigest()))


def clip_hold(ctx: CommandContext, args: m.ClipHoldArgs) -> dict[str, Any]:
    ctx.camera(args.camera)
    until = parse_iso(args.until)
    if until <= ctx.now:
        raise CommandError("bad_request", f"until {args.until} is in the past")
    held = _clips(ctx).hold(args.camera, parse_iso(args.start), parse_iso(args.end), until)
    result = m.ClipHoldResult(
        camera=args.camera, start=args.start, end=args.end, until=args.until, clip_ids=list(held.clip_ids)
    )
    return _dump(result)


# --------------------------------------------------------------------------- PTZ


def _ptz(ctx: CommandContext, camera: str) -> tuple[PtzAccess, CameraConfig]:
    """The access check of every ptz.* command (spec access "per_camera"): the camera is the
    audit record's; the agency must be in its `ptz_agencies` or an admin agency."""
    ctx.subject = camera
    cam = ctx.camera(camera)
    agency = ctx.request.requester.agency
    if agency not in cam.ptz_agencies and agency not in ctx.gateway.config.gateway.admin_agencies:
        raise CommandError("forbidden", f"agency {agency!r} may not turn camera {camera!r} (ptz_agencies)")
    gw = ctx.gateway
    access = gw.ptz() if isinstance(gw, PtzGateway) else None
    if access is None or cam.onvif is None:
        raise CommandError("not_found", f"camera {camera!r} has no PTZ control on this gateway")
    return access, cam


def _leased(camera: str, lease: PtzLease) -> m.PtzLeaseResult:
    return m.PtzLeaseResult(camera=camera, agency=lease.agency, lease_until=iso(lease.until))


def ptz_move(ctx: CommandContext, args: m.PtzMoveArgs) -> dict[str, Any]:
    access, _ = _ptz(ctx, args.camera)
    lease = access.move(
        args.camera,
        ctx.request.requester.agency,
        mode=args.mode,
        pan=args.pan,
        tilt=args.tilt,
        zoom=args.zoom,
        timeout_s=args.timeout_s,
    )
    return _dump(_leased(args.camera, lease))


def ptz_stop(ctx: CommandContext, args: m.PtzStopArgs) -> dict[str, Any]:
    access, _ = _ptz(ctx, args.camera)
    lease = access.stop_camera(args.camera, ctx.request.requester.agency, release=args.release)
    return _dump(m.PtzStopResult(camera=args.camera, lease_until=iso(lease.until) if lease else None))


def ptz_presets(ctx: CommandContext, args: m.PtzCameraArgs) -> dict[str, Any]:
    access, _ = _ptz(ctx, args.camera)
    presets = [m.PtzPreset(token=token, name=name) for token, name in access.presets(args.camera)]
    return _dump(m.PtzPresetsResult(camera=args.camera, presets=presets))


def ptz_goto_preset(ctx: CommandContext, args: m.PtzGotoPresetArgs) -> dict[str, Any]:
    access, _ = _ptz(ctx, args.camera)
    lease = access.goto_preset(args.camera, ctx.request.requester.agency, args.preset)
    return _dump(_leased(args.camera, lease))


def ptz_look_at(ctx: CommandContext, args: m.PtzLookAtArgs) -> dict[str, Any]:
    """Turn the camera to a point on the ground, from its geo and ptz calibration."""
    access, cam = _ptz(ctx, args.camera)
    if cam.geo is None:
        raise CommandError("bad_request", f"camera {cam.id!r} has no geo: its position is needed for look_at")
    target = aim(cam.id, cam.geo, cam.ptz_settings, args.lat, args.lon)
    lease = access.absolute(
        cam.id, ctx.request.requester.agency, pan=target.pan, tilt=target.tilt, zoom=args.zoom
    )
    result = m.PtzLookAtResult(
        camera=cam.id,
        agency=lease.agency,
        lease_until=iso(lease.until),
        pan=round(target.pan, 6),
        tilt=round(target.tilt, 6),
        bearing_deg=round(target.bearing_deg, 2),
        distance_m=round(target.distance_m, 2),
        depression_deg=round(target.depression_deg, 2),
    )
    return _dump(result)


def _clip_camera(ctx: CommandContext, args: m.ClipFetchArgs) -> str:
    return _clips(ctx).get(args.clip_id).camera


def _args_camera(ctx: CommandContext, args: Any) -> str:
    return str(args.camera)


def _spec(
    name: str, run: Handler, access: Access, audited: bool, camera_of: CameraOf | None = None
) -> CommandSpec:
    return CommandSpec(name, m.COMMAND_MODELS[name][0], run, access, audited, camera_of)


COMMANDS: dict[str, CommandSpec] = {
    s.name: s
    for s in (
        _spec("ping", ping, "any", audited=False),
        _spec("describe", describe, "any", audited=False),
        _spec("snapshot", snapshot, "camera", audited=True, camera_of=_args_camera),
        _spec("stream.start", stream_start, "camera", audited=True, camera_of=_args_camera),
        _spec("stream.renew", stream_renew, "per_camera", audited=True),
        _spec("stream.stop", stream_stop, "per_camera", audited=True),
        _spec("clip.export", clip_export, "camera", audited=True, camera_of=_args_camera),
        _spec("clip.fetch", clip_fetch, "camera", audited=True, camera_of=_clip_camera),
        _spec("clip.hold", clip_hold, "camera", audited=True, camera_of=_args_camera),
        _spec("locate", locate, "per_camera", audited=True),
        _spec("config.get", config_get, "any", audited=False),
        _spec("config.set", config_set, "admin", audited=True),
        _spec("ptz.move", ptz_move, "per_camera", audited=True),
        _spec("ptz.stop", ptz_stop, "per_camera", audited=True),
        _spec("ptz.presets", ptz_presets, "per_camera", audited=True),
        _spec("ptz.goto_preset", ptz_goto_preset, "per_camera", audited=True),
        _spec("ptz.look_at", ptz_look_at, "per_camera", audited=True),
    )
}
"""Every command of the contract, keyed by name."""
