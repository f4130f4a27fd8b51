"""quill serve under hostile requests: every field bounded in cost, answers in OpenAI's error shape,
and /health stays fast while the most expensive allowed request runs."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quillgpt.serve.app import Choice, ServeOptions, create_app
from quillgpt.serve.loading import load_serving_run
from quillgpt.serve.requests import FAST_PARSE_VALUES, parse_json, value_bound
from quillgpt.tokenizers import CharTokenizer, StreamDecoder
from serve_support import CHARS, LiveServer, error_of, make_run

QUEUE = 16
CAP = 64


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("serve-limits") / "tiny", chat=True)


@pytest.fixture(scope="module")
def live(run_dir: Path):
    app = create_app(load_serving_run(run_dir), ServeOptions(max_queue=QUEUE, max_tokens_cap=CAP))
    with LiveServer(app) as server:
        yield server


def post(live: LiveServer, body: dict | str | bytes, path: str = "/v1/completions",
         timeout: float = 30) -> httpx.Response:
    content = body if isinstance(body, str | bytes) else json.dumps(body)
    return httpx.post(live.url + path, content=content, headers={"Content-Type": "application/json"},
                      timeout=timeout)


# ---------------------------------------------------------------------------------------
# Each field's bound
# ---------------------------------------------------------------------------------------

A = {"model": "tiny", "prompt": "a", "max_tokens": 2}


@pytest.mark.parametrize(("body", "param", "code"), [
    ({**A, "stop": "x" * 257}, "stop", "invalid_value"),  # longer than max_stop_chars
    ({**A, "stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ({**A, "n": 9}, "n", "invalid_value"),
    ({**A, "max_tokens": CAP + 1}, "max_tokens", "invalid_value"),
    ({**A, "prompt": ["a"] * (QUEUE + 1)}, "prompt", "too_many_sequences"),  # can never fit the queue: 400, not 503
    ({**A, "prompt": ["a", "b", "c"], "n": 6}, "prompt", "too_many_sequences"),
    ({**A, "prompt": "a" * 300_000}, "prompt", "context_length_exceeded"),  # refused before tokenizing
    ({**A, "logit_bias": {"5": 100}}, "logit_bias", "unsupported_parameter"),  # not silently ignored
    ({**A, "frequency_penalty": 1.5}, "frequency_penalty", "unsupported_parameter"),
])
def test_each_costly_field_is_bounded(live: LiveServer, body: dict, param: str, code: str) -> None:
    error = error_of(post(live, body), 400)
    assert (error["param"], error["code"]) == (param, code)


def test_a_full_size_stop_string_is_fine(live: LiveServer) -> None:
    out = post(live, {**A, "stop": ["x" * 256] * 4})
    assert out.status_code == 200, out.text


def test_chat_messages_are_bounded_before_tokenizing(live: LiveServer) -> None:
    many = {"model": "tiny", "messages": [{"role": "user", "content": "a"}] * 1000}
    assert error_of(post(live, many, "/v1/chat/completions"), 400)["code"] == "context_length_exceeded"
    long = {"model": "tiny", "messages": [{"role": "user", "content": "a" * 300_000}]}
    assert error_of(post(live, long, "/v1/chat/completions"), 400)["code"] == "context_length_exceeded"
    n = {"model": "tiny", "messages": [{"role": "user", "content": "a"}], "n": 8, "max_tokens": 1}
    assert post(live, n, "/v1/chat/completions").status_code == 200


@pytest.mark.parametrize("raw", [
    "[" * 100_000 + "]" * 100_000,  # nesting deeper than the JSON parser recurses
    '{"model": "tiny", "prompt": "a", "seed": ' + "9" * 5000 + "}",  # an integer longer than Python parses
    '{"model": "tiny", "prompt": "a", "temperature": NaN}',
    b'{"model": "tiny", "prompt": "\xff"}',  # not UTF-8
])
def test_hostile_json_is_a_400(live: LiveServer, raw: str | bytes) -> None:
    assert error_of(post(live, raw), 400)["code"] in ("invalid_json", "invalid_value")


def test_inspect_waits_in_the_same_bounded_queue_as_generation(run_dir: Path) -> None:
    app = create_app(load_serving_run(run_dir), ServeOptions(max_batch=1, max_queue=1))
    scheduler = app.state.server.scheduler
    with LiveServer(app) as live:
        scheduler.stop()  # paused: what is queued now stays queued
        outcome: list[object] = []

        def first() -> None:
            try:
                outcome.append(post(live, {"model": "tiny", "text": "hi"}, "/v1/inspect", timeout=2).status_code)
            except httpx.ReadTimeout:
                outcome.append("waited")
            except BaseException as exc:  # reported in the test's thread below
                outcome.append(exc)

        waiting = threading.Thread(target=first, daemon=True)
        waiting.start()
        deadline = time.monotonic() + 5
        while scheduler.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        response = post(live, {"model": "tiny", "text": "ho"}, "/v1/inspect")
        assert error_of(response, 503)["code"] == "queue_full" and response.headers["retry-after"] == "1"
        assert error_of(post(live, {**A, "model": "tiny"}), 503)["code"] == "queue_full"
        waiting.join(timeout=10)
        assert not waiting.is_alive() and outcome == ["waited"]


# ---------------------------------------------------------------------------------------
# Stop strings: linear time, and the same text as a plain search of the whole output
# ---------------------------------------------------------------------------------------


def stream_through(text: str, stops: list[str]) -> tuple[str, str, str | None]:
    """Feed ``text`` to a Choice one character (token) at a time: (streamed, final text, finish reason)."""
    tokenizer = CharTokenizer(sorted(set(text) | set("".join(stops)) | {"a"}))
    choice = Choice(StreamDecoder(tokenizer), stops)
    streamed = ""
    for token in tokenizer.encode(text):
        streamed += choice.feed(token)
        if choice.finish_reason:
            break
    streamed += choice.close("length")
    return streamed, choice.text, choice.finish_reason


@settings(max_examples=200, deadline=None)
@given(text=st.text("ab\n", max_size=60), stops=st.lists(st.text("ab\n", min_size=1, max_size=5), max_size=4))
def test_stop_strings_cut_where_a_plain_search_would(text: str, stops: list[str]) -> None:
    expected = (text, "length")
    for end in range(1, len(text) + 1):  # the first stop string to be complete wins, as in OpenAI's API
        hits = [i for i in (text[:end].find(s) for s in stops) if i >= 0]
        if hits:
            expected = (text[: min(hits)], "stop")
            break
    streamed, final, reason = stream_through(text, stops)
    assert (final, reason) == expected and streamed == final


def test_stop_matching_is_linear_in_the_text() -> None:
    stops = ["a" * 255 + "b", "a" * 254 + "c", "a" * 253 + "d", "a" * 252 + "e"]  # near-misses at every token
    tic = time.perf_counter()
    streamed, _, reason = stream_through("a" * 20_000, stops)
    assert reason == "length" and streamed == "a" * 20_000
    assert time.perf_counter() - tic < 1.0  # the old prefix search took ~10 s here


# ---------------------------------------------------------------------------------------
# Fuzz: any request over the schema gets an answer or an error in OpenAI's shape, never 5xx/422
# ---------------------------------------------------------------------------------------

ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                     max_size=3), max_leaves=6)
TEXT = st.text(st.sampled_from(CHARS + ["é", "\x00"]), max_size=40) | st.just("<|user|>hi")
NUMBER = st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.just(True) | st.text(max_size=4)


def field(values: st.SearchStrategy) -> st.SearchStrategy:
    """A field's plausible values, sometimes anything at all."""
    return st.one_of(values, ANY_JSON)


