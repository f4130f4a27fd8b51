"""Helpers for the serve tests: tiny random-weight runs on disk, and a live uvicorn server on a free port."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import torch
import uvicorn

from quillgpt.chat import CHAT_TOKENS
from quillgpt.checkpoint import write_checkpoint, write_run_files
from quillgpt.config import ModelConfig, RunConfig
from quillgpt.models import build_model
from quillgpt.tokenizers import CharTokenizer

CHARS = list("\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def make_run(run_dir: Path, chat: bool = True, block_size: int = 32, seed: int = 0) -> Path:
    """A run with random weights: a char tokenizer (with the chat tokens when ``chat``) and a 2-layer GPT."""
    tokenizer = CharTokenizer(CHARS, specials=CHAT_TOKENS if chat else ())
    config = RunConfig(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=2, n_head=2,
                                   n_embd=32, dropout=0.0))
    torch.manual_seed(seed)
    model = build_model(config.model)
    write_run_files(run_dir, config, tokenizer, {"name": "random"})
    write_checkpoint(run_dir, 0, model.state_dict())
    return run_dir


class LiveServer:
    """Run an ASGI app with uvicorn in a thread, on a free localhost port."""

    def __init__(self, app) -> None:
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        settings = app.state.server.connections.uvicorn_settings()  # as quill serve runs it
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **settings))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()


def error_of(response: httpx.Response, status: int) -> dict:
    """The body of an OpenAI-shape error answer with this status."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error
