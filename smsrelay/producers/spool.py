"""The local disk spool: where a producer keeps requests while Redis cannot be reached.

One JSON file per request, written atomically (temp file, fsync, rename), so a crash never
leaves half a request. A flusher locks a file (flock) before publishing it and deletes it
after, so several processes may flush one spool without publishing a file twice.

Each file records where it belongs: the namespace and the Redis (its URL without credentials)
it was published for, in its content and, as a short hash, in its name
(`<time>-<message id>.<owner>.json`). A flusher publishes only its own owner's files, found by
name without reading the others; a request is never published into another namespace or
another Redis. Files from before owners were recorded (`<time>-<message id>.json`, no
`namespace` inside) are "legacy": never published unless an operator adopts them
(`smsrelay spool-flush --adopt-legacy`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_NAME_RE = re.compile(r"^(\d{20})-([0-9A-Fa-f-]{1,64})(?:\.([0-9a-f]{12}))?\.json$")
_FORMAT = 2  # 1: no namespace, no redis (legacy)


def redis_location(url: str) -> str:
    """The Redis a URL points at, without its credentials and options: safe to write down.

    `redis://user:secret@cache:6379/0?ssl_cert_reqs=none` -> `redis://cache:6379/0`.
    """
    without_query = url.split("?", 1)[0].split("#", 1)[0]
    scheme, sep, rest = without_query.partition("://")
    if not sep:
        return without_query
    # Every host of a comma-separated list (cluster seeds, sentinels) may carry credentials.
    hosts, slash, path = rest.partition("/")
    bare = ",".join(host.rpartition("@")[2] for host in hosts.split(","))
    return f"{scheme.lower()}://{bare.lower()}{slash}{path}"


@dataclass(frozen=True)
class SpoolOwner:
    """The namespace and Redis a spooled request belongs to."""

    namespace: str
    redis: str

    @classmethod
    def of(cls, namespace: str, redis_url: str) -> SpoolOwner:
        return cls(namespace, redis_location(redis_url))

    @property
    def tag(self) -> str:
        digest = hashlib.sha256(f"{self.namespace}\n{self.redis}".encode()).hexdigest()
        return digest[:12]

    def describe(self) -> str:
        return f"namespace '{self.namespace}' on {self.redis}"


@dataclass(frozen=True)
class SpooledRequest:
    path: Path
    shard: int
    fields: dict[str, str]
    idempotency_key: str | None
    owner: SpoolOwner | None  # None: a legacy file, its owner unknown

    @property
    def message_id(self) -> str:
        return self.fields.get("id", "")


@dataclass
class SpoolSurvey:
    """What a spool folder holds, from one owner's point of view."""

    directory: Path
    own: int = 0
    others: Counter[SpoolOwner] = field(default_factory=Counter)
    legacy: int = 0
    corrupt: int = 0

    @property
    def total(self) -> int:
        return self.own + sum(self.others.values()) + self.legacy + self.corrupt


class Spool:
    def __init__(self, directory: Path, owner: SpoolOwner) -> None:
        self.directory = directory
        self.owner = owner

    def write(self, shard: int, fields: dict[str, str], idempotency_key: str | None) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{fields['id']}.{self.owner.tag}.json"
        final = self.directory / name
        temp = self.directory / f".{name}.tmp"
        payload = json.dumps(
            {
                "format": _FORMAT,
                "namespace": self.owner.namespace,
                "redis": self.owner.redis,
                "shard": shard,
                "fields": fields,
                "idempotency_key": idempotency_key,
            }
        ).encode()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, final)
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return final

    def files(self) -> list[Path]:
        """Every spooled request in the folder, whoever it belongs to, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("*.json") if not p.name.startswith("."))

    def pending(self) -> list[Path]:
        """This owner's spooled requests, oldest first (by name: no file is read)."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"[0-9]*.{self.owner.tag}.json"))

    def legacy(self) -> list[Path]:
        """Files named as before owners were recorded, oldest first."""
        return [p for p in self.files() if (m := _NAME_RE.match(p.name)) and m.group(3) is None]

    def __len__(self) -> int:
        return len(self.pending())

    def survey(self) -> SpoolSurvey:
        """Count what the folder holds: this owner's, other owners', legacy and corrupt files."""
        survey = SpoolSurvey(self.directory)
        if not self.directory.is_dir():
            return survey
        survey.corrupt = sum(1 for _ in self.directory.glob("*.corrupt"))
        for path in self.files():
            match = _NAME_RE.match(path.name)
            if match and match.group(3) == self.owner.tag:
                survey.own += 1
                continue
            owner = self._owner_of(path)
            if owner is None:
                survey.legacy += 1
            elif owner == self.owner:  # renamed by hand: still ours
                survey.own += 1
            else:
                survey.others[owner] += 1
        return survey

    @staticmethod
    def _owner_of(path: Path) -> SpoolOwner | None:
        try:
            data = json.loads(path.read_bytes()[: 1 << 20])
            return SpoolOwner(str(data["namespace"]), str(data["redis"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @contextlib.contextmanager
    def claim(self, path: Path, *, adopt_legacy: bool = False) -> Iterator[SpooledRequest | None]:
        """Lock one spooled file; yields None if another flusher holds it, it is gone, or it
        belongs to another owner (a legacy file: unless `adopt_legacy`).

        The caller deletes it with `done()` once published; otherwise it stays for next time.
        """
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            if not path.exists():  # published and deleted by another flusher meanwhile
                yield None
                return
            request = self._read(path, fd)
            # The content decides, whatever the name says (a file copied or renamed by hand).
            foreign = request is not None and request.owner != self.owner
            adopted = adopt_legacy and request is not None and request.owner is None
            yield None if foreign and not adopted else request
        finally:
            os.close(fd)

    @staticmethod
    def _read(path: Path, fd: int) -> SpooledRequest | None:
        try:
            data: dict[str, Any] = json.loads(os.read(fd, 1 << 20))
            namespace, redis = data.get("namespace"), data.get("redis")
            return SpooledRequest(
                path=path,
                shard=int(data["shard"]),
                fields={str(k): str(v) for k, v in data["fields"].items()},
                idempotency_key=data.get("idempotency_key"),
                owner=(
                    SpoolOwner(str(namespace), str(redis))
                    if namespace is not None and redis is not None
                    else None
                ),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            # A corrupt file is kept aside for a human instead of being retried forever.
            with contextlib.suppress(OSError):
                path.rename(path.with_suffix(".corrupt"))
            return None

    @staticmethod
    def done(request: SpooledRequest) -> None:
        with contextlib.suppress(FileNotFoundError):
            request.path.unlink()