COMMON = {
    "model": field(st.sampled_from(["tiny", "other", ""])),
    "max_tokens": field(st.integers(-2, CAP + 2) | NUMBER),
    "temperature": field(st.floats(-1, 3) | NUMBER),
    "top_p": field(st.floats(-0.5, 1.5) | NUMBER),
    "top_k": field(st.integers(-1, 10**7) | NUMBER),
    "n": field(st.integers(-1, 10) | NUMBER),
    "seed": field(st.integers(-(2**64), 2**64)),
    "stop": field(TEXT | st.lists(st.text("ab ", min_size=0, max_size=300), max_size=6)),
    "stream": field(st.booleans()),
    "stream_options": field(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "logit_bias": field(st.dictionaries(st.text("0123456789", min_size=1, max_size=3), st.integers(-100, 100))),
    "logprobs": field(st.integers(0, 5)),
    "user": field(TEXT),
}
MESSAGE = st.fixed_dictionaries({"role": field(st.sampled_from(["system", "user", "assistant", "developer", "x"])),
                                 "content": field(TEXT | st.lists(st.fixed_dictionaries(
                                     {"type": st.just("text"), "text": TEXT}), max_size=3))})
COMPLETION = st.fixed_dictionaries({}, optional={**COMMON, "prompt": field(TEXT | st.lists(TEXT, max_size=20))})
CHAT = st.fixed_dictionaries({}, optional={**COMMON, "messages": field(st.lists(MESSAGE, max_size=40)),
                                           "max_completion_tokens": field(st.integers(-1, CAP + 1))})
INSPECT = st.fixed_dictionaries({}, optional={"model": COMMON["model"], "text": field(TEXT),
                                              "layer": field(st.integers(-1, 3)), "head": field(st.integers(-1, 3)),
                                              "top_k": field(st.integers(-1, 60))})
REQUEST = st.one_of(st.tuples(st.just("/v1/completions"), COMPLETION),
                    st.tuples(st.just("/v1/chat/completions"), CHAT),
                    st.tuples(st.just("/v1/inspect"), INSPECT))
CONTENT_TYPE = st.sampled_from(["application/json"] * 8 + ["text/plain", None])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                    HealthCheck.function_scoped_fixture])
@given(request=REQUEST, content_type=CONTENT_TYPE)
def test_fuzzed_requests_get_an_answer_or_an_openai_error(live: LiveServer, request: tuple[str, dict],
                                                          content_type: str | None) -> None:
    path, body = request
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(live.url + path, content=json.dumps(body), headers=headers, timeout=60)
    if content_type != "application/json":
        assert error_of(response, 415)["code"] == "unsupported_media_type"
    elif response.status_code == 200:
        if body.get("stream") is True:
            assert response.text.rstrip().endswith("data: [DONE]")
        else:
            assert response.json()
    else:
        assert response.status_code in (400, 404), response.text  # never 5xx, never 422
        error_of(response, response.status_code)


