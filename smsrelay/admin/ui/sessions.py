"""Console sessions: an opaque random id in a cookie, everything else in this process.

- Sign-in trades an admin token for a session; the token is checked once and never kept, in
  the session or in the browser. The cookie holds 32 random bytes (base64url) and nothing
  else; the table is keyed by their SHA-256, so the table does not hold usable cookies.
- The cookie is `HttpOnly`, `SameSite=Strict`, `Path=<root>/ui`, `Secure` when the page was
  served over https (the request's scheme, or `X-Forwarded-Proto: https` from a proxy: a
  header that can only make the cookie stricter), with no Max-Age: it dies with the browser.
- A session ends after `IDLE_S` without a page view (the overview's refresh does not count),
  after `MAX_AGE_S` in any case, on sign-out, and when the process restarts (tokens are read
  at start, so a restart is also how a token is revoked).
- Each session has a CSRF token; every form that changes something carries it and
  `check_form` compares it in constant time. With SameSite=Strict the browser does not send
  the cookie on a request started by another site anyway; the token also covers a sibling
  subdomain, and `Sec-Fetch-Site` refuses cross-site posts outright (sign-in included).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response

from smsrelay.admin.auth import Identity
from smsrelay.settings import Role

COOKIE = "smsrelay_console"
IDLE_S = 30 * 60.0
MAX_AGE_S = 12 * 3600.0
# A signed-in operator could open sessions in a loop; the oldest are dropped past this.
MAX_SESSIONS = 10_000
MAX_FLASHES = 5

FlashKind = Literal["ok", "error", "info"]


@dataclass(frozen=True)
class Flash:
    """A message shown once, on the next page: an action's outcome."""

    kind: FlashKind
    text: str
    force_id: str | None = None  # a rate-limited retry: offer "retry, bypassing the limit"


@dataclass
class Session:
    actor: str
    role: Role
    csrf: str
    created: float
    seen: float
    flashes: list[Flash] = field(default_factory=list)

    @property
    def operator(self) -> bool:
        return self.role == "operator"

    def flash(self, kind: FlashKind, text: str, force_id: str | None = None) -> None:
        self.flashes = [*self.flashes[-(MAX_FLASHES - 1) :], Flash(kind, text, force_id)]

    def take_flashes(self) -> list[Flash]:
        flashes, self.flashes = self.flashes, []
        return flashes


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """The sessions of this process, bounded; expired ones are dropped as they are met."""

    def __init__(
        self,
        *,
        idle_s: float = IDLE_S,
        max_age_s: float = MAX_AGE_S,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, identity: Identity) -> tuple[str, Session]:
        """A new session and the id the cookie carries."""
        self._sweep()
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(identity.name, identity.role, secrets.token_urlsafe(32), now, now)
        self._sessions[_key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None, *, touch: bool = True) -> Session | None:
        if not session_id or len(session_id) > 100:
            return None
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > self.idle_s or now - session.created > self.max_age_s:
            del self._sessions[key]
            return None
        if touch:
            session.seen = now
            self._sessions.move_to_end(key)
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(_key(session_id), None)

    def _sweep(self) -> None:
        """Drop expired sessions from the least recently seen end."""
        now = self._clock()
        while self._sessions:
            key, oldest = next(iter(self._sessions.items()))
            if now - oldest.seen > self.idle_s or now - oldest.created > self.max_age_s:
                del self._sessions[key]
            else:
                break


def served_over_https(request: Request) -> bool:
    if request.url.scheme == "https":
        return True
    forwarded = request.headers.get("x-forwarded-proto", "")
    return forwarded.split(",")[0].strip().lower() == "https"


def cookie_path(request: Request) -> str:
    return str(request.scope.get("root_path", "")) + "/ui"


def set_cookie(response: Response, request: Request, session_id: str) -> None:
    response.set_cookie(
        COOKIE,
        session_id,
        path=cookie_path(request),
        httponly=True,
        samesite="strict",
        secure=served_over_https(request),
    )


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE,
        path=cookie_path(request),
        httponly=True,
        samesite="strict",
        secure=served_over_https(request),
    )


def cross_site(request: Request) -> bool:
    """The browser says another site started this request (Fetch Metadata)."""
    return request.headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site")


def check_form(session: Session, given: str | None) -> bool:
    """The form's CSRF token is the session's."""
    return given is not None and hmac.compare_digest(given.encode(), session.csrf.encode())
