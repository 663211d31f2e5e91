"""The one place secrets are taken out of text before it reaches a log, an error or the platform.

Config errors echo the value they reject, camera errors name their source URL, and both end up
in journald, `check-config` output and camera status messages that every subscribed agency
reads. So every such string goes through `redact` (URL passwords and secret-looking query
values become `***`), and a config value under a secret-looking key is never shown at all
(`is_secret_name`). The patterns err on hiding too much: a hidden port is a nuisance, a leaked
camera password is an incident.
"""

from __future__ import annotations

import difflib
import re

MASK = "***"

_SECRET_WORD = re.compile(r"pass|pwd|secret|key|token|cred|auth|sig", re.IGNORECASE)
_SECRET_WORDS = ("password", "passwd", "passphrase", "secret", "token", "credentials")

# Text is cut into tokens at whitespace and quotes, so that a URL inside a repr() or a sentence is
# found too, and each token is handled in one pass: the work is linear in the text's length, since
# a hostile request can make a rejected value (and so an error line) tens of KiB long.
_TOKEN = re.compile(r"[^\s'\"]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:?//?")
_PARAM_SPLIT = re.compile(r"([?&;])")
_SECRET_PARAM_KEY = re.compile(r"pass|pwd|token|secret|key|auth|sig", re.IGNORECASE)


def _userinfo(token: str) -> str:
    """[scheme://]user:password@host with the password masked. The password runs to the token's
    LAST "@" (passwords are often written unescaped: "p@ss", "pa/ss"); "scheme://user@host" (no
    password) is left alone, and a ":" starting "//" is a scheme's, not a password's."""
    at = token.rfind("@")
    if at <= 0:
        return token
    head = token[:at]
    scheme = _SCHEME.match(head)
    colon = head.find(":", scheme.end() if scheme else 0)
    while colon >= 0 and head.startswith("//", colon + 1):
        colon = head.find(":", colon + 1)
    return token if colon < 0 else f"{head[: colon + 1]}{MASK}{token[at:]}"


def _params(token: str) -> str:
    """Query or matrix parameters whose name looks secret (`?password=x`, `;token=y`) masked."""
    if "=" not in token:
        return token
    parts = _PARAM_SPLIT.split(token)
    for i in range(2, len(parts), 2):  # parts: text, sep, param, sep, param, ...
        name, eq, _value = parts[i].partition("=")
        if eq and "#" not in name and _SECRET_PARAM_KEY.search(name):
            parts[i] = f"{name}={MASK}"
    return "".join(parts)


def redact(text: str) -> str:
    """`text` with every URL password and secret-looking query value replaced by `***`."""
    return _TOKEN.sub(lambda m: _params(_userinfo(m.group())), text)


def is_secret_name(name: str) -> bool:
    """Whether a config key looks like it holds a secret, misspellings included ("pasword")."""
    if _SECRET_WORD.search(name):
        return True
    words = re.split(r"[^a-z]+", name.lower())
    return any(difflib.get_close_matches(word, _SECRET_WORDS, n=1, cutoff=0.8) for word in words if word)
