"""Phone numbers: parsed and checked by Google's libphonenumber (the `phonenumbers` port)."""

from __future__ import annotations

import re
from functools import cache, lru_cache

import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneNumber
from phonenumbers.phonemetadata import PhoneMetadata

_PLAIN_E164 = re.compile(r"\+([1-9][0-9]{1,16})")


# Pure and ~20-50 µs a number: the numbers a service texts repeat (the same customers, the same
# on-call phones), so a small cache takes most of it off the publish path.
@lru_cache(maxsize=8192)
def normalize_e164(value: str) -> str:
    """Return the E.164 form of a possible, valid international number, or raise ValueError.

    Spaces, dashes and brackets are accepted (`+1 (415) 555-2671`); a national number without
    a country code is not, because a pipeline serving many countries cannot guess one.
    """
    text = value.strip()
    return plain_e164_if_valid(text) or _parse_and_check(text)


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
        raise ValueError("phone number must be in international format starting with '+' "
                         "and a country code, e.g. +14155552671")
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a phone number: {exc._msg}") from None
    if not phonenumbers.is_possible_number(parsed):
        raise ValueError("not a possible phone number (wrong length for its country)")
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("not a valid phone number (no such number range in its country)")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
