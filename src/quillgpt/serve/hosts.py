"""Which Host headers the server answers: localhost, the bound address and ``--allowed-host``
names, so a web page whose DNS name is rebound to 127.0.0.1 is turned away (``HostCheck``)."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from quillgpt.serve.requests import ServeOptions, error_response, short

LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # Host names always accepted


def host_name(host: str) -> str:
    """The name in a Host header, lowercased, without its port: 'LocalHost:8000' -> 'localhost'."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[: host.find("]") + 1] if "]" in host else host
    if ":" in host and host.count(":") > 1:  # a bare IPv6 address (the form --host takes)
        return f"[{host}]"
    return host.partition(":")[0].rstrip(".")


class HostCheck:
    """Answer only requests whose Host header names this server: a web page whose DNS name is
    rebound to 127.0.0.1 sends its own name as Host, so it is turned away (DNS rebinding)."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.allowed:
            host = Headers(scope=scope).get("host", "")
            if host_name(host) not in self.allowed:
                response = error_response(400, f"the Host header {short(host)!r} does not name this server: use "
                                          f"one of {', '.join(sorted(self.allowed))}, or start it with "
                                          "--allowed-host NAME", "invalid_request_error", code="invalid_host")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def allowed_hosts(options: ServeOptions) -> frozenset[str]:
    names = {*LOCAL_HOSTS, *(host_name(h) for h in options.allowed_hosts)}
    if options.bind_host and options.bind_host not in ("0.0.0.0", "::", ""):
        names.add(host_name(options.bind_host))
    return frozenset(names)
