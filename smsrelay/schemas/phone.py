"""Phone numbers: parsed and checked by Google's libphonenumber (the `phonenumbers` port)."""

from __future__ import annotations

from functools import lru_cache

import phonenumbers


# Pure and ~20 µs a parse: the numbers a service texts repeat (the same customers, the same
# on-call phones), so a small cache takes most of it off the publish path.
@lru_cache(maxsize=8192)
def normalize_e164(value: str) -> str:
    """Return the E.164 form of a possible, valid international number, or raise ValueError.

    Spaces, dashes and brackets are accepted (`+1 (415) 555-2671`); a national number without
    a country code is not, because a pipeline serving many countries cannot guess one.
    """
    text = value.strip()
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