# ---------------------------------------------------------------------------------------
# /health while the most expensive requests run
# ---------------------------------------------------------------------------------------


def health_latencies_during(live: LiveServer, body: dict) -> tuple[object, list[float]]:
    """Send ``body`` in a thread and time GET /health until it is answered: (its status, latencies)."""
    done = threading.Event()
    outcome: list[object] = []

    def send() -> None:
        try:
            outcome.append(post(live, body, timeout=120).status_code)
        except BaseException as exc:  # reported in the test's thread below
            outcome.append(exc)
        finally:
            done.set()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    time.sleep(0.1)  # the request is in
    latencies = []
    with httpx.Client(timeout=60) as client:
        while not done.is_set() and len(latencies) < 30:
            tic = time.perf_counter()
            assert client.get(live.url + "/health").status_code == 200
            latencies.append(time.perf_counter() - tic)
            time.sleep(0.05)
    sender.join(timeout=120)
    assert not sender.is_alive() and len(outcome) == 1
    return outcome[0], latencies


def test_health_stays_fast_while_a_worst_case_request_runs(run_dir: Path) -> None:
    app = create_app(load_serving_run(run_dir))  # the default limits: 1 MB bodies, max_tokens 1024, n 8
    with LiveServer(app) as live:
        # The review's request, one 200,000-character stop: refused at once.
        status, latencies = health_latencies_during(live, {"model": "tiny", "prompt": "a", "max_tokens": 30,
                                                           "stop": "z" * 200_000})
        assert status == 400 and max(latencies, default=0) < 0.2, sorted(latencies)[-3:]
        # The costliest request the limits allow, at its peak rate: a full batch (4 prompts x n 8 = 32
        # sequences) of 1024 tokens each, four 256-character stops that never match. (More prompts
        # only queue: the work per decode step, and so per event-loop turn, is the same.)
        status, latencies = health_latencies_during(live, {
            "model": "tiny", "prompt": ["a"] * 4, "n": 8, "max_tokens": 1024, "stop": ["a" * 255 + "?"] * 4,
            "stream": True})
        assert status == 200 and len(latencies) >= 5
        assert max(latencies) < 0.2, sorted(latencies)[-3:]


