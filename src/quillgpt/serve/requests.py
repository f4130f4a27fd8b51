"""Reading and checking an API request: its options, its body and every field, in OpenAI's error shape.

Requests are checked by hand, not by pydantic, so that every bad input gets a 4xx in the shape
``{"error": {"message", "type", "param", "code"}}``, and every field is bounded in what it costs
(stop strings in number and length, ``n``, ``max_tokens``, prompt and message counts) before any
work is done for it. ``serve.app`` turns a checked request into an answer.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from json.scanner import py_make_scanner
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from quillgpt.chat import ROLES, Message
from quillgpt.config import ModelConfig
from quillgpt.serve.batching import RowParams


@dataclass
class ServeOptions:
    api_key: str | None = None
    max_batch: int = 32  # sequences decoded together in one forward pass
    max_queue: int = 128  # sequences waiting for a slot; beyond that: 503 + Retry-After
    max_tokens_cap: int = 1024  # the largest max_tokens a request may ask for
    max_n: int = 8  # choices per request
    max_stops: int = 4  # stop strings per request (OpenAI's limit)
    max_stop_chars: int = 256  # characters per stop string; the stream holds back this many - 1
    max_body_bytes: int = 1_000_000
    retry_after_s: int = 1
    max_connections: int = 128  # connections served at once; a request on one past them: 503 at once
    request_timeout_s: float = 5.0  # to send a whole request, from connecting or the previous answer
    model_name: str | None = None  # default: the run directory's name
    bind_host: str | None = None  # the address the server listens on: also a valid Host header
    allowed_hosts: tuple[str, ...] = ()  # more Host names to accept ("*": any)


class APIError(Exception):
    """A request the server refuses, rendered in the OpenAI error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}


