"""``quill attention``: a heatmap of one head's attention weights for a piece of text."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from quillgpt.checkpoint import LoadedRun
from quillgpt.errors import ConfigError
from quillgpt.fsutil import atomic_write
from quillgpt.models.introspect import attention_weights

if TYPE_CHECKING:
    from matplotlib.figure import Figure

VISIBLE = {" ": "␣", "\n": "\\n", "\t": "\\t"}  # whitespace tokens made readable on the axes


def token_labels(run: LoadedRun, ids: list[int]) -> list[str]:
    """One readable label per token (a BPE token that ends inside a character shows its bytes)."""
    labels = []
    for i in ids:
        text = run.tokenizer.token_bytes(i).decode("utf-8", errors="backslashreplace")
        labels.append("".join(VISIBLE.get(c, c) for c in text))
    return labels


def run_attention(run: LoadedRun, text: str, layer: int, head: int) -> tuple[torch.Tensor, list[str]]:
    """Head ``head`` of layer ``layer``'s (T, T) weights for ``text``, and the token labels."""
    c = run.config.model
    if c.arch != "gpt":
        raise ConfigError(f"{run.run_dir} is a {c.arch} model, which has no attention: give a GPT run")
    if not 0 <= layer < c.n_layer:
        raise ConfigError(f"--layer {layer} is out of range: this model has layers 0 to {c.n_layer - 1}")
    if not 0 <= head < c.n_head:
        raise ConfigError(f"--head {head} is out of range: this model has heads 0 to {c.n_head - 1}")
    if not text:
        raise ConfigError("--text is empty: give a few words for the model to read")
    ids = run.tokenizer.encode(text)  # a TokenizerError names the character the vocabulary lacks
    if len(ids) > c.block_size:
        raise ConfigError(f"--text is {len(ids)} tokens, longer than the model's context of {c.block_size}: "
                          "shorten it")
    device = next(run.model.parameters()).device
    weights = attention_weights(run.model, torch.tensor(ids, dtype=torch.long, device=device))
    return weights[layer, head].cpu(), token_labels(run, ids)


def attention_figure(weights: torch.Tensor, labels: list[str], title: str) -> Figure:
    """The heatmap as a matplotlib Figure: row i (a query position) shows how much it attends to each
    column j. Built without pyplot, so it picks no backend: a notebook shows it inline, the CLI saves it."""
    from matplotlib.figure import Figure  # matplotlib is slow to import: only when a plot is drawn

    T = len(labels)
    size = min(16.0, 2.5 + 0.32 * T)
    fig = Figure(figsize=(size, size * 0.9), dpi=110)
    ax = fig.subplots()
    image = ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(T), labels, rotation=90 if any(len(s) > 2 for s in labels) else 0, fontsize=8)
    ax.set_yticks(range(T), labels, fontsize=8)
    ax.set_xlabel("attends to (key position)")
    ax.set_ylabel("query position")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def plot_attention(weights: torch.Tensor, labels: list[str], path: Path, title: str) -> None:
    """Write the heatmap (``attention_figure``) as a PNG file."""
    fig = attention_figure(weights, labels, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
