"""`smsrelay admin | migrate | mirror | dlq ...`: the operator's half of the CLI.

The dlq commands call `AdminService`, the same code as the HTTP routes. Exit codes: 0 done,
1 the operation failed (not found, conflict, rate limited, provider or storage error),
2 bad arguments or configuration. Errors are one line on stderr; `--json` also prints the
API's error body on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from smsrelay.errors import ConfigError, RateLimitedError, SmsRelayError
from smsrelay.schemas.api import (
    MAX_LIST_LIMIT,
    MAX_REPLAY_LIMIT,
    DeleteResponse,
    FailedSms,
    ListResponse,
    Pagination,
    ReplayRequest,
    ReplayResponse,
    RetryRequest,
    RetryResponse,
    normalize_phone_filter,
)
from smsrelay.schemas.dead_letter import DeadLetterReason
from smsrelay.schemas.entry import describe_errors
from smsrelay.schemas.records import FailedSmsRecord, RecordStatus
from smsrelay.settings import Settings

T = TypeVar("T")


def register(subparsers: Any) -> None:
    """Add the admin subcommands to `smsrelay`'s parser."""
    admin = subparsers.add_parser("admin", help="the admin HTTP service")
    admin.add_argument("--host", default="127.0.0.1")
    admin.add_argument("--port", type=int, default=8080)
    admin.set_defaults(func=cmd_admin)

    trace = subparsers.add_parser(
        "trace", help="a message's status and trace (published, attempts, sent, receipts)"
    )
    trace.add_argument("id", help="the message id")
    trace.add_argument("--json", action="store_true", help="print the API's JSON")
    trace.set_defaults(func=cmd_trace)

    migrate = subparsers.add_parser("migrate", help="create or update the Postgres schema")
    migrate.set_defaults(func=cmd_migrate)

    mirror = subparsers.add_parser(
        "mirror", help="mirror dead letters into Postgres (workers do this too)"
    )
    mirror.add_argument("--once", action="store_true", help="mirror what is waiting now, then exit")
    mirror.set_defaults(func=cmd_mirror)

    dlq = subparsers.add_parser("dlq", help="failed SMS records: list, retry, delete, replay")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")

    ls = dlq_sub.add_parser("list", help="failed SMS records, newest first")
    ls.add_argument("--status", choices=[s.value for s in RecordStatus])
    ls.add_argument("--reason", choices=[r.value for r in DeadLetterReason])
    ls.add_argument("--phone", help="E.164 number")
    ls.add_argument("--limit", type=_bounded(1, MAX_LIST_LIMIT), default=50)
    ls.add_argument("--offset", type=_bounded(0, 2**31 - 1), default=0)
    ls.add_argument("--json", action="store_true", help="print the API's JSON")
    ls.set_defaults(func=cmd_list)

    retry = dlq_sub.add_parser("retry", help="send one now (through the rate limiter)")
    retry.add_argument("id", help="the message id")
    retry.add_argument("--force", action="store_true", help="bypass the rate limit")
    retry.add_argument("--json", action="store_true")
    retry.set_defaults(func=cmd_retry)

    delete = dlq_sub.add_parser("delete", help="delete a record and its dead-letter entry")
    delete.add_argument("id", help="the message id")
    delete.add_argument("--json", action="store_true")
    delete.set_defaults(func=cmd_delete)

    replay = dlq_sub.add_parser("replay", help="put dead letters back on the request stream")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", nargs="+", metavar="ID")
    which.add_argument("--reason", choices=[r.value for r in DeadLetterReason])
    replay.add_argument(
        "--limit",
        type=_bounded(1, MAX_REPLAY_LIMIT),
        help="with --reason: at most this many, oldest first (default 100)",
    )
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(func=cmd_replay)


