"""The console's HTTP app (WSGI, on Werkzeug): pages, the JSON API, the live view.

Every request passes the same gates in order: a Host the console answers to (a page reached
through DNS rebinding is refused), then for a state-changing request an Origin of this very
console, a session, and the session's CSRF token. Every response carries a strict CSP (no inline
script, nothing fetched from elsewhere) and is not cached. Logins, logouts, views of pictures and
every saved change go to the gateway's audit log; when the log cannot be written the access is
refused rather than left unaudited. The API is listed in docs/console.md.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from agent.config import ConsoleConfig
from agent.console.auth import Session, Sessions, Throttle, check_login
from agent.console.commissioning import MaskService, SaveRefusedError
from agent.console.config_edit import MaskEdit, parse_edit
from agent.console.gateway import ConsoleGateway

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}
MAX_BODY = 256 * 1024
LIVE_FPS = 5.0
LIVE_MAX_WIDTH = 960
LIVE_MAX_S = 1800.0  # a live view is re-opened by the page after this, re-checking its session
MAX_LIVE = 4
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self';"
    " connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)

ROUTES = Map(
    [
        Rule("/", endpoint="index", methods=["GET"]),
        Rule("/login", endpoint="login", methods=["GET", "POST"]),
        Rule("/logout", endpoint="logout", methods=["POST"]),
        Rule("/static/<name>", endpoint="static", methods=["GET"]),
        Rule("/api/session", endpoint="session", methods=["GET"]),
        Rule("/api/cameras", endpoint="cameras", methods=["GET"]),
        Rule("/api/cameras/<camera>/live.mjpg", endpoint="live", methods=["GET"]),
        Rule("/api/cameras/<camera>/frame.jpg", endpoint="frame", methods=["GET"]),
        Rule("/api/cameras/<camera>/overlay", endpoint="overlay", methods=["GET"]),
        Rule("/api/cameras/<camera>/events", endpoint="events", methods=["GET"]),
        Rule("/api/events/<event_id>/snapshot.jpg", endpoint="event_snapshot", methods=["GET"]),
        Rule("/api/cameras/<camera>/masks/check", endpoint="masks_check", methods=["POST"]),
        Rule("/api/cameras/<camera>/masks", endpoint="masks_save", methods=["POST"]),
    ]
)

Handler = Callable[[Request, Session, str, dict[str, str]], Response]


class ConsoleApp:
    """The WSGI application; one per console server, shared by its request threads."""

    def __init__(
        self,
        cfg: ConsoleConfig,
        gateway: ConsoleGateway,
        masks: MaskService,
        stopping: threading.Event,
    ) -> None:
        self.cfg = cfg
        self.gw = gateway
        self.masks = masks
        self.stopping = stopping
        self.sessions = Sessions(cfg.session_idle_s)
        self.throttle = Throttle()
        self._secret = secrets.token_bytes(32)  # signs the login form's CSRF token
        self._live = threading.BoundedSemaphore(MAX_LIVE)
        self._hosts = _allowed_hosts(cfg)
        self._cookie = "__Host-console" if cfg.tls else "edge_console"
        self._api: dict[str, Handler] = {
            "session": self._session_info,
            "cameras": self._cameras,
            "live": self._live_view,
            "frame": self._frame,
            "overlay": self._overlay,
            "events": self._events,
            "event_snapshot": self._event_snapshot,
            "masks_check": self._masks_check,
            "masks_save": self._masks_save,
        }

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        request.max_content_length = MAX_BODY
        try:
            response = self._dispatch(request)
        except RequestEntityTooLarge:
            response = _error(413, "too_large", f"a request body may hold at most {MAX_BODY} bytes")
        except HTTPException as exc:
            response = _error(exc.code or 400, "http", exc.description or exc.name)
        except Exception:  # a bug: logged here, never a traceback to the browser
            log.exception("console: %s %s failed", request.method, request.path)
            response = _error(500, "internal", "the console failed on this request; see the agent's log")
        _secure(response, tls=self.cfg.tls)
        result: Iterable[bytes] = response(environ, start_response)
        return result

    # -- gates ---------------------------------------------------------------------------------------

    def _dispatch(self, request: Request) -> Response:  # noqa: PLR0911 - one gate after another
        if _host_name(request.host) not in self._hosts:
            return _error(400, "host", "this console does not answer to that host name")
        adapter = ROUTES.bind_to_environ(request.environ)
        endpoint, args = adapter.match()
        if request.method == "POST" and not self._same_origin(request):
            return _error(403, "origin", "requests from another origin are refused")
        if endpoint == "login":
            return self._login(request)
        if endpoint == "static":
            return _static(args["name"])
        token = request.cookies.get(self._cookie)
        session = self.sessions.get(token)
        if session is None:
            if endpoint == "index":
                return _redirect("/login")
            return _error(401, "login", "log in first")
        assert token is not None
        if request.method == "POST" and not self._csrf_ok(request, session):
            return _error(403, "csrf", "missing or wrong CSRF token")
        if endpoint == "index":
            return _page("index.html")
        if endpoint == "logout":
            self.sessions.end(token)
            self._audit({"action": "console.logout", "user": session.user, "remote": _remote(request)})
            response = _redirect("/login")
            response.delete_cookie(self._cookie, path="/", secure=self.cfg.tls, samesite="Strict")
            return response
        return self._api[str(endpoint)](request, session, token, dict(args))

    def _same_origin(self, request: Request) -> bool:
        """A browser names the page a POST came from; it must be this console. Clients that send
        neither header (curl, the tests) still need the session's CSRF token."""
        origin = request.headers.get("Origin") or request.headers.get("Referer")
        if origin is None:
            return True
        parts = urlsplit(origin)
        scheme = "https" if self.cfg.tls else "http"
        return parts.scheme == scheme and parts.netloc.lower() == request.host.lower()

    def _csrf_ok(self, request: Request, session: Session) -> bool:
        sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf", "")
        return bool(sent) and hmac.compare_digest(sent.encode(), session.csrf.encode())

    def _audit(self, fields: Mapping[str, Any]) -> bool:
        try:
            self.gw.audit(fields)
        except (OSError, ValueError) as exc:
            log.error("console: cannot write the audit log (%s); access refused", exc)
            return False
        return True

    # -- login ---------------------------------------------------------------------------------------

    def _login_token(self) -> str:
        nonce = secrets.token_urlsafe(16)
        mac = hmac.new(self._secret, nonce.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{nonce}.{mac}"

    def _login_token_ok(self, token: str) -> bool:
        nonce, _, mac = token.partition(".")
        good = hmac.new(self._secret, nonce.encode(), hashlib.sha256).hexdigest()[:32]
        return bool(nonce) and hmac.compare_digest(mac.encode(), good.encode())

    def _login(self, request: Request) -> Response:
        if request.method == "GET":
            return self._login_page()
        remote = _remote(request)
        name = request.form.get("username", "")[:64]
        password = request.form.get("password", "")[:1024]
        if not self._login_token_ok(request.form.get("csrf", "")):
            return self._login_page("the login form expired; try again", 403)
        keys = [f"user:{name}", f"ip:{remote}"]
        wait = self.throttle.locked(keys)
        if wait > 0:
            refused = {"action": "console.login_refused", "user": name, "remote": remote, "why": "throttled"}
            self._audit(refused)
            return self._login_page(f"too many failed logins; try again in {int(wait) + 1} s", 429)
        user = check_login(self.cfg.users, name, password)
        if user is None:
            self.throttle.failed(keys)
            self._audit({"action": "console.login_failed", "user": name, "remote": remote})
            return self._login_page("wrong user name or password", 401)
        if not self._audit({"action": "console.login", "user": user, "remote": remote}):
            return self._login_page("the gateway cannot write its audit log; login refused", 503)
        self.throttle.succeeded(keys)
        token, _ = self.sessions.create(user)
        response = _redirect("/")
        response.set_cookie(
            self._cookie, token, path="/", httponly=True, secure=self.cfg.tls, samesite="Strict"
        )
        return response

    def _login_page(self, error: str = "", status: int = 200) -> Response:
        text = (STATIC / "login.html").read_text(encoding="utf-8")
        text = text.replace("__CSRF__", html.escape(self._login_token()))
        text = text.replace("__ERROR__", html.escape(error))
        return Response(text, status=status, mimetype="text/html")

    # -- API -----------------------------------------------------------------------------------------

    def _session_info(self, request: Request, session: Session, token: str, args: dict[str, str]) -> Response:
        return _json({"user": session.user, "csrf": session.csrf, "gateway": self.gw.label})

    def _cameras(self, request: Request, session: Session, token: str, args: dict[str, str]) -> Response:
        cameras = self.gw.cameras()
        for cam in cameras:
            current = self.masks.current(cam["id"])
            cam["masks"] = current.model_dump(mode="json", exclude={"confirm_loosen"}) if current else None
        return _json({"cameras": cameras})

    def _known(self, camera: str) -> bool:
        return self.gw.config().camera(camera) is not None

    def _live_view(self, request: Request, session: Session, token: str, args: dict[str, str]) -> Response:
        camera = args["camera"]
        if not self._known(camera):
            return _error(404, "not_found", f"no camera {camera!r}")
        if not self._audit(_viewed(request, session, camera, "live")):
            return _error(503, "audit", "the gateway cannot write its audit log")
        if not self._live.acquire(blocking=False):
            return _error(503, "busy", f"at most {MAX_LIVE} live views at once")
        return Response(
            self._frames(camera, token),
            mimetype="multipart/x-mixed-replace; boundary=frame",
            direct_passthrough=True,
        )

    def _frames(self, camera: str, token: str) -> Iterator[bytes]:
        """MJPEG parts until the console stops, the session ends or LIVE_MAX_S passes."""
        try:
            until = time.monotonic() + LIVE_MAX_S
            while time.monotonic() < until and self.sessions.alive(token):
                jpeg = self.gw.frame_jpeg(camera, LIVE_MAX_WIDTH)
                if jpeg is not None:
                    head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                    yield head.encode() + jpeg + b"\r\n"
                if self.stopping.wait(1.0 / LIVE_FPS):
                    return
        finally:
            self._live.release()

    def _frame(self, request: Request, session: Session, token: str, args: dict[str, str]) -> Response:
        camera = args["camera"]
        if not self._known(camera):
            return _error(404, "not_found", f"no camera {camera!r}")
        jpeg = self.gw.frame_jpeg(camera, LIVE_MAX_WIDTH)
        if jpeg is None:
            return _error(404, "no_frame", f"{camera} has no frame yet")
        if not self._audit(_viewed(request, session, camera, "frame")):
            return _error(503, "audit", "the gateway cannot write its audit log")
        return Response(jpeg, mimetype="image/jpeg")

    def _overlay(self, request: Request, session: Session, token: str, args: dict[str, str]) -> Response:
        overlay = self.gw.overlay(args["camera"])
        if overlay is None:
            return _error(404, "not_found", f"no camera {args['camera']!r}")
        return _json(overlay)

    def _events(self, request: Request, session: Session, token: str, args: dict[str, str]) -> Response:
        if not self._known(args["camera"]):
            return _error(404, "not_found", f"no camera {args['camera']!r}")
        return _json({"events": self.gw.events(args["camera"])})

    def _event_snapshot(
        self, request: Request, session: Session, token: str, args: dict[str, str]
    ) -> Response:
        found = self.gw.event_snapshot(args["event_id"])
        if found is None:
            return _error(404, "not_found", "no snapshot kept for that event")
        camera, jpeg = found
        if not self._audit(_viewed(request, session, camera, "event_snapshot", event_id=args["event_id"])):
            return _error(503, "audit", "the gateway cannot write its audit log")
        response = Response(jpeg, mimetype="image/jpeg")
        response.headers["Cache-Control"] = "private, max-age=3600"  # the same event's picture
        return response

    def _edit(self, camera: str, request: Request) -> MaskEdit | Response:
        """The masks a check or save request carries, or the answer that refuses it."""
        if not self._known(camera):
            return _error(404, "not_found", f"no camera {camera!r}")
        try:
            return parse_edit(_body(request))
        except ValueError as exc:
            return _json({"error": "invalid", "problems": str(exc).split("; ")}, 422)

    def _masks_check(self, request: Request, session: Session, token: str, args: dict[str, str]) -> Response:
        camera = args["camera"]
        edit = self._edit(camera, request)
        if isinstance(edit, Response):
            return edit
        checked = self.masks.check(camera, edit)
        return _json(
            {
                "ok": not checked.problems,
                "problems": checked.problems,
                "toml": checked.toml,
                "loosens_privacy": checked.loosens_privacy,
            }
        )

    def _masks_save(self, request: Request, session: Session, token: str, args: dict[str, str]) -> Response:
        camera = args["camera"]
        edit = self._edit(camera, request)
        if isinstance(edit, Response):
            return edit
        try:
            checked, backup = self.masks.save(camera, edit, user=session.user, remote=_remote(request))
        except SaveRefusedError as exc:
            status = {"invalid": 422, "internal": 500}.get(exc.code, 409)
            return _json({"error": exc.code, "message": exc.message, "problems": exc.problems}, status)
        log.info("console: %s saved the masks of %s (backup %s)", session.user, camera, backup)
        return _json(
            {
                "saved": True,
                "toml": checked.toml,
                "backup": backup,
                "loosens_privacy": checked.loosens_privacy,
            }
        )


# -- helpers -----------------------------------------------------------------------------------------


def _allowed_hosts(cfg: ConsoleConfig) -> frozenset[str]:
    names = {"localhost", "127.0.0.1", "::1", cfg.bind.lower()}
    names.update(h.lower() for h in cfg.allowed_hosts)
    return frozenset(names)


def _host_name(host: str) -> str:
    """`host[:port]` or `[v6]:port` without the port, lower case."""
    host = host.lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _viewed(request: Request, session: Session, camera: str, what: str, **extra: str) -> dict[str, Any]:
    """The audit record of a picture shown: who, from where, which camera, what."""
    record = {"action": "console.view", "user": session.user, "remote": _remote(request), "camera": camera}
    return {**record, "what": what, **extra}


def _remote(request: Request) -> str:
    return request.remote_addr or "?"


def _body(request: Request) -> Any:
    if request.mimetype != "application/json":
        raise ValueError("<root>: send the masks as application/json")
    try:
        return json.loads(request.get_data(cache=False))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"<root>: not JSON ({exc})") from None


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _json({"error": code, "message": message}, status)


def _redirect(location: str) -> Response:
    return Response("", status=303, headers={"Location": location})


def _page(name: str) -> Response:
    return Response((STATIC / name).read_bytes(), mimetype="text/html")


def _static(name: str) -> Response:
    path = STATIC / name
    kind = STATIC_TYPES.get(path.suffix)
    if kind is None or not path.is_file() or path.parent != STATIC:
        return _error(404, "not_found", "no such file")
    return Response(path.read_bytes(), mimetype=kind)


def _secure(response: Response, *, tls: bool) -> None:
    headers = response.headers
    headers["Content-Security-Policy"] = CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "same-origin"
    headers.setdefault("Cache-Control", "no-store")
    if tls:
        headers["Strict-Transport-Security"] = "max-age=31536000"
