"""Phone numbers: parsed and checked by Google's libphonenumber (the `phonenumbers` port).

Two doors. A caller's number (`normalize_e164`, at publish) may be written as people write it,
spaced, dashed, dotted or bracketed; nothing else: letters (`+1-800-FLOWERS`) and extensions
(`ext. 5`) are refused, never converted, because libphonenumber would silently text another
number or drop the extension. A stream entry's number (`check_plain_e164`, in the worker) must
already be the plain, canonical E.164 string the producer writes: a number in two spellings
would be two numbers to the rate limiter.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache, lru_cache

import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneNumber
from phonenumbers.phonemetadata import PhoneMetadata

_PLAIN_E164 = re.compile(r"\+([1-9][0-9]{1,16})")
# What the JSON Schema publishes for the wire (ASCII digits only, as JSON Schema reads \d).
WIRE_E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
_WIRE_E164 = re.compile(WIRE_E164_PATTERN)
# Spaces (tab and Unicode's space separators), dashes, dots and brackets.
_SEPARATORS = dict.fromkeys(
    map(
        ord,
        "\t \u00a0\u1680\u202f\u205f\u3000-\u2212\uff0d.()[]"
        + "".join(map(chr, range(0x2000, 0x200B)))
        + "".join(map(chr, range(0x2010, 0x2016))),
    )
)
_ASCII_NUMBER = re.compile(r"\+[0-9]*")
_WRITTEN = re.compile(r"[+\uff0b]\d+")  # \d: digits of any script
# An extension marker after the number (not after a letter: +1-800-TAX 5 has letters)
_EXTENSION = re.compile(
    r"(?:;\s*ext\s*=|#|(?<![^\W\d_])(?:extension|extn|ext|x)\.?:?)\s*\d+\s*$", re.IGNORECASE
)
INTERNATIONAL = (
    "phone number must be in international format starting with '+' and a "
    "country code, e.g. +14155552671"
)


def strip_separators(text: str) -> str:
    """`text` without the spaces, dashes, dots and brackets people write numbers with."""
    return text.translate(_SEPARATORS)


def _show(ch: str) -> str:
    return repr(ch) if ch.isprintable() else f"U+{ord(ch):04X}"


def _digits_only(text: str) -> str:
    """`+` and ASCII digits from a number as written, or a ValueError saying what to fix."""
    stripped = strip_separators(text.strip())
    if _ASCII_NUMBER.fullmatch(stripped):  # the common case
        return stripped
    if _EXTENSION.search(text):
        raise ValueError(
            "phone number extensions (ext., x, #) cannot receive an SMS: "
            "send to the number without its extension"
        )
    odd = next((ch for ch in stripped if not (ch.isdecimal() or ch in "+\uff0b")), None)
    if odd is not None and odd.isalpha():
        raise ValueError(
            "phone number must be written in digits: letters (as in "
            "+1-800-FLOWERS) are not converted"
        )
    if odd is not None or stripped[1:].count("+") or "\uff0b" in stripped[1:]:
        shown = _show(odd) if odd is not None else "'+'"
        raise ValueError(
            "phone number may hold only a leading '+', digits, spaces, dashes, "
            f"dots and brackets, not {shown}"
        )
    if not _WRITTEN.fullmatch(stripped):
        raise ValueError(INTERNATIONAL)
    # Digits of any script (fullwidth from an East Asian keyboard): as ASCII
    return "+" + "".join(str(unicodedata.decimal(ch)) for ch in stripped[1:])


# Pure and ~20-50 µs a number: the numbers a service texts repeat (the same customers, the same
# on-call phones), so a small cache takes most of it off the publish path.
@lru_cache(maxsize=8192)
def normalize_e164(value: str) -> str:
    """Return the E.164 form of a possible, valid international number, or raise ValueError.

    Spaces, dashes, dots and brackets are accepted (`+1 (415) 555-2671`); letters and
    extensions are not, nor is a national number without a country code, because a pipeline
    serving many countries cannot guess one.
    """
    text = _digits_only(value)
    return plain_e164_if_valid(text) or _parse_and_check(text)


@lru_cache(maxsize=8192)
def check_plain_e164(value: str) -> str:
    """`value` if it is a valid number in plain, canonical E.164 (the wire's form), else a
    ValueError saying what the publisher must change."""
    if not _WIRE_E164.fullmatch(value):
        raise ValueError(
            "must be plain E.164, '+' and 7 to 15 digits without spaces or "
            "punctuation, e.g. +14155552671: normalise the number before "
            "publishing"
        )
    if plain_e164_if_valid(value) == value or _parse_and_check(value) == value:
        return value
    raise ValueError(
        "must be the number's canonical E.164 form (libphonenumber reads this "
        "one as another number, e.g. with a national prefix): normalise it "
        "before publishing"
    )


def plain_e164_if_valid(text: str) -> str | None:
    """The publish fast path: `text` when it is plain E.164 (`+` and digits) and valid.

    `phonenumbers.parse` is general (letters, extensions, national prefixes, any digit
    script) and costs as much as the validity check itself. A plain E.164 string only needs
    its country code split off, which is what `parse` does too. Wherever `parse` could read
    the digits differently (a leading zero, a national prefix it would strip or transform)
    this returns None and the caller takes the full path, as it does for an invalid number,
    so the error message is always the full path's. A test compares both paths.
    """
    match = _PLAIN_E164.fullmatch(text)
    if match is None:
        return None
    digits = match.group(1)
    for size in (1, 2, 3):  # country codes are prefix-free: the first known one is it
        country_code = int(digits[:size])
        if country_code in COUNTRY_CODE_TO_REGION_CODE:
            national = digits[size:]
            if not national or national[0] == "0" or _prefix_may_apply(country_code, national):
                return None
            number = PhoneNumber(country_code=country_code, national_number=int(national))
            return text if _is_valid(number) else None
    return None


def _is_valid(number: PhoneNumber) -> bool:
    """`phonenumbers.is_valid_number`, without its second pass for shared country codes.

    For a code shared by several regions (+1: the US, Canada and 23 others) it first finds
    the region by running the full number-type check against each region without leading
    digits in its metadata, then runs that same check once more to answer. When the region
    was found that way the answer is already known. A test compares this with
    `is_valid_number` on every example number and on random ones.
    """
    region = phonenumbers.region_code_for_number(number)
    if region is None:
        return False
    shared = len(COUNTRY_CODE_TO_REGION_CODE.get(number.country_code or 0, ())) > 1
    metadata = PhoneMetadata.metadata_for_region(region, None)
    if shared and metadata is not None and metadata.leading_digits is None:
        return True
    return bool(phonenumbers.is_valid_number_for_region(number, region))


def _prefix_may_apply(country_code: int, national: str) -> bool:
    pattern = _national_prefix_pattern(country_code)
    if pattern is None:
        return False
    found = pattern.match(national)
    return found is not None and (found.end() > 0 or any(g is not None for g in found.groups()))


@cache
def _national_prefix_pattern(country_code: int) -> re.Pattern[str] | None:
    region = phonenumbers.region_code_for_country_code(country_code)
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
    prefix = metadata.national_prefix_for_parsing if metadata is not None else None
    return re.compile(prefix) if prefix else None


def _parse_and_check(text: str) -> str:
    if not text.startswith("+"):
        raise ValueError(INTERNATIONAL)
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a phone number: {exc._msg}") from None
    if not phonenumbers.is_possible_number(parsed):
        raise ValueError("not a possible phone number (wrong length for its country)")
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("not a valid phone number (no such number range in its country)")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
