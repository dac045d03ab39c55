"""smsrelay's benchmark against Dramatiq, Celery, arq and a bare asyncio loop (issue 5).

    .venv/bin/python -m bench.run --quick     # a few minutes
    .venv/bin/python -m bench.run             # the full run that writes BENCHMARKS.md

Every system sends through the official twilio SDK to the project's fake Twilio, which runs in
its own process; Redis is the one at 127.0.0.1:6379 (smsrelay in DB 0 under a unique
namespace, the peers in their own DB under unique prefixes; only those keys are deleted).
"""
