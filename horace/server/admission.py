"""Who gets in: the counts of connections and sessions against the limits, the access
checks (token, Origin), and a throttled log of refusals.

Counts (:class:`Admission`): every TCP connection holds a :class:`Ticket` from accept
to close. It is *pending* while the server waits for or reads a request that belongs to
no session yet (``max_pending_connections``; past it a connection gets 503 unread). A
WebSocket upgrade moves its connection to a *session* slot (``max_connections``); a
Streamable HTTP session takes a session slot of its own, not tied to any connection,
from ``initialize`` to its end. A connection answering a request of an admitted HTTP
session (a call, an SSE stream) is *serving* meanwhile: it is a session's, not a
stranger's, so it does not hold a pending place (what one session can hold is bounded
by its calls: ``max_calls_per_connection``, and one GET stream).

When every pending place is taken, a new connection takes the place of the one that has
waited longest for a request head, once that one has waited ``EVICTABLE_AFTER``: connections
that send nothing (or a byte now and then) cannot keep every new client out, /health's
included, for as long as they are held open; a client that sends its request at once is
served, in a burst of them too (the new connection waits for a place meanwhile, rather
than take that of one whose request has come but not been read yet). A connection that goes
back to waiting (kept alive after serving a session's request) does the same when the
places are over-full.

Trio switches tasks only at checkpoints, so a check and the reservation right after it
(no ``await`` between) cannot be interleaved with another connection's.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import urlsplit

import trio
from attrs import frozen

from horace.logs import ThrottledLog

log = logging.getLogger("horace.server")

REFUSAL_LOG_INTERVAL = 10.0  # at most one line per kind of refusal in this time
# A WebSocket client that cannot send headers (a browser) offers the token as a
# subprotocol beside "mcp": "bearer." + the token in unpadded base64url, which any
# token survives (a subprotocol is an HTTP token: no "/", "=", spaces...).
SUBPROTOCOL_TOKEN_PREFIX = "bearer."
# How long a pending connection waits for a request head before a newer connection may take
# its place: a client that sends its request as it connects is read well within it, in a
# burst of hundreds.
EVICTABLE_AFTER = 1.0


class Ticket:
    """One connection's place in the counts: pending, a WebSocket session, serving a
    request of an HTTP session, or evicted (its place given to a newer connection)."""

    state = "pending"


class Admission:
    """How many connections are pending, sessions and serving, against the limits."""

    def __init__(self, max_pending: int, max_sessions: int) -> None:
        self.max_pending, self.max_sessions = max_pending, max_sessions
        self.pending = 0
        self.sessions = 0  # WebSocket and Streamable HTTP sessions
        self.serving = 0  # connections answering a request of an HTTP session
        self.turned_away = 0  # past max_pending with none to evict, since start
        self.evicted = 0  # pending connections that gave their place to a newer one, since start
        self.refused = 0  # sessions refused for want of a slot, since start
        # The pending connections waiting for a request head (each with the time it began
        # to, and what says whether bytes wait on it unread), longest waiting first.
        self._awaiting: dict[Ticket, tuple[trio.CancelScope, float, Callable[[], bool]]] = {}
        self._waiting_for_a_place = 0
        self._place_freed = trio.Event()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Ticket | None]:
        """A ticket for a new connection, given back on the way out whatever happened,
        from whichever count it is in by then. Past ``max_pending`` it waits up to
        ``EVICTABLE_AFTER`` for a place: one given back, or one a connection that has
        waited that long for a request head gives up. None when none comes, or as many new
        ones as there are places wait already."""
        give_up_at = trio.current_time() + EVICTABLE_AFTER
        while self.pending >= self.max_pending:
            now = trio.current_time()
            if self._evict_longest_waiting(since_at_most=now - EVICTABLE_AFTER):
                break
            if now >= give_up_at or self._waiting_for_a_place >= self.max_pending:
                self.turned_away += 1
                yield None
                return
            self._waiting_for_a_place += 1
            try:
                silent = self._silent()
                wake_at = give_up_at if silent is None else min(give_up_at, silent + EVICTABLE_AFTER)
                with trio.move_on_at(wake_at):
                    await self._place_freed.wait()
            finally:
                self._waiting_for_a_place -= 1
        ticket = Ticket()
        self.pending += 1
        try:
            yield ticket
        finally:
            if ticket.state == "session":
                self.sessions -= 1
            elif ticket.state != "evicted":
                self.pending -= 1
            self._free_a_place()

    @property
    def crowded(self) -> bool:
        """New connections wait for a place: an answer closes its connection (kept alive
        and idle, it would soon give its place up, as a next request came)."""
        return self._waiting_for_a_place > 0

    def _free_a_place(self) -> None:
        """Wake the new connections waiting for a place (each looks again)."""
        self._place_freed.set()
        self._place_freed = trio.Event()

    @contextmanager
    def awaiting_request(
        self, ticket: Ticket, deadline: float, unread: Callable[[], bool]
    ) -> Iterator[trio.CancelScope]:
        """The wait of *ticket*'s connection for its next request head, until *deadline*:
        cancelled early should a newer connection need its place (``ticket.state`` is
        "evicted" then), unless *unread* says bytes wait on it (its request came, and the
        server has not read it yet: busy, it may take a while)."""
        with trio.CancelScope(deadline=deadline) as waiting:
            self._awaiting[ticket] = (waiting, trio.current_time(), unread)
            # A connection back from serving an HTTP session (kept alive for its next
            # request) is pending again without arriving: the bound is kept here too, the
            # longest waiting going first (this one, when it is the only one waiting).
            while self.pending > self.max_pending and self._evict_longest_waiting():
                pass
            try:
                yield waiting
            finally:
                self._awaiting.pop(ticket, None)
        if ticket.state == "evicted" and not waiting.cancelled_caught:
            # Its request came before the eviction could stop the read: it is served
            # after all, so it counts again (over the bound until the next look evicts).
            ticket.state = "pending"
            self.pending += 1
            self.evicted -= 1

    def _silent(self) -> float | None:
        """Since when the longest waiting connection that sent nothing since has waited."""
        return next((since for _, since, unread in self._awaiting.values() if not unread()), None)

    def _evict_longest_waiting(self, since_at_most: float = math.inf) -> bool:
        """Give the place of the longest waiting connection that has sent nothing since
        (waiting since *since_at_most* or before) to a newer one; False when there is none."""
        ticket = next(
            (
                ticket
                for ticket, (_, since, unread) in self._awaiting.items()
                if since <= since_at_most and not unread()
            ),
            None,
        )
        if ticket is None:
            return False
        self._awaiting.pop(ticket)[0].cancel()
        ticket.state = "evicted"  # its place is the new connection's from now
        self.pending -= 1
        self.evicted += 1
        return True

    def take_session(self, ticket: Ticket) -> bool:
        """Move *ticket*'s connection (a WebSocket upgrade) from pending to a session
        slot; False when none is free."""
        if not self.take_http_session():
            return False
        self.pending -= 1
        ticket.state = "session"
        self._free_a_place()
        return True

    @property
    def full(self) -> bool:
        """Every session slot is taken."""
        return self.sessions >= self.max_sessions

    def take_http_session(self) -> bool:
        """A session slot for a Streamable HTTP session; False when none is free."""
        if self.full:
            self.refused += 1
            return False
        self.sessions += 1
        return True

    def give_back_http_session(self) -> None:
        self.sessions -= 1

    @contextmanager
    def serving_session(self, ticket: Ticket) -> Iterator[None]:
        """*ticket*'s connection answers a request of an admitted HTTP session: out of
        the pending count while it does."""
        ticket.state = "serving"
        self.pending -= 1
        self.serving += 1
        self._free_a_place()
        try:
            yield
        finally:
            self.serving -= 1
            self.pending += 1
            ticket.state = "pending"

    def counts(self) -> dict[str, int]:
        return {
            "sessions": self.sessions,
            "pending": self.pending,
            "serving": self.serving,
            "refused": self.refused,
            "turned_away": self.turned_away,
            "evicted": self.evicted,
        }


# -- access ---------------------------------------------------------------------------------


@frozen
class Refusal:
    status: int
    message: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(name: str) -> bool:
    """Whether the host name or address *name* is this host's own."""
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def hosts_served(bound: str, allowed: tuple[str, ...]) -> frozenset[str] | None:
    """The names a request's ``Host`` may give (None: any). A server that listens on a
    loopback address answers only for loopback names and those listed: a page whose own
    name an attacker made resolve to 127.0.0.1 (DNS rebinding) sends that name, and no
    Origin with a GET of its own site (``/health``). One that listens elsewhere answers
    for any name, unless names are listed."""
    if "*" in allowed or (not allowed and not is_loopback(bound.strip("[]").lower())):
        return None
    return frozenset(LOOPBACK_NAMES) | {_host_name(entry) for entry in allowed}


