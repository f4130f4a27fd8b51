"""``quill serve`` and ``quill bench serve``.

    quill serve RUN_DIR [--host 127.0.0.1] [--port 8000] [--api-key-file PATH]   server + playground at /
                        [--max-connections 128] [--request-timeout 5]     connection bounds (serve/connections.py)

(``quill bench serve``, the load test, is in commands/bench.py with the other benchmarks.)

The API key comes from ``--api-key-file``, ``QUILL_API_KEY`` or ``--api-key`` (which shows in
``ps``). A server reachable from other machines needs one, or ``--insecure-no-key``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

import torch

from quillgpt.argtypes import bounded
from quillgpt.errors import ConfigError
from quillgpt.serve.loading import load_serving_run


def is_all_interfaces(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host in ("", "*")


def is_loopback(host: str) -> bool:
    """Only this machine can connect: 127.0.0.0/8, ::1 or the name localhost."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another name: it may resolve to a public address


def read_api_key(args: argparse.Namespace) -> str | None:
    """--api-key-file, else --api-key, else $QUILL_API_KEY (a key on the command line shows in ps)."""
    if args.api_key_file and args.api_key:
        raise ConfigError("give --api-key-file or --api-key, not both")
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read --api-key-file {args.api_key_file}: {exc}") from None
        if not key:
            raise ConfigError(f"--api-key-file {args.api_key_file} is empty")
        return key
    key = args.api_key if args.api_key is not None else os.environ.get("QUILL_API_KEY")
    if key is not None and not key.strip():
        raise ConfigError("the API key is empty: set a non-empty --api-key or QUILL_API_KEY")
    return key.strip() if key else None


def cmd_serve(args: argparse.Namespace) -> int:
    # In the function, not at the top: uvicorn and FastAPI take a while to import, and every other
    # quill command (and quill --help) would pay for them.
    import uvicorn

    from quillgpt.serve.app import ServeOptions, create_app

    api_key = read_api_key(args)
    if not is_loopback(args.host) and api_key is None and not args.insecure_no_key:
        raise ConfigError(f"--host {args.host} is reachable from other machines: set a key (--api-key-file PATH "
                          "or QUILL_API_KEY) or pass --insecure-no-key")
    if args.threads:
        torch.set_num_threads(args.threads)
    run = load_serving_run(args.run_dir, args.checkpoint, args.device)
    options = ServeOptions(api_key=api_key, max_batch=args.max_batch, max_queue=args.max_queue,
                           max_tokens_cap=args.max_tokens_cap, model_name=args.model_name, bind_host=args.host,
                           allowed_hosts=tuple(args.allowed_host), max_connections=args.max_connections,
                           request_timeout_s=args.request_timeout)
    app = create_app(run, options)
    if not is_loopback(args.host):
        print(f"quill: warning: listening on {args.host}, reachable from other machines"
              f"{'' if api_key else ' and WITHOUT an API key (--insecure-no-key)'}; clients must send a Host "
              "header of localhost, --host or an --allowed-host NAME", file=sys.stderr)
    print(f"serving {app.state.server.name} ({run.tokenizer.describe()}, step {run.step}) at "
          f"http://{args.host}:{args.port}/  (OpenAI API under /v1)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                **app.state.server.connections.uvicorn_settings())
    return 0


def add_serve_command(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve a run: OpenAI-compatible API and a playground at /")
    serve.add_argument("run_dir")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=bounded(int, 1, 65535), default=8000, help="TCP port (default 8000)")
    serve.add_argument("--api-key-file", metavar="PATH", default=None,
                       help="require 'Authorization: Bearer KEY' on /v1 requests, KEY read from this file")
    serve.add_argument("--api-key", default=None,
                       help="the key itself (visible in ps: prefer --api-key-file or $QUILL_API_KEY)")
    serve.add_argument("--insecure-no-key", action="store_true",
                       help="allow a --host other than loopback without an API key")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="also answer requests whose Host header is NAME (repeatable; '*': any). "
                            "Always: localhost, 127.0.0.1, [::1] and --host")
    serve.add_argument("--checkpoint", default="latest", help="latest or best")
    serve.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    serve.add_argument("--max-batch", type=bounded(int, 1, 4096), default=32,
                       help="sequences decoded together (default 32)")
    serve.add_argument("--max-queue", type=bounded(int, 1, 100_000), default=128,
                       help="sequences waiting for a slot before requests get 503 (default 128)")
    serve.add_argument("--max-tokens-cap", type=bounded(int, 1, 1_000_000), default=1024,
                       help="the largest max_tokens allowed")
    serve.add_argument("--max-connections", type=bounded(int, 1, 100_000), default=128,
                       help="connections served at once; a request on one more gets 503 at once (default 128)")
    serve.add_argument("--request-timeout", type=bounded(float, 0.05, 3600), default=5.0, metavar="SECONDS",
                       help="time a connection has to send a whole request (line, headers, body), from "
                            "connecting or its previous answer; then it is closed (default 5)")
    serve.add_argument("--model-name", default=None, help="the model id clients use (default: the run's folder name)")
    serve.add_argument("--threads", type=bounded(int, 1, 1024), default=None,
                       help="torch CPU threads (default: torch's choice)")
    serve.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    serve.set_defaults(func=cmd_serve)
