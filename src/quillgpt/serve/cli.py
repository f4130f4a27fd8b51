"""The serving commands of ``quill``.

    quill serve RUN_DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY]   server + playground at /
    quill bench serve RUN_DIR [--clients 32] [--requests 200]              load test on localhost
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

import torch

from quillgpt.checkpoint import LoadedRun, load_run
from quillgpt.errors import CheckpointError, ConfigError
from quillgpt.models import build_model
from quillgpt.train import resolve_device


def load_serving_run(run_dir: str | Path, which: str = "latest", device: str = "cpu") -> LoadedRun:
    """Load a GPT run for serving; a run trained with the classic attention is served by the fused
    module (the same parameters, see models/attention.py), which has the KV cache."""
    run = load_run(run_dir, which=which, device=resolve_device(device))
    if run.config.model.arch != "gpt":
        raise CheckpointError(f"{run.run_dir} is a {run.config.model.arch} model: quill serve needs a GPT run")
    if run.config.model.attention != "fused":
        config = run.config.replace({"model": {"attention": "fused"}})
        model = build_model(config.model)
        model.load_state_dict(run.model.state_dict())
        run.model = model.to(run.model.lm_head.weight.device).eval()
    return run


def is_all_interfaces(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host in ("", "*")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from quillgpt.serve.app import ServeOptions, create_app

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    if args.max_batch < 1 or args.max_queue < 1 or args.max_tokens_cap < 1:
        raise ConfigError("--max-batch, --max-queue and --max-tokens-cap must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    run = load_serving_run(args.run_dir, args.checkpoint, args.device)
    options = ServeOptions(api_key=args.api_key, max_batch=args.max_batch, max_queue=args.max_queue,
                           max_tokens_cap=args.max_tokens_cap, model_name=args.model_name)
    app = create_app(run, options)
    if is_all_interfaces(args.host):
        print(f"quill: warning: listening on all interfaces ({args.host}): anyone who can reach this machine "
              f"can use the model{'' if args.api_key else '; consider --api-key'}", file=sys.stderr)
    print(f"serving {app.state.server.name} ({run.tokenizer.describe()}, step {run.step}) at "
          f"http://{args.host}:{args.port}/  (OpenAI API under /v1)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from quillgpt.serve.bench import BenchSpec, bench_serve, format_report

    if not args.run_dir:
        raise ConfigError("quill bench serve needs a run directory: quill bench serve RUN_DIR")
    spec = BenchSpec(run_dir=args.run_dir, clients=args.clients, requests=args.requests,
                     max_tokens=args.tokens_per_request, time_limit_s=args.time_limit, checkpoint=args.checkpoint)
    spec.validate()
    print(format_report(bench_serve(spec, progress=lambda line: print(line, file=sys.stderr, flush=True))))
    return 0


def add_serve_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve a run: OpenAI-compatible API and a playground at /")
    serve.add_argument("run_dir")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 requests")
    serve.add_argument("--checkpoint", default="latest", help="latest or best")
    serve.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    serve.add_argument("--max-batch", type=int, default=32, help="sequences decoded together (default 32)")
    serve.add_argument("--max-queue", type=int, default=128,
                       help="sequences waiting for a slot before requests get 503 (default 128)")
    serve.add_argument("--max-tokens-cap", type=int, default=1024, help="the largest max_tokens allowed")
    serve.add_argument("--model-name", default=None, help="the model id clients use (default: the run's folder name)")
    serve.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    serve.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    serve.set_defaults(func=cmd_serve)

    bench = commands.choices.get("bench")
    if bench is not None:  # quill bench serve RUN_DIR: its flags live here, with the command
        bench.add_argument("run_dir", nargs="?", help="serve: the run to serve")
        bench.add_argument("--clients", type=int, default=32, help="serve: concurrent streaming clients")
        bench.add_argument("--requests", type=int, default=200, help="serve: requests in all")
        bench.add_argument("--tokens-per-request", type=int, default=64, help="serve: max_tokens of each request")
        bench.add_argument("--time-limit", type=float, default=600.0, help="serve: give up after this many seconds")
        bench.add_argument("--checkpoint", default="latest", help="serve: latest or best")