# ---------------------------------------------------------------------------------------
# Big bodies: the size limit before the body is read, the parse off the event loop
# ---------------------------------------------------------------------------------------


def test_the_body_limit_holds_before_the_body_is_read(live: LiveServer) -> None:
    head = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{}\r\n\r\n"
    chunked = head.format("Transfer-Encoding: chunked").encode() + b"%x\r\n%s\r\n" % (560_000, b" " * 560_000) * 2
    for sent in (head.format("Content-Length: 50000000").encode(), chunked):  # a huge size declared; 1.1 MB sent
        with socket.create_connection(("127.0.0.1", live.port), timeout=5) as sock:
            sock.sendall(sent)  # and never the rest of the body
            answer = sock.recv(65536)
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):  # the JSON error, whole
                answer += sock.recv(65536) or b"}"
        assert answer.startswith(b"HTTP/1.1 413 ") and b"request_too_large" in answer, answer[:200]


def test_parse_json_matches_json_loads_on_either_path() -> None:
    many = [list(range(5000)), {"a": [1.5, "é", None, True, {"b": []}]}]  # past FAST_PARSE_VALUES
    for value in many + [{"model": "tiny"}]:
        body = json.dumps(value).encode()
        assert asyncio.run(parse_json(body)) == json.loads(body)
    pad = b" [" + b"0," * FAST_PARSE_VALUES + b"0]"
    for bad in (b"[" * 100_000 + b"]" * 100_000, b"[NaN, " + b"9" * 5000 + pad + b"]", b'["\xff",' + pad + b"]",
                b"[1, 2" + pad, b"[" + pad + b"] x"):
        assert value_bound(bad) > FAST_PARSE_VALUES
        with pytest.raises((ValueError, RecursionError)) as slow:
            asyncio.run(parse_json(bad))
        with pytest.raises((ValueError, RecursionError)) as fast:
            json.loads(bad)
        assert type(slow.value) is type(fast.value)


def test_health_answers_while_a_body_of_many_values_is_parsed(run_dir: Path) -> None:
    # ~1 MB of empty lists: json.loads holds the GIL for all of it (~0.1-0.3 s), in a thread too.
    body = json.dumps({"model": "tiny", "prompt": "a", "max_tokens": 1, "junk": [[]] * 330_000}, separators=(",", ":"))
    assert len(body) < ServeOptions().max_body_bytes
    with LiveServer(create_app(load_serving_run(run_dir))) as live:
        outcome: list[object] = []
        sender = threading.Thread(target=lambda: outcome.append(post(live, body, timeout=60).status_code), daemon=True)
        answered, latencies = 0, []
        with httpx.Client(timeout=30) as client:
            client.get(live.url + "/health")  # connected
            start = time.perf_counter()
            sender.start()
            while sender.is_alive():
                tic = time.perf_counter()
                assert client.get(live.url + "/health").status_code == 200
                latencies.append(time.perf_counter() - tic)
                answered += sender.is_alive()  # answered while the big request was still in the server
        in_flight = time.perf_counter() - start
        sender.join()
        assert outcome == [200]
        # Parsed on the loop (or by json.loads in a thread) the parse is nearly all of the request, and
        # /health waits through it: one wait near the request's whole time, a few answers before and after.
        assert answered >= 10 and max(latencies) < in_flight / 2, (answered, in_flight, sorted(latencies)[-3:])
