"""The spool knows where it belongs, and `smsrelay spool-flush` says exactly what it did.

Issue 12, defects 1 and 2: the command raced the Producer's background flusher (a request
left behind, exit 0, a count too low), and a spooled request did not record its namespace or
Redis, so a flush with other settings published it into the wrong place.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, cast

import pytest

from smsrelay.producers.publish import Producer
from smsrelay.producers.request import prepare
from smsrelay.producers.spool import Spool, SpoolOwner, redis_location
from smsrelay.settings import Settings, spool_root
from smsrelay.streams.keys import ShardKeys
from tests.conftest import make_settings
from tests.support.clients import redis_client
from tests.support.wait import wait_for

DOWN_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def _bodies(settings: Settings) -> list[str]:
    client = redis_client(settings.redis_url, decode_responses=True)
    try:
        entries = cast(list[Any], client.xrange(ShardKeys(settings.namespace).requests))
    finally:
        client.close()
    return [fields["body"] for _, fields in entries]


def _spool_some(spool: Spool, count: int, prefix: str = "spooled") -> list[Path]:
    """Requests spooled as a producer whose Redis was away would have spooled them."""
    paths = []
    for n in range(count):
        fields = prepare(f"+1415555{n:04d}", f"{prefix}-{n:02d}", None, None, None)
        assert isinstance(fields, dict)
        paths.append(spool.write(0, fields, None))
    return paths


def _spool_of(settings: Settings) -> Spool:
    return Spool(settings.spool_dir, SpoolOwner.of(settings.namespace, settings.redis_url))


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SMSRELAY_", "TWILIO_"))}
    return subprocess.run(
        [sys.executable, "-m", "smsrelay.cli", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _env(settings: Settings, **more: str) -> dict[str, str]:
    return {
        "SMSRELAY_REDIS_URL": settings.redis_url,
        "SMSRELAY_NAMESPACE": settings.namespace,
        "SMSRELAY_SPOOL_DIR": str(settings.spool_dir),
        **more,
    }


# -- defect 1: the command publishes everything, counts exactly, says what is left ---------------


def test_a_producer_without_background_flush_starts_no_flusher(settings: Settings) -> None:
    _spool_some(_spool_of(settings), 3)
    with Producer(settings, background_flush=False) as producer:
        assert not [t for t in threading.enumerate() if t.name == "smsrelay-spool"]
        assert producer.spooled() == 3
        flush = producer.drain_spool()
    assert (flush.published, flush.left, flush.error) == (3, 0, None)
    assert sorted(_bodies(settings)) == ["spooled-00", "spooled-01", "spooled-02"]


@pytest.mark.parametrize("run", range(3))
def test_spool_flush_publishes_every_request_and_counts_them(settings: Settings, run: int) -> None:
    _spool_some(_spool_of(settings), 20)
    done = _cli("spool-flush", env=_env(settings))
    assert done.returncode == 0, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    assert lines[0] == (
        f"published 20 spooled request(s) into namespace '{settings.namespace}' "
        f"on {redis_location(settings.redis_url)}"
    )
    assert lines[1] == f"nothing left in {settings.spool_dir}"
    assert len(_bodies(settings)) == 20
    assert list(settings.spool_dir.glob("*.json")) == []


def test_spool_flush_exits_1_and_names_a_request_another_flusher_holds(
    settings: Settings,
) -> None:
    held, *_ = _spool_some(_spool_of(settings), 5)
    fd = os.open(held, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running producer's flusher does
        done = _cli("spool-flush", env=_env(settings))
    finally:
        os.close(fd)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout.splitlines()[:3] == [
        f"published 4 spooled request(s) into namespace '{settings.namespace}' "
        f"on {redis_location(settings.redis_url)}",
        f"1 left in {settings.spool_dir}:",
        "  1 of this namespace: held by another flusher (a running producer), or Redis "
        "failed first: run spool-flush again",
    ]
    assert held.exists() and len(_bodies(settings)) == 4
    again = _cli("spool-flush", env=_env(settings))
    assert again.returncode == 0, again.stdout
    assert len(_bodies(settings)) == 5


def test_spool_flush_with_redis_away_exits_1_and_keeps_everything(
    namespace: str, tmp_path: Path
) -> None:
    down = make_settings(DOWN_URL, namespace, tmp_path, "http://127.0.0.1:9")
    _spool_some(_spool_of(down), 2)
    done = _cli("spool-flush", env=_env(down))
    assert done.returncode == 1
    assert done.stdout.splitlines()[1] == f"2 left in {down.spool_dir}:"
    assert done.stderr.startswith("smsrelay spool-flush: stopped by a Redis error: ")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr
    assert len(list(down.spool_dir.glob("*.json"))) == 2


# -- defect 2: a spooled request records where it belongs ----------------------------------------


def test_a_spooled_request_records_its_namespace_and_redis_never_the_password(
    namespace: str, tmp_path: Path
) -> None:
    url = "redis://app:s3cret-pw@127.0.0.1:1/3?health_check_interval=5"
    down = make_settings(url, namespace, tmp_path, "http://127.0.0.1:9")
    with Producer(down, background_flush=False) as producer:
        result = producer.publish("+14155552671", "kept on disk")
    assert result.status == "spooled"
    [path] = down.spool_dir.glob("*.json")
    raw = path.read_bytes()
    assert b"s3cret" not in raw and b"app:" not in raw
    data = json.loads(raw)
    assert (data["namespace"], data["redis"]) == (namespace, "redis://127.0.0.1:1/3")
    assert data["fields"]["id"] == result.message_id


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        (
            "rediss://user:pw@Cache.Example:6380/2?ssl_cert_reqs=none",
            "rediss://cache.example:6380/2",
        ),
        ("redis://:pw@h1:26379,:pw@h2:26379/0", "redis://h1:26379,h2:26379/0"),
        ("unix:///run/redis.sock?db=1", "unix:///run/redis.sock"),
    ],
)
def test_a_redis_location_keeps_no_credentials(url: str, location: str) -> None:
    assert redis_location(url) == location


def test_a_flush_publishes_only_its_own_namespace_and_reports_the_rest(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    # Given one shared spool folder holding requests of two namespaces
    mine = make_settings(redis_url, namespace, tmp_path, "http://127.0.0.1:9")
    theirs = make_settings(redis_url, namespace + "x", tmp_path, "http://127.0.0.1:9")
    _spool_some(_spool_of(theirs), 2, "theirs")
    _spool_some(_spool_of(mine), 1, "mine")
    try:
        # When a producer of one namespace flushes in the background
        with Producer(mine) as producer:
            wait_for(lambda: producer.spooled() == 0, 10, "its own request flushed")
        # Then the other namespace's requests are neither published nor touched
        assert _bodies(mine) == ["mine-00"] and _bodies(theirs) == []
        assert len(list(mine.spool_dir.glob("*.json"))) == 2
        # And spool-flush reports them, whose they are, and exits 1
        done = _cli("spool-flush", env=_env(mine))
        assert done.returncode == 1
        assert done.stdout.splitlines()[1:] == [
            f"2 left in {mine.spool_dir}:",
            f"  2 of namespace '{theirs.namespace}' on {redis_location(redis_url)}: not "
            f"published here; flush them with SMSRELAY_NAMESPACE={theirs.namespace} and "
            f"SMSRELAY_REDIS_URL for {redis_location(redis_url)}",
        ]
        # And their own settings publish them
        assert _cli("spool-flush", env=_env(theirs)).returncode == 0
        assert sorted(_bodies(theirs)) == ["theirs-00", "theirs-01"]
    finally:
        _delete_namespace(redis_url, theirs.namespace)


def test_a_flush_never_publishes_into_another_redis(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    # Requests spooled for another Redis (a down one) with the same namespace stay put.
    down = make_settings(DOWN_URL, namespace, tmp_path, "http://127.0.0.1:9")
    up = make_settings(redis_url, namespace, tmp_path, "http://127.0.0.1:9")
    _spool_some(_spool_of(down), 1)
    with Producer(up, background_flush=False) as producer:
        flush = producer.drain_spool()
    assert (flush.published, flush.survey.own) == (0, 0)
    assert dict(flush.survey.others) == {SpoolOwner(namespace, DOWN_URL): 1}
    assert _bodies(up) == []


def test_the_default_spool_folder_is_per_namespace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("SMSRELAY_SPOOL_DIR", "SMSRELAY_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    assert spool_root() == tmp_path / "cache" / "smsrelay" / "spool"
    assert Settings.load().spool_dir == spool_root() / "smsrelay"
    assert Settings.load(namespace="shop").spool_dir == spool_root() / "shop"
    monkeypatch.setenv("SMSRELAY_NAMESPACE", "clinic")
    assert Settings.load().spool_dir == spool_root() / "clinic"
    assert Settings.load(namespace="..").spool_dir == spool_root() / "%2E%2E"
    monkeypatch.setenv("SMSRELAY_SPOOL_DIR", str(tmp_path / "mine"))
    assert Settings.load().spool_dir == tmp_path / "mine"


def _legacy_file(directory: Path, body: str) -> Path:
    """A request spooled before files recorded their owner (the old format and name)."""
    fields = prepare("+14155552671", body, None, None, None)
    assert isinstance(fields, dict)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{1_700_000_000_000_000_000:020d}-{fields['id']}.json"
    path.write_text(json.dumps({"shard": 0, "fields": fields, "idempotency_key": None}))
    return path


def test_legacy_files_are_never_published_unless_adopted(settings: Settings) -> None:
    legacy = _legacy_file(settings.spool_dir, "from the old spool")
    with Producer(settings, background_flush=False) as producer:
        flush = producer.drain_spool()
    assert (flush.published, flush.survey.legacy) == (0, 1)
    done = _cli("spool-flush", env=_env(settings))
    assert done.returncode == 1
    assert done.stdout.splitlines()[1:] == [
        f"1 left in {settings.spool_dir}:",
        "  1 spooled before requests recorded their namespace: not published; find out whose "
        "they are, then run spool-flush --adopt-legacy with that app's settings (now: "
        f"namespace '{settings.namespace}')",
    ]
    assert legacy.exists() and _bodies(settings) == []
    adopted = _cli("spool-flush", "--adopt-legacy", env=_env(settings))
    assert adopted.returncode == 0, adopted.stdout
    assert _bodies(settings) == ["from the old spool"]
    assert not legacy.exists()


def test_spool_flush_reports_legacy_files_of_the_old_shared_folder(
    settings: Settings, tmp_path: Path
) -> None:
    # The old default folder (every app's before) holds a file; the new default is a
    # folder per namespace inside it.
    cache = tmp_path / "cache"
    old_root = cache / "smsrelay" / "spool"
    _legacy_file(old_root, "old shared folder")
    env = {**_env(settings), "XDG_CACHE_HOME": str(cache)}
    del env["SMSRELAY_SPOOL_DIR"]
    done = _cli("spool-flush", env=env)
    assert done.returncode == 1, done.stdout
    assert f"nothing left in {old_root / settings.namespace}" in done.stdout
    assert f"1 left in {old_root}:" in done.stdout
    assert _bodies(settings) == []
    adopted = _cli("spool-flush", "--adopt-legacy", env=env)
    assert adopted.returncode == 0, adopted.stdout
    assert _bodies(settings) == ["old shared folder"]


def _delete_namespace(redis_url: str, namespace: str) -> None:
    client = redis_client(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{{{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
