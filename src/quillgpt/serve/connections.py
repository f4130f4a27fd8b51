"""Connection bounds for ``quill serve``: how many connections are served, and how long a client
may take to send its request.

uvicorn closes a keep-alive connection left idle *between* requests (``timeout_keep_alive``), but
not one that sends nothing at all, half a request line or headers, or a body slower than its
Content-Length promised (slowloris): each would hold a socket, and a place under any bound, for
as long as the client likes. ``GuardedH11Protocol`` is uvicorn's h11 protocol with three hooks
(connection made, bytes received, answer sent) that add:

- **a request deadline.** From the moment a connection opens, or its previous answer is sent,
  the client has ``request_timeout_s`` seconds to send one whole request: line, headers and
  body. Trickling bytes does not restart the clock. Past the deadline the connection is closed,
  with a 408 if part of a request had come and no answer has started. The clock stops once the
  request is whole, so a long generation or a stream is never cut.
- **a connection bound.** A connection opened while ``max_connections`` others are being served
  is past the bound: each request on it is answered at once with 503, ``Retry-After`` and
  ``Connection: close`` in OpenAI's error shape, without reaching the app. So neither idle nor busy
  connections make a new client wait: it gets its answer or a fast 503, and once the excess is
  closed (an idle connection at most ``request_timeout_s`` after it opened), ``/health`` and normal
  requests are served again.

The protocol is pinned to h11 (also where httptools is installed) because the hooks read h11's
view of the request. Numbers for ``/health``: ``ConnectionGuard.stats``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import h11  # uvicorn's own HTTP/1.1 parser, installed with it
from uvicorn.protocols.http.h11_impl import H11Protocol

from quillgpt.serve.requests import error_response

# The client's side in h11 while the server waits for its bytes: no request or half its line and
# headers (IDLE), or headers read and the body not yet complete (SEND_BODY).
WAITING = (h11.IDLE, h11.SEND_BODY)
TIMEOUT_TEXT = b"the request did not arrive whole in time"
TIMEOUT_ANSWER = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                  b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(TIMEOUT_TEXT), TIMEOUT_TEXT))


@dataclass
class ConnectionGuard:
    """The bounds of one server and what they did, shared by all its connections (one event loop)."""

    max_connections: int
    request_timeout_s: float
    retry_after_s: int = 1
    served: set[Any] = field(default_factory=set)  # open connections within the bound
    excess: set[Any] = field(default_factory=set)  # open connections past it
    refused: int = 0  # requests answered 503 because their connection was past the bound
    timed_out: int = 0  # connections closed for not sending a whole request in time

    def admit(self, connection: Any) -> bool:
        """Record a new connection: True if it is served, False if it is past the bound."""
        if len(self.served) < self.max_connections:
            self.served.add(connection)
            return True
        self.excess.add(connection)
        return False

    def release(self, connection: Any) -> None:
        self.served.discard(connection)
        self.excess.discard(connection)

    async def refuse(self, scope: Any, receive: Any, send: Any) -> None:
        """The ASGI app of a connection past the bound: 503 at once, then the connection closes."""
        self.refused += 1
        response = error_response(
            503, f"the server has {self.max_connections} connections open, its limit (--max-connections): "
            f"retry after {self.retry_after_s} s", "server_error", code="too_many_connections",
            headers={"Retry-After": str(self.retry_after_s), "Connection": "close"})
        await response(scope, receive, send)

    def stats(self) -> dict[str, int]:
        return {"open": len(self.served) + len(self.excess), "limit": self.max_connections,
                "refused": self.refused, "timed_out": self.timed_out}

    def uvicorn_settings(self) -> dict[str, Any]:
        """The keyword arguments of ``uvicorn.run``/``uvicorn.Config`` that put these bounds in place."""
        protocol = type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": self})
        # No WebSocket routes: an upgrade would swap this protocol (and its deadline) for another one.
        return {"http": protocol, "ws": "none"}


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request deadline and a connection bound (see the module's doc)."""

    guard: ConnectionGuard  # set on the subclass that ConnectionGuard.uvicorn_settings makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            self.app = self.guard.refuse  # uvicorn's h11 protocol runs self.app for each request
        self.watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_clock()
        self.guard.release(self)
        super().connection_lost(exc)

    def watch(self) -> None:
        """Start the clock when the server starts waiting for a request; stop it once the request is whole."""
        waiting = self.conn.their_state in WAITING and not self.transport.is_closing()
        if waiting and self.deadline is None:
            self.deadline = self.loop.call_later(self.guard.request_timeout_s, self.request_timed_out)
        elif not waiting:
            self.stop_clock()

    def stop_clock(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def request_timed_out(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        self.guard.timed_out += 1
        if self.partial_request_unanswered():
            self.transport.write(TIMEOUT_ANSWER)
        # The app, if it was reading the body, now gets http.disconnect and stops.
        self.transport.close()

    def partial_request_unanswered(self) -> bool:
        """Part of a request came and nothing has been answered to it: a 408 tells the client why.
        (An idle connection gets none: a client reusing it at that moment would take the 408 as the
        answer to its next request.)"""
        if self.conn.their_state is h11.SEND_BODY:  # headers came, the body did not
            return not self.cycle.response_started  # an early answer (413) was already sent
        return bool(self.conn.trailing_data[0])  # half a request line or headers
