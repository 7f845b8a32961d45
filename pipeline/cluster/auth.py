"""Find the cluster's authentication token the way Ray does, and turn it into an HTTP header. Never print it.

Ray 2.60's own Jobs client attaches the token only when RAY_AUTH_MODE=token is set in the *client's* environment
(ray._private.authentication.http_token_authentication.get_auth_headers_if_auth_enabled). We send the header
ourselves, so a user needs no RAY_AUTH_MODE on their laptop; Ray keeps a user-supplied Authorization header.
Precedence (Ray's token-authentication docs): RAY_AUTH_TOKEN, then the file named by RAY_AUTH_TOKEN_PATH (an
unreadable or empty file is an error, not a fall-through), then ~/.ray/auth_token. Whitespace is stripped.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.cluster import ClusterError
from pipeline.trust import readable_by_others

log = logging.getLogger("pipeline.cluster")

HOW_TO_SUPPLY = ("supply the cluster's token (print it on the head node with `ray get-auth-token`): save it in "
                 "~/.ray/auth_token, or point RAY_AUTH_TOKEN_PATH at a file holding it, or set RAY_AUTH_TOKEN")


@dataclass(frozen=True)
class Token:
    value: str = ""
    source: str = ""  # where it came from, safe to show: an environment variable's name or a file path

    def __repr__(self) -> str:  # keeps the value out of tracebacks and debug prints
        return f"Token(source={self.source!r})"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"} if self.value else {}

    def redact(self, text: str) -> str:
        return text.replace(self.value, "<token>") if self.value else text


def default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def find_token() -> Token:
    """The token this machine would use for the cluster; an empty Token when there is none."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return Token(source="RAY_AUTH_MODE=disabled")
    value = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if value:
        return Token(value, "RAY_AUTH_TOKEN")
    if path := os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return Token(_read(Path(path).expanduser(), "RAY_AUTH_TOKEN_PATH"), f"RAY_AUTH_TOKEN_PATH={path}")
    default = default_token_path()
    if default.is_file():
        return Token(_read(default, str(default)), str(default))
    return Token()


def _read(path: Path, what: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ClusterError(f"{what}: cannot read the token file {path} ({e.strerror or e})") from None
    if not value:
        raise ClusterError(f"{what}: the token file {path} is empty; {HOW_TO_SUPPLY}")
    if readers := readable_by_others(path):  # the token lets its holder run code on the cluster
        log.warning("the token file %s is readable by %s: anyone who can read it can run code on the cluster; "
                    "`chmod 600 %s`", path, readers, path)
    return value
