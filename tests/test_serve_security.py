"""quill serve against browsers and leaks: JSON only, Host checked, no CORS, no details in a 500."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from quillgpt.serve.app import ServeOptions, create_app
from quillgpt.serve.loading import load_serving_run
from serve_support import LiveServer, error_of, make_run


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    run = load_serving_run(make_run(tmp_path_factory.mktemp("serve-sec") / "tiny", chat=True))
    with LiveServer(create_app(run, ServeOptions(allowed_hosts=("my.lan",)))) as server:
        yield server


BODIES = {
    "/v1/completions": '{"model": "tiny", "prompt": "a", "max_tokens": 2}',
    "/v1/chat/completions": '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}',
    "/v1/inspect": '{"model": "tiny", "text": "hi"}',
}


@pytest.mark.parametrize("path", list(BODIES))
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
def test_json_endpoints_refuse_what_a_cross_site_form_can_send(live: LiveServer, path: str,
                                                               content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(live.url + path, content=BODIES[path], headers=headers)
    assert error_of(response, 415)["code"] == "unsupported_media_type"
    ok = httpx.post(live.url + path, content=BODIES[path], headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil",
                                  "[::2]:80", "", "0.0.0.0"])
@pytest.mark.parametrize("path", ["/health", "/", "/v1/models", "/static/app.js"])
def test_a_foreign_host_header_is_refused(live: LiveServer, host: str, path: str) -> None:
    response = httpx.get(live.url + path, headers={"Host": host})
    assert error_of(response, 400)["code"] == "invalid_host"


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1234", "127.0.0.1", "127.0.0.1:8000", "[::1]", "[::1]:80",
                                  "my.lan", "my.lan:8443", "localhost."])
def test_local_and_allowed_host_headers_are_served(live: LiveServer, host: str) -> None:
    assert httpx.get(live.url + "/health", headers={"Host": host}).status_code == 200


def test_the_bound_address_and_a_wildcard_are_accepted(tmp_path: Path) -> None:
    run = load_serving_run(make_run(tmp_path / "tiny", chat=False))
    with LiveServer(create_app(run, ServeOptions(bind_host="10.1.2.3"))) as live:
        assert httpx.get(live.url + "/health", headers={"Host": "10.1.2.3:8000"}).status_code == 200
        assert httpx.get(live.url + "/health", headers={"Host": "10.1.2.4"}).status_code == 400
    with LiveServer(create_app(run, ServeOptions(allowed_hosts=("*",)))) as live:
        assert httpx.get(live.url + "/health", headers={"Host": "anything.example"}).status_code == 200


def test_no_cors_headers(live: LiveServer) -> None:
    origin = {"Origin": "https://evil.example"}
    preflight = httpx.options(live.url + "/v1/completions", headers={
        **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code >= 400
    post = httpx.post(live.url + "/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 1},
                      headers=origin)
    for response in (preflight, post, httpx.get(live.url + "/v1/models", headers=origin)):
        assert not any(name.lower().startswith("access-control-") for name in response.headers)


def test_an_internal_error_is_logged_with_an_id_and_not_sent(live: LiveServer, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    server = live.app.state.server

    def broken() -> dict:
        raise RuntimeError("secret detail at /home/alice/runs")

    monkeypatch.setattr(server, "info", broken)
    with caplog.at_level(logging.ERROR, logger="quillgpt.serve"):
        response = httpx.get(live.url + "/v1/info")
    error = error_of(response, 500)
    assert "secret" not in response.text and "RuntimeError" not in response.text
    request_id = response.headers["x-request-id"]
    assert request_id in error["message"] and error["type"] == "server_error"
    logged = [r for r in caplog.records if r.name == "quillgpt.serve" and request_id in r.getMessage()]
    assert logged and logged[0].exc_info and "secret detail" in str(logged[0].exc_info[1])
