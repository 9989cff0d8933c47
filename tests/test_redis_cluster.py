"""The Redis clients on a real 3-primary cluster (Valkey, cluster mode), started by the tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis as sync_redis
from redis.crc import key_slot

from bradax_cli.embedded import redis_server_binary
from common import keyspace
from common.errors import ServiceUnavailable
from common.redis import RedisStore
from common.settings import Settings
from tests.conftest import free_port, make_settings

SLOTS = 16384


class Cluster:
    """Three cluster-enabled Valkey primaries, each serving a third of the slots."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ports = [free_port() for _ in range(3)]
        # The bus port is set too: port + 10000 (the default) may be out of range or taken.
        self.bus_ports = [free_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def node(self, port: int) -> sync_redis.Redis:
        """A plain client of one node."""
        return sync_redis.Redis(port=port)

    def start(self) -> None:
        """Start the nodes, assign the slots, join them and wait for cluster_state:ok."""
        binary = redis_server_binary()
        for port, bus in zip(self.ports, self.bus_ports, strict=True):
            self.procs.append(
                subprocess.Popen(
                    [
                        binary,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        str(bus),
                        "--cluster-config-file",
                        str(self.folder / f"nodes-{port}.conf"),
                        "--cluster-node-timeout",
                        "2000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(self.folder),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            _wait(lambda port=port: self.node(port).ping())
        share = SLOTS // len(self.ports)
        for index, port in enumerate(self.ports):
            last = SLOTS - 1 if index == len(self.ports) - 1 else (index + 1) * share - 1
            self.node(port).execute_command("CLUSTER", "ADDSLOTSRANGE", index * share, last)
        first = self.node(self.ports[0])
        for port in self.ports[1:]:
            bus = self.bus_ports[self.ports.index(port)]
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus)

        def ready() -> bool:
            for port in self.ports:
                info = self.node(port).execute_command("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info or "cluster_known_nodes:3" not in info:
                    return False
            return True

        _wait(ready)

    def owner(self, key: str) -> int:
        """The port of the primary serving `key`'s slot."""
        slot = key_slot(key.encode())
        share = SLOTS // len(self.ports)
        return self.ports[min(slot // share, len(self.ports) - 1)]

    def stop(self) -> None:
        """Kill every node."""
        for proc in self.procs:
            proc.kill()
            proc.wait(5)


def _wait(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except sync_redis.RedisError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the cluster did not come up")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh 3-primary cluster for one test."""
    started = Cluster(tmp_path)
    try:
        started.start()
        yield started
    finally:
        started.stop()


@pytest.fixture
async def store(cluster: Cluster, database_url: str) -> AsyncIterator[RedisStore]:
    """A RedisStore in cluster mode, REDIS_URL naming the first node only."""
    settings: Settings = make_settings(
        database_url, f"redis://127.0.0.1:{cluster.ports[0]}", redis_cluster=True
    )
    client = RedisStore(settings)
    yield client
    await client.close()


def _projects_on_every_node(cluster: Cluster) -> list[str]:
    found: dict[int, str] = {}
    for n in range(200):
        project = f"proj_{n}"
        found.setdefault(cluster.owner(keyspace.budget(project, "202612")[0]), project)
    assert len(found) == 3
    return list(found.values())


async def test_scripts_and_commands_reach_each_projects_node(
    cluster: Cluster, store: RedisStore
) -> None:
    """With REDIS_URL naming one node, a script runs on the primary of its project's slot
    and plain commands are routed too: every node ends up holding its projects' budgets."""
    projects = _projects_on_every_node(cluster)
    for amount, project in enumerate(projects, 1):
        keys = [keyspace.budget(project, "202612")[0], keyspace.budget_orphans(project, "202612")]
        assert await store.run("rebuild.lua", keys, [amount, 60]) == amount
        assert await store.call("HGET", keys[0], "spent") == str(amount).encode()
    for amount, project in enumerate(projects, 1):
        key = keyspace.budget(project, "202612")[0]
        assert cluster.node(cluster.owner(key)).hget(key, "spent") == str(amount).encode()
    assert await store.ensure_supported()


async def test_ask_and_moved_are_followed_during_a_slot_migration(
    cluster: Cluster, store: RedisStore
) -> None:
    """While a project's slot migrates, the hot-path client follows ASK to the importing
    node (a script whose keys are split between the nodes meanwhile is a 503, TRYAGAIN);
    once the slot has moved, MOVED refreshes its map and it goes there directly."""
    project = _projects_on_every_node(cluster)[0]
    counter = keyspace.rate_limit(keyspace.project_scope("p", project), 3600, 1)
    take = ["take", 100, 3600]
    assert await store.run("failures.lua", [counter], take) == [0]
    budget = [keyspace.budget(project, "202612")[0], keyspace.budget_orphans(project, "202612")]
    assert await store.run("rebuild.lua", budget, [7, 60]) == 7
    slot = key_slot(counter.encode())
    assert slot == key_slot(budget[0].encode())
    source = cluster.owner(counter)
    target = next(port for port in cluster.ports if port != source)
    ids = {port: cluster.node(port).execute_command("CLUSTER", "MYID") for port in cluster.ports}
    cluster.node(target).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
    cluster.node(source).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
    cluster.node(source).execute_command(
        "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", counter, budget[0]
    )
    assert cluster.node(source).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    assert await store.run("failures.lua", [counter], take) == [0]  # through ASK
    with pytest.raises(ServiceUnavailable):  # the orphans key is on neither node yet
        await store.run("rebuild.lua", budget, [99, 60])
    for port in cluster.ports:
        cluster.node(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    assert await store.run("failures.lua", [counter], take) == [0]  # through MOVED
    assert await store.run("rebuild.lua", budget, [99, 60]) == 7
    assert cluster.node(target).get(counter) == b"3"
    assert await store.call("GET", counter) == b"3"
