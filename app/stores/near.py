"""The near cache: what Redis said lately, kept in process memory and dropped the moment Redis
says it changed, so a cached read needs no network round trip.

It holds three things, all learnt from Redis answers: the values of keys under the tracked
prefixes (the generations `ink:gen:*` and the revocation markers `ink:revoked:*`, absent ones
included), cached answers keyed by the generations they were stored under, and session checks
keyed by the user generation and epoch they were made at. An answer or session check is used
only if every key it depends on has a known value here, equal to the one it was stored under.

Freshness comes from Redis itself. One connection per process speaks RESP3 and turns on
client-side tracking in broadcast mode for the tracked prefixes (`CLIENT TRACKING ON BCAST`):
whenever any client changes such a key (a write's generation bump, a revocation, an epoch bump,
an expiry or a flush), Redis pushes an invalidation on this connection, in the same turn of its
event loop in which it answers the writer. Before every use the near cache reads what has
arrived on that socket (one non-blocking `recv`, no await in between), so a request that comes
after the writer's answer finds the key forgotten and asks Redis: across processes the next
request sees the write, as without the near cache.

When the channel cannot vouch for that, nothing is served from memory:
  - the connection is not up (not yet, or lost: everything learnt is dropped on reconnection);
  - part of a message is still on its way;
  - Redis has not answered a heartbeat PING sent within the last `fresh_for` seconds (half of
    REDIS_TIMEOUT_SECONDS): a hung Redis is noticed before a writer's timed-out bump returns;
  - the Redis link is in its down window or owes an epoch bump.
What is learnt from an answer is kept only if no invalidation arrived while it was in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from typing import Protocol

from redis.asyncio.connection import parse_url


class LinkState(Protocol):
    """What the near cache asks of the Redis link (`app.stores.link.RedisLink`): whether Redis
    is in its down window, and whether the cache owes an epoch bump."""

    @property
    def available(self) -> bool: ...

    @property
    def stale(self) -> bool: ...


logger = logging.getLogger(__name__)

TRACKED_PREFIXES = ("ink:gen:", "ink:revoked:")
MAX_ENTRIES = 10_000
MAX_KEYS = 200_000
MAX_SESSIONS = 100_000
RECV_BYTES = 65_536
PING = b"*1\r\n$4\r\nPING\r\n"


class ChannelError(Exception):
    """The invalidation connection said something it should not, or went away."""


class _Incomplete(Exception):
    pass


class _Push(list[object]):
    """An out-of-band RESP3 push message (an invalidation)."""


def _parse(buf: bytearray, pos: int) -> tuple[object, int]:
    """One RESP2/RESP3 value from `buf` at `pos`, and where the next one starts."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    line = bytes(buf[pos + 1 : end])
    pos = end + 2
    if kind == 0x2B:  # + simple string
        return line, pos
    if kind == 0x2D:  # - error
        raise ChannelError(line.decode(errors="replace"))
    if kind in (0x3A, 0x2C, 0x28, 0x23):  # : integer, , double, ( big number, # boolean
        return line, pos
    if kind == 0x5F:  # _ null
        return None, pos
    if kind in (0x24, 0x3D, 0x21):  # $ bulk, = verbatim, ! bulk error
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise _Incomplete
        return bytes(buf[pos : pos + n]), pos + n + 2
    if kind in (0x2A, 0x7E, 0x3E, 0x25, 0x7C):  # * array, ~ set, > push, % map, | attribute
        n = int(line)
        if n < 0:
            return None, pos
        items: list[object] = []
        for _ in range(n * 2 if kind in (0x25, 0x7C) else n):
            item, pos = _parse(buf, pos)
            items.append(item)
        if kind == 0x7C:  # attributes describe the value after them
            return _parse(buf, pos)
        return (_Push(items) if kind == 0x3E else items), pos
    raise ChannelError(f"unexpected RESP type {chr(kind)!r}")


