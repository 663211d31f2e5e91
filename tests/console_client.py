"""The commissioning console as a script sees it over HTTP: login, session, JSON posts."""

from __future__ import annotations

import http.client
import json
import re
import ssl
from typing import Any
from urllib.parse import urlencode

from agent.console.auth import hash_password

PASSWORD = "correct horse battery"
HASH = hash_password(PASSWORD)


def console_section(port: int, settings: str = "") -> str:
    """A `[console]` section (plus `settings` lines) with one user, `tech`, whose password is PASSWORD."""
    return f"""
[console]
enabled = true
port = {port}
{settings}
[[console.users]]
name = "tech"
password_hash = "{HASH}"
"""


class ConsoleClient:
    """`tls`: an SSL context for a console with a certificate (None: plain HTTP)."""

    tls: ssl.SSLContext | None = None

    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.port = port
        self.tls = tls

    def http(self) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=self.tls)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = self.http()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def login(self, user: str = "tech", password: str = PASSWORD) -> tuple[int, str | None]:
        """(status, session cookie) of a form login as the page does it."""
        status, _, page = self.request("GET", "/login")
        assert status == 200
        token = re.search(rb'name="csrf" value="([^"]+)"', page)
        assert token is not None, page[:500]
        form = urlencode({"username": user, "password": password, "csrf": token.group(1).decode()})
        status, headers, _ = self.request(
            "POST", "/login", form.encode(), {"Content-Type": "application/x-www-form-urlencoded"}
        )
        self.last_cookie_header = headers.get("set-cookie", "")
        found = re.match(r"((?:edge_console|__Host-console)=[^;]+)", self.last_cookie_header)
        return status, found.group(1) if found else None

    def session(self) -> tuple[str, str]:
        """A logged-in (cookie, CSRF token)."""
        status, cookie = self.login()
        assert status == 303 and cookie, status
        code, _, body = self.request("GET", "/api/session", headers={"Cookie": cookie})
        assert code == 200
        return cookie, json.loads(body)["csrf"]

    def get_json(self, path: str, cookie: str) -> tuple[int, Any]:
        status, _, raw = self.request("GET", path, headers={"Cookie": cookie})
        return status, json.loads(raw) if raw else None

    def post_json(
        self, path: str, body: Any, cookie: str, csrf: str | None, extra: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Cookie": cookie, "Content-Type": "application/json", **(extra or {})}
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf
        status, _, raw = self.request("POST", path, json.dumps(body).encode(), headers)
        return status, json.loads(raw) if raw else {}
