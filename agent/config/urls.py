"""What makes a camera's source URI usable, checked in one place: the config refuses a bad one at
load, and the capture backends refuse one at open (URIs that did not come from a config file)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

__all__ = ["file_path", "url_problem"]


def url_problem(uri: str) -> str | None:
    """Why a network URL (rtsp, http...) cannot be opened: a malformed port, no host; None if fine.

    The reason never repeats the URL, so callers can add it redacted.
    """
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"malformed URL ({exc})"
    if not parts.hostname:
        return "the URL has no host"
    return None


def file_path(uri: str) -> str:
    """The absolute path a file:// URI names; ValueError (a reason without the URI) otherwise."""
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise ValueError("a file source must be an absolute URI such as file:///srv/video.mp4")
    if parts.query or parts.fragment:
        raise ValueError("unexpected '?' or '#' in a file URI (escape them as %3F and %23)")
    return unquote(parts.path)
