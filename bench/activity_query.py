"""The console's per-minute activity query over a large `failed_sms`, before and after
migration 5 (the generated, indexed `failed_at`), and what the migration itself costs.

In a throwaway database on the given server: schema version 4, N records in one namespace
(failed over the last 30 days, 1 in 1,000 within the window), the query as version 4 ran it
(the failure time computed for every record), then migration 5 (timed: it rewrites the
table), then today's query. Each query runs `--repeats` times; the median is reported.

    python -m bench.activity_query --records 1000000 \
        --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import psycopg

from smsrelay.store.activity import PER_MINUTE_QUERY
from smsrelay.store.migrations import MIGRATIONS

# The failures part of the version-4 query: every record's failure time computed, then filtered.
VERSION_4_QUERY = PER_MINUTE_QUERY.replace(
    """    ), failed AS (
        SELECT date_trunc('minute', f.failed_at) AS minute, count(*) AS n
        FROM public.failed_sms f
        WHERE f.namespace = %(namespace)s
          AND f.failed_at >= date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1)
        GROUP BY 1
    )""",
    """    ), failures AS (
        SELECT coalesce(
            greatest(
                CASE WHEN f.dead_letter_id ~ '^[0-9]{1,15}-[0-9]+$'
                     THEN to_timestamp(split_part(f.dead_letter_id, '-', 1)::bigint / 1000.0)
                END,
                CASE WHEN f.status = 'resolved' AND f.last_attempt_at = f.resolved_at THEN NULL
                     ELSE f.last_attempt_at END),
            f.created_at) AS failed_at
        FROM public.failed_sms f
        WHERE f.namespace = %(namespace)s
    ), failed AS (
        SELECT date_trunc('minute', failed_at) AS minute, count(*) AS n
        FROM failures
        WHERE failed_at >= date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1)
        GROUP BY 1
    )""",
)


def _timed(conn: psycopg.Connection[Any], sql: str, params: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        conn.execute(sql, params).fetchall()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(database_url: str, records: int, repeats: int) -> dict[str, float]:
    if VERSION_4_QUERY == PER_MINUTE_QUERY:
        raise SystemExit("bench.activity_query: the query changed; update VERSION_4_QUERY")
    name = f"smsrelay_bench_{uuid.uuid4().hex[:8]}"
    base = database_url.rpartition("/")[0]
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(f"{base}/{name}", autocommit=True) as conn:
            for migration in MIGRATIONS[:4]:
                for statement in migration.statements:
                    conn.execute(statement)
            # Dead-lettered over 30 days (a stream id's time), one in 1,000 in the last minutes
            conn.execute(
                """
                INSERT INTO public.failed_sms
                    (id, phone, message, namespace, created_at, dead_letter_id, reason)
                SELECT gen_random_uuid(), '+1415' || lpad((n %% 10000000)::text, 7, '0'), 'x',
                       'bench', now() - interval '31 days',
                       (extract(epoch FROM now() - CASE WHEN n %% 1000 = 0
                            THEN interval '5 minutes'
                            ELSE (n %% 43200) * interval '1 minute' + interval '1 hour' END
                        ) * 1000)::bigint::text || '-0',
                       'retries_exhausted'
                FROM generate_series(1, %s) AS n
                """,
                [records],
            )
            conn.execute("ANALYZE public.failed_sms")
            params = {"namespace": "bench", "minutes": 15}
            before = _timed(conn, VERSION_4_QUERY, params, repeats)
            started = time.perf_counter()
            for statement in MIGRATIONS[4].statements:
                conn.execute(statement)
            migration_s = time.perf_counter() - started
            conn.execute("ANALYZE public.failed_sms")
            after = _timed(conn, PER_MINUTE_QUERY, params, repeats)
            counts = [
                sum(row[2] for row in conn.execute(sql, params).fetchall())
                for sql in (VERSION_4_QUERY, PER_MINUTE_QUERY)
            ]
            if counts[0] != counts[1]:
                raise SystemExit(f"the two queries disagree: {counts[0]} vs {counts[1]} failures")
    finally:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return {
        "records": records,
        "failures_in_window": counts[1],
        "version_4_query_ms": before * 1000,
        "migration_5_s": migration_s,
        "query_ms": after * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    result = run(args.database_url, args.records, args.repeats)
    print(
        f"{result['records']:,} records, {result['failures_in_window']:,} failed in the last "
        f"15 minutes: per-minute query {result['version_4_query_ms']:.1f} ms before "
        f"migration 5, {result['query_ms']:.2f} ms after "
        f"({result['version_4_query_ms'] / max(result['query_ms'], 1e-6):.0f}x); "
        f"the migration took {result['migration_5_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
