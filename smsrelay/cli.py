"""`smsrelay ...`: the contract's commands. Errors are one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import redis

from smsrelay import logging as smslog
from smsrelay.errors import SmsRelayError
from smsrelay.settings import Settings

Command = Callable[[argparse.Namespace, Settings], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smsrelay", description="SMS delivery pipeline on Redis Streams. Settings come from "
        "SMSRELAY_* environment variables (see the README).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = sub.add_parser("worker", help="consume, rate-limit, send, retry, dead-letter")
    worker.add_argument("--no-mirror", action="store_true",
                        help="do not mirror dead letters into Postgres from this worker")
    worker.set_defaults(func=_worker)

    publish = sub.add_parser("publish", help="publish one message and print its id")
    publish.add_argument("--to", required=True, help="E.164 phone number, e.g. +14155552671")
    publish.add_argument("--body", required=True)
    publish.add_argument("--kind")
    publish.add_argument("--idempotency-key")
    publish.add_argument("--json", action="store_true", help="print the whole result as JSON")
    publish.set_defaults(func=_publish)

    status = sub.add_parser("status", help="backlog, pending, consumers, dead letters")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    demo = sub.add_parser("demo", help="the whole pipeline on this machine, narrated")
    demo.set_defaults(func=_demo)

    fake = sub.add_parser("fake-twilio", help="run the built-in fake Twilio Messages API")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8765)
    fake.add_argument("--latency-ms", type=float, default=0.0)
    fake.set_defaults(func=_fake_twilio, settings_free=True)

    schema = sub.add_parser("schema", help="print the JSON Schema of the request stream entry")
    schema.set_defaults(func=_schema, settings_free=True)

    spool = sub.add_parser("spool-flush", help="publish requests kept in the local spool")
    spool.set_defaults(func=_spool_flush)

    try:
        from smsrelay import cli_admin
    except ImportError:  # pragma: no cover - only while the admin half is absent
        pass
    else:
        cli_admin.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Command = args.func
    try:
        if getattr(args, "settings_free", False):
            settings = Settings.model_construct()
        else:
            settings = Settings.load()
            smslog.configure(settings.log_format, settings.log_level)
        return func(args, settings)
    except SmsRelayError as exc:
        print(f"smsrelay: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"smsrelay: Redis error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last resort: one line, never a traceback
        print(f"smsrelay: unexpected error: {type(exc).__name__}: {exc} "
              "(set SMSRELAY_LOG_LEVEL=debug and report it)", file=sys.stderr)
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
        result = producer.publish(args.to, args.body, kind=args.kind,
                                  idempotency_key=args.idempotency_key)
    if args.json:
        print(json.dumps({"status": result.status, "messageId": result.message_id,
                          "error": result.error}))
    elif result.status == "rejected":
        print(f"smsrelay: rejected: {result.error}", file=sys.stderr)
    else:
        print(result.message_id)
        if result.status != "queued":
            print(f"({result.status}{': ' + result.error if result.error else ''})",
                  file=sys.stderr)
    return 1 if result.status == "rejected" else 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.status import collect_status, render_status, status_json

    report = collect_status(settings)
    print(json.dumps(status_json(report), indent=2) if args.json else render_status(report))
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.demo import run_demo

    return run_demo(settings)


def _fake_twilio(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.testing.fake_twilio import run_forever

    run_forever(args.host, args.port, latency_s=args.latency_ms / 1000)
    return 0


def _schema(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.schemas.entry import entry_json_schema

    print(json.dumps(entry_json_schema(), indent=2))
    return 0


def _spool_flush(args: argparse.Namespace, settings: Settings) -> int:
    from smsrelay.producers.publish import Producer

    with Producer(settings) as producer:
        total = 0
        while (published := producer.flush_spool()) > 0:
            total += published
    print(f"published {total} spooled request(s); {producer.spooled()} left")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
