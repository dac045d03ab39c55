"""SMS segment count, as Twilio's segment calculator counts it.

GSM-7 messages hold 160 characters in one segment and 153 per segment when split (the user
data header takes 7); characters of the GSM extension table cost two. Anything outside GSM-7
makes the whole message UCS-2: 70 in one segment, 67 per segment when split, counted in UTF-16
code units (an emoji costs two).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")


@dataclass(frozen=True)
class SegmentInfo:
    encoding: Literal["GSM-7", "UCS-2"]
    units: int
    segments: int


def segment_info(body: str) -> SegmentInfo:
    if all(ch in _GSM7_BASIC or ch in _GSM7_EXTENDED for ch in body):
        units = sum(2 if ch in _GSM7_EXTENDED else 1 for ch in body)
        single, multi = 160, 153
        encoding: Literal["GSM-7", "UCS-2"] = "GSM-7"
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, multi = 70, 67
        encoding = "UCS-2"
    segments = 1 if units <= single else math.ceil(units / multi)
    return SegmentInfo(encoding=encoding, units=units, segments=max(segments, 1))


def segment_count(body: str) -> int:
    return segment_info(body).segments