def _host_name(host: str) -> str:
    """The name a ``Host`` (or an allowed entry) gives, without its port, lower-cased:
    the name is what DNS rebinding forges; a proxy's port is none of its business."""
    try:
        parts = urlsplit(f"//{host}")
        parts.port  # noqa: B018 (a port that is not one raises: the Host is none)
    except ValueError:
        return ""
    if parts.path or parts.query or parts.fragment or parts.username is not None:
        return ""
    return (parts.hostname or "").lower()


def host_refusal(headers: Mapping[bytes, bytes], served: frozenset[str] | None) -> Refusal | None:
    """403 for a ``Host`` this server does not answer for (see :func:`hosts_served`); a
    request without one (HTTP/1.0, no browser's) is served."""
    raw = headers.get(b"host")
    if served is None or raw is None:
        return None
    host = raw.decode("latin-1")
    name = _host_name(host)
    if name in served or is_loopback(name):
        return None
    return Refusal(403, f"host {host!r} is not this server's name (HORACE_ALLOWED_HOSTS)")


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """No Origin (not a browser), a listed one, or a loopback page: DNS-rebinding safe.
    Origins are compared as browsers send them: scheme and name in lower case, without
    the scheme's default port or a trailing slash (``https://Ops.example:443/`` is
    ``https://ops.example``)."""
    if origin is None or "*" in allowed:
        return True
    if _origin(origin) in {_origin(entry) for entry in allowed}:
        return True
    try:
        host = urlsplit(origin).hostname or ""
    except ValueError:
        return False
    return host in LOOPBACK_NAMES


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(origin: str) -> str:
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return origin
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None:
        return origin  # no origin a browser sends (it has no path): matches nothing but itself
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    scheme = parts.scheme.lower()
    shown = "" if port is None or _DEFAULT_PORTS.get(scheme) == port else f":{port}"
    return f"{scheme}://{host}{shown}"


