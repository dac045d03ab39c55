"""`smsrelay ...`: the contract's commands. Errors are one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import redis

from smsrelay import logging as smslog
from smsrelay.errors import SmsRelayError
from smsrelay.settings import Settings

if TYPE_CHECKING:
    from smsrelay.producers.publish import SpoolFlush

Command = Callable[[argparse.Namespace, Settings], int]

# What each extra brings (import names), and the commands that need one. `pip install
# smsrelay` alone is the producer: publish, status, schema and spool-flush work with it.
_EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "worker": ("twilio", "aiohttp", "psycopg", "psycopg_pool", "prometheus_client"),
    "admin": (
        "twilio",
        "aiohttp",
        "psycopg",
        "psycopg_pool",
        "prometheus_client",
        "fastapi",
        "fastapi_offline",
        "uvicorn",
    ),
}
_COMMAND_EXTRA = {
    "worker": "worker",
    "mirror": "worker",
    "migrate": "worker",
    "dlq": "worker",
    "demo": "worker",
    "fake-twilio": "worker",
    "admin": "admin",
}
# Commands whose output is for a person (or a script) to read: their own log lines stay out
# of it unless something is wrong (warnings and up), or SMSRELAY_LOG_LEVEL asks for them.
_QUIET_COMMANDS = frozenset({"publish", "status", "schema", "spool-flush", "dlq", "migrate"})


# `smsrelay fake-twilio --help`: the whole surface, kept in step with docs/fake-twilio.md.
_FAKE_TWILIO_EPILOG = """\
credentials:
  HTTP Basic auth as Twilio takes it (Account SID or API key SID, and its secret). Any
  credentials are accepted unless --account-sid/--auth-token are given; then any others get
  401, code 20003. Status callbacks are signed with the token the send authenticated with.

Messages API, under /2010-04-01/Accounts/{AccountSid}/:
  POST Messages.json          create: To, From or MessagingServiceSid, Body, StatusCallback
  GET  Messages/{Sid}.json    fetch
  GET  Messages.json          list, newest first: To, From, DateSent, DateSent<, DateSent>
                              (on or before/after), PageSize (50, max 1000), Page, PageToken

refused as Twilio refuses (HTTP 400, Twilio code):
  To +15005550001 21211, +15005550002 21612, +15005550003 21408, +15005550004 21610,
  +15005550009 21614, not E.164 21211; From +15005550001 21212, +15005550008 21611;
  no To 21604, no From 21603, no Body 21602, Body over 1600 characters 21617,
  StatusCallback not an http(s) URL 21609; bad list parameter 20001.

control routes (JSON bodies; bad input answers 400 {"error": "..."}):
  POST /_fake/script           {"to": "+1...", "steps": [STEP, ...], "default": STEP}: the
                               next requests to that number, one step each, then the default
  POST /_fake/latency          {"seconds": 0.2}: added to every create request
  POST /_fake/outage           STEP plus "seconds": every Messages API request (create, fetch,
                               list, all numbers) gets STEP, for that long or until ended;
                               scripts wait unconsumed. No body: 503, code 20503
  GET /_fake/outage            active, step, remaining_s, requests seen during it
  DELETE /_fake/outage         end the outage
  POST /_fake/receipts         {"to": "+1..." (absent: every number), "statuses": [...] or
                               "final": "delivered"|"undelivered"|"failed", "before": [...],
                               "error_code": 30003, "delay": 0.5}: the status callbacks
  GET /_fake/callbacks         callbacks attempted (?sid=, ?to=) with the receiver's status
  POST /_fake/callbacks/wait   {"timeout": 5}: until every scheduled callback was attempted
                               (504 with the pending count otherwise)
  GET /_fake/messages          accepted messages (?to=)
  GET /_fake/requests          create requests and their outcome (?to=)
  GET /_fake/stats             counters: requests, accepted, errors, dropped, duplicates
  POST /_fake/reset            forget messages, scripts, receipts, callbacks, the outage

