"""The server's lifecycle: listen, serve sessions, report health, shut down gracefully.

Nursery layout (each level owns the next):

    serve()                         signals, supervised children (sinks, watcher, purge)
      HoraceServer.run()
        connections nursery         one task per TCP connection (Front.handle), and
                                    one per Streamable HTTP session (they outlive connections)
          WebSocketSession.run()    one nursery per session: one task per message
          HttpSession.run()         one nursery per session: one task per request
            tools/call              its own cancel scope (deadline) and nursery (McpSession)

Shutdown: stop accepting, tell sessions (both kinds) to take no more messages, let calls
finish within ``shutdown_grace``, then cancel what is left; the backend closes last.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio
from trio_websocket import WebSocketConnection

import horace
from horace.backends.protocol import OUTAGES
from horace.catalog import Catalog
from horace.config import Settings
from horace.model import CannotListen
from horace.redact import redact_url
from horace.server.admission import is_loopback
from horace.server.front import Front
from horace.server.httpsession import HttpSession
from horace.server.mcp import McpSession
from horace.server.observer import Observer
from horace.server.replyroom import ReplyRoom
from horace.server.websocket import WebSocketSession
from horace.server.wsintake import MessageIntake

log = logging.getLogger("horace.server")
HEALTH_TIMEOUT = 2.0
# How long a write the database refused for its state (full, read-only, damaged) keeps
# /health degraded: past it with no new refusal, the writes are taken to work again.
REFUSALS_SHOWN = 60.0

HealthPart = Callable[[], dict[str, Any]]


async def listen(settings: Settings) -> list[trio.SocketListener]:
    """The server's listening sockets, or :class:`CannotListen` (the port taken, a host
    that does not resolve). ``serve`` takes them before it opens the store, so that such
    a start leaves nothing behind; connections wait in the backlog until it serves."""
    try:
        return await trio.open_tcp_listeners(settings.port, host=settings.host)
    except OSError as exc:  # a name that does not resolve (socket.gaierror) too
        raise CannotListen(settings.host, settings.port, exc) from exc


class HoraceServer:
    def __init__(self, settings: Settings, catalog: Catalog, observer: Observer | None = None) -> None:
        self.settings = settings
        self.catalog = catalog
        self.observer = observer
        self.sessions: set[WebSocketSession | HttpSession] = set()
        # Every session's replies in the making or unread, together (a session's own room
        # is within it).
        self.reply_room = ReplyRoom(settings.max_pending_reply_bytes_total)
        # Messages past LARGE_REQUEST_BYTES, of every session: one at a time.
        self.large_requests = trio.CapacityLimiter(1)
        self.health_parts: dict[str, HealthPart] = {}  # e.g. sinks, watcher: name -> state
        self.port: int | None = None
        self._accepting = trio.CancelScope()
        self._idle = trio.Event()
        self._idle.set()
        self._nursery: trio.Nursery | None = None  # where connections and HTTP sessions run
        self.front = Front(settings, self.health, self._run_session, self)
        self.stopped = False

    async def run(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[HoraceServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on *listeners* (from :func:`listen`) until shut down; they are closed then."""
        self.port = listeners[0].socket.getsockname()[1]
        log.info(
            "listening on %s:%s",
            self.settings.host,
            self.port,
            extra={"backend": redact_url(self.catalog.backend.url), "version": horace.__version__},
        )
        if self.settings.auth_token is None and not all(
            is_loopback(listener.socket.getsockname()[0]) for listener in listeners
        ):
            log.warning(
                "serving on %s with no HORACE_AUTH_TOKEN set, so whoever reaches the port may read, "
                "change and delete every file; set a token, or serve on 127.0.0.1",
                self.settings.host,
            )
        async with trio.open_nursery() as connections:
            self._nursery = connections
            with self._accepting:
                task_status.started(self)
                await trio.serve_listeners(self.front.handle, listeners, handler_nursery=connections)
            for listener in listeners:
                await listener.aclose()
            for session in list(self.sessions):
                session.drain()
            with trio.move_on_after(self.settings.shutdown_grace):
                await self._idle.wait()
            if self.sessions:
                log.warning(
                    "cancelling %d sessions still busy after %g s",
                    len(self.sessions),
                    self.settings.shutdown_grace,
                )
            connections.cancel_scope.cancel()
        self.stopped = True  # its listeners closed and its sessions ended
        log.info("stopped")

    def shutdown(self) -> None:
        """Stop accepting; running calls get ``shutdown_grace`` seconds to finish."""
        self._accepting.cancel()

    def new_session(self, transport: str) -> McpSession:
        return McpSession(
            self.catalog,
            self.settings,
            self.observer,
            transport=transport,
            server_room=self.reply_room,
            large_requests=self.large_requests,
        )

    async def _run_session(self, ws: WebSocketConnection, intake: MessageIntake) -> None:
        await self._serve(WebSocketSession(ws, intake, self.new_session("websocket")))

    async def start(self, session: HttpSession) -> None:
        """Run a Streamable HTTP session among the others; return once it is running."""
        assert self._nursery is not None
        await self._nursery.start(self._serve, session)

    async def _serve(
        self,
        session: WebSocketSession | HttpSession,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.sessions.add(session)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        log.info("session opened", extra={"conversation_id": session.conversation_id})
        try:
            if self._accepting.cancel_called:
                session.drain()
            if isinstance(session, HttpSession):
                await session.run(task_status=task_status)
            else:
                task_status.started()
                await session.run()
        except Exception:
            # A bug met by one session ends that session, never the server (an HTTP
            # session runs in the connections nursery: uncaught, it would cancel them all).
            log.exception("session failed", extra={"conversation_id": session.conversation_id})
        finally:
            self.sessions.discard(session)
            if not self.sessions:
                self._idle.set()
            log.info("session closed", extra={"conversation_id": session.conversation_id})

    async def health(self) -> tuple[int, dict[str, Any]]:
        backend: dict[str, Any] = {"url": redact_url(self.catalog.backend.url)}
        try:
            with trio.fail_after(HEALTH_TIMEOUT):
                await self.catalog.backend.ping()
            backend["ok"] = True
        except trio.TooSlowError:
            backend.update(
                ok=False,
                error=f"no answer within {HEALTH_TIMEOUT:g} s (the database down, or every "
                "connection of the pool busy)",
            )
        except (*OUTAGES, OSError) as exc:
            backend.update(ok=False, error=str(exc) or type(exc).__name__)
        except Exception as exc:  # of no kind foreseen: /health still answers, and says what
            log.exception("health: the catalog database's ping failed")
            backend.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        refused = self.catalog.backend.refusals.within(REFUSALS_SHOWN)
        if backend["ok"] and refused is not None:
            # It answers, and refuses writes (a full disk, a read-only database): degraded.
            said, ago = refused
            backend["writes"] = {"ok": False, "error": said, "seconds_ago": round(ago, 1)}
        parts = {name: part() for name, part in self.health_parts.items()}
        # A part that says ok: false (the watcher not watching, say) degrades the server
        # but leaves it serving every request: still 200, so that a probe does not take
        # away (or restart in a loop) a server that works but for that part; monitors read
        # "status". Only a backend down, which fails every request, is 503.
        degraded = sorted(name for name, state in parts.items() if state.get("ok") is False)
        if any(sink.get("ok") is False for sink in parts.get("sinks", {}).values()):
            degraded = sorted({*degraded, "sinks"})  # (each sink says its own)
        if "writes" in backend:
            degraded = sorted([*degraded, "backend"])
        body: dict[str, Any] = {
            "status": "unavailable" if not backend["ok"] else "degraded" if degraded else "ok",
            "version": horace.__version__,
            "backend": backend,
            "sessions": len(self.sessions),
            "http_sessions": len(self.front.http.sessions),
            "connections": {
                **self.front.admission.counts(),
                "max_connections": self.settings.max_connections,
                "max_pending_connections": self.settings.max_pending_connections,
            },
        }
        if degraded:
            body["degraded"] = degraded
        body.update(parts)
        return (200 if backend["ok"] else 503), body
