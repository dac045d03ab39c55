"""Every failure of the admin API as `{"success": false, "error": "..."}` with a fitting status.

The guard middleware checks the bearer token, the caller's role and the body size before
FastAPI parses anything, so an unauthenticated caller learns nothing from validation errors,
a viewer changes nothing, and an oversize body is refused without being read into memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smsrelay.admin.auth import (
    READ_METHODS,
    FailedAuth,
    TokenTable,
    client_key,
    credential_length,
)
from smsrelay.admin.security import is_api
from smsrelay.admin.service import InvalidRequestError, RedisUnavailable, SenderNotConfigured
from smsrelay.errors import (
    ConflictError,
    NotFoundError,
    ProviderError,
    RateLimitedError,
    SmsRelayError,
)
from smsrelay.logging import get_logger
from smsrelay.settings import AdminCredential
from smsrelay.store.db import DatabaseUnavailable

log = get_logger("smsrelay.admin")

MAX_BODY_BYTES = 64 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        {"success": False, "error": message, **extra}, status_code=status, headers=headers
    )


def domain_error_response(exc: SmsRelayError) -> JSONResponse:
    """The HTTP answer to an error raised by the service layer."""
    if isinstance(exc, NotFoundError):
        return error_response(404, str(exc))
    if isinstance(exc, ConflictError):
        return error_response(409, str(exc))
    if isinstance(exc, RateLimitedError):
        retry_after = max(1, math.ceil(exc.retry_after_s))
        return error_response(
            429,
            f"rate limit exceeded for this phone; retry after {retry_after} s or retry with force",
            headers={"Retry-After": str(retry_after)},
            retryAfter=retry_after,
        )
    if isinstance(exc, ProviderError):
        return error_response(502, f"SMS provider failed: {exc}")
    if isinstance(exc, InvalidRequestError):
        return error_response(400, str(exc))
    if isinstance(exc, DatabaseUnavailable):
        return error_response(503, "database unavailable", service="postgres")
    if isinstance(exc, RedisUnavailable):
        return error_response(503, "database unavailable", service="redis")
    if isinstance(exc, SenderNotConfigured):
        return error_response(503, str(exc))
    log.error("admin.unmapped_error", error_type=type(exc).__name__, error=str(exc))
    return error_response(500, "internal error")


def describe_request_errors(errors: Sequence[Any]) -> str:
    """FastAPI's validation errors as one line: `limit: must be <= 500 (got '501')`."""
    parts: list[str] = []
    for error in errors[:3]:
        kind = error.get("type", "")
        loc = [str(p) for p in error.get("loc", ())]
        if kind == "json_invalid":
            detail = (error.get("ctx") or {}).get("error")
            return "malformed JSON body" + (f": {detail}" if detail else "")
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        where = ".".join(loc) or "body"
        if kind == "missing":
            parts.append(
                "body: a JSON object is required" if where == "body" else f"{where}: required"
            )
        elif where == "body" and kind in ("model_attributes_type", "dict_type"):
            parts.append("body: must be a JSON object (Content-Type: application/json)")
        elif kind == "extra_forbidden":
            parts.append(f"{where}: unknown field")
        else:
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            given = error.get("input")
            shown = repr(given) if isinstance(given, str | int | float | bool) else ""
            parts.append(
                f"{where}: {message}" + (f" (got {shown})" if shown and len(shown) <= 40 else "")
            )
    return "; ".join(parts) or "invalid request"


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """Every method the request's path answers, over all its routes.

    Starlette's 405 names only the first route whose path matched; a path served by several
    routes (GET, POST and DELETE on /api/admin/retry-failed-sms) has more. Each method is
    tried against the router as a request of its own would be.
    """
    allowed = []
    for method in _METHODS:
        probe: Scope = {
            "type": "http",
            "method": method,
            "path": request.scope["path"],
            "root_path": request.scope.get("root_path", ""),
            "headers": [],
            "query_string": b"",
        }
        if any(route.matches(probe)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


def install_error_handlers(app: FastAPI) -> None:
    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(400, describe_request_errors(exc.errors()))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no such route: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
            allowed = allowed_methods(request)
            if allowed:
                return error_response(
                    405, message, headers={**(exc.headers or {}), "Allow": allowed}
                )
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, headers=exc.headers)

    async def on_domain(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SmsRelayError)
        return domain_error_response(exc)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Last resort: a bug. The tests show no input reaches it; never leak a traceback.
        log.exception("admin.unhandled_error", path=request.url.path)
        return error_response(500, "internal error")

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(SmsRelayError, on_domain)
    app.add_exception_handler(Exception, on_unexpected)


class GuardMiddleware:
    """On `/api/`: who calls (bearer token, 401), may they (role, 403), are they refused for
    failing too often (429); then, everywhere, the body-size limit (413). Plain ASGI.

    The caller's name and role go into the scope's state: `request.state.actor` and
    `request.state.role` in a route.
    """

    def __init__(
        self,
        app: ASGIApp,
        credentials: Sequence[AdminCredential],
        failures: FailedAuth | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.tokens = TokenTable(credentials)
        self.failures = failures if failures is not None else FailedAuth()
        self.max_body_bytes = max_body_bytes

    def authorize(self, scope: Scope) -> tuple[JSONResponse | None, Scope]:
        """A refusal, or None and the scope the app sees (the caller in its state)."""
        client = scope.get("client")
        key = client_key(client[0] if client else None)
        wait = self.failures.blocked(key)
        if wait is not None:
            return _too_many_failures(wait), scope
        header: bytes | None = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
                break
        identity = self.tokens.identify(header or b"")
        if identity is None:
            # A request with no Authorization header guesses nothing: not counted.
            if header is not None:
                wait = self.failures.failed(key, credential_length(header))
                if wait is not None:
                    return _too_many_failures(wait), scope
            return error_response(
                401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
            ), scope
        if identity.role != "operator" and scope["method"] not in READ_METHODS:
            # Not in the audit trail (nothing changed); said here so the attempt is seen.
            log.warning("admin.refused", actor=identity.name, method=scope["method"])
            return error_response(
                403,
                f"the token '{identity.name}' is a viewer's: it reads, "
                f"and cannot {scope['method']} here",
            ), scope
        state = {**scope.get("state", {}), "actor": identity.name, "role": identity.role}
        return None, {**scope, "state": state}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if is_api(scope):
            refusal, scope = self.authorize(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        if scope["method"] in _BODY_METHODS:
            body = await self._read_body(scope, receive)
            if body is None:
                response = error_response(
                    413, f"request body larger than {self.max_body_bytes // 1024} KiB"
                )
                await response(scope, receive, send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None when it is over the limit (declared or actual)."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body_bytes:
                        return None
                except ValueError:
                    pass
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _too_many_failures(retry_after: int) -> JSONResponse:
    return error_response(
        429,
        f"too many failed authentication attempts from this address; retry after {retry_after} s",
        headers={"Retry-After": str(retry_after)},
        retryAfter=retry_after,
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
