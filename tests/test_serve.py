"""quill serve: the OpenAI-compatible API, checked with the official openai client on a real port."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
import uvicorn

from quillgpt.cli import main
from quillgpt.commands.serve import is_all_interfaces
from quillgpt.models.introspect import inspect
from quillgpt.serve.app import ServeOptions, create_app
from quillgpt.serve.loading import load_serving_run
from serve_support import LiveServer, make_run

CAP = 50_000  # large, so the disconnect tests can ask for more tokens than they will ever see


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("serve") / "chatty", chat=True)


@pytest.fixture(scope="module")
def live(chat_run: Path):
    app = create_app(load_serving_run(chat_run), ServeOptions(max_tokens_cap=CAP, max_body_bytes=100_000))
    with LiveServer(app) as server:
        yield server


@pytest.fixture(scope="module")
def client(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def health(live: LiveServer) -> dict:
    return httpx.get(live.url + "/health").json()


def test_models_and_health(client: openai.OpenAI, live: LiveServer) -> None:
    assert [m.id for m in client.models.list()] == ["chatty"]
    assert health(live)["status"] == "ok"


def test_completion_with_usage(client: openai.OpenAI) -> None:
    out = client.completions.create(model="chatty", prompt="Hello", max_tokens=7, seed=3)
    assert out.object == "text_completion" and len(out.choices) == 1
    assert out.choices[0].finish_reason == "length"
    assert out.choices[0].text
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (5, 7, 12)


def test_streaming_completion_ends_with_done_and_matches_non_streaming(client: openai.OpenAI,
                                                                      live: LiveServer) -> None:
    kw = dict(model="chatty", prompt="To be", max_tokens=12, seed=11, temperature=0.9, top_p=0.9,
              extra_body={"top_k": 20})
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == whole  # same seed, same tokens, streamed or not
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12
    raw = httpx.post(live.url + "/v1/completions", json={"model": "chatty", "prompt": "a", "max_tokens": 3,
                                                          "stream": True}).text
    assert raw.rstrip().endswith("data: [DONE]")


def test_seed_reproducibility_and_n(client: openai.OpenAI) -> None:
    a = client.completions.create(model="chatty", prompt="Once", max_tokens=20, seed=42, n=3)
    b = client.completions.create(model="chatty", prompt="Once", max_tokens=20, seed=42, n=3)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert len({c.text for c in a.choices}) > 1  # choice i draws with seed + i
    assert a.usage.completion_tokens == 60
    greedy = {client.completions.create(model="chatty", prompt="Once", max_tokens=10, temperature=0).choices[0].text
              for _ in range(2)}
    assert len(greedy) == 1


def test_stop_sequences(client: openai.OpenAI) -> None:
    full = client.completions.create(model="chatty", prompt="The", max_tokens=30, temperature=0).choices[0].text
    stop = full[10:12]
    cut = full[: full.index(stop)]
    out = client.completions.create(model="chatty", prompt="The", max_tokens=30, temperature=0, stop=[stop, "@@"])
    assert (out.choices[0].text, out.choices[0].finish_reason) == (cut, "stop")
    streamed = client.completions.create(model="chatty", prompt="The", max_tokens=30, temperature=0, stop=stop,
                                         stream=True)
    chunks = [c.choices[0] for c in streamed]
    assert "".join(c.text for c in chunks) == cut and chunks[-1].finish_reason == "stop"


def test_chat_completions(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    out = client.chat.completions.create(model="chatty", messages=messages, max_tokens=8, seed=5)
    assert out.choices[0].message.role == "assistant"
    assert out.usage.prompt_tokens == 1 + 9 + 1 + 1 + 3 + 1 + 1  # <|system|>...<|end|><|user|>...<|end|><|assistant|>
    streamed = client.chat.completions.create(model="chatty", messages=messages, max_tokens=8, seed=5, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed)
    assert text == out.choices[0].message.content


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "nope", "prompt": "a"}, 404, "model"),
    ({"prompt": "a"}, 400, "model"),
    ({"model": "chatty", "prompt": "a", "max_tokens": CAP + 1}, 400, "max_tokens"),
    ({"model": "chatty", "prompt": "a", "max_tokens": "ten"}, 400, "max_tokens"),
    ({"model": "chatty", "prompt": "a", "temperature": -0.5}, 400, "temperature"),
    ({"model": "chatty", "prompt": "a", "top_p": 0}, 400, "top_p"),
    ({"model": "chatty", "prompt": "a", "n": 0}, 400, "n"),
    ({"model": "chatty", "prompt": "a", "stop": [""]}, 400, "stop"),
    ({"model": "chatty", "prompt": "naïve"}, 400, "prompt"),  # ï is not in the char vocabulary
    ({"model": "chatty", "prompt": "a" * 33}, 400, "prompt"),  # context 32
    ({"model": "chatty", "prompt": 7}, 400, "prompt"),
    ({"model": "chatty", "prompt": "a", "logprobs": 2}, 400, "logprobs"),
])
def test_bad_completion_requests(live: LiveServer, body: dict, status: int, param: str) -> None:
    error = error_of(httpx.post(live.url + "/v1/completions", json=body), status)
    assert error["param"] == param


def test_prompt_at_the_context_length_is_fine_and_generation_runs_past_it(client: openai.OpenAI) -> None:
    out = client.completions.create(model="chatty", prompt="a" * 32, max_tokens=40, seed=1)
    assert out.usage.completion_tokens == 40 and out.choices[0].finish_reason == "length"


JSON = {"Content-Type": "application/json"}


def test_malformed_json_oversized_body_and_unknown_route(live: LiveServer) -> None:
    error = error_of(httpx.post(live.url + "/v1/completions", content=b'{"model": "chatty",', headers=JSON), 400)
    assert error["code"] == "invalid_json"
    error_of(httpx.post(live.url + "/v1/completions", content=b"[1, 2]", headers=JSON), 400)
    big = json.dumps({"model": "chatty", "prompt": "a", "junk": "x" * 200_000})
    assert error_of(httpx.post(live.url + "/v1/completions", content=big, headers=JSON),
                    413)["code"] == "request_too_large"
    error_of(httpx.get(live.url + "/v1/nothing"), 404)
    chat = {"model": "chatty", "messages": [{"role": "wizard", "content": "hi"}]}
    assert error_of(httpx.post(live.url + "/v1/chat/completions", json=chat), 400)["param"] == "messages[0]"


def test_openai_client_sees_errors_as_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="a")
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="chatty", prompt="a" * 100)


def test_chat_needs_a_chat_run(tmp_path: Path) -> None:
    app = create_app(load_serving_run(make_run(tmp_path / "plain", chat=False)))
    with LiveServer(app) as live:
        body = {"model": "plain", "messages": [{"role": "user", "content": "hi"}]}
        assert error_of(httpx.post(live.url + "/v1/chat/completions", json=body), 400)["code"] == "chat_not_supported"
        ok = httpx.post(live.url + "/v1/completions", json={"model": "plain", "prompt": "hi", "max_tokens": 2})
        assert ok.status_code == 200


def test_api_key(chat_run: Path) -> None:
    app = create_app(load_serving_run(chat_run), ServeOptions(api_key="s3cret"))
    with LiveServer(app) as live:
        assert error_of(httpx.get(live.url + "/v1/models"), 401)["code"] == "invalid_api_key"
        wrong = openai.OpenAI(base_url=live.url + "/v1", api_key="guess", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.completions.create(model="chatty", prompt="a", max_tokens=2)
        right = openai.OpenAI(base_url=live.url + "/v1", api_key="s3cret", max_retries=0)
        assert right.completions.create(model="chatty", prompt="a", max_tokens=2).usage.completion_tokens == 2
        assert httpx.get(live.url + "/health").status_code == 200  # open, for load balancers


def test_full_queue_answers_503_with_retry_after(chat_run: Path) -> None:
    app = create_app(load_serving_run(chat_run), ServeOptions(max_batch=1, max_queue=1))
    scheduler = app.state.server.scheduler
    with LiveServer(app) as live:
        scheduler.stop()  # paused: whatever is submitted now stays in the queue
        outcome: list[BaseException | str] = []

        def wait_in_queue() -> None:
            try:  # nothing is generating: the client gives up waiting
                httpx.post(live.url + "/v1/completions", json={"model": "chatty", "prompt": "a"}, timeout=1)
                outcome.append("answered, though nothing was generating")
            except httpx.ReadTimeout:
                outcome.append("timed out")
            except BaseException as exc:  # reported in the test's thread below
                outcome.append(exc)

        waiting = threading.Thread(target=wait_in_queue, daemon=True)
        waiting.start()
        deadline = time.monotonic() + 5
        while scheduler.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        response = httpx.post(live.url + "/v1/completions", json={"model": "chatty", "prompt": "b"})
        error = error_of(response, 503)
        assert error["code"] == "queue_full" and response.headers["retry-after"] == "1"
        waiting.join(timeout=5)
        assert not waiting.is_alive()
        assert outcome == ["timed out"]


def wait_until_idle(live: LiveServer) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = health(live)
        if state["active"] == 0 and state["waiting"] == 0:
            return state
        time.sleep(0.05)
    raise AssertionError(f"generation did not stop: {health(live)}")


def test_a_client_that_disconnects_stops_its_generation(live: LiveServer) -> None:
    before = wait_until_idle(live)["tokens_generated"]
    body = {"model": "chatty", "prompt": "a", "max_tokens": CAP, "stream": True}
    with httpx.stream("POST", live.url + "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        assert [next(lines) for _ in range(4)]  # some text arrived; now hang up
    after = wait_until_idle(live)["tokens_generated"]
    time.sleep(0.3)
    assert health(live)["tokens_generated"] == after  # nothing is generating any more
    assert after - before < CAP
    # The same for a non-streaming request whose client gives up waiting.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(live.url + "/v1/completions", json={**body, "stream": False}, timeout=0.5)
    final = wait_until_idle(live)["tokens_generated"]
    assert final - after < CAP


def test_concurrent_requests_share_forward_passes(live: LiveServer, client: openai.OpenAI) -> None:
    start = health(live)
    results: list[int] = []
    threads = [threading.Thread(target=lambda s=s: results.append(client.completions.create(
        model="chatty", prompt="Hi", max_tokens=30, seed=s).usage.completion_tokens)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    end = health(live)
    assert results == [30] * 6
    assert end["max_batch_seen"] > 1
    assert end["decode_steps"] - start["decode_steps"] < 6 * 29  # fewer passes than one per token per request


def test_inspect_endpoint(live: LiveServer) -> None:
    out = httpx.post(live.url + "/v1/inspect", json={"model": "chatty", "text": "Hello there", "layer": 1,
                                                      "head": 1, "top_k": 3}).json()
    assert out["tokens"] == list("Hello there") and (out["layer"], out["head"]) == (1, 1)
    assert [len(row) for row in out["attention"]] == list(range(1, 12))  # causal: row t sees 0..t
    assert all(abs(sum(row) - 1) < 1e-2 for row in out["attention"])
    assert len(out["alternatives"]) == 11 and all(len(a) == 3 for a in out["alternatives"])
    probs = [a["prob"] for a in out["alternatives"][0]]
    assert probs == sorted(probs, reverse=True)
    assert out["token_probs"][0] is None and all(0 < p <= 1 for p in out["token_probs"][1:])
    error_of(httpx.post(live.url + "/v1/inspect", json={"model": "chatty", "text": "hi", "layer": 2}), 400)
    long = httpx.post(live.url + "/v1/inspect", json={"model": "chatty", "text": "ab" * 30}).json()
    assert long["offset"] == 28 and len(long["tokens"]) == 32


def test_inspect_weights_reproduce_each_head(chat_run: Path) -> None:
    run = load_serving_run(chat_run)
    model = run.model
    ids = run.tokenizer.encode("Good night sweet")
    seen = inspect(model, torch.tensor(ids))
    T = len(ids)
    assert seen.attention.shape == (2, 2, T, T)
    torch.testing.assert_close(seen.attention.sum(-1), torch.ones(2, 2, T))
    assert torch.all(seen.attention.triu(1) == 0)
    with torch.no_grad():
        idx = torch.tensor([ids])
        x = model.token_embedding_table(idx) + model.position_embedding_table(torch.arange(T))
        block = model.blocks[0]
        h = block.ln1(x)
        for i, head in enumerate(block.sa.heads):  # weights @ values is exactly the lecture's Head output
            torch.testing.assert_close(seen.attention[0, i] @ head.value(h)[0], head(h)[0], atol=1e-5, rtol=1e-4)
        logits, _ = model(idx)
    torch.testing.assert_close(seen.probs, torch.softmax(logits[0], -1), atol=1e-5, rtol=1e-4)


def test_cli_errors_and_all_interfaces(tmp_path: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch, chat_run: Path) -> None:
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert is_all_interfaces("0.0.0.0") and is_all_interfaces("::") and not is_all_interfaces("127.0.0.1")
    assert main(["bench", "serve"]) == 2
    bound = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level, **_: bound.update(host=host, port=port))
    monkeypatch.setenv("QUILL_API_KEY", "s3cret")  # all interfaces: a key is required (tests/test_serve_cli.py)
    assert main(["serve", str(chat_run), "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert bound == {"host": "0.0.0.0", "port": 8123}
    assert "warning: listening on 0.0.0.0" in capsys.readouterr().err
    assert main(["serve", str(chat_run), "--port", "8123"]) == 0
    assert bound["host"] == "127.0.0.1" and "warning" not in capsys.readouterr().err
