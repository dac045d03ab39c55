"""The console's sign-in and sign-out, overview, audit page and assets."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from smsrelay.admin.auth import client_key
from smsrelay.admin.ui import overview
from smsrelay.admin.ui.common import (
    changing,
    console_of,
    current,
    first,
    log,
    message_page,
    read_form,
    see_other,
    service_of,
    to_sign_in,
)
from smsrelay.admin.ui.render import ASSETS, STATIC, render, ui_root
from smsrelay.admin.ui.sessions import COOKIE, clear_cookie, cross_site, set_cookie
from smsrelay.errors import StorageError
from smsrelay.schemas.api import MAX_OFFSET
from smsrelay.store import audit

router = APIRouter(prefix="/ui", include_in_schema=False)

REFRESH_MS = 5000
AUDIT_PAGE = 50


@router.get("")
async def ui_bare(request: Request) -> RedirectResponse:
    return RedirectResponse(ui_root(request) + "/", status_code=307)


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(404)
    return FileResponse(STATIC / name, media_type=ASSETS[name])


# -- signing in and out ------------------------------------------------------------------------
@router.get("/sign-in")
async def sign_in_page(request: Request) -> Response:
    if current(request) is not None:
        return see_other(ui_root(request) + "/")
    ended = request.query_params.get("ended") == "1"
    note = "Your session has ended: sign in again." if ended else None
    return render(request, "sign_in.html", session=None, title="Sign in", error=None, note=note)


def _sign_in_error(request: Request, status: int, text: str, **headers: str) -> HTMLResponse:
    response = render(
        request, "sign_in.html", session=None, status=status, title="Sign in", error=text, note=None
    )
    response.headers.update(headers)
    return response


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    """Trade an admin token for a session; failures count as the API's do (one limit)."""
    console = console_of(request)
    if cross_site(request):
        return _sign_in_error(request, 403, "Sign in from the console's own page.")
    key = client_key(request.client.host if request.client else None)
    wait = console.failures.blocked(key)
    if wait is not None:
        return _too_many(request, wait)
    form = await read_form(request)
    token = (first(form, "token") or "").strip() if form is not None else ""
    if not token:
        return _sign_in_error(request, 400, "Enter an admin token.")
    identity = console.tokens.identify(b"Bearer " + token.encode("utf-8", errors="replace"))
    if identity is None:
        wait = console.failures.failed(key, len(token))
        if wait is not None:
            return _too_many(request, wait)
        return _sign_in_error(request, 401, "That admin token is not valid.")
    console.sessions.drop(request.cookies.get(COOKIE))  # never reuse a session id
    session_id, session = console.sessions.create(identity)
    log.info("admin.console_sign_in", actor=session.actor, role=session.role)
    response = see_other(ui_root(request) + "/")
    set_cookie(response, request, session_id)
    return response


def _too_many(request: Request, wait: int) -> HTMLResponse:
    return _sign_in_error(
        request,
        429,
        f"Too many failed attempts from this address: try again in {wait} s.",
        **{"Retry-After": str(wait)},
    )


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    checked = await changing(request, operator=False)
    if isinstance(checked, Response):
        return checked
    session, _ = checked
    console_of(request).sessions.drop(request.cookies.get(COOKIE))
    log.info("admin.console_sign_out", actor=session.actor)
    response = see_other(ui_root(request) + "/sign-in")
    clear_cookie(response, request)
    return response


# -- overview --------------------------------------------------------------------------------
@router.get("/")
async def overview_page(request: Request) -> Response:
    session = current(request)
    if session is None:
        return to_sign_in(request)
    view = await overview.gather(service_of(request))
    return render(
        request,
        "overview.html",
        session=session,
        title="Overview",
        page="overview",
        view=view,
        refresh_ms=REFRESH_MS,
    )


@router.get("/overview/panel")
async def overview_panel(request: Request) -> Response:
    """The overview's figures alone, for its refresh; it does not keep a session alive."""
    session = current(request, touch=False)
    if session is None:
        return HTMLResponse("<p>Signed out.</p>", status_code=401)
    view = await overview.gather(service_of(request))
    return render(request, "_overview_panel.html", session=session, view=view, fragment=True)


# -- audit -----------------------------------------------------------------------------------
@router.get("/audit")
async def audit_page(request: Request) -> Response:
    session = current(request)
    if session is None:
        return to_sign_in(request)
    raw = request.query_params.get("offset", "0")
    if not raw.isdigit() or int(raw) > MAX_OFFSET:
        return message_page(
            request, session, 400, "Audit", f"offset: must be a whole number (got {raw[:20]!r})"
        )
    service = service_of(request)
    try:
        async with service.db.connection() as conn:
            page = await audit.list_entries(
                conn, service.namespace, limit=AUDIT_PAGE, offset=int(raw)
            )
    except StorageError as exc:
        return message_page(request, session, 503, "Audit", f"Unavailable: {exc}")
    return render(request, "audit.html", session=session, title="Audit", page="audit", log=page)