def access_refusal(
    headers: Mapping[bytes, bytes],
    token: str | None,
    allowed_origins: tuple[str, ...],
    *,
    websocket: bool = False,
) -> Refusal | None:
    """401 without the bearer token when one is set (``Authorization: Bearer``; for a
    WebSocket upgrade also the subprotocol form), 403 for an Origin not allowed."""
    if not authorized(headers, token, websocket=websocket):
        return Refusal(
            401, "a valid bearer token is required", ((b"www-authenticate", b'Bearer realm="horace"'),)
        )
    raw = headers.get(b"origin")
    origin = raw.decode("latin-1") if raw else None
    if not origin_allowed(origin, allowed_origins):
        return Refusal(403, f"origin {origin!r} is not allowed (HORACE_ALLOWED_ORIGINS)")
    return None


def authorized(headers: Mapping[bytes, bytes], token: str | None, *, websocket: bool = False) -> bool:
    if not token:
        return True
    expected = token.encode()
    scheme, _, credentials = headers.get(b"authorization", b"").partition(b" ")
    # The scheme in any case (RFC 9110 11.1): "bearer" is Bearer.
    if scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(b" "), expected):
        return True
    if websocket:
        offered = subprotocol_token(headers.get(b"sec-websocket-protocol", b""))
        return offered is not None and hmac.compare_digest(offered, expected)
    return False


def subprotocol_token(header: bytes) -> bytes | None:
    """The token offered as ``bearer.<base64url>`` among the subprotocols, if any."""
    for value in header.decode("latin-1").split(","):
        value = value.strip()
        if value.startswith(SUBPROTOCOL_TOKEN_PREFIX):
            encoded = value[len(SUBPROTOCOL_TOKEN_PREFIX) :]
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            except (binascii.Error, ValueError):
                return None
    return None


def subprotocol_for_token(token: str) -> str:
    """The subprotocol value that carries *token* (what a client offers beside "mcp")."""
    return SUBPROTOCOL_TOKEN_PREFIX + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def who(stream: trio.abc.Stream, headers: Mapping[bytes, bytes]) -> dict[str, str]:
    """Who a refused request came from, for its log line: the connection's peer, and
    what a proxy in front says in ``X-Forwarded-For`` (as given, trusted by nobody)."""
    said: dict[str, str] = {}
    inner = getattr(stream, "inner", stream)
    socket = getattr(inner, "socket", None)
    try:
        peer = socket.getpeername() if socket is not None else None
    except OSError:
        peer = None
    if isinstance(peer, tuple) and len(peer) >= 2:
        said["client"] = f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
    forwarded = headers.get(b"x-forwarded-for")
    if forwarded:
        said["forwarded_for"] = forwarded.decode("latin-1")[:200]
    return said


class RefusalLogs:
    """One throttled log per kind of refusal."""

    def __init__(self) -> None:
        self._logs: dict[str, ThrottledLog] = {}

    def warning(self, kind: str, message: str, *args: Any, **extra: Any) -> None:
        if kind not in self._logs:
            self._logs[kind] = ThrottledLog(log, interval=REFUSAL_LOG_INTERVAL)
        self._logs[kind].warning(message, *args, **extra)
