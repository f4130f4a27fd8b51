"""Optimizers: AdamW (the default) and Muon for the hidden matrices (``--optimizer muon``).

Muon (Jordan et al., 2024, "Muon: an optimizer for hidden layers in neural networks";
used in the modded-nanogpt speedruns) takes SGD momentum for each 2-D weight matrix and
replaces the update by the nearest semi-orthogonal matrix, U V^T of its SVD U S V^T,
found with a few Newton-Schulz iterations instead of an SVD. Every direction of the
update then moves at the same rate, which trains small transformers in fewer steps than
AdamW. It applies to the matrices inside the blocks only; embeddings, the output head,
biases and LayerNorm gains stay on AdamW, as in the paper.

Both live in one ``torch.optim.Optimizer`` (groups marked ``muon``), so checkpoints,
the LR schedule (a per-group ``lr_scale``) and resume work the same for either.
"""

from __future__ import annotations

import torch
from torch import nn

# Quintic Newton-Schulz coefficients from the Muon write-up: chosen to push all singular
# values of X towards 1 quickly (they end in roughly [0.7, 1.2], which is close enough).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximately U V^T for g = U S V^T, for a (rows, cols) or batched (n, rows, cols) g.

    The iteration is robust to rounding, so Muon runs it in bf16 where that is fast.
    """
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide orientation: X X^T is then the smaller Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for groups with ``muon=True``, AdamW for the rest; lr of a group = lr * lr_scale."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.99),
                 momentum: float = 0.95, ns_steps: int = 5, ns_dtype: torch.dtype = torch.float32) -> None:
        self.ns_dtype = ns_dtype  # bf16 halves the Newton-Schulz time where matmuls are fast in bf16
        defaults = {"lr": lr, "betas": betas, "eps": 1e-8, "weight_decay": 0.0, "momentum": momentum,
                    "ns_steps": ns_steps, "muon": False, "lr_scale": 1.0}
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["muon"]:
                self._muon(group, params)
            else:
                self._adamw(group, params)

    def _muon(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        by_shape: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for p in params:
            buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
            buf.mul_(momentum).add_(p.grad)
            nesterov = p.grad.add(buf, alpha=momentum)  # look ahead along the momentum
            by_shape.setdefault(tuple(p.shape), []).append((p, nesterov))
        for shape, pairs in by_shape.items():
            # Same-shaped matrices (e.g. every head's key projection) orthogonalize as one batch.
            updates = orthogonalize(torch.stack([u for _, u in pairs]), group["ns_steps"], self.ns_dtype)
            scale = max(1.0, shape[0] / shape[1]) ** 0.5  # keeps the update RMS alike for tall matrices
            for (p, _), update in zip(pairs, updates, strict=True):
                if decay:
                    p.mul_(1 - lr * decay)
                p.add_(update, alpha=-lr * scale)

    def _adamw(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros(())
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            step = state["step"].item()
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            # Bias-corrected moments (Kingma & Ba, 2015, Algorithm 1); decoupled decay (Loshchilov & Hutter).
            denom = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(eps)
            if decay:
                p.mul_(1 - lr * decay)
            p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1**step))


def hidden_matrices(model: nn.Module) -> set[int]:
    """ids of the 2-D weights inside the transformer blocks: the ones Muon updates."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return set()
    return {id(p) for p in blocks.parameters() if p.dim() == 2}
