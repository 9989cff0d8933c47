"""The hot-path RESP client on a Redis Cluster: one pipelined connection per primary.

A slot map (CLUSTER SLOTS) is read from any node named by the URL at the first command and
again whenever a node answers MOVED (the slot moved for good). A command goes to the primary
owning its first key's slot (CRC16 of the key, or of its {hash tag}); an ASK reply (the slot
is being migrated and the key already left) is followed once, with ASKING, without touching
the map. Credentials, TLS (rediss://) and timeouts of the URL apply to every node.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from redis.crc import key_slot
from redis.exceptions import ResponseError

from common.resp import RespClient, RespConnectionError

SLOTS = 16384
MAX_REDIRECTS = 5


def _encode(key: Any) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


class ClusterRespClient:
    """Route each command to its slot's primary; follow MOVED (refresh) and ASK (once)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self._url = urlsplit(url)
        self._timeout = timeout
        self._nodes: dict[tuple[str, int], RespClient] = {}
        self._slots: list[tuple[str, int] | None] = [None] * SLOTS
        self._mapped = False
        self._refreshing: asyncio.Lock | None = None

    def _node(self, address: tuple[str, int]) -> RespClient:
        client = self._nodes.get(address)
        if client is None:
            client = RespClient(_node_url(self._url, address), timeout=self._timeout)
            self._nodes[address] = client
        return client

    def _seed(self) -> tuple[str, int]:
        return (self._url.hostname or "127.0.0.1", self._url.port or 6379)

    async def refresh(self) -> None:
        """Read the slot map from a known node (the URL's first)."""
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            candidates = [self._seed(), *(a for a in self._nodes if a != self._seed())]
            error: Exception | None = None
            for address in candidates:
                try:
                    reply = await self._node(address).execute("CLUSTER", "SLOTS")
                except (RespConnectionError, ResponseError) as exc:
                    error = exc
                    continue
                slots: list[tuple[str, int] | None] = [None] * SLOTS
                for entry in reply:
                    start, end, primary = int(entry[0]), int(entry[1]), entry[2]
                    host = primary[0].decode() if primary[0] else address[0]
                    owner = (host, int(primary[1]))
                    for slot in range(start, end + 1):
                        slots[slot] = owner
                self._slots, self._mapped = slots, True
                return
            raise RespConnectionError(f"no cluster node answered CLUSTER SLOTS: {error}")

    async def execute(self, *args: Any) -> Any:
        """A command without keys (INFO, SCRIPT LOAD): sent to the URL's node."""
        return await self._node(self._seed()).execute(*args)

    async def broadcast(self, *args: Any) -> list[Any]:
        """A command sent to every primary (SCRIPT LOAD before a script's first use)."""
        if not self._mapped:
            await self.refresh()
        owners = {owner for owner in self._slots if owner is not None}
        return list(await asyncio.gather(*(self._node(a).execute(*args) for a in owners)))

    async def execute_keyed(self, key: Any, *args: Any) -> Any:
        """Send a command to the primary serving `key`'s slot and return its reply."""
        if not self._mapped:
            await self.refresh()
        slot = key_slot(_encode(key))
        asking: tuple[str, int] | None = None
        for _ in range(MAX_REDIRECTS):
            if asking is not None:
                target, asking = asking, None
                client = self._node(target)
                replies = await client.execute_many([("ASKING",), args])
                reply = replies[1]
                if isinstance(reply, ResponseError):
                    error: ResponseError = reply
                else:
                    return reply
            else:
                owner = self._slots[slot]
                if owner is None:
                    await self.refresh()
                    owner = self._slots[slot]
                    if owner is None:
                        raise ResponseError(f"CLUSTERDOWN Hash slot {slot} not served")
                try:
                    return await self._node(owner).execute(*args)
                except ResponseError as exc:
                    error = exc
            word, _, rest = str(error).partition(" ")
            if word == "MOVED":
                await self.refresh()
                continue
            if word == "ASK":
                host, _, port = rest.split(" ")[-1].rpartition(":")
                asking = (host or self._seed()[0], int(port))
                continue
            raise error
        raise ResponseError("TRYAGAIN too many cluster redirections")

    def close(self) -> None:
        """Close every node's connection; commands in flight fail."""
        for client in self._nodes.values():
            client.close()
        self._nodes.clear()
        self._mapped = False


def _node_url(seed: SplitResult, address: tuple[str, int]) -> str:
    """The seed URL's scheme, credentials and options with another node's address."""
    userinfo = ""
    if seed.username or seed.password:
        userinfo = f"{seed.username or ''}:{seed.password or ''}@"
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    netloc = f"{userinfo}{host}:{address[1]}"
    return urlunsplit((seed.scheme, netloc, "", seed.query, ""))
