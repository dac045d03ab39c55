"""Pages from the templates in smsrelay/admin/templates (Jinja2, every value autoescaped)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse

from smsrelay import clock
from smsrelay.admin.ui.sessions import Session

TEMPLATES = Path(__file__).parents[1] / "templates"
STATIC = Path(__file__).parents[1] / "static"
# What the console serves under /ui/static/: a fixed list, never a path from the request.
ASSETS = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}


def when(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def when_ms(moment: datetime | None) -> str:
    """A trace event's time: its steps are often milliseconds apart."""
    if moment is None:
        return "—"
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%d %H:%M:%S.") + f"{utc.microsecond // 1000:03d} UTC"


def minute(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M")


def iso(moment: datetime | None) -> str:
    return clock.iso(moment) if moment is not None else ""


def duration(ms: int | float) -> str:
    """`850 ms`, `4.2 s`, `3 min 5 s`, `2 h 10 min`: an idle time at a glance."""
    if ms < 1000:
        return f"{int(ms)} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, when_ms=when_ms, minute=minute, iso=iso, duration=duration)
    env.globals["query"] = lambda **values: urlencode(
        {k: v for k, v in values.items() if v not in (None, "")}
    )
    return env


ENV = _environment()


def ui_root(request: Request) -> str:
    """The console's URL prefix: `/ui`, behind a proxy's root path if there is one."""
    return str(request.scope.get("root_path", "")) + "/ui"


def render(
    request: Request,
    template: str,
    *,
    session: Session | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    context.setdefault("page", "")
    context.setdefault("title", "smsrelay admin")
    html = ENV.get_template(template).render(
        ui=ui_root(request),
        session=session,
        flashes=session.take_flashes()
        if session is not None and not context.get("fragment")
        else [],
        **context,
    )
    return HTMLResponse(html, status_code=status)
