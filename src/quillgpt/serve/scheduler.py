"""The generation loop behind the server: one thread, one model, many sequences at once.

Requests put ``Sequence`` objects on a bounded queue (``submit``; a full queue raises
``QueueFullError``, which the server answers with 503 and Retry-After). A single worker thread
loops:

1. admit waiting sequences while the batch has room: run each prompt alone (prefill) into
   its own one-row ``RaggedKVCache``, draw its first token, and append the row to the batch;
2. run one forward pass over the last token of every sequence in the batch (decode) and draw
   each row's next token (``sample_rows``);
3. drop rows that are finished (max_tokens, a stop token) or cancelled (the client went away
   or a stop string matched), so their slot is free at the next step.

Context rule (the same as ``quill sample``): a prompt must fit in the context (at most
block_size tokens, checked by the server); when a sequence's cache is full, it is refilled
from its newest block_size // 2 tokens (``quillgpt.sample.cache_window``), so generation can
run past block_size with between block_size // 2 and block_size tokens of context.

Each token is handed to the sequence's ``emit`` callback from the worker thread; the server
turns that into an asyncio queue per request.

Other work on the model (the playground's ``/v1/inspect``) goes through ``call``: it waits in
the same bounded queue and runs in the worker between steps, so it shares generation's limit
on waiting work and never runs beside a step.
"""

from __future__ import annotations

import threading
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quillgpt.sample import cache_window
from quillgpt.serve.batching import RaggedKVCache, RowParams, sample_rows


class QueueFullError(Exception):
    """The scheduler already holds as many waiting sequences as it may."""


@dataclass
class Sequence:
    """One sequence to generate. ``emit(token_id)`` is called per token, ``emit(None)`` once at the end."""

    prompt: list[int]
    max_tokens: int
    params: RowParams
    generator: torch.Generator
    emit: Callable[[int | None], None]
    stop_ids: frozenset[int] = frozenset()
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "length" | "stop" | "cancelled"
    cancelled: bool = False

    def cancel(self) -> None:
        """Stop generating (from any thread): the worker drops the sequence before its next step."""
        self.cancelled = True


@dataclass
class Stats:
    tokens_generated: int = 0
    steps: int = 0
    prefills: int = 0
    max_batch_seen: int = 0


