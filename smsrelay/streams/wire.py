"""What goes over the wire: the script arguments of a publish, the fields of a dead letter, the
payload of a delayed message. Built here once, for the producer, the worker and the admin.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from smsrelay.schemas.dead_letter import DEAD_LETTER_FIELDS
from smsrelay.streams.keys import ShardKeys

RawFields = Mapping[bytes, bytes] | Mapping[str, str]
FlatArgs = list[Any]

# A dead letter keeps at most this much of the entry it stands for (field names and values):
# a hostile 1 MB entry must not turn an admin's list into 50 MB, nor a script's arguments
# into more than Lua can unpack (rule 14). What is cut is said in the dead letter itself.
MAX_DEAD_PAYLOAD_BYTES = 16 * 1024
MAX_DEAD_PAYLOAD_FIELDS = 64
MAX_ERROR_CHARS = 2000
# Entry fields worth keeping first when an entry must be cut, in this order.
_FIRST = (
    "id",
    "to",
    "body",
    "v",
    "created_at",
    "kind",
    "idempotency_key",
    "meta",
    "replay_of",
    "expires_at",
    "priority",
)
# Fields of an entry that the worker's parsed model does not hold but a retry must carry on.
CARRIED_FIELDS = ("replay_of", "resend_of")


def publish_call(
    keys: ShardKeys, fields: Mapping[str, str], idempotency_key: str | None, idempotency_ttl_s: int
) -> tuple[list[str], FlatArgs]:
    """publish.lua's keys and arguments for one entry, on the lane its `priority` names."""
    script_keys = [keys.lane(fields.get("priority"))]
    if idempotency_key:
        script_keys.append(keys.idempotency(idempotency_key))
    args: FlatArgs = [str(idempotency_ttl_s), fields["id"]]
    for name, value in fields.items():
        args += [name, value]
    return script_keys, args


def flatten(fields: Mapping[Any, Any]) -> FlatArgs:
    flat: FlatArgs = []
    for name, value in fields.items():
        flat += [name, value]
    return flat


def field(raw: RawFields, name: str) -> str | None:
    """One field of a raw entry as text (entries read from Redis have bytes keys)."""
    value = raw.get(name.encode()) if name.encode() in raw else raw.get(name)  # type: ignore[call-overload]
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def carried(raw: RawFields) -> dict[str, str]:
    return {name: value for name in CARRIED_FIELDS if (value := field(raw, name)) is not None}


def in_lane(raw: RawFields, priority: str) -> dict[Any, Any]:
    """The entry's fields with `priority` saying the lane it was read from (none for
    `normal`): a delayed message goes back to its lane, a dead letter is replayed to it."""
    fields: dict[Any, Any] = {k: v for k, v in raw.items() if k not in ("priority", b"priority")}
    if priority != "normal":
        fields["priority"] = priority
    return fields


def delay_payload(fields: Mapping[str, str]) -> str:
    """The JSON array delay.lua keeps and move_due.lua puts back on the stream."""
    return json.dumps(flatten(fields))


def sent_outcome(
    message_id: str,
    *,
    phone: str,
    sid: str,
    attempts: int,
    kind: str | None = None,
    replay_of: str | None = None,
    sent_at: str,
) -> dict[str, str]:
    """The outcome entry sent.lua writes for the mirror: a `sent_sms` row, and the failed_sms
    record of the message (a replay's, a retried undelivered one's) resolved, with the
    provider attempts this send took."""
    outcome = {
        "id": message_id,
        "status": "sent",
        "message_sid": sid,
        "phone": phone,
        "attempts": str(attempts),
        "sent_at": sent_at,
    }
    if kind:
        outcome["kind"] = kind
    if replay_of is not None:
        outcome["replay_of"] = replay_of
    return outcome


def dead_letter_fields(raw: RawFields, extra: Mapping[str, str]) -> dict[Any, Any]:
    """The dead letter of an entry: `extra` (reason, error, ...) and the entry's own fields,
    at most MAX_DEAD_PAYLOAD_BYTES of them.

    An original field whose name the dead letter uses itself (possible only in a malformed
    entry) is kept as `orig.<name>`. When the entry is larger, the most useful fields come
    first and the rest is cut; `payload_truncated`, `payload_bytes` and `payload_fields` say so.
    """
    merged: dict[Any, Any] = {
        name: value[:MAX_ERROR_CHARS] if name == "error" else value for name, value in extra.items()
    }
    items = sorted(raw.items(), key=lambda kv: _rank(kv[0]))
    total = sum(len(k) + len(v) for k, v in items)
    budget, kept, cut = MAX_DEAD_PAYLOAD_BYTES, 0, False
    for key, value in items:
        name = key.decode(errors="replace") if isinstance(key, bytes) else key
        stored = f"orig.{name}" if name in extra or name in DEAD_LETTER_FIELDS else key
        size = len(key) + len(value)
        if kept >= MAX_DEAD_PAYLOAD_FIELDS or len(key) >= budget:
            cut = True
            break
        if size > budget:  # keep the head of a long value (a body, say), then stop
            merged[stored] = value[: budget - len(key)]
            kept += 1
            cut = True
            break
        merged[stored] = value
        budget -= size
        kept += 1
    if cut:
        merged.update(
            {
                "payload_truncated": "1",
                "payload_bytes": str(total),
                "payload_fields": str(len(items)),
            }
        )
    return merged


def _rank(key: bytes | str) -> int:
    name = key.decode(errors="replace") if isinstance(key, bytes) else key
    return _FIRST.index(name) if name in _FIRST else len(_FIRST)
