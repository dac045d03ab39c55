"""A fast, faithful fake of Twilio's Messages API, for tests, the demo and benchmarks.

Serves create, fetch and list of `/2010-04-01/Accounts/{AccountSid}/Messages` as Twilio does
(basic auth, form fields, validation, magic test numbers, error JSON, paging, signed status
callbacks), plus control routes under `/_fake/` to script failures per `To` number, stage an
outage of every number, script delivery receipts and read what was sent. The user document is
docs/fake-twilio.md. Modules:

- fake_twilio_server: `FakeTwilio`, the server and its Python control methods
- fake_twilio_thread: `FakeTwilioThread`, the same on a thread for sync code
- fake_twilio_script: `Step`, `Script`, Twilio's errors and the message resource
- fake_twilio_outage, fake_twilio_callbacks (`Receipts`), fake_twilio_list, fake_twilio_control
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

from smsrelay.testing.fake_twilio_callbacks import CallbackRecord, Receipts
from smsrelay.testing.fake_twilio_script import FakeMessage, RequestRecord, Script, Step
from smsrelay.testing.fake_twilio_server import FakeTwilio
from smsrelay.testing.fake_twilio_thread import FakeTwilioThread

__all__ = [
    "CallbackRecord",
    "FakeMessage",
    "FakeTwilio",
    "FakeTwilioThread",
    "Receipts",
    "RequestRecord",
    "Script",
    "Step",
    "main",
    "run_forever",
]


async def _serve(
    host: str, port: int, latency_s: float, account_sid: str | None, auth_token: str | None
) -> None:
    fake = FakeTwilio(latency_s=latency_s, account_sid=account_sid, auth_token=auth_token)
    await fake.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake-twilio listening on {fake.url}", flush=True)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await fake.stop()


def run_forever(
    host: str,
    port: int,
    latency_s: float = 0.0,
    account_sid: str | None = None,
    auth_token: str | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; prints `fake-twilio listening on <url>` once bound."""
    asyncio.run(_serve(host, port, latency_s, account_sid, auth_token))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fake-twilio",
        description="A fake Twilio Messages API (see `smsrelay fake-twilio --help` and "
        "docs/fake-twilio.md for its control routes)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every send")
    parser.add_argument("--account-sid", help="enforce these credentials (default: accept any)")
    parser.add_argument("--auth-token")
    args = parser.parse_args(argv)
    if (args.account_sid is None) != (args.auth_token is None):
        parser.error("--account-sid and --auth-token go together")
    run_forever(args.host, args.port, args.latency_ms / 1000, args.account_sid, args.auth_token)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