def _bounded(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


def cli_actor() -> str:
    """The audit trail's actor of a CLI change: `cli:` and the OS user running it.

    The user of the process (its effective uid), not $USER, which anyone can set; whoever runs
    the CLI holds the database credentials anyway, so this names rather than proves.
    """
    try:
        import pwd

        name = pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):  # no passwd entry (a container's uid), or not POSIX
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"cli:{name}"


# -- running ---------------------------------------------------------------------------------
def _fail(message: str, code: int, as_json: bool = False, **extra: Any) -> int:
    print(f"smsrelay: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"success": False, "error": message, **extra}))
    return code


def _run(args: argparse.Namespace, operation: Coroutine[Any, Any, T]) -> T | int:
    """Run one async operation; a failure becomes a line on stderr and exit code 1."""
    as_json = getattr(args, "json", False)
    try:
        return asyncio.run(operation)
    except RateLimitedError as exc:
        return _fail(
            f"{exc} (or use --force)", 1, as_json, retryAfter=max(1, round(exc.retry_after_s))
        )
    except SmsRelayError as exc:
        return _fail(str(exc), 1, as_json)


def _validate(model: type[BaseModel], as_json: bool, **values: Any) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        return _fail(describe_errors(exc), 2, as_json)


def _emit(model: BaseModel) -> None:
    print(json.dumps(model.model_dump(mode="json", by_alias=True)))


# -- commands --------------------------------------------------------------------------------
def cmd_admin(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.admin.app import serve

    try:
        settings.require_admin_token()
    except ConfigError as exc:
        return _fail(str(exc), 2)
    serve(settings, args.host, args.port)
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.store.db import Database
    from smsrelay.store.migrations import current_version, migrate

    async def run() -> str:
        db = Database(settings.database_url, auto_migrate=False, log_outages=False)
        async with db.connection() as conn:
            applied = await migrate(conn)
            version = await current_version(conn)
        done = f"applied {', '.join(map(str, applied))}" if applied else "already up to date"
        return f"Postgres schema at version {version} ({done})"

    result = _run(args, run())
    if isinstance(result, str):
        print(result)
        return 0
    return result


def cmd_mirror(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.store.mirror import Mirror

    async def once() -> str:
        count = await Mirror(settings).drain()
        return f"mirrored {count} entr{'y' if count == 1 else 'ies'}"

    async def forever() -> str:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Mirror(settings).run(stop)  # waits outages out; returns on SIGTERM/SIGINT
        return ""

    result = _run(args, once() if args.once else forever())
    if isinstance(result, int):
        return result
    if result:
        print(result)
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.admin.service import open_service

    try:
        phone = normalize_phone_filter(args.phone)
    except ValueError as exc:
        return _fail(f"--phone {exc}", 2, args.json)

    async def run() -> ListResponse:
        async with open_service(settings, log_outages=False) as service:
            page = await service.list_records(
                limit=args.limit,
                offset=args.offset,
                reason=args.reason,
                phone=phone,
                status=RecordStatus(args.status) if args.status else None,
            )
        return ListResponse(
            data=[FailedSms.of(r) for r in page.records],
            pagination=Pagination(
                total=page.total, limit=page.limit, offset=page.offset, has_more=page.has_more
            ),
        )

    result = _run(args, run())
    if isinstance(result, int):
        return result
    if args.json:
        _emit(result)
    else:
        print(render_table(result))
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.admin.service import open_service

    request = _validate(RetryRequest, args.json, id=args.id, force=args.force)
    if isinstance(request, int):
        return request

    async def run() -> RetryResponse:
        async with open_service(settings, with_sender=True, log_outages=False) as service:
            result = await service.retry(request.id, force=request.force, actor=cli_actor())
        return RetryResponse(message_sid=result.message_sid)

    result = _run(args, run())
    if isinstance(result, int):
        return result
    if args.json:
        _emit(result)
    else:
        print(f"sent: {request.id} (message SID {result.message_sid})")
    return 0


def cmd_trace(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.admin.service import open_service
    from smsrelay.schemas.api import MessageResponse, MessageTrace

    request = _validate(RetryRequest, args.json, id=args.id)
    if isinstance(request, int):
        return request

    async def run() -> MessageTrace:
        async with open_service(settings, log_outages=False) as service:
            return await service.message(request.id)

    result = _run(args, run())
    if isinstance(result, int):
        return result
    if args.json:
        _emit(MessageResponse(data=result))
        return 0
    print(
        f"message {result.id} to {result.phone or '?'}: {result.status}"
        + (f", SID {result.message_sid}" if result.message_sid else "")
        + f", {result.attempts} attempt(s)"
        + (f", reason {result.reason}" if result.reason else "")
    )
    for event in result.events:
        at = event.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        print(f"  {at}  {event.event:<24} {event.detail}".rstrip())
    return 0


def cmd_delete(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.admin.service import open_service

    request = _validate(RetryRequest, args.json, id=args.id)
    if isinstance(request, int):
        return request

    async def run() -> FailedSmsRecord:
        async with open_service(settings, log_outages=False) as service:
            return await service.delete(request.id, actor=cli_actor())

    result = _run(args, run())
    if isinstance(result, int):
        return result
    if args.json:
        _emit(DeleteResponse())
    else:
        print(f"deleted: {request.id} ({result.phone}, {result.reason})")
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.admin.service import open_service

    given = {"ids": args.ids, "reason": args.reason, "limit": args.limit}
    request = _validate(
        ReplayRequest, args.json, **{k: v for k, v in given.items() if v is not None}
    )
    if isinstance(request, int):
        return request
    bar = ProgressBar(sys.stderr)

    async def run() -> ReplayResponse:
        async with open_service(settings, log_outages=False) as service:
            plan = await service.plan_replay(
                ids=request.ids,
                reason=request.reason,
                limit=request.limit or 100,
                actor=cli_actor(),
            )
            queued = await service.run_replay(plan, progress=bar.update)
        return ReplayResponse(queued=queued, skipped=plan.skipped)

    result = _run(args, run())
    bar.finish()
    if isinstance(result, int):
        return result
    if args.json:
        _emit(result)
    else:
        print(
            f"queued {result.queued} dead letter(s) for replay"
            + (
                f"; skipped {result.skipped} (unknown, resolved or invalid payload)"
                if result.skipped
                else ""
            )
        )
    return 0


# -- output ----------------------------------------------------------------------------------
def render_table(page: ListResponse) -> str:
    columns = ("ID", "CREATED (UTC)", "STATUS", "REASON", "TRIES", "PHONE", "ERROR")
    rows = [
        (
            str(r.id),
            r.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            r.status.value,
            r.reason,
            str(r.attempts),
            r.phone,
            _shorten(r.error or "", 60),
        )
        for r in page.data
    ]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    p = page.pagination
    shown = (
        f"{p.offset + 1}-{p.offset + len(rows)} of {p.total}"
        if rows
        else f"none of {p.total} at offset {p.offset}"
    )
    more = f"; more with --offset {p.offset + len(rows)}" if p.has_more else ""
    lines.append(f"({shown}{more})")
    return "\n".join(lines)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class ProgressBar:
    """`[#####.....] 12/40` redrawn in place on a terminal; a line per 10% otherwise."""

    def __init__(self, stream: Any, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last_decile = -1
        self._drawn = False

    def update(self, done: int, total: int) -> None:
        with contextlib.suppress(OSError, ValueError):
            filled = self.width * done // max(total, 1)
            line = f"replaying [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}"
            if self.tty:
                self.stream.write("\r" + line)
            elif (decile := 10 * done // max(total, 1)) != self._last_decile:
                self._last_decile = decile
                self.stream.write(line + "\n")
            self.stream.flush()
            self._drawn = True

    def finish(self) -> None:
        if self.tty and self._drawn:
            with contextlib.suppress(OSError, ValueError):
                self.stream.write("\n")
                self.stream.flush()
