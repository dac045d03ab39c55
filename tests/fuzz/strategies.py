"""Strategies and Hypothesis settings shared by the fuzz suite.

`SMSRELAY_FUZZ_EXAMPLES` scales the example counts (e.g. 10 when hunting locally); CI runs the
defaults, chosen to find each class of bad input within the suite's time budget.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SCALE = float(os.environ.get("SMSRELAY_FUZZ_EXAMPLES", "1"))
_SUPPRESSED = [
    HealthCheck.function_scoped_fixture,
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
]


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        suppress_health_check=_SUPPRESSED,
        print_blob=True,
    )


# Any Unicode code point, lone surrogates included (st.text() leaves them out by default).
any_char = st.characters(codec=None, exclude_categories=[])
any_text = st.text(any_char, max_size=40)

VALID_PHONES = [
    "+14155552671",
    "+447911123456",
    "+33612345678",
    "+4915123456789",
    "+18761234567",
    "+61412345678",
    "+819012345678",
]


@st.composite
def phones(draw: st.DrawFn) -> str:
    """Valid numbers as people type them, and near misses."""
    base = draw(st.sampled_from(VALID_PHONES))
    style = draw(
        st.sampled_from(
            [
                "plain",
                "spaced",
                "dashed",
                "fullwidth",
                "trimmed",
                "extended",
                "noplus",
                "junk",
                "lettered",
                "extension",
                "dotted",
            ]
        )
    )
    if style == "spaced":
        return f"{base[:2]} ({base[2:5]}) {base[5:8]} {base[8:]}"
    if style == "dashed":
        return f"{base[:2]}-{base[2:5]}-{base[5:]}"
    if style == "fullwidth":
        return "+" + "".join(chr(0xFF10 + int(d)) for d in base[1:])  # fullwidth digits
    if style == "trimmed":
        return base[: -draw(st.integers(1, 5))]
    if style == "extended":
        return base + draw(st.text("0123456789", min_size=1, max_size=6))
    if style == "noplus":
        return base[1:]
    if style == "junk":
        return draw(any_text)
    if style == "lettered":  # a vanity number: libphonenumber would convert it
        cut = draw(st.integers(3, len(base) - 1))
        return base[:cut] + draw(
            st.text(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                min_size=1,
                max_size=len(base) - cut,
            )
        )
    if style == "extension":
        marker = draw(st.sampled_from([" ext. ", " ext ", ";ext=", " x", "x", "#", " extension "]))
        return base + marker + draw(st.text("0123456789", min_size=1, max_size=5))
    if style == "dotted":
        return f"{base[:2]}.{base[2:5]}.{base[5:8]}.{base[8:]}"
    return base


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)
    ),
    max_leaves=12,
)
# Values that are not JSON: a caller passing them must get `rejected`, not an exception.
non_json_leaves = st.one_of(
    st.just(math.nan),
    st.just(math.inf),
    st.sets(st.integers(), max_size=2),
    st.binary(max_size=4),
    st.builds(datetime.now),
    st.just(Decimal("1.5")),
    st.builds(object),
    st.tuples(st.integers()),
)


# C0 and C1 controls and DEL: refused in a body, but tab, line feed and carriage return.
controls = st.characters(categories=["Cc"])
BODY_CONTROLS = frozenset(chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]) - set("\t\n\r")


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for n in range(depth):
        value = [value] if n % 2 else {"k": value}
    return value


metas = st.one_of(
    st.none(),
    st.dictionaries(any_text, json_values, max_size=5),
    st.dictionaries(st.text(max_size=5), non_json_leaves, min_size=1, max_size=2),
    st.integers(1, 400).map(lambda d: {"deep": nested(d)}),
    st.integers(3000, 6000).map(lambda n: {"big": "x" * n}),
    # around the limit: {"big":"..."} is 10 bytes of structure and the string
    st.integers(4080, 4110).map(lambda n: {"big": "x" * (n - 10)}),
    # many items: refused by the walk before anything encodes them
    st.integers(2040, 300_000).map(lambda n: {"ids": list(range(n))}),
    st.integers(2040, 50_000).map(lambda n: {f"k{i}": None for i in range(n)}),
    st.one_of(st.lists(st.integers(), max_size=2), any_text, st.integers()),
)

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    any_text,
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
)


valid_meta = st.one_of(
    st.none(),
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(-(2**70), 2**70),
                st.floats(allow_nan=False, allow_infinity=False),
                st.text(max_size=20),
            ),
            lambda inner: st.one_of(
                st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=4,
    ),
)
VALID = {
    "to": st.sampled_from(VALID_PHONES),
    "body": st.one_of(
        st.text(min_size=1, max_size=80),
        st.integers(1, 1600).map(lambda n: ("Hi John, we've received your booking 🎉 " * 40)[:n]),
    ),
    "kind": st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)),
    "idempotency_key": st.one_of(st.none(), st.text(min_size=1, max_size=40)),
    "meta": valid_meta,
}
ANY = {
    "to": st.one_of(phones(), anything),
    "body": st.one_of(
        st.text(any_char, min_size=1, max_size=60),
        st.lists(st.one_of(st.text(max_size=8), controls), min_size=1, max_size=8).map("".join),
        st.integers(1590, 1610).map(lambda n: "é" * n),
        st.just(""),
        st.just("   "),
        anything,
    ),
    "kind": st.one_of(any_text, anything),
    "idempotency_key": st.one_of(
        st.text(any_char, min_size=1, max_size=20),
        st.integers(195, 205).map(lambda n: "k" * n),
        anything,
    ),
    "meta": metas,
}


@st.composite
def publish_args(draw: st.DrawFn) -> dict[str, Any]:
    """Arguments of `publish`: half the time all valid, else one or every field arbitrary."""
    odd = draw(
        st.sampled_from(
            [None, None, None, None, "to", "body", "kind", "idempotency_key", "meta", "all"]
        )
    )
    return {name: draw(ANY[name] if odd in (name, "all") else VALID[name]) for name in VALID}


def strict_json(text: str) -> Any:
    """Parse RFC 8259 JSON only (Python's json also takes NaN and Infinity)."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)
