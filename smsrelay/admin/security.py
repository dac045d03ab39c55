"""Security headers on every answer of the admin service, errors and 500s included.

- `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`, `X-Frame-Options: DENY`
  everywhere;
- a Content-Security-Policy everywhere: for HTML pages (/docs) only the service's own
  scripts (no inline script, no eval), styles, images and fetches; for everything else
  nothing at all. Both forbid framing (`frame-ancestors 'none'`);
- the console's pages (/ui/) get a policy of their own: the same, less `data:` images and
  fonts (it has none);
- `Cache-Control: no-store` on `/api/` and on the console's pages: records hold phone numbers
  and message bodies, and no proxy or browser cache should keep them (its static assets,
  which hold none, may be cached).
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Swagger UI sets element styles from script (CSSOM), which style-src does not govern, and
# its stylesheet embeds its icons as data: URLs.
HTML_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
UI_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
OTHER_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def route_path(scope: Scope) -> str:
    """The path the router matches: the ASGI path less the root path (a proxy's prefix).

    The same rule as Starlette's router; the raw `scope["path"]` holds the root path, so a
    check on it alone would let `/prefix/api/...` reach the API unguarded.
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (path == root or path[len(root)] == "/"):
        return path[len(root) :]
    return path


def is_api(scope: Scope) -> bool:
    path = route_path(scope)
    return path == "/api" or path.startswith("/api/")


def is_ui(scope: Scope) -> bool:
    path = route_path(scope)
    return path == "/ui" or path.startswith("/ui/")


def is_ui_asset(scope: Scope) -> bool:
    return route_path(scope).startswith("/ui/static/")


class SecurityHeaders:
    """Adds the headers to each response start; plain ASGI, outside every other layer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = is_api(scope)
        ui = is_ui(scope)
        private = api or (ui and not is_ui_asset(scope))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                html = headers.get("content-type", "").startswith("text/html")
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers["X-Frame-Options"] = "DENY"
                if html:
                    headers["Content-Security-Policy"] = UI_POLICY if ui else HTML_POLICY
                else:
                    headers["Content-Security-Policy"] = OTHER_POLICY
                if private:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)