def _command(*parts: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class NearCache:
    def __init__(
        self,
        redis_url: str,
        link: LinkState,
        *,
        timeout_seconds: float,
        entry_ttl_seconds: float,
        session_ttl_seconds: float,
        retry_seconds: float,
    ) -> None:
        self._address = parse_url(redis_url)
        self._link = link
        self._timeout = timeout_seconds
        self._fresh_for = max(timeout_seconds / 2, 0.01)
        self._ping_every = self._fresh_for / 4
        self._dead_after = timeout_seconds * 4
        self._retry = max(retry_seconds, 0.05)
        self._entry_ttl = entry_ttl_seconds
        self._session_ttl = session_ttl_seconds
        # Values of tracked keys (None: the key does not exist), answers by "name:version",
        # session checks by session id: (expires, user id, role, version).
        self.keys: dict[str, bytes | None] = {}
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._sessions: dict[str, tuple[float, int, str, str]] = {}
        # Moves on every invalidation and every change of the connection: what was read from
        # Redis before a move may be outdated already.
        self.seq = 0
        self._sock: socket.socket | None = None
        self._healthy = False
        self._buf = bytearray()
        self._replies: deque[float] = deque()  # send times of the PINGs awaiting an answer
        self._answered_at = 0.0  # send time of the last PING Redis answered
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.supported = self._address.get("connection_class") is None and "path" not in (
            self._address
        )

    # --- is it fresh? ---------------------------------------------------------------------------

    def fresh(self) -> bool:
        """Whether memory may answer now: see the module's docstring. Reads the channel first."""
        if not self._healthy:
            self._start()
            return False
        if not self._drain():
            return False
        if not self._link.available or self._link.stale:
            return False
        now = time.monotonic()
        if not self._replies and now - self._answered_at > self._ping_every:
            self._send_ping(now)
        return now - self._answered_at <= self._fresh_for

    def fresh_since(self, seq: int) -> bool:
        """Fresh, and nothing was invalidated since `seq` was read."""
        return self.fresh() and self.seq == seq

    # --- reading and learning -------------------------------------------------------------------

    def version(self, keys: Sequence[str]) -> str | None:
        """The joined generations of `keys` (as the cache's Redis script builds it), if every
        one of them is known here."""
        parts = []
        for key in keys:
            if key not in self.keys:
                return None
            value = self.keys[key]
            parts.append("0" if value is None else value.decode())
        return ".".join(parts)

    def entry(self, name: str, version: str) -> bytes | None:
        key = f"{name}:{version}"
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found[1]

    def keep_entry(self, name: str, version: str, value: bytes) -> None:
        """An answer stored under `version`: never outdated itself (a write moves the version
        instead), so it may be kept whatever happened meanwhile."""
        key = f"{name}:{version}"
        self._entries[key] = (time.monotonic() + self._entry_ttl, value)
        self._entries.move_to_end(key)
        if len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)

    def learn(self, values: Iterable[tuple[str, bytes | None]]) -> None:
        """Key values just read from Redis; call only after `fresh_since` said yes."""
        if len(self.keys) > MAX_KEYS:
            self.keys.clear()
            self.seq += 1
        for key, value in values:
            self.keys[key] = value

    def session(self, session_id: str, user_id: int, version: str) -> str | None:
        """The role of a session checked live at `version`, if that is still the version."""
        found = self._sessions.get(session_id)
        if found is None or found[1] != user_id or found[3] != version:
            return None
        if found[0] < time.monotonic():
            del self._sessions[session_id]
            return None
        return found[2]

    def keep_session(self, session_id: str, user_id: int, role: str, version: str) -> None:
        if len(self._sessions) > MAX_SESSIONS:
            self._sessions.clear()
        self._sessions[session_id] = (time.monotonic() + self._session_ttl, user_id, role, version)

    def forget(self, keys: Iterable[str]) -> None:
        """This process changed these keys: forget them now, before its own answer goes out
        (its channel may not have delivered the invalidation yet)."""
        for key in keys:
            self.keys.pop(key, None)
        self.seq += 1

    def forget_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def clear(self) -> None:
        self.keys.clear()
        self._entries.clear()
        self._sessions.clear()
        self.seq += 1

    # --- the channel ----------------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None and not self._closed and self.supported:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._closed:
            try:
                await self._connect()
                while self._healthy:
                    await asyncio.sleep(self._ping_every)
                    if not self._drain():
                        continue
                    now = time.monotonic()
                    if self._replies and now - self._replies[0] > self._dead_after:
                        raise ChannelError("no answer to a heartbeat")
                    if not self._replies:
                        self._send_ping(now)
            except (OSError, TimeoutError, ChannelError, ValueError) as exc:
                logger.info("near cache channel down", extra={"error": repr(exc)})
            self._disconnect()
            await asyncio.sleep(self._retry)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        host = str(self._address.get("host", "127.0.0.1"))
        port = int(self._address.get("port", 6379))
        family, kind, proto, _, address = (
            await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        async with asyncio.timeout(self._timeout * 4):
            await loop.sock_connect(sock, address)
            hello: list[str | bytes] = ["HELLO", "3"]
            if self._address.get("password") is not None:
                user = str(self._address.get("username") or "default")
                hello += ["AUTH", user, str(self._address["password"])]
            tracking: list[str | bytes] = ["CLIENT", "TRACKING", "ON", "BCAST"]
            for prefix in TRACKED_PREFIXES:
                tracking += ["PREFIX", prefix]
            await loop.sock_sendall(sock, _command(*hello) + _command(*tracking))
            # Two replies (the HELLO map, +OK), in order; an error raises ChannelError.
            answered = 0
            while answered < 2:
                data = await loop.sock_recv(sock, RECV_BYTES)
                if not data:
                    raise ChannelError("closed during the handshake")
                self._buf += data
                answered += self._parse_available(handshake=True)
        self.clear()  # nothing learnt before this connection is vouched for
        self._healthy = True
        self._send_ping(time.monotonic())

    def _disconnect(self) -> None:
        self._healthy = False
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf.clear()
        self._replies.clear()
        self._answered_at = 0.0
        self.clear()

    def _send_ping(self, now: float) -> None:
        assert self._sock is not None
        try:
            sent = self._sock.send(PING)
        except OSError:
            sent = 0
        if sent != len(PING):
            self._broken()
            return
        self._replies.append(now)

    def _broken(self) -> None:
        """Lost in the middle of a request: nothing more is served from memory; the channel's
        task notices and reconnects."""
        self._healthy = False
        self.clear()

    def _drain(self) -> bool:
        """Reads and applies everything that has arrived; False if the channel broke or a
        message is only partly here."""
        sock = self._sock
        if sock is None or not self._healthy:
            return False
        while True:
            try:
                data = sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._broken()
                return False
            if not data:
                self._broken()
                return False
            self._buf += data  # and read on: the end of the connection may come right after
        if self._buf:
            try:
                self._parse_available(handshake=False)
            except (ChannelError, ValueError):
                self._broken()
                return False
        return not self._buf

    def _parse_available(self, *, handshake: bool) -> int:
        """Applies every complete message in the buffer; returns how many were replies."""
        buf = self._buf
        pos = 0
        replies = 0
        try:
            while pos < len(buf):
                value, pos = _parse(buf, pos)
                if isinstance(value, _Push):
                    self._invalidate(value)
                    continue
                replies += 1
                if not handshake:
                    if not self._replies:
                        raise ChannelError(f"unexpected reply {value!r}")
                    self._answered_at = max(self._answered_at, self._replies.popleft())
        except _Incomplete:
            pass
        del buf[:pos]
        return replies

    def _invalidate(self, push: _Push) -> None:
        if len(push) < 2 or push[0] != b"invalidate":
            return
        keys = push[1]
        if isinstance(keys, list):
            for key in keys:
                if isinstance(key, bytes):
                    self.keys.pop(key.decode(), None)
            self.seq += 1
        else:
            # A flush: the generations start again from 0, so the answers and session checks
            # kept under the old values would match again. Everything goes.
            self.clear()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._disconnect()
