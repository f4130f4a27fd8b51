"""Sampling replies in batches, and scoring them: the shared machinery of evaluation and RL.

A reply is sampled after a prompt that ends in ``<|assistant|>`` and ends at ``<|end|>`` (kept,
so the policy is also trained on when to stop) or after ``max_new_tokens``. Prompts of equal
length share a batch, so every row of a batch sits at the same positions and the KV cache of
``sample.stream`` serves them all; RL's groups of samples of one prompt batch naturally.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from quillgpt.sample import stream


@dataclass
class Rollout:
    """One sampled reply: the prompt's ids, the reply's ids (with its ``<|end|>`` if it ended)."""

    prompt: list[int]
    response: list[int]
    finished: bool

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.response


def sample_replies(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, stop_id: int,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   generator: torch.Generator | None = None, batch_size: int = 256) -> list[Rollout]:
    """One reply per prompt, in the order given (``top_k=1``: greedy)."""
    device = next(model.parameters()).device
    room = model.block_size - max(len(p) for p in prompts)
    if room < 1:
        raise ValueError(f"a prompt of {max(len(p) for p in prompts)} tokens leaves no room in block_size "
                         f"{model.block_size}")
    max_new_tokens = min(max_new_tokens, room)
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        by_length[len(prompt)].append(i)
    out: list[Rollout | None] = [None] * len(prompts)
    for rows in by_length.values():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            idx = torch.tensor([prompts[i] for i in chunk], dtype=torch.long, device=device)
            replies = _sample_batch(model, idx, max_new_tokens, stop_id, temperature, top_k, top_p, generator)
            for i, reply in zip(chunk, replies, strict=True):
                finished = stop_id in reply
                out[i] = Rollout(prompts[i], reply[: reply.index(stop_id) + 1] if finished else reply, finished)
    return [r for r in out if r is not None]


def _sample_batch(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, stop_id: int, temperature: float,
                  top_k: int | None, top_p: float | None, generator: torch.Generator | None) -> list[list[int]]:
    tokens = []
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    for token in stream(model, idx, max_new_tokens, temperature, top_k, top_p, generator=generator):
        tokens.append(token)
        done |= token[:, 0] == stop_id
        if bool(done.all()):  # every row has ended: no need to sample the rest
            break
    return torch.cat(tokens, dim=1).tolist() if tokens else [[] for _ in range(idx.size(0))]


@dataclass
class RolloutBatch:
    """Rollouts as padded tensors: ``ids`` (B, T) and ``response_mask`` (B, T-1), true where
    position t+1 holds a reply token, so the log-probability at t is the reply's."""

    ids: torch.Tensor
    response_mask: torch.Tensor
    last: torch.Tensor  # (B,) index of each sequence's last token

    @classmethod
    def from_rollouts(cls, rollouts: list[Rollout], pad_id: int, device: torch.device | str) -> RolloutBatch:
        longest = max(len(r.ids) for r in rollouts)
        ids = torch.full((len(rollouts), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rollouts), longest - 1), dtype=torch.bool)
        for row, r in enumerate(rollouts):
            ids[row, : len(r.ids)] = torch.tensor(r.ids)
            mask[row, len(r.prompt) - 1: len(r.ids) - 1] = True
        last = torch.tensor([len(r.ids) - 1 for r in rollouts])
        return cls(ids.to(device), mask.to(device), last.to(device))


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[t+1] | ids[..t]) for every position: (B, T-1), from logits (B, T, V)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def sampled_logprobs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """``token_logprobs`` of ``ids`` under ``model`` in eval mode (no dropout), without gradients: the
    "old" and reference log-probabilities that the policy's new ones are compared with."""
    was_training = model.training
    model.eval()
    logp = token_logprobs(model(ids)[0], ids)
    model.train(was_training)
    return logp


def minibatches(n: int, count: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """``count`` disjoint random index sets covering range(n): the rows of each optimizer step."""
    return list(torch.randperm(n, generator=generator).chunk(count))


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution: (B, T-1), from logits (B, T, V)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the true positions of ``mask`` (all rows together: token-level, as DAPO)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)
