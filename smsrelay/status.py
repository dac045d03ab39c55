"""`smsrelay status`: backlog, pending, consumers, delayed and dead letters, per shard."""

from __future__ import annotations

from typing import Any, cast

import redis

from smsrelay.keys import MIRROR_GROUP, WORKER_GROUP, all_shards
from smsrelay.redis_conn import sync_client, text
from smsrelay.settings import Settings


def _group(client: redis.Redis, stream: str, name: str) -> dict[str, Any] | None:
    try:
        groups = cast(list[dict[str, Any]], client.xinfo_groups(stream))
    except redis.ResponseError:  # no such stream yet
        return None
    for group in groups:
        if text(group["name"]) == name:
            return {"pending": int(group["pending"]), "consumers": int(group["consumers"]),
                    "lag": None if group.get("lag") is None else int(group["lag"])}
    return None


def collect_status(settings: Settings) -> dict[str, Any]:
    client = sync_client(settings.redis_url)
    shards: list[dict[str, Any]] = []
    for keys in all_shards(settings.namespace, settings.shards):
        workers = _group(client, keys.requests, WORKER_GROUP)
        consumers = []
        if workers:
            infos = cast(list[dict[str, Any]], client.xinfo_consumers(keys.requests, WORKER_GROUP))
            for consumer in infos:
                consumers.append({"name": text(consumer["name"]),
                                  "pending": int(consumer["pending"]),
                                  "idleMs": int(consumer["idle"])})
        mirror = _group(client, keys.dead, MIRROR_GROUP)
        counts = cast(dict[bytes, bytes], client.hgetall(keys.dead_counts))
        dead_counts = {text(k): int(v) for k, v in counts.items()}
        shards.append({
            "shard": keys.shard,
            "requestStream": keys.requests,
            "backlog": client.xlen(keys.requests),
            "pending": workers["pending"] if workers else 0,
            "consumers": consumers,
            "delayed": client.zcard(keys.delayed),
            "deadLetterStream": keys.dead,
            "deadLetters": client.xlen(keys.dead),
            "deadLettersNotMirrored": mirror["pending"] + (mirror["lag"] or 0) if mirror else None,
            "deadLettersByReason": dead_counts,
        })
    client.close()
    totals = {name: sum(int(s[name]) for s in shards)
              for name in ("backlog", "pending", "delayed", "deadLetters")}
    return {"namespace": settings.namespace, "totals": totals, "shards": shards}


def render_status(report: dict[str, Any]) -> str:
    t = report["totals"]
    lines = [f"namespace {report['namespace']}: backlog {t['backlog']}, pending {t['pending']}, "
             f"delayed (waiting to retry) {t['delayed']}, dead letters {t['deadLetters']}"]
    for shard in report["shards"]:
        lines.append(f"  shard {shard['shard']}  {shard['requestStream']}: backlog "
                     f"{shard['backlog']}, pending {shard['pending']}, delayed {shard['delayed']}")
        if not shard["consumers"]:
            lines.append("    consumers: none (start one with `smsrelay worker`)")
        for consumer in shard["consumers"]:
            lines.append(f"    consumer {consumer['name']}: pending {consumer['pending']}, "
                         f"idle {consumer['idleMs'] / 1000:.1f} s")
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(shard["deadLettersByReason"].items()))
        not_mirrored = shard["deadLettersNotMirrored"]
        lines.append(f"    dead letters {shard['deadLetters']} in {shard['deadLetterStream']}"
                     + (f" ({reasons})" if reasons else "")
                     + (f"; not yet in Postgres: {not_mirrored}" if not_mirrored else ""))
    return "\n".join(lines)
