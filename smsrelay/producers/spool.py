"""The local disk spool: where a producer keeps requests while Redis cannot be reached.

One JSON file per request, written atomically (temp file, fsync, rename), so a crash never
leaves half a request. A flusher locks a file (flock) before publishing it and deletes it
after, so several processes may flush one spool without publishing a file twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SpooledRequest:
    path: Path
    shard: int
    fields: dict[str, str]
    idempotency_key: str | None

    @property
    def message_id(self) -> str:
        return self.fields.get("id", "")


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def write(self, shard: int, fields: dict[str, str], idempotency_key: str | None) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{fields['id']}.json"
        final = self.directory / name
        temp = self.directory / f".{name}.tmp"
        payload = json.dumps(
            {"shard": shard, "fields": fields, "idempotency_key": idempotency_key}
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

    def pending(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("*.json") if not p.name.startswith("."))

    def __len__(self) -> int:
        return len(self.pending())

    @contextlib.contextmanager
    def claim(self, path: Path) -> Iterator[SpooledRequest | None]:
        """Lock one spooled file; yields None if another flusher holds it or it is gone.

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
            yield self._read(path, fd)
        finally:
            os.close(fd)

    @staticmethod
    def _read(path: Path, fd: int) -> SpooledRequest | None:
        try:
            data: dict[str, Any] = json.loads(os.read(fd, 1 << 20))
            return SpooledRequest(
                path=path,
                shard=int(data["shard"]),
                fields={str(k): str(v) for k, v in data["fields"].items()},
                idempotency_key=data.get("idempotency_key"),
            )
        except (ValueError, KeyError, TypeError):
            # A corrupt file is kept aside for a human instead of being retried forever.
            with contextlib.suppress(OSError):
                path.rename(path.with_suffix(".corrupt"))
            return None

    @staticmethod
    def done(request: SpooledRequest) -> None:
        with contextlib.suppress(FileNotFoundError):
            request.path.unlink()
