"""A replay renews a message's time to live: an expired message replayed is sent, not expired
again before its first attempt."""

from __future__ import annotations

from datetime import timedelta

from smsrelay import clock
from smsrelay.admin.replay import renew_expiry


def fields(created_ago_s: float, lifetime_s: float | None) -> dict[str, str]:
    created = clock.now() - timedelta(seconds=created_ago_s)
    out = {"id": "x", "created_at": clock.iso(created)}
    if lifetime_s is not None:
        out["expires_at"] = clock.iso(created + timedelta(seconds=lifetime_s))
    return out


def remaining(entry: dict[str, str]) -> float:
    return (clock.parse_iso(entry["expires_at"]) - clock.now()).total_seconds()


def test_its_own_lifetime_counts_again_from_the_replay() -> None:
    entry = fields(created_ago_s=3600, lifetime_s=300)  # an OTP that expired an hour ago
    renew_expiry(entry, ttl_seconds=0)
    assert 298 <= remaining(entry) <= 300


def test_without_its_own_expiry_the_settings_ttl_counts_from_the_replay() -> None:
    entry = fields(created_ago_s=7200, lifetime_s=None)
    renew_expiry(entry, ttl_seconds=600)
    assert 598 <= remaining(entry) <= 600


def test_no_expiry_anywhere_stays_none() -> None:
    entry = fields(created_ago_s=10, lifetime_s=None)
    renew_expiry(entry, ttl_seconds=0)
    assert "expires_at" not in entry


def test_an_unreadable_expiry_falls_back_to_the_settings() -> None:
    entry = {"id": "x", "created_at": "yesterday", "expires_at": "soon"}
    renew_expiry(entry, ttl_seconds=0)
    assert "expires_at" not in entry
