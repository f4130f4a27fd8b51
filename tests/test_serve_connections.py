"""quill serve against an attacker with sockets: connections that never finish a request are closed,
connections past --max-connections get a fast 503, and /health answers again once they are gone.

Raw sockets on 127.0.0.1 only, a handful each, every read bounded in time."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import pytest

from quillgpt.serve.app import ServeOptions, create_app
from quillgpt.serve.loading import load_serving_run
from serve_support import LiveServer, make_run

TIMEOUT = 0.5  # the servers' --request-timeout here


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    return load_serving_run(make_run(tmp_path_factory.mktemp("serve-conn") / "tiny", chat=False))


@pytest.fixture
def serve(run) -> Callable[..., LiveServer]:
    """serve(**options): a live server with these ServeOptions and a /slow route (1 s to answer)."""

    @contextmanager
    def start(**options) -> Iterator[LiveServer]:
        app = create_app(run, ServeOptions(request_timeout_s=TIMEOUT, **options))

        async def slow() -> dict:
            await asyncio.sleep(1.0)
            return {"slow": True}

        app.add_api_route("/slow", slow)
        with LiveServer(app) as live:
            yield live

    return start


def connect(live: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", live.port), timeout=5)


def read_until_closed(sock: socket.socket, limit_s: float = 5.0) -> tuple[bytes, bool]:
    """Everything the server sends within limit_s: (bytes, whether it closed the connection)."""
    data, deadline = b"", time.monotonic() + limit_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            part = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not part:
            return data, True
        data += part
    return data, False


def request(path: str = "/health", close: bool = True) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + ("Connection: close\r\n" if close else "") +
            "\r\n").encode()


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def get(live: LiveServer, path: str = "/health") -> tuple[int, bytes, float]:
    """One request on a new connection: (status, whole answer, seconds from sending to the close)."""
    with connect(live) as sock:
        tic = time.perf_counter()
        sock.sendall(request(path))
        data, closed = read_until_closed(sock)
        assert closed and data, data
        return status(data), data, time.perf_counter() - tic


def wait_until(condition: Callable[[], bool], limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def open_count(live: LiveServer) -> int:
    return live.app.state.server.connections.stats()["open"]


# ---------------------------------------------------------------------------------------
# Slowloris: no whole request within --request-timeout, the connection is closed
# ---------------------------------------------------------------------------------------

PARTIAL = {
    "nothing": b"",
    "half a request line": b"GET /hea",
    "headers without their end": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\n",
    "a body shorter than its Content-Length": (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                               b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mo"),
}


@pytest.mark.parametrize("sent", list(PARTIAL), ids=list(PARTIAL))
def test_a_connection_without_a_whole_request_is_closed_in_time(serve, sent: str) -> None:
    with serve() as live, connect(live) as sock:
        tic = time.monotonic()
        sock.sendall(PARTIAL[sent])
        data, closed = read_until_closed(sock, limit_s=5 * TIMEOUT)
        waited = time.monotonic() - tic
        assert closed and TIMEOUT * 0.8 < waited < 4 * TIMEOUT, (closed, waited)
        # Part of a request: told why (408). Nothing sent: closed without a word (a client reusing an idle
        # connection would take an unasked-for answer as the answer to its next request).
        assert data.startswith(b"HTTP/1.1 408 ") if PARTIAL[sent] else data == b""
        assert live.app.state.server.connections.stats()["timed_out"] == 1
        assert get(live)[0] == 200


def test_the_clock_restarts_after_each_answer_but_not_for_each_byte(serve, caplog: pytest.LogCaptureFixture) -> None:
    with serve() as live, connect(live) as sock:
        # Keep-alive: a whole request is answered, then half of the next one is cut after the timeout.
        sock.sendall(request(close=False))
        time.sleep(TIMEOUT * 0.6)  # the clock of the first request stopped when it came in whole
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
        data, closed = read_until_closed(sock, limit_s=5 * TIMEOUT)
        assert closed and status(data) == 200 and data.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 408 " in data
    with caplog.at_level(logging.ERROR), serve() as live, connect(live) as sock:
        # A body trickled a byte at a time never gets whole: bytes flowing do not restart the clock.
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n")
        tic, data, closed = time.monotonic(), b"", False
        while not closed and time.monotonic() - tic < 5 * TIMEOUT:
            with suppress(OSError):  # closed under us: the read below says how
                sock.sendall(b" ")
            part, closed = read_until_closed(sock, limit_s=0.05)
            data += part
        assert closed and data.startswith(b"HTTP/1.1 408 ") and time.monotonic() - tic < 4 * TIMEOUT
        wait_until(lambda: open_count(live) == 0)
    # The app saw the body end early and stopped quietly: no 'internal error' from the cut read.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records


def test_an_answer_that_takes_longer_than_the_timeout_is_not_cut(serve) -> None:
    with serve() as live:
        code, data, seconds = get(live, "/slow")
        assert code == 200 and json.loads(data.split(b"\r\n\r\n", 1)[1]) == {"slow": True} and seconds >= 1.0
        assert live.app.state.server.connections.stats()["timed_out"] == 0


# ---------------------------------------------------------------------------------------
# --max-connections: past it a fast 503; /health comes back once the excess is gone
# ---------------------------------------------------------------------------------------


def test_idle_connections_past_the_bound_get_a_fast_503_until_they_are_closed(serve) -> None:
    with serve(max_connections=3) as live:
        idle = [connect(live) for _ in range(2)]
        wait_until(lambda: open_count(live) == 2)
        assert get(live)[0] == 200  # the third connection is within the bound
        wait_until(lambda: open_count(live) == 2)
        idle.append(connect(live))
        wait_until(lambda: open_count(live) == 3)
        seconds = []
        for _ in range(20):  # a flood of requests on connections past the bound
            code, data, took = get(live)
            assert code == 503, data
            seconds.append(took)
        head, body = data.split(b"\r\n\r\n", 1)
        assert b"retry-after: 1" in head.lower() and b"connection: close" in head.lower()
        assert json.loads(body)["error"]["code"] == "too_many_connections"
        assert max(seconds) < 0.5, sorted(seconds)[-3:]  # answered at once: no waiting for a place
        for sock in idle:  # the idle ones, sending nothing, are closed by the request timeout
            assert read_until_closed(sock, limit_s=5 * TIMEOUT) == (b"", True)
            sock.close()
        wait_until(lambda: open_count(live) == 0)
        assert get(live)[0] == 200
        stats = live.app.state.server.connections.stats()
        assert (stats["refused"], stats["timed_out"], stats["limit"]) == (20, 3, 3)


def test_busy_connections_past_the_bound_get_a_fast_503_and_health_answers_after(serve) -> None:
    with serve(max_connections=2) as live:
        answers: list[int] = []
        busy = [threading.Thread(target=lambda: answers.append(get(live, "/slow")[0]), daemon=True) for _ in range(2)]
        for thread in busy:
            thread.start()
        wait_until(lambda: open_count(live) == 2)
        code, _, seconds = get(live)
        assert code == 503 and seconds < 0.5
        for thread in busy:
            thread.join(timeout=10)
        assert answers == [200, 200]  # the two within the bound were served in full
        wait_until(lambda: open_count(live) == 0)
        assert get(live)[0] == 200
