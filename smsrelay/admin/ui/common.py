"""What every console route shares: the console's state, the signed-in session, forms, and
the checks a change must pass (session, same site, CSRF token, operator role)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from smsrelay.admin.auth import FailedAuth, TokenTable
from smsrelay.admin.errors import domain_error_response
from smsrelay.admin.service import AdminService
from smsrelay.admin.ui.render import render, ui_root
from smsrelay.admin.ui.sessions import COOKIE, Session, SessionStore, check_form, cross_site
from smsrelay.errors import SmsRelayError
from smsrelay.logging import get_logger

log = get_logger("smsrelay.admin.ui")

# A form of the console has a handful of fields, or one checkbox per row of a page (<= 100).
MAX_FORM_FIELDS = 500
FORM_TYPE = "application/x-www-form-urlencoded"
_LABELS = {
    400: "Refused",
    404: "Not found",
    409: "Conflict",
    429: "Rate limited",
    502: "Provider error",
    503: "Unavailable",
}


@dataclass
class Console:
    """The console's state in `app.state.console`."""

    sessions: SessionStore
    tokens: TokenTable
    failures: FailedAuth  # shared with the API guard: one failed-auth count per address


Form = dict[str, list[str]]


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def service_of(request: Request) -> AdminService:
    service: AdminService = request.app.state.service
    return service


def current(request: Request, *, touch: bool = True) -> Session | None:
    return console_of(request).sessions.get(request.cookies.get(COOKIE), touch=touch)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def to_sign_in(request: Request, *, ended: bool = False) -> RedirectResponse:
    return see_other(ui_root(request) + "/sign-in" + ("?ended=1" if ended else ""))


def first(form: Form, name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


async def read_form(request: Request) -> Form | None:
    """The urlencoded body of a form post; None if it is not one."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != FORM_TYPE:
        return None
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        return parse_qs(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        return None


def message_page(
    request: Request, session: Session | None, status: int, title: str, text: str
) -> HTMLResponse:
    return render(request, "message.html", session=session, status=status, title=title, text=text)


async def changing(request: Request, *, operator: bool = True) -> tuple[Session, Form] | Response:
    """The session and form of a post that may change something, or the refusal.

    Refused: no session (to sign-in), a post another site started, a form without this
    session's CSRF token, and (with `operator`) a viewer. A refused change is not audited.
    """
    session = current(request)
    if session is None:
        return to_sign_in(request, ended=True)
    if cross_site(request):
        return message_page(
            request, session, 403, "Refused", "This form was sent from another site."
        )
    form = await read_form(request)
    if form is None:
        return message_page(request, session, 400, "Refused", "Send the console's own forms.")
    if not check_form(session, first(form, "csrf")):
        return message_page(
            request,
            session,
            403,
            "Refused",
            "This form is out of date or came from elsewhere: reload the page and try again.",
        )
    if operator and not session.operator:
        log.warning("admin.refused", actor=session.actor, method="POST", console=True)
        return message_page(
            request,
            session,
            403,
            "Refused",
            f"The token '{session.actor}' is a viewer's: it reads, and cannot change anything.",
        )
    return session, form


def failure_text(exc: SmsRelayError) -> tuple[int, str]:
    """The status and the line the API would answer, for a flash message."""
    response = domain_error_response(exc)
    message = str(json.loads(bytes(response.body))["error"])
    status = response.status_code
    return status, f"{_LABELS.get(status, 'Failed')} ({status}): {message}"
