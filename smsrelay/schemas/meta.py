"""`meta`: a small JSON object, bounded by a walk before anything encodes it.

A caller may pass any Python value. Encoding it to measure it costs time in proportion to its
size (3.9 s for a list of 5,000,000 items), so a walk first counts nodes and a lower bound of
the encoded size, reads the length of a container before it looks inside, and stops at the
first limit it passes: a meta that cannot fit is refused after a few nodes. Only a meta that
may fit is encoded, and the encoding decides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_META_BYTES = 4096  # of compact JSON, as it is written to the stream
MAX_META_DEPTH = 32  # well inside the JSON parsers' recursion limits (pydantic's is 200)
# Every value but the outermost costs at least 2 bytes of compact JSON (itself and a comma or
# a bracket), so a meta of more values than this cannot encode to MAX_META_BYTES.
MAX_META_NODES = MAX_META_BYTES // 2

TOO_BIG = (
    f"must encode to at most {MAX_META_BYTES} bytes of compact JSON: "
    "keep ids and short labels in it, not documents"
)
TOO_DEEP = f"must nest at most {MAX_META_DEPTH} levels deep: flatten it"


@dataclass(frozen=True)
class MetaWalk:
    """What the walk saw: containers and values visited, values counted, a size bound."""

    visited: int
    nodes: int
    min_bytes: int
    problem: str | None = None


def _min_bytes(value: Any) -> int:
    """Fewest bytes `value` (not a container) can take in compact JSON; 1 for a non-JSON
    value, which the encoder refuses later."""
    if isinstance(value, str):
        return len(value) + 2  # quotes; escapes only add
    if isinstance(value, bool) or value is None:
        return 4
    if isinstance(value, int):
        # n bits hold a number of at least 0.3 n decimal digits (log10(2) = 0.30103)
        return max(1, value.bit_length() * 3 // 10)
    if isinstance(value, float):
        return 3  # 0.0
    return 1


def _key_bytes(key: Any) -> int:
    return len(key) + 3 if isinstance(key, str) else 4  # quotes and colon; "1":


def walk_meta(
    value: Any,
    *,
    max_bytes: int = MAX_META_BYTES,
    max_nodes: int = MAX_META_NODES,
    max_depth: int = MAX_META_DEPTH,
) -> MetaWalk:
    """Measure `value` without recursion and without looking inside what cannot fit."""
    visited, nodes, size = 0, 1, 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        visited += 1
        if depth > max_depth:
            return MetaWalk(visited, nodes, size, TOO_DEEP)
        if isinstance(item, Mapping | list | tuple):
            count = len(item)
            nodes += count
            size += 2 + max(count - 1, 0)  # brackets and commas
            if nodes > max_nodes or size > max_bytes:
                return MetaWalk(visited, nodes, size, TOO_BIG)
            if isinstance(item, Mapping):
                for key, child in item.items():
                    size += _key_bytes(key)
                    stack.append((child, depth + 1))
                if size > max_bytes:
                    return MetaWalk(visited, nodes, size, TOO_BIG)
            else:
                stack.extend((child, depth + 1) for child in item)
        else:
            size += _min_bytes(item)
            if size > max_bytes:
                return MetaWalk(visited, nodes, size, TOO_BIG)
    return MetaWalk(visited, nodes, size)


def encode_meta(value: Mapping[str, Any]) -> str:
    """The stream's form of `meta`: compact, strict JSON (no NaN/Infinity), ASCII."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def bound_meta(value: Any) -> Any:
    """Before the model validates `meta`: refuse what is too big or too deep to fit."""
    if isinstance(value, Mapping):
        problem = walk_meta(value).problem
        if problem is not None:
            raise ValueError(problem)
    return value


def check_meta(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """After the model validated `meta` as an object: JSON only, and small enough encoded."""
    if value is None:
        return None
    try:
        # Strict JSON: services in any language read this field.
        encoded = encode_meta(value)
    except (TypeError, ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"must hold only JSON values: strings, numbers, booleans, null, "
            f"lists and objects ({reason})"
        ) from None
    if len(encoded) > MAX_META_BYTES:
        raise ValueError(TOO_BIG)
    return value
