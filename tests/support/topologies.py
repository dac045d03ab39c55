"""Redis deployments of the tests' own, from the redis-server on the machine (no Docker):

- `LocalCluster`: a Redis Cluster of 3 masters and 3 replicas (`--cluster-enabled yes`, AOF on,
  node timeout 1 s, `--cluster-replica-validity-factor 0` so a replica is promoted within about
  2 s of its master's SIGKILL), made with `redis-cli --cluster create`;
- `LocalSentinel`: a master, a replica and 3 sentinels (`redis-server CONF --sentinel`),
  quorum 2, down after 1 s.

Each lives in a temporary directory on loopback ports (a cluster node's bus port is its port +
10000, so ports stay at or below 55535). `kill()` is SIGKILL; `restart()` starts a node again
on its data directory (an old master rejoins as a replica).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.support.clients import track
from tests.support.servers import LOOPBACK, require_tool
from tests.support.wait import wait_for

MAX_PORT = 55535  # a cluster bus port is port + 10000
_taken: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_node_port() -> int:
    """A free loopback port <= 55535 whose bus port (+10000) is free too."""
    for _ in range(1000):
        port = random.randint(20000, MAX_PORT)
        if port not in _taken and _bindable(port) and _bindable(port + 10000):
            _taken.add(port)
            return port
    raise AssertionError("no free port pair for a Redis Cluster node")


def _client(port: int, timeout: float = 2.0) -> redis.Redis:
    return track(
        redis.Redis(host=LOOPBACK, port=port, socket_timeout=timeout, socket_connect_timeout=1)
    )


def _command(client: redis.Redis, *args: Any) -> Any:
    """A raw command (redis-py leaves `execute_command` untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _answers(port: int) -> bool:
    client = _client(port)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _online_replicas(info: dict[str, Any]) -> int:
    """Replicas past their first sync (state=online) in a master's INFO replication."""
    return sum(
        1
        for name, value in info.items()
        if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )


@dataclass
class Node:
    """One redis-server process (a cluster node, a master, a replica or a sentinel)."""

    port: int
    directory: Path
    argv: list[str]
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.popen is None or self.popen.poll() is not None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.popen = subprocess.Popen(
            self.argv,
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(self._ready, 20, f"redis-server on port {self.port}")

    def _ready(self) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"redis-server exited with {self.popen.returncode}:\n{log}")
        return _answers(self.port)

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync."""
        if self.running:
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait(timeout=10)

    def client(self) -> redis.Redis:
        return _client(self.port)


def _server_argv(port: int, directory: Path, *extra: str) -> list[str]:
    return [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        LOOPBACK,
        "--dir",
        str(directory),
        "--save",
        "",
        "--daemonize",
        "no",
        "--logfile",
        str(directory / "redis.log"),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        # A replica's first sync starts at once (Redis 7 waits 5 s for more replicas by
        # default: writes meanwhile would be on the master alone).
        "--repl-diskless-sync-delay",
        "0",
        *extra,
    ]


def replica_of(master_port: int, root: Path) -> Node:
    """A replica of the Redis on `master_port` (not started)."""
    port = free_node_port()
    directory = root / f"replica-{port}"
    return Node(
        port, directory, _server_argv(port, directory, "--replicaof", LOOPBACK, str(master_port))
    )


@dataclass
class LocalCluster:
    root: Path
    masters: int = 3
    replicas_per_master: int = 1
    nodes: dict[int, Node] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Every master as a seed node (the client finds the rest)."""
        seeds = ",".join(f"{LOOPBACK}:{port}" for port in list(self.nodes)[: self.masters])
        return f"redis://{seeds}/0"

    def start(self) -> None:
        require_tool("redis-server", "apt-get install redis-server")
        require_tool("redis-cli", "apt-get install redis-tools")
        for _ in range(self.masters * (1 + self.replicas_per_master)):
            port = free_node_port()
            directory = self.root / str(port)
            self.nodes[port] = Node(
                port,
                directory,
                _server_argv(
                    port,
                    directory,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{port}.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-replica-validity-factor",
                    "0",
                ),
            )
        for node in self.nodes.values():
            node.start()
        create = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"{LOOPBACK}:{port}" for port in self.nodes),
                "--cluster-replicas",
                str(self.replicas_per_master),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert create.returncode == 0, create.stdout[-2000:] + create.stderr[-2000:]
        wait_for(self.healthy, 30, "the cluster to be up with every replica in sync")

    def _info(self, port: int) -> dict[str, str]:
        client = _client(port)
        try:
            raw = _command(client, "CLUSTER", "INFO")
        finally:
            client.close()
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def _roles(self) -> dict[int, str]:
        """Each live node's role as it says itself (master or slave)."""
        roles: dict[int, str] = {}
        for port, node in self.nodes.items():
            if not node.running:
                continue
            client = node.client()
            try:
                role = _command(client, "ROLE")
                roles[port] = role[0].decode() if isinstance(role[0], bytes) else str(role[0])
            except redis.RedisError:
                pass
            finally:
                client.close()
        return roles

    def master_ports(self) -> list[int]:
        return [port for port, role in self._roles().items() if role == "master"]

    def healthy(self) -> bool:
        """Every live node sees the cluster ok, and every master has its replicas online."""
        try:
            for port, node in self.nodes.items():
                if node.running and self._info(port).get("cluster_state") != "ok":
                    return False
            for port in self.master_ports():
                client = _client(port)
                try:
                    info = client.info("replication")
                finally:
                    client.close()
                if _online_replicas(info) < self.replicas_per_master:
                    return False
        except redis.RedisError:
            return False
        return True

    def master_of(self, key: str) -> int:
        """The port of the master that holds `key`'s slot now."""
        for port in self.master_ports():
            client = _client(port)
            try:
                slot = int(_command(client, "CLUSTER", "KEYSLOT", key))
                for start, end, primary, *_ in _command(client, "CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end):
                        return int(primary[1])
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise AssertionError(f"no master answers for {key}")

    def kill(self, port: int) -> None:
        self.nodes[port].kill()

    def restart(self, port: int) -> None:
        self.nodes[port].start()

    def migrate_slot_of(self, key: str, to_port: int, batch: int = 10) -> None:
        """Move `key`'s slot to the master on `to_port`, key by key (clients meanwhile get ASK,
        then MOVED), as `redis-cli --cluster reshard` does."""
        source_port = self.master_of(key)
        source, target = _client(source_port, 10), _client(to_port, 10)
        try:
            slot = int(_command(source, "CLUSTER", "KEYSLOT", key))
            source_id = _command(source, "CLUSTER", "MYID").decode()
            target_id = _command(target, "CLUSTER", "MYID").decode()
            _command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            _command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := _command(source, "CLUSTER", "GETKEYSINSLOT", slot, batch):
                _command(source, "MIGRATE", LOOPBACK, to_port, "", 0, 5000, "KEYS", *keys)
            for port in (to_port, source_port, *self.master_ports()):
                client = _client(port)
                try:
                    _command(client, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
                finally:
                    client.close()
        finally:
            source.close()
            target.close()

    def wait_failover(self, killed: int, timeout: float = 30) -> float:
        """Seconds until the killed master's replica took its slots and the cluster is ok."""

        def promoted() -> bool:
            live = [p for p, n in self.nodes.items() if n.running]
            try:
                return all(self._info(p).get("cluster_state") == "ok" for p in live) and (
                    len(self.master_ports()) >= self.masters
                )
            except redis.RedisError:
                return False

        return wait_for(promoted, timeout, f"a replica of {killed} to be promoted")

    def close(self) -> None:
        for node in self.nodes.values():
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class LocalSentinel:
    root: Path
    master_name: str = "mymaster"
    sentinels: int = 3
    data: dict[int, Node] = field(default_factory=dict)  # master and replica
    watchers: dict[int, Node] = field(default_factory=dict)  # the sentinels

    @property
    def url(self) -> str:
        hosts = ",".join(f"{LOOPBACK}:{port}" for port in self.watchers)
        return f"redis://{hosts}/0"

    def start(self) -> None:
        require_tool("redis-server", "apt-get install redis-server")
        master, replica = free_node_port(), free_node_port()
        self.data[master] = Node(master, self.root / str(master), [])
        self.data[master].argv = _server_argv(master, self.data[master].directory)
        replica_dir = self.root / str(replica)
        self.data[replica] = Node(
            replica,
            replica_dir,
            _server_argv(replica, replica_dir, "--replicaof", LOOPBACK, str(master)),
        )
        for node in self.data.values():
            node.start()
        wait_for(lambda: self._replicas_of(master) >= 1, 20, "the replica to sync")
        for _ in range(self.sentinels):
            port = free_node_port()
            directory = self.root / f"sentinel-{port}"
            directory.mkdir(parents=True)
            conf = directory / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind {LOOPBACK}\ndir {directory}\n"
                f"logfile {directory / 'redis.log'}\n"
                f"sentinel monitor {self.master_name} {LOOPBACK} {master} 2\n"
                f"sentinel down-after-milliseconds {self.master_name} 1000\n"
                f"sentinel failover-timeout {self.master_name} 3000\n"
                f"sentinel parallel-syncs {self.master_name} 1\n"
            )
            self.watchers[port] = Node(port, directory, ["redis-server", str(conf), "--sentinel"])
        for node in self.watchers.values():
            node.start()
        wait_for(self._sentinels_agree, 20, "every sentinel to see the replica and the others")

    def _replicas_of(self, port: int) -> int:
        client = _client(port)
        try:
            return _online_replicas(client.info("replication"))
        except redis.RedisError:
            return 0
        finally:
            client.close()

    def _sentinels_agree(self) -> bool:
        for node in self.watchers.values():
            client = node.client()
            try:
                info: Any = client.sentinel_master(self.master_name)
                if int(info["num-slaves"]) < 1 or int(info["num-other-sentinels"]) < (
                    self.sentinels - 1
                ):
                    return False
            except redis.RedisError:
                return False
            finally:
                client.close()
        return True

    def master_port(self) -> int:
        """The master as the sentinels name it now."""
        for node in self.watchers.values():
            if not node.running:
                continue
            client = node.client()
            try:
                address: Any = client.sentinel_get_master_addr_by_name(self.master_name)
                if address:
                    return int(address[1])
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise AssertionError("no sentinel answers")

    def kill(self, port: int) -> None:
        self.data[port].kill()

    def restart(self, port: int) -> None:
        """Start a killed server again; the sentinels make an old master a replica."""
        self.data[port].start()

    def wait_failover(self, old_master: int, timeout: float = 30) -> float:
        def promoted() -> bool:
            try:
                new = self.master_port()
            except AssertionError:
                return False
            if new == old_master:
                return False
            client = _client(new)
            try:
                return _command(client, "ROLE")[0] in (b"master", "master")
            except redis.RedisError:
                return False
            finally:
                client.close()

        return wait_for(promoted, timeout, f"a replica of {old_master} to be promoted")

    def wait_replicated(self, timeout: float = 30) -> None:
        wait_for(lambda: self._replicas_of(self.master_port()) >= 1, timeout, "a replica")

    def close(self) -> None:
        for node in [*self.watchers.values(), *self.data.values()]:
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def local_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="smsrelay-cluster-")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@contextmanager
def local_sentinel() -> Iterator[LocalSentinel]:
    sentinel = LocalSentinel(Path(tempfile.mkdtemp(prefix="smsrelay-sentinel-")))
    try:
        sentinel.start()
        yield sentinel
    finally:
        sentinel.close()
