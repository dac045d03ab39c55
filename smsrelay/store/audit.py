"""Queries on `public.admin_audit`: one row per change an admin made (or tried to make).

A row says who (`actor`: a token's name, `admin`, or `cli:<os user>`), what (`action`:
`retry`, `delete`, `replay`), on which records (`target`: a message id, ids joined by commas,
or `reason:<reason>`), and how it ended (`outcome`: one word, see OUTCOMES; `detail`: a line
such as the message SID or the provider's answer). Rows belong to a namespace, as failed_sms
rows do. Each function takes a connection; callers own transactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from smsrelay.store.db import Connection

# The words `outcome` holds. `ok`: the change was made. The others: refused before any change
# (or, for provider_error, after one more failed provider attempt was recorded).
OUTCOMES = (
    "ok",
    "not_found",
    "conflict",
    "rate_limited",
    "provider_error",
    "invalid",
    "unavailable",
    "interrupted",
    "error",
)
# A target or detail longer than this is cut: a row stays small whatever an error text holds.
MAX_TARGET_CHARS = 40_000  # 1,000 UUIDs (a replay's maximum) joined by commas fit
MAX_DETAIL_CHARS = 1_000


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    detail: str | None


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditEntry]
    total: int
    limit: int
    offset: int

    @property
    def has_more(self) -> bool:
        return self.offset + len(self.entries) < self.total


def _cut(text: str, limit: int) -> str:
    text = text.replace("\x00", "\ufffd")  # Postgres text cannot hold NUL
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def insert(
    conn: Connection,
    namespace: str,
    *,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    detail: str | None = None,
) -> None:
    await conn.execute(
        """
        INSERT INTO public.admin_audit (namespace, actor, action, target, outcome, detail)
        VALUES (%s, %s, %s, %s, %s, %s)
        """,
        [
            namespace,
            _cut(actor, 200),
            _cut(action, 64),
            _cut(target, MAX_TARGET_CHARS),
            _cut(outcome, 64),
            _cut(detail, MAX_DETAIL_CHARS) if detail else None,
        ],
    )


async def list_entries(conn: Connection, namespace: str, *, limit: int, offset: int) -> AuditPage:
    """A namespace's entries, newest first."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT count(*) AS n FROM public.admin_audit WHERE namespace = %s", [namespace]
        )
        total_row = await cur.fetchone()
        cur = await conn.execute(
            """
            SELECT at, actor, action, target, outcome, detail FROM public.admin_audit
            WHERE namespace = %s ORDER BY at DESC, id DESC LIMIT %s OFFSET %s
            """,
            [namespace, limit, offset],
        )
        rows = await cur.fetchall()
    return AuditPage(
        entries=[
            AuditEntry(
                at=row["at"],
                actor=str(row["actor"]),
                action=str(row["action"]),
                target=str(row["target"]),
                outcome=str(row["outcome"]),
                detail=row["detail"],
            )
            for row in rows
        ],
        total=int(total_row["n"]) if total_row else 0,
        limit=limit,
        offset=offset,
    )
