"""Counts of `public.failed_sms` the admin console's overview shows (read-only)."""

from __future__ import annotations

from smsrelay.store.db import Connection


async def failed_by_reason(conn: Connection, namespace: str) -> dict[str, int]:
    """Records still `failed` (waiting for an admin), by dead-letter reason."""
    cur = await conn.execute(
        """
        SELECT reason, count(*) AS n FROM public.failed_sms
        WHERE namespace = %s AND status = 'failed' GROUP BY reason
        """,
        [namespace],
    )
    return {str(row["reason"]): int(row["n"]) for row in await cur.fetchall()}