STEP (a script's or an outage's answer):
  {"status": 503, "code": 20503}    an error (no code: a proxy's HTML page)
  {"status": 429, "code": 20429, "retry_after": 2}
                                    Twilio's rate limit, with the header Retry-After: 2
  "drop"                            connection closed, nothing sent
  {"delay": 30}                     sent at once, answered 30 s later (past a client timeout)
  "accept_drop" / {"action": "accept_drop", "delay": 1}
                                    sent, then the connection is closed unanswered
  "delay" waits before any answer. A message that was sent is in the list at once.

receipts (status callbacks):
  A send with StatusCallback gets form-encoded POSTs of MessageSid, SmsSid, MessageStatus,
  SmsStatus, AccountSid, From, To, ApiVersion (ErrorCode, ErrorMessage when undelivered or
  failed), signed X-Twilio-Signature as Twilio signs, after the create answer. Default:
  sent, then delivered. Statuses may repeat or come out of order ("statuses": ["delivered",
  "sent"]); fetch and list keep the most final. A receiver that is down is recorded.

example:
  curl -X POST http://127.0.0.1:8765/_fake/outage -d '{"status": 503, "code": 20503, "seconds": 10}'
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smsrelay",
        description="SMS delivery pipeline on Redis Streams. Settings come from "
        "SMSRELAY_* environment variables (see the README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = sub.add_parser("worker", help="consume, rate-limit, send, retry, dead-letter")
    worker.add_argument(
        "--no-mirror",
        action="store_true",
        help="do not mirror dead letters into Postgres from this worker",
    )
    worker.set_defaults(func=_worker)

    publish = sub.add_parser("publish", help="publish one message and print its id")
    publish.add_argument("--to", required=True, help="E.164 phone number, e.g. +14155552671")
    publish.add_argument("--body", required=True)
    publish.add_argument("--kind")
    publish.add_argument("--idempotency-key")
    publish.add_argument(
        "--priority",
        choices=("high", "normal", "bulk"),
        default="normal",
        help="the lane: high (login codes) is read first, bulk after normal (default normal)",
    )
    publish.add_argument(
        "--ttl",
        type=float,
        metavar="SECONDS",
        help="never send it after this many seconds (dead letter `expired`)",
    )
    publish.add_argument("--json", action="store_true", help="print the whole result as JSON")
    publish.set_defaults(func=_publish)

    status = sub.add_parser("status", help="backlog, pending, consumers, dead letters")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    demo = sub.add_parser("demo", help="the whole pipeline on this machine, narrated")
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the demo's Redis keys to look at afterwards (default: deleted at the end)",
    )
    demo.set_defaults(func=_demo)

    fake = sub.add_parser(
        "fake-twilio",
        help="run the built-in fake Twilio Messages API",
        description="A fake of Twilio's Messages API for tests, the demo and benchmarks: the "
        "real twilio SDK creates, fetches and lists messages on it (set client.api.base_url "
        "to the printed URL), and control routes script failures, outages, latency and "
        "signed delivery receipts. Guide: docs/fake-twilio.md.",
        epilog=_FAKE_TWILIO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fake.add_argument("--host", default="127.0.0.1", help="address to listen on")
    fake.add_argument("--port", type=int, default=8765, help="0 picks a free port (printed)")
    fake.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="added to every create request (POST /_fake/latency changes it)",
    )
    fake.add_argument(
        "--account-sid",
        help="accept only this account SID and --auth-token (default: any Basic credentials)",
    )
    fake.add_argument("--auth-token", help="the auth token that goes with --account-sid")
    fake.set_defaults(func=_fake_twilio, settings_free=True)

    schema = sub.add_parser("schema", help="print the JSON Schema of the request stream entry")
    schema.set_defaults(func=_schema, settings_free=True)

    spool = sub.add_parser(
        "spool-flush",
        help="publish requests kept in the local spool",
        description="Publish every request this namespace's producers kept in the spool "
        "(SMSRELAY_SPOOL_DIR) while Redis was away, into this namespace on this Redis; report "
        "what is left and whose it is. Exit 1 when anything is left.",
    )
    spool.add_argument(
        "--adopt-legacy",
        action="store_true",
        help="also publish, into this namespace and Redis, files spooled before requests "
        "recorded their namespace (check first that they belong here)",
    )
    spool.set_defaults(func=_spool_flush)

    try:
        from smsrelay import cli_admin
    except ImportError:  # pragma: no cover - only while the admin half is absent
        pass
    else:
        cli_admin.register(sub)
    return parser


def missing_extra(command: str) -> str | None:
    """The extra `command` needs and this installation lacks, if any."""
    extra = _COMMAND_EXTRA.get(command)
    if extra is None:
        return None
    if all(importlib.util.find_spec(module) is not None for module in _EXTRA_MODULES[extra]):
        return None
    return extra


