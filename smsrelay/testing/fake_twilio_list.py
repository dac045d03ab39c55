"""`GET /2010-04-01/Accounts/{AccountSid}/Messages.json`: Twilio's filters and paging.

Filters: `To`, `From`, `DateSent`, `DateSent<` (on or before), `DateSent>` (on or after). A date
(`YYYY-MM-DD`) compares whole UTC days; a timestamp (`YYYY-MM-DDTHH:MM:SSZ`, as the SDK sends
every date and datetime) compares to the second, except `DateSent`, which always matches a day.
A message not sent yet (no `date_sent`) never matches a `DateSent` filter.

Paging as Twilio pages: newest first, `PageSize` (default 50, at most 1000), `Page` (from 0) and
`PageToken` (`PA<sid>`: the records after that one; `PB<sid>`: the page before it), with
`first_page_uri`, `next_page_uri`, `previous_page_uri`, `uri`, `page`, `page_size`, `start`, `end`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from urllib.parse import urlencode

from smsrelay.testing.fake_twilio_script import FakeMessage

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_FILTERS = ("To", "From", "DateSent", "DateSent<", "DateSent>")


class ListQueryError(ValueError):
    """A bad query parameter; `param` names it (the answer is a 400, code 20001)."""

    def __init__(self, param: str, detail: str) -> None:
        super().__init__(f"Invalid parameter {param}: {detail}")
        self.param = param


@dataclass(frozen=True, slots=True)
class _Bound:
    """A parsed date filter: a UTC day or an instant to the second."""

    day: date | None
    second: int | None

    @classmethod
    def parse(cls, param: str, raw: str) -> _Bound:
        text = raw.strip()
        try:
            if len(text) == 10:
                return cls(date.fromisoformat(text), None)
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ListQueryError(param, f"{raw!r} is not YYYY-MM-DD or an ISO 8601 time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # Twilio reads dates as GMT
        return cls(None, int(moment.timestamp()))


def _matcher(param: str, raw: str) -> Callable[[FakeMessage], bool]:
    if param in ("To", "From"):
        attribute = "to" if param == "To" else "from_"
        return lambda m: getattr(m, attribute) == raw
    bound = _Bound.parse(param, raw)

    def key(m: FakeMessage) -> tuple[date, int] | None:
        if m.date_sent is None:
            return None
        return datetime.fromtimestamp(m.date_sent, UTC).date(), int(m.date_sent)

    if param == "DateSent":
        day = bound.day or datetime.fromtimestamp(bound.second or 0, UTC).date()
        return lambda m: (k := key(m)) is not None and k[0] == day
    later = param == "DateSent>"

    def within(m: FakeMessage) -> bool:
        k = key(m)
        if k is None:
            return False
        if bound.day is not None:
            return k[0] >= bound.day if later else k[0] <= bound.day
        assert bound.second is not None
        return k[1] >= bound.second if later else k[1] <= bound.second

    return within


def _int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ListQueryError(name, f"{raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ListQueryError(name, f"{value} is not between {low} and {high}")
    return value


def list_page(
    messages: Sequence[FakeMessage], account_sid: str, path: str, query: Mapping[str, str]
) -> dict[str, object]:
    """The list answer for `query` over `messages` (in the order they were accepted)."""
    size = _int_param(query, "PageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    number = _int_param(query, "Page", 0, 0, 10**9)
    filters = {name: query[name] for name in _FILTERS if query.get(name)}
    checks = [_matcher(name, raw) for name, raw in filters.items()]
    newest_first = [
        m
        for m in reversed(messages)
        if m.account_sid == account_sid and all(check(m) for check in checks)
    ]
    start = _page_start(newest_first, query.get("PageToken"), number, size)
    items = newest_first[start : start + size]

    def uri(page: int, token: str | None = None) -> str:
        params = {**filters, "PageSize": str(size), "Page": str(page)}
        if token is not None:
            params["PageToken"] = token
        return f"{path}?{urlencode(params)}"

    has_next = start + size < len(newest_first)
    return {
        "end": start + len(items) - 1 if items else start,
        "first_page_uri": uri(0),
        "messages": [m.resource() for m in items],
        "next_page_uri": uri(number + 1, f"PA{items[-1].sid}") if has_next and items else None,
        "page": number,
        "page_size": size,
        "previous_page_uri": uri(number - 1, f"PB{items[0].sid}") if number > 0 and items else None,
        "start": start,
        "uri": uri(number, query.get("PageToken") or None),
    }


def _page_start(newest_first: list[FakeMessage], token: str | None, number: int, size: int) -> int:
    if not token:
        return number * size
    if token[:2] not in ("PA", "PB"):
        raise ListQueryError("PageToken", f"{token!r} is not a page token")
    sid = token[2:]
    position = next((i for i, m in enumerate(newest_first) if m.sid == sid), None)
    if position is None:
        raise ListQueryError("PageToken", f"{token!r} names no message of this list")
    return position + 1 if token.startswith("PA") else max(0, position - size)