def error_response(status: int, message: str, kind: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# ---------------------------------------------------------------------------------------
# Reading and checking a request body
# ---------------------------------------------------------------------------------------


def check_json_type(request: Request) -> None:
    """Only JSON: a cross-site page can send text/plain or a form without asking (no CORS
    preflight), but not application/json."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise APIError(415, f"the body must be JSON sent with 'Content-Type: application/json', got "
                       f"{short(media or 'no Content-Type')!r}", code="unsupported_media_type")


class YieldingDecoder(json.JSONDecoder):
    """json.loads with json's own pure-Python scanner: the same grammar, values and errors, several
    times slower, but it runs bytecode, so the interpreter hands the GIL to the event loop's thread
    every few milliseconds (sys.getswitchinterval). The C scanner never does: json.loads in a thread
    holds the loop for the whole parse (measured: ~0.2-0.3 s for a 1 MB body of tiny values)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scan_once = py_make_scanner(self)


FAST_PARSE_VALUES = 4_096  # at most this many JSON values: C speed, on the loop (a few ms at most)


def value_bound(body: bytes | bytearray) -> int:
    """At least the number of values and keys in a JSON text: each one but the first follows a
    ``,``, ``:``, ``[`` or ``{`` (those inside strings only raise the bound)."""
    return 1 + sum(body.count(c) for c in b",:[{")


async def parse_json(body: bytes | bytearray) -> Any:
    """json.loads, without holding the event loop: parsing costs about a microsecond per value
    (strings are cheap), so a body of many values is parsed in a worker thread by YieldingDecoder."""
    if value_bound(body) <= FAST_PARSE_VALUES:
        return json.loads(body)
    return await asyncio.to_thread(json.loads, body, cls=YieldingDecoder)


async def read_json(request: Request, cap: int) -> dict[str, Any]:
    check_json_type(request)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise APIError(413, f"request body of {declared} bytes is larger than the limit of {cap} bytes",
                       code="request_too_large")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > cap:
                raise APIError(413, f"request body is larger than the limit of {cap} bytes",
                               code="request_too_large")
    except ClientDisconnect:  # gone, or closed for sending too slowly (serve.connections): nobody reads this
        raise APIError(400, "the connection closed before the whole body came", code="incomplete_body") from None
    try:
        data = await parse_json(body)
    except (ValueError, RecursionError) as exc:  # also: nesting too deep, an integer of > 4300 digits
        raise APIError(400, f"could not parse the JSON body: {short(str(exc))}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the JSON body must be an object", code="invalid_json")
    return data


def get_number(body: dict[str, Any], name: str, default: float | None, lo: float, hi: float,
               integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not lo <= value <= hi:
        what = "an integer" if integer else "a number"
        raise APIError(400, f"{name} must be {what} in [{lo}, {hi}], got {short(repr(value))}", param=name,
                       code="invalid_value")
    return value


def short(text: str, limit: int = 80) -> str:
    """A client's value as quoted in an error message: never the whole of a huge one."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def get_stops(body: dict[str, Any], max_stops: int, max_chars: int) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if (not isinstance(stops, list) or len(stops) > max_stops
            or not all(isinstance(s, str) and 0 < len(s) <= max_chars for s in stops)):
        raise APIError(400, f"stop must be a string or a list of up to {max_stops} strings, each of 1 to "
                       f"{max_chars} characters", param="stop", code="invalid_value")
    return stops


@dataclass
class Sampling:
    max_tokens: int
    params: RowParams
    seed: int | None
    n: int
    stops: list[str]
    stream: bool
    include_usage: bool


def read_sampling(body: dict[str, Any], options: ServeOptions, default_max_tokens: int) -> Sampling:
    cap = options.max_tokens_cap
    max_tokens = get_number(body, "max_tokens", None, 1, cap, integer=True)
    if max_tokens is None:  # the chat API's newer name
        max_tokens = get_number(body, "max_completion_tokens", min(default_max_tokens, cap), 1, cap, integer=True)
    temperature = get_number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = get_number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise APIError(400, "top_p must be > 0 (use temperature 0 for greedy)", param="top_p", code="invalid_value")
    top_k = get_number(body, "top_k", None, 1, 1_000_000, integer=True)  # an extension, as in vLLM
    seed = get_number(body, "seed", None, -(2**63), 2**63 - 1, integer=True)
    n = get_number(body, "n", 1, 1, options.max_n, integer=True)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "stream must be true or false", param="stream", code="invalid_value")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise APIError(400, "stream_options must be an object", param="stream_options", code="invalid_value")
    for unsupported in ("logprobs", "echo", "suffix", "best_of", "tools", "functions", "logit_bias",
                        "presence_penalty", "frequency_penalty"):
        value = body.get(unsupported)
        if value and not (unsupported == "best_of" and value == 1):
            raise APIError(400, f"{unsupported} is not supported by this server: leave it out", param=unsupported,
                           code="unsupported_parameter")
    params = RowParams(float(temperature), top_k, None if top_p >= 1 else float(top_p))
    stops = get_stops(body, options.max_stops, options.max_stop_chars)
    return Sampling(max_tokens, params, seed, n, stops, stream, bool(stream_options.get("include_usage", False)))


def read_prompts(body: dict[str, Any]) -> list[str]:
    prompt = body.get("prompt", "")
    texts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise APIError(400, "prompt must be a string or a non-empty list of strings", param="prompt",
                       code="invalid_value")
    return texts


def read_messages(raw: Any, block_size: int) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "messages must be a non-empty list of {role, content} objects", param="messages",
                       code="invalid_value")
    if len(raw) > block_size:  # each message takes at least one token (its role)
        raise APIError(400, f"{len(raw)} messages cannot fit the model's context of {block_size} tokens",
                       param="messages", code="context_length_exceeded")
    messages = []
    for i, item in enumerate(raw):
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            content = "".join(p for p in parts if isinstance(p, str)) if len(parts) == len(content) else None
        role = item.get("role") if isinstance(item, dict) else None
        if role == "developer":
            role = "system"
        if role not in ROLES or not isinstance(content, str):
            raise APIError(400, f"messages[{i}] needs a role ({', '.join(ROLES)}) and text content",
                           param=f"messages[{i}]", code="invalid_value")
        messages.append(Message(role, content))
    return messages


@dataclass
class InspectQuery:
    text: str  # the tail of the client's text that is tokenized
    cut: int  # characters left out before it
    layer: int
    head: int
    top_k: int


def read_inspect(body: dict[str, Any], shape: ModelConfig, max_prompt_chars: int) -> InspectQuery:
    text = body.get("text")
    if not isinstance(text, str) or not text:
        raise APIError(400, "text must be a non-empty string", param="text", code="invalid_value")
    layer = get_number(body, "layer", 0, 0, shape.n_layer - 1, integer=True)
    head = get_number(body, "head", 0, 0, shape.n_head - 1, integer=True)
    k = get_number(body, "top_k", 5, 1, 50, integer=True)
    # Only the newest block_size tokens are shown: tokenize only a tail that surely holds them
    # (twice what the context can hold, so the cut does not change the tokens kept).
    cut = max(0, len(text) - 2 * max_prompt_chars)
    return InspectQuery(text[cut:], cut, layer, head, k)