def _needs(command: str, extra: str) -> int:
    print(
        f"smsrelay {command}: needs the {extra} extra: pip install 'smsrelay[{extra}]'",
        file=sys.stderr,
    )
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Command = args.func
    extra = missing_extra(args.command)
    if extra is not None:
        return _needs(args.command, extra)
    try:
        if getattr(args, "settings_free", False):
            settings = Settings.model_construct()
        else:
            settings = Settings.load()
            level = settings.log_level
            if args.command in _QUIET_COMMANDS and "SMSRELAY_LOG_LEVEL" not in os.environ:
                level = "error" if level == "error" else "warning"
            smslog.configure(settings.log_format, level)
        return func(args, settings)
    except ModuleNotFoundError as exc:
        # The last guard of the light install: a module of an extra that is not installed.
        top = (exc.name or "").split(".")[0]
        for name, modules in _EXTRA_MODULES.items():
            if top in modules:
                return _needs(args.command, name)
        print(
            f"smsrelay: unexpected error: {exc} (set SMSRELAY_LOG_LEVEL=debug and report it)",
            file=sys.stderr,
        )
        return 1
    except SmsRelayError as exc:
        print(f"smsrelay: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"smsrelay: Redis error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last resort: one line, never a traceback
        print(
            f"smsrelay: unexpected error: {type(exc).__name__}: {exc} "
            "(set SMSRELAY_LOG_LEVEL=debug and report it)",
            file=sys.stderr,
        )
        return 1


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed (a worker's event loop costs about half as much)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


# -- commands --------------------------------------------------------------------------------
def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.runner import run_worker

    settings.require_sender()
    return run_async(run_worker(settings, mirror=not args.no_mirror))


def _publish(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.producers.publish import Producer

    with Producer(settings) as producer:
        result = producer.publish(
            args.to,
            args.body,
            kind=args.kind,
            idempotency_key=args.idempotency_key,
            priority=args.priority,
            ttl_seconds=args.ttl,
        )
    if args.json:
        print(
            json.dumps(
                {"status": result.status, "messageId": result.message_id, "error": result.error}
            )
        )
    elif result.status == "rejected":
        print(f"smsrelay: rejected: {result.error}", file=sys.stderr)
    else:
        print(result.message_id)
        if result.status != "queued":
            print(
                f"({result.status}{': ' + result.error if result.error else ''})", file=sys.stderr
            )
    return 1 if result.status == "rejected" else 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.status import collect_status, render_status, status_json

    report = collect_status(settings)
    print(json.dumps(status_json(report), indent=2) if args.json else render_status(report))
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.demo import run_demo

    return run_demo(settings, keep=args.keep)


def _fake_twilio(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.testing.fake_twilio import run_forever

    if (args.account_sid is None) != (args.auth_token is None):
        raise SmsRelayError("--account-sid and --auth-token go together")
    run_forever(
        args.host,
        args.port,
        latency_s=args.latency_ms / 1000,
        account_sid=args.account_sid,
        auth_token=args.auth_token,
    )
    return 0


def _schema(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.schemas.entry import entry_json_schema

    print(json.dumps(entry_json_schema(), indent=2))
    return 0


def _spool_flush(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.producers.publish import Producer, SpoolFlush
    from smsrelay.producers.spool import Spool
    from smsrelay.settings import spool_root

    # No background flusher: this command publishes every file itself, so its count is
    # exact and nothing is left half-done behind its back.
    with Producer(settings, background_flush=False) as producer:
        owner = producer.spool.owner
        flushes: list[SpoolFlush] = [producer.drain_spool(adopt_legacy=args.adopt_legacy)]
        root = spool_root()
        if root != settings.spool_dir and root.is_dir():
            # The folder every app shared before spools were per namespace: its old files.
            old = Spool(root, owner)
            if old.files():
                flushes.append(
                    producer.drain_spool(spool=old, adopt_legacy=args.adopt_legacy)
                    if flushes[0].error is None
                    else SpoolFlush(0, old.survey())
                )
    published = sum(f.published for f in flushes)
    print(f"published {published} spooled request(s) into {owner.describe()}")
    for flush in flushes:
        print(_spool_report(flush, owner.namespace))
    errors = [f.error for f in flushes if f.error]
    if errors:
        print(f"smsrelay spool-flush: stopped by a Redis error: {errors[0]}", file=sys.stderr)
    return 1 if errors or any(f.left for f in flushes) else 0


def _spool_report(flush: SpoolFlush, namespace: str) -> str:
    survey = flush.survey
    if not survey.total:
        return f"nothing left in {survey.directory}"
    lines = [f"{survey.total} left in {survey.directory}:"]
    if survey.own:
        lines.append(
            f"  {survey.own} of this namespace: held by another flusher (a running producer), "
            "or Redis failed first: run spool-flush again"
        )
    for other, count in sorted(survey.others.items(), key=lambda item: item[0].describe()):
        lines.append(
            f"  {count} of {other.describe()}: not published here; flush them with "
            f"SMSRELAY_NAMESPACE={other.namespace} and SMSRELAY_REDIS_URL for {other.redis}"
        )
    if survey.legacy:
        lines.append(
            f"  {survey.legacy} spooled before requests recorded their namespace: not "
            "published; find out whose they are, then run spool-flush --adopt-legacy with "
            f"that app's settings (now: namespace '{namespace}')"
        )
    if survey.corrupt:
        lines.append(f"  {survey.corrupt} unreadable, renamed *.corrupt: for a person to look at")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
