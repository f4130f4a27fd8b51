"""An OpenAI-compatible HTTP server for a trained run, and the playground at ``/``.

    GET  /health                   liveness and scheduler counters (no key needed)
    GET  /v1/models                the one model this server serves (named after the run directory)
    POST /v1/completions           text in, text out (stream: server-sent events ending in [DONE])
    POST /v1/chat/completions      only for runs whose tokenizer has the chat format (quillgpt.chat)
    GET  /v1/info                  the model's shape and training step, for the playground
    POST /v1/inspect               attention weights of one layer/head and the top next tokens per position

Requests are checked by hand in ``serve.requests``, not by pydantic, so that every bad input gets
a 4xx in the OpenAI error shape ``{"error": {"message", "type", "param", "code"}}`` (400 bad value or Host,
401 missing/wrong key, 404 unknown model or route, 413 body too large, 415 not JSON,
503 + Retry-After when the queue is full) and a 500 means a bug (logged with a request id; the
client sees only the id). Generation runs in ``Scheduler``'s worker thread; each request reads
its tokens from an asyncio queue.

Layout: the routes are plain functions on ``router``. Each finds the ``Server`` (the run, its
tokenizer, scheduler and limits) on ``request.app.state.server``, checks its request and hands
it to ``Server.respond`` (completions: a JSON answer or an event stream, built in that one
place) or ``Server.inspect``. ``create_app`` only assembles the app; the scheduler's worker
starts and stops with the app's lifespan. ``serve.choices`` turns a sequence's tokens into a
choice's text and the answer's JSON/event shapes; ``serve.hosts`` checks the Host header;
``serve.connections`` bounds the connections and the time to send a request (uvicorn's protocol:
a connection past ``max_connections`` gets 503 before the app sees it).

Every field is bounded in what it costs, so one request cannot stall the event loop (and so
``/health`` and every other client): at most 4 stop strings of at most ``max_stop_chars``
characters, matched in time linear in the text; ``n`` and ``max_tokens`` capped; prompts
× n at most ``max_queue``; a prompt longer than the context could hold is refused before it
is tokenized, and tokenizing runs in a thread; a body of many JSON values is parsed in a thread
by a scanner that lets the loop run (``requests.parse_json``); ``/v1/inspect`` waits in the
scheduler's queue.

Browsers: JSON endpoints take only ``Content-Type: application/json`` (so a cross-site page
cannot send a "simple" POST), no CORS headers are sent, and the Host header must name this
server (localhost, the bound address or ``--allowed-host``), which defeats DNS rebinding.

Context rule: the prompt (after tokenization, with the chat template for chat) must have at
most block_size tokens, else 400 ``context_length_exceeded``. Generation may run past the
context: the model then sees the newest block_size // 2 .. block_size tokens, as in ``quill sample``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from quillgpt.chat import Message, end_id, has_chat_format, prompt_ids
from quillgpt.checkpoint import LoadedRun
from quillgpt.errors import QuillError
from quillgpt.models.introspect import inspect, top_alternatives
from quillgpt.serve.choices import Choice, chunk, sse, whole_choice
from quillgpt.serve.connections import ConnectionGuard
from quillgpt.serve.hosts import HostCheck, allowed_hosts
from quillgpt.serve.requests import (
    APIError,
    InspectQuery,
    Sampling,
    ServeOptions,
    error_response,
    read_inspect,
    read_json,
    read_messages,
    read_prompts,
    read_sampling,
)
from quillgpt.serve.scheduler import QueueFullError, Scheduler, Sequence
from quillgpt.tokenizers import StreamDecoder, Tokenizer

log = logging.getLogger("quillgpt.serve")

# ---------------------------------------------------------------------------------------
# The server: one run, its scheduler and limits; checked requests in, answers out
# ---------------------------------------------------------------------------------------


@dataclass
class Completion:
    """A checked, tokenized completion request: what ``Server.respond`` answers."""

    prompts: list[list[int]]
    sampling: Sampling
    chat: bool
    stop_ids: frozenset[int] = frozenset()  # tokens that end a choice and are not sent (chat: <|end|>)


@dataclass
class Server:
    """What the routes share, kept on ``app.state.server``."""

    run: LoadedRun
    options: ServeOptions
    scheduler: Scheduler
    name: str
    created: int = field(default_factory=lambda: int(time.time()))
    max_token_bytes: int = field(init=False)  # the longest token's UTF-8 bytes
    connections: ConnectionGuard = field(init=False)  # its uvicorn_settings() go to uvicorn.run

    def __post_init__(self) -> None:
        t = self.run.tokenizer
        self.max_token_bytes = max(4, *(len(t.token_bytes(i)) for i in range(t.vocab_size)))
        o = self.options
        self.connections = ConnectionGuard(o.max_connections, o.request_timeout_s, o.retry_after_s)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.run.tokenizer

    @property
    def chat(self) -> bool:
        return has_chat_format(self.tokenizer)

    # -- checks -----------------------------------------------------------------------------

    def check_key(self, request: Request) -> None:
        key = self.options.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    def check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise APIError(400, f"model is required: use {self.name!r} (see GET /v1/models)", param="model",
                           code="missing_model")
        if model != self.name:
            raise APIError(404, f"the model {model!r} does not exist: this server has {self.name!r}",
                           param="model", code="model_not_found")

    def check_chat(self) -> None:
        if not self.chat:
            raise APIError(400, f"{self.name} has no chat format (its tokenizer lacks the chat tokens): use "
                           "/v1/completions, or finetune it on conversations with quill sft",
                           param="messages", code="chat_not_supported")

    @property
    def max_prompt_chars(self) -> int:
        """No text longer than this fits the context: a token stands for at most
        ``max_token_bytes`` bytes, so ``block_size`` tokens for at most this many characters."""
        return self.scheduler.block_size * self.max_token_bytes

    def check_chars(self, text: str, param: str) -> None:
        """Refuse a prompt that cannot fit the context before paying to tokenize it."""
        if len(text) > self.max_prompt_chars:
            raise APIError(400, f"the prompt has {len(text)} characters, more than the model's context of "
                           f"{self.scheduler.block_size} tokens can hold: shorten the prompt", param=param,
                           code="context_length_exceeded")

    def check_queue_room(self, sequences: int, param: str) -> None:
        """A request for more sequences than the queue holds could never be served: 400, not 503."""
        limit = self.options.max_queue
        if sequences > limit:
            raise APIError(400, f"this request asks for {sequences} sequences (prompts x n) but the server "
                           f"queues at most {limit} (--max-queue): send fewer prompts or a smaller n",
                           param=param, code="too_many_sequences")

    # -- tokenizing (slow for long text: called in a thread, off the event loop) ---------------

    def encode(self, text: str, param: str) -> list[int]:
        try:
            ids = self.tokenizer.encode(text) if text else self.tokenizer.start_ids()
        except QuillError as exc:
            raise APIError(400, str(exc), param=param, code="invalid_prompt") from None
        return self.check_length(ids, param)

    def encode_chat(self, messages: list[Message]) -> list[int]:
        try:
            return self.check_length(prompt_ids(self.tokenizer, messages), "messages")
        except QuillError as exc:
            raise APIError(400, str(exc), param="messages", code="invalid_prompt") from None

    def check_length(self, ids: list[int], param: str) -> list[int]:
        block = self.scheduler.block_size
        if len(ids) > block:
            raise APIError(400, f"the prompt has {len(ids)} tokens but the model's context is {block}: "
                           "shorten the prompt", param=param, code="context_length_exceeded")
        return ids

    # -- answers that need no generation ---------------------------------------------------

    def health(self) -> dict[str, Any]:
        s = self.scheduler.stats
        return {"status": "ok", "model": self.name, "active": self.scheduler.active,
                "waiting": self.scheduler.waiting, "tokens_generated": s.tokens_generated, "decode_steps": s.steps,
                "prefills": s.prefills, "max_batch_seen": s.max_batch_seen, "connections": self.connections.stats()}

    def model_card(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "quillgpt"}

    def info(self) -> dict[str, Any]:
        c = self.run.config.model
        return {"model": self.name, "step": self.run.step, "parameters": sum(p.numel() for p in
                                                                             self.run.model.parameters()),
                "tokenizer": self.tokenizer.describe(), "vocab_size": c.vocab_size, "block_size": c.block_size,
                "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "chat": self.chat,
                "max_tokens_cap": self.options.max_tokens_cap}

    # -- /v1/inspect -------------------------------------------------------------------------

    async def inspect(self, request: Request, query: InspectQuery) -> bytes:
        """Run ``inspect_json`` in the scheduler's worker: queued and bounded like generation."""
        try:
            future = self.scheduler.call(lambda: self.inspect_json(query))
        except QueueFullError as exc:
            raise busy(exc, self.options.retry_after_s) from None
        return await wait_for_job(request, future)

    def inspect_json(self, query: InspectQuery) -> bytes:
        try:
            ids = self.tokenizer.encode(query.text)
        except QuillError as exc:
            raise APIError(400, str(exc), param="text", code="invalid_prompt") from None
        c = self.run.config.model
        offset = max(0, len(ids) - c.block_size)  # longer than the context: its newest block_size tokens
        ids = ids[offset:]
        model = self.run.model
        seen = inspect(model, torch.tensor(ids, dtype=torch.long, device=model.lm_head.weight.device))
        top_ids, top_probs = top_alternatives(seen.probs, query.top_k)
        weights = seen.attention[query.layer, query.head]
        return json.dumps({
            "model": self.name, "layer": query.layer, "head": query.head, "n_layer": c.n_layer, "n_head": c.n_head,
            "offset": offset, "truncated_chars": query.cut, "token_ids": ids,
            "tokens": [token_text(self.tokenizer, i) for i in ids],
            "attention": [[round(w, 4) for w in row[: t + 1]] for t, row in enumerate(weights.tolist())],
            # P(token t | tokens before it), for t >= 1: how expected each token on screen was.
            "token_probs": [None] + [round(seen.probs[t - 1, ids[t]].item(), 4) for t in range(1, len(ids))],
            "alternatives": [[{"token": token_text(self.tokenizer, i), "id": i, "prob": round(p, 4)}
                              for i, p in zip(row_ids, row_probs, strict=True)]
                             for row_ids, row_probs in zip(top_ids, top_probs, strict=True)],
        }).encode()

    # -- completions -------------------------------------------------------------------------

    async def respond(self, request: Request, job: Completion) -> dict[str, Any] | StreamingResponse:
        """The one place where a checked completion request becomes its answer: one JSON body
        once every choice is finished, or server-sent events as the tokens come."""
        head = {"id": ("chatcmpl-" if job.chat else "cmpl-") + secrets.token_hex(12),
                "object": "chat.completion" if job.chat else "text_completion", "created": int(time.time()),
                "model": self.name}
        tokens = self.generate(request, job)
        if not job.sampling.stream:
            return await self.whole_answer(tokens, head, job)
        first = await anext_or_none(tokens)  # raises 503 (queue full) here, before the response starts
        head["object"] = "chat.completion.chunk" if job.chat else "text_completion"
        return StreamingResponse(self.events(first, tokens, head, job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def whole_answer(self, tokens: AsyncIterator[tuple[int, str, Choice]], head: dict[str, Any],
                           job: Completion) -> dict[str, Any]:
        finished: dict[int, Choice] = {}
        async for index, _, choice in tokens:
            finished[index] = choice
        ordered = [finished[i] for i in sorted(finished)]
        choices = [whole_choice(i, c, job.chat) for i, c in enumerate(ordered)]
        return {**head, "choices": choices, "usage": self.usage(job, ordered)}

    async def events(self, first: tuple[int, str, Choice] | None, tokens: AsyncGenerator[tuple[int, str, Choice], None],
                     head: dict[str, Any], job: Completion) -> AsyncIterator[str]:
        """A role chunk per choice (chat), each choice's text as it comes, the usage if asked, [DONE]."""
        seen: dict[int, Choice] = {}
        try:
            if job.chat:
                for index in range(len(job.prompts) * job.sampling.n):
                    yield chunk(head, job.chat, index, "", None, role=True)
            item = first
            while item is not None:
                index, delta, choice = item
                seen[index] = choice
                if delta or choice.finish_reason is not None:
                    yield chunk(head, job.chat, index, delta, choice.finish_reason)
                item = await anext_or_none(tokens)
            if job.sampling.include_usage:
                ordered = [seen[i] for i in sorted(seen)]
                yield sse({**head, "choices": [], "usage": self.usage(job, ordered)})
            yield "data: [DONE]\n\n"
        finally:  # also when the client hangs up mid-stream: its sequences are cancelled
            await tokens.aclose()

    def sequences(self, job: Completion, emit: Callable[[int, int | None], None]) -> list[Sequence]:
        """One Sequence per (prompt, choice); choice i of a seeded request uses seed + i."""
        sampling, seqs = job.sampling, []
        for p, ids in enumerate(job.prompts):
            for j in range(sampling.n):
                index = p * sampling.n + j
                seed = secrets.randbits(62) if sampling.seed is None else sampling.seed + j
                generator = torch.Generator().manual_seed(seed % 2**63)
                seqs.append(Sequence(list(ids), sampling.max_tokens, sampling.params, generator,
                                     lambda token, i=index: emit(i, token), job.stop_ids))
        return seqs

    async def generate(self, request: Request, job: Completion) -> AsyncGenerator[tuple[int, str, Choice], None]:
        """Yield (choice index, new text, choice) as tokens arrive; cancel everything when done or abandoned."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, int | None]] = asyncio.Queue()

        def emit(index: int, token: int | None) -> None:  # in the scheduler's thread
            with suppress(RuntimeError):  # the event loop is closed: the server is shutting down
                loop.call_soon_threadsafe(queue.put_nowait, (index, token))

        seqs = self.sequences(job, emit)
        choices = [Choice(StreamDecoder(self.tokenizer), job.sampling.stops) for _ in seqs]
        try:
            self.scheduler.submit(seqs)
        except QueueFullError as exc:
            raise busy(exc, self.options.retry_after_s) from None
        open_choices = set(range(len(seqs)))
        checked = time.monotonic()
        try:
            while open_choices:
                # A client that hangs up is noticed by asking (every 0.25 s): also while its request
                # waits in the queue, and without a stream, where no failed write would tell.
                if time.monotonic() - checked > 0.25:
                    if await request.is_disconnected():
                        return
                    checked = time.monotonic()
                try:
                    items = [await asyncio.wait_for(queue.get(), timeout=0.25)]
                except asyncio.TimeoutError:
                    continue
                while not queue.empty():  # a slow reader gets every waiting token in one piece
                    items.append(queue.get_nowait())
                for index, token in items:
                    if index not in open_choices:
                        continue
                    choice = choices[index]
                    delta = choice.close(seqs[index].finish_reason) if token is None else choice.feed(token)
                    if choice.finish_reason is not None:
                        seqs[index].cancel()  # a stop string: the scheduler drops it at its next step
                        open_choices.discard(index)
                    yield index, delta, choice
        finally:
            for seq in seqs:
                seq.cancel()

    def usage(self, job: Completion, choices: list[Choice]) -> dict[str, int]:
        prompt_tokens = sum(len(p) for p in job.prompts)
        completion = sum(c.tokens for c in choices)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}


# ---------------------------------------------------------------------------------------
# The routes: plain functions that find the Server on request.app.state
# ---------------------------------------------------------------------------------------

router = APIRouter()
STATIC = resources.files("quillgpt.serve") / "static"  # the playground


def authorized(request: Request) -> Server:
    """The app's Server, once the request has shown the API key (when the server has one)."""
    server: Server = request.app.state.server
    server.check_key(request)
    return server


async def checked_body(request: Request) -> tuple[Server, dict[str, Any]]:
    """The Server and the JSON body of a POST to /v1, checked in this order: key, body, model."""
    server = authorized(request)
    body = await read_json(request, server.options.max_body_bytes)
    server.check_model(body)
    return server, body


@router.get("/", include_in_schema=False)
async def playground() -> FileResponse:
    return FileResponse(str(STATIC / "index.html"))


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:  # no key: a load balancer's probe has none
    return request.app.state.server.health()


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [authorized(request).model_card()]}


@router.get("/v1/models/{model_id}")
async def model_card(model_id: str, request: Request) -> dict[str, Any]:
    server = authorized(request)
    server.check_model({"model": model_id})
    return server.model_card()


@router.get("/v1/info")
async def info(request: Request) -> dict[str, Any]:
    return authorized(request).info()


@router.post("/v1/completions")
async def completions(request: Request) -> Any:
    server, body = await checked_body(request)
    texts = read_prompts(body)
    sampling = read_sampling(body, server.options, default_max_tokens=16)
    server.check_queue_room(len(texts) * sampling.n, "n" if len(texts) == 1 else "prompt")
    for text in texts:
        server.check_chars(text, "prompt")
    # Bounded now, but a long prompt still takes a while to tokenize: not on the event loop.
    prompts = await asyncio.to_thread(lambda: [server.encode(t, "prompt") for t in texts])
    return await server.respond(request, Completion(prompts, sampling, chat=False))


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Any:
    server, body = await checked_body(request)
    server.check_chat()
    messages = read_messages(body.get("messages"), server.scheduler.block_size)
    server.check_chars("".join(m.content for m in messages), "messages")
    sampling = read_sampling(body, server.options, default_max_tokens=256)
    server.check_queue_room(sampling.n, "n")
    prompt = await asyncio.to_thread(server.encode_chat, messages)
    stop_ids = frozenset({end_id(server.tokenizer)})
    return await server.respond(request, Completion([prompt], sampling, chat=True, stop_ids=stop_ids))


@router.post("/v1/inspect")
async def inspect_text(request: Request) -> Response:
    server, body = await checked_body(request)
    query = read_inspect(body, server.run.config.model, server.max_prompt_chars)
    return Response(await server.inspect(request, query), media_type="application/json")


# ---------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------


def create_app(run: LoadedRun, options: ServeOptions | None = None) -> FastAPI:
    """A FastAPI app serving ``run``. Its scheduler's worker thread runs during the app's lifespan
    (as under uvicorn or ``with TestClient(app)``); outside it, requests are queued but never answered."""
    options = options or ServeOptions()
    scheduler = Scheduler(run.model.eval(), options.max_batch, options.max_queue)
    app = FastAPI(title="quillgpt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = Server(run, options, scheduler, options.model_name or run.run_dir.resolve().name)
    app.add_middleware(HostCheck, allowed=allowed_hosts(options))
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, bug)
    app.include_router(router)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The one place the scheduler starts and stops: generation runs while the app serves."""
    scheduler: Scheduler = app.state.server.scheduler
    scheduler.start()
    try:
        yield
    finally:
        scheduler.stop()


async def api_error(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.kind, exc.param, exc.code, exc.headers)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own errors (no such route, wrong method) in the OpenAI shape."""
    message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
    return error_response(exc.status_code, message, "invalid_request_error", code="not_found")


async def bug(request: Request, exc: Exception) -> JSONResponse:
    # The details stay in the server's log: they may show paths, code or other requests' data.
    request_id = "req-" + secrets.token_hex(8)
    log.error("internal error in %s %s (%s)", request.method, request.url.path, request_id, exc_info=exc)
    return error_response(500, f"internal error: the server's log has the details under {request_id}",
                          "server_error", headers={"x-request-id": request_id})


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------


async def wait_for_job(request: Request, future: Future[Any]) -> Any:
    """The result of a scheduler job; a client that hangs up meanwhile cancels it (if not yet started)."""
    waiting = asyncio.wrap_future(future)
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=0.25)
        if done:
            return waiting.result()
        if await request.is_disconnected():
            future.cancel()
            return b""  # nobody reads it


def busy(exc: QueueFullError, retry_after_s: int) -> APIError:
    return APIError(503, f"the server is busy ({exc}): retry after {retry_after_s} s", kind="server_error",
                    code="queue_full", headers={"Retry-After": str(retry_after_s)})


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """How one token reads on its own (a byte-level piece of a character shows as U+FFFD)."""
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")


async def anext_or_none(stream: AsyncIterator[Any]) -> Any:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None
