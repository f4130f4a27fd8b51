"""``quill bench serve``: load-test ``quill serve`` on localhost with streaming clients.

The server runs in its own process (``python -m quillgpt serve``, on a free port), so its
memory is measured alone (RSS from /proc) and the clients' work does not count as its own.
Three phases, all streaming ``/v1/completions`` with ``max_tokens`` tokens each, seeded, no stop:

1. one client, requests one after another: the tokens/s a single user sees;
2. 8 concurrent clients: aggregate tokens/s, which batching should make >= 3x phase 1;
3. ``clients`` concurrent clients, ``requests`` requests in all: errors, time to first
   token (p50, p95) and aggregate tokens/s, with the server's RSS before and after.

Every request and the whole run are bounded in time; a request that fails or times out
counts as an error and the report says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from quillgpt.errors import ConfigError

PROMPTS = ("ROMEO:", "JULIET:\nO ", "First Citizen:\n", "KING RICHARD III:\nNow is the ", "To be, or not", "\n")


@dataclass
class BenchSpec:
    run_dir: str
    clients: int = 32
    requests: int = 200
    max_tokens: int = 64
    time_limit_s: float = 600.0
    checkpoint: str = "latest"
    single_requests: int = 10
    mid_clients: int = 8
    mid_requests: int = 40

    def validate(self) -> None:
        if not Path(self.run_dir).is_dir():
            raise ConfigError(f"run directory not found: {self.run_dir}")
        if self.clients < 1 or self.requests < self.clients or self.max_tokens < 1 or self.time_limit_s <= 0:
            raise ConfigError("need --clients >= 1, --requests >= --clients, --tokens-per-request >= 1, "
                              "--time-limit > 0")


@dataclass
class Phase:
    name: str
    clients: int
    requests: int
    seconds: float = 0.0
    tokens: int = 0
    errors: int = 0
    ttft: list[float] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.ttft:
            return float("nan")
        ordered = sorted(self.ttft)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Report:
    spec: BenchSpec
    model: str
    phases: list[Phase]
    rss_before_mb: float
    rss_after_mb: float
    wall_s: float
    server: dict = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_request(client, model: str, prompt: str, max_tokens: int, seed: int, phase: Phase,
                      timeout: float) -> None:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}}
    tic = time.perf_counter()
    first: list[float] = []

    async def send() -> None:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    return
                if not line.startswith("data: "):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("choices") and not first:
                    first.append(time.perf_counter() - tic)
                if chunk.get("usage"):
                    phase.tokens += chunk["usage"]["completion_tokens"]
        raise RuntimeError("stream ended without [DONE]")

    try:
        await asyncio.wait_for(send(), timeout)
        phase.ttft += first
    except Exception as exc:  # a failed request is counted and reported, not fatal
        phase.errors += 1
        if len(phase.messages) < 5:
            phase.messages.append(f"{type(exc).__name__}: {exc}")


async def run_phase(base_url: str, model: str, phase: Phase, max_tokens: int, deadline: float,
                    seed0: int) -> Phase:
    import httpx

    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(phase.requests):
        queue.put_nowait(i)

    async def worker(client) -> None:
        while not queue.empty() and time.monotonic() < deadline:
            i = queue.get_nowait()
            await one_request(client, model, PROMPTS[i % len(PROMPTS)], max_tokens, seed0 + i, phase,
                              max(1.0, deadline - time.monotonic()))

    limits = httpx.Limits(max_connections=phase.clients, max_keepalive_connections=phase.clients)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=None) as client:
        tic = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(phase.clients)))
        phase.seconds = time.perf_counter() - tic
    phase.errors += queue.qsize()  # requests never sent because time ran out
    return phase


def wait_ready(base_url: str, process: subprocess.Popen, timeout: float = 120.0) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"quill serve exited with code {process.returncode}: {process.stderr.read()[-500:]}")
        try:
            return httpx.get(base_url + "/health", timeout=1.0).json()
        except httpx.HTTPError:
            time.sleep(0.2)
    raise ConfigError(f"quill serve did not answer /health within {timeout:.0f} s")


def bench_serve(spec: BenchSpec, progress: Callable[[str], None] = lambda line: None) -> Report:
    import httpx

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "quillgpt", "serve", spec.run_dir, "--port", str(port),
               "--checkpoint", spec.checkpoint, "--max-batch", str(spec.clients),
               "--max-queue", str(max(128, 2 * spec.clients)), "--max-tokens-cap", str(max(1024, spec.max_tokens)),
               "--max-connections", str(max(128, spec.clients + 8))]  # every client's connection, and /health
    tic = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        model = wait_ready(base_url, process)["model"]
        rss_before = rss_mb(process.pid)
        deadline = time.monotonic() + spec.time_limit_s
        phases = [Phase("warmup", 2, 4), Phase("1 client", 1, spec.single_requests),
                  Phase(f"{spec.mid_clients} clients", spec.mid_clients, spec.mid_requests),
                  Phase(f"{spec.clients} clients", spec.clients, spec.requests)]
        for n, phase in enumerate(phases):
            progress(f"bench serve: {phase.name}, {phase.requests} requests of {spec.max_tokens} tokens ...")
            asyncio.run(run_phase(base_url, model, phase, spec.max_tokens, deadline, seed0=1000 * n))
            progress(f"  {phase.tokens} tokens in {phase.seconds:.1f} s = {phase.tokens_per_s:.0f} tokens/s, "
                     f"{phase.errors} errors")
        rss_after = rss_mb(process.pid)
        server = httpx.get(base_url + "/health", timeout=5.0).json()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    return Report(spec, model, phases[1:], rss_before, rss_after, time.perf_counter() - tic, server)


def format_report(report: Report) -> str:
    spec = report.spec
    single, mid, full = report.phases
    lines = [f"quill bench serve {spec.run_dir}: model {report.model}, {spec.max_tokens} tokens per request, "
             "streaming /v1/completions on localhost",
             f"{'phase':<12} {'requests':>8} {'errors':>6} {'seconds':>8} {'tokens':>7} {'tokens/s':>9} "
             f"{'TTFT p50':>9} {'TTFT p95':>9}"]
    for phase in report.phases:
        lines.append(f"{phase.name:<12} {phase.requests:>8} {phase.errors:>6} {phase.seconds:>8.1f} {phase.tokens:>7} "
                     f"{phase.tokens_per_s:>9.0f} {phase.percentile(0.5) * 1000:>7.0f}ms "
                     f"{phase.percentile(0.95) * 1000:>7.0f}ms")
    ratio = mid.tokens_per_s / single.tokens_per_s if single.tokens_per_s else float("nan")
    lines.append(f"aggregate tokens/s with {mid.clients} clients = {ratio:.2f}x one client "
                 f"({'meets' if ratio >= 3 else 'BELOW'} the 3x target)")
    lines.append(f"{full.clients} clients: {full.errors} errors of {full.requests}; server RSS "
                 f"{report.rss_before_mb:.0f} MB before, {report.rss_after_mb:.0f} MB after; "
                 f"largest batch {report.server.get('max_batch_seen')}; wall {report.wall_s:.0f} s")
    for phase in report.phases:
        lines += [f"  {phase.name} error: {m}" for m in phase.messages]
    return "\n".join(lines)
