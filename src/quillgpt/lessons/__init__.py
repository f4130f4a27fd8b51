"""The lecture's side roads, runnable: each lesson prints its story and returns its numbers.

    quill lesson attention   four ways to average the past, ending at self-attention
    quill lesson norms       BatchNorm1d vs LayerNorm, by hand and against torch.nn
    quill lesson bigram      counting bigrams vs a trained embedding bigram
    quill attention RUN_DIR  a heatmap of one head's attention weights
    quill seq2seq            an encoder-decoder with cross-attention learns to reverse strings
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the lessons' tiny models on one CPU thread, then restore the caller's setting.

    Their matmuls are a few thousand elements: splitting them across threads costs more in
    hand-offs than it saves (the seq2seq test training: 0.81 s on 2 threads, 0.64 s on one,
    on an idle 2-core machine; ~10x slower on 2 threads when other jobs share the cores).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
