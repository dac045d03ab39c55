"""Console sessions: opaque ids, idle and absolute expiry, a bounded table, one-time flashes."""

from __future__ import annotations

from smsrelay.admin.auth import Identity
from smsrelay.admin.ui.sessions import SessionStore, check_form

OPERATOR = Identity("oncall", "operator")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_is_found_by_its_id_only() -> None:
    store = SessionStore()
    session_id, session = store.create(OPERATOR)
    other_id, other = store.create(Identity("grafana", "viewer"))
    assert store.get(session_id) is session and store.get(other_id) is other
    assert session.operator and not other.operator
    assert session_id != other_id and session.csrf != other.csrf
    assert len(session_id) >= 40  # 32 random bytes
    for wrong in (None, "", session_id[:-1], session_id + "x", "x" * 1000):
        assert store.get(wrong) is None
    store.drop(session_id)
    assert store.get(session_id) is None and store.get(other_id) is other


def test_idle_sessions_end_but_the_refresh_keeps_none_alive() -> None:
    clock = Clock()
    store = SessionStore(idle_s=60, max_age_s=3600, clock=clock)
    session_id, _ = store.create(OPERATOR)
    clock.now += 50
    assert store.get(session_id, touch=False) is not None  # the overview's refresh
    clock.now += 20  # 70 s since the last page view
    assert store.get(session_id) is None
    # A page view does keep it
    session_id, _ = store.create(OPERATOR)
    for _ in range(5):
        clock.now += 50
        assert store.get(session_id) is not None


def test_every_session_ends_after_its_maximum_age() -> None:
    clock = Clock()
    store = SessionStore(idle_s=60, max_age_s=300, clock=clock)
    session_id, _ = store.create(OPERATOR)
    for _ in range(5):
        clock.now += 59
        assert store.get(session_id) is not None
    clock.now += 10  # 305 s old
    assert store.get(session_id) is None


def test_the_table_is_bounded_and_swept() -> None:
    clock = Clock()
    store = SessionStore(idle_s=60, max_sessions=3, clock=clock)
    ids = [store.create(OPERATOR)[0] for _ in range(3)]
    assert store.get(ids[0]) is not None  # now the most recently used
    newest, _ = store.create(OPERATOR)
    assert len(store) == 3
    assert store.get(ids[1]) is None  # the least recently used went
    assert store.get(ids[0]) is not None and store.get(newest) is not None
    clock.now += 120
    store.create(OPERATOR)
    assert len(store) == 1  # the expired were swept


def test_flashes_are_shown_once_and_bounded() -> None:
    _, session = SessionStore().create(OPERATOR)
    for n in range(8):
        session.flash("ok", f"done {n}")
    flashes = session.take_flashes()
    assert [f.text for f in flashes] == [f"done {n}" for n in range(3, 8)]
    assert session.take_flashes() == []


def test_the_csrf_check() -> None:
    _, session = SessionStore().create(OPERATOR)
    assert check_form(session, session.csrf)
    for wrong in (None, "", session.csrf[:-1], session.csrf + "a", "é" * 5):
        assert not check_form(session, wrong)