class Scheduler:
    """Continuous batching over one model; see the module docstring."""

    def __init__(self, model: nn.Module, max_batch: int = 32, max_queue: int = 128) -> None:
        self.model = model
        self.block_size = model.block_size
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.stats = Stats()
        self._waiting: deque[Sequence] = deque()
        self._jobs: deque[tuple[Callable[[], Any], Future[Any]]] = deque()  # see call()
        self._active: list[Sequence] = []
        self._cache: RaggedKVCache | None = None
        self._next: list[int] = []  # per active row: the drawn token not yet in the cache
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.model_lock = threading.Lock()  # held for each step; others using the model take it too

    # -- outside the worker ---------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="quill-scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue sequences (all or none): raise QueueFullError when they do not fit."""
        with self._wake:
            self._check_room(len(sequences))
            self._waiting.extend(sequences)
            self._wake.notify()

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` in the worker between steps (with the model lock); it counts as one waiting
        item against ``max_queue`` (QueueFullError when full). The future holds its result."""
        future: Future[Any] = Future()
        with self._wake:
            self._check_room(1)
            self._jobs.append((fn, future))
            self._wake.notify()
        return future

    def _check_room(self, n: int) -> None:
        if self.waiting + n > self.max_queue:
            raise QueueFullError(f"{self.waiting} sequences are already waiting (limit {self.max_queue})")

    @property
    def waiting(self) -> int:
        return len(self._waiting) + len(self._jobs)

    @property
    def active(self) -> int:
        return len(self._active)

    # -- the worker -----------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)  # per thread: the worker never needs autograd
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not self._active and not self._jobs:
                    self._wake.wait()
                if self._stopping:
                    break
                room = self.max_batch - len(self._active)
                admitted = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                jobs = list(self._jobs)
                self._jobs.clear()
            for fn, future in jobs:
                self._run_job(fn, future)
            if not admitted and not self._active:
                continue
            try:
                with self.model_lock:
                    self._step(admitted)
            except Exception:  # a bug, not bad input: end the open requests, report it, keep serving
                traceback.print_exc()
                for seq in admitted + self._active:
                    self._finish(seq, "error")
                self._active, self._next, self._cache = [], [], None
        for seq in list(self._waiting) + self._active:
            self._finish(seq, "cancelled")
        for _, future in self._jobs:
            future.cancel()

    def _run_job(self, fn: Callable[[], Any], future: Future[Any]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            with self.model_lock:
                result = fn()
        except BaseException as exc:  # the caller sees it (a 400 for bad input, a 500 for a bug)
            future.set_exception(exc)
        else:
            future.set_result(result)

    def _step(self, admitted: list[Sequence]) -> None:
        self._drop_finished()
        # Rows whose cache is full cannot take another token: they leave the batch and are
        # refilled from their newest tokens, like new sequences, after the decode step.
        full = {i for i in range(len(self._active)) if int(self._cache.lengths[i]) >= self.block_size}
        refill = [self._active[i] for i in sorted(full)]
        if full:
            self._keep([i for i in range(len(self._active)) if i not in full])
        if self._active:
            self._decode()
        for seq in admitted:
            if seq.cancelled:
                self._finish(seq, "cancelled")
            else:
                self._prefill(seq, seq.prompt)
        window = cache_window(self.block_size, self.block_size)
        for seq in refill:
            self._prefill(seq, (seq.prompt + seq.tokens)[-window:])
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(self._active))

    def _prefill(self, seq: Sequence, ids: list[int]) -> None:
        """Run ``ids`` through the model alone, draw the next token, and add the row to the batch."""
        cache = RaggedKVCache.for_model(self.model, 1)
        idx = torch.tensor([ids], dtype=torch.long, device=cache.lengths.device)
        logits, _ = self.model(idx, kv_cache=cache)
        self.stats.prefills += 1
        token = sample_rows(logits[:, -1], [seq.params], [seq.generator])[0]
        if self._accept(seq, token):
            if self._cache is None:
                self._cache = cache
            else:
                self._cache.extend(cache)
            self._active.append(seq)
            self._next.append(token)

    def _decode(self) -> None:
        """One forward pass over the newest token of every active sequence."""
        idx = torch.tensor([[t] for t in self._next], dtype=torch.long, device=self._cache.lengths.device)
        logits, _ = self.model(idx, kv_cache=self._cache)
        self.stats.steps += 1
        seqs = self._active
        tokens = sample_rows(logits[:, -1], [s.params for s in seqs], [s.generator for s in seqs])
        for row, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
            if self._accept(seq, token):
                self._next[row] = token

    def _accept(self, seq: Sequence, token: int) -> bool:
        """Hand a drawn token to its sequence; False when the sequence is now finished."""
        if seq.cancelled:
            self._finish(seq, "cancelled")
            return False
        if token in seq.stop_ids:
            self._finish(seq, "stop")
            return False
        seq.tokens.append(token)
        self.stats.tokens_generated += 1
        seq.emit(token)
        if len(seq.tokens) >= seq.max_tokens:
            self._finish(seq, "length")
            return False
        return True

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.finish_reason is None:
            seq.finish_reason = "cancelled" if seq.cancelled and reason != "error" else reason
            seq.emit(None)

    def _drop_finished(self) -> None:
        """Remove rows whose sequence finished or was cancelled since the last step."""
        keep = []
        for i, seq in enumerate(self._active):
            if seq.cancelled:
                self._finish(seq, "cancelled")
            if seq.finish_reason is None:
                keep.append(i)
        if len(keep) < len(self._active):
            self._keep(keep)

    def _keep(self, rows: list[int]) -> None:
        self._active = [self._active[i] for i in rows]
        self._next = [self._next[i] for i in rows]
        if not rows:
            self._cache = None
        elif self._cache is not None:
            self._cache.keep(rows)
