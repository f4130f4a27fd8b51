"""GRPO: group relative policy optimization (Shao et al. 2024, DeepSeekMath, section 4.1).

No value network: the baseline of a reply is the mean reward of the other samples of the same
question, so a group of ``samples_per_prompt`` replies per question is what makes the signal.
Advantages are the group-normalized rewards, shared by every token of a reply; the loss is
PPO's clipped surrogate plus beta times the KL estimate to the reference, averaged over all
reply tokens of the batch (token-level, as in DAPO and nanochat). With one epoch and one
minibatch the ratio is 1 and this is REINFORCE with a group baseline (nanochat's chat_rl).
"""

from __future__ import annotations

import torch
from torch import nn

from quillgpt.posttrain.objectives import AdaptiveKL, clipped_policy_loss, group_advantages, kl_estimate
from quillgpt.posttrain.rl import RLConfig, optimizer_for
from quillgpt.posttrain.rollout import RolloutBatch, entropy, masked_mean, token_logprobs


def minibatches(n: int, count: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """``count`` disjoint random index sets covering range(n)."""
    return list(torch.randperm(n, generator=generator).chunk(count))


@torch.no_grad()
def sampled_logprobs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    logp = token_logprobs(model(ids)[0], ids)
    model.train(was_training)
    return logp


def kl_per_reply(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over replies of the summed per-token KL estimate (the "KL" RLHF reports)."""
    return float((kl_estimate(logp, ref_logp) * mask).sum() / mask.size(0))


class GRPO:
    name = "grpo"

    def __init__(self, policy: nn.Module, reference: nn.Module, config: RLConfig) -> None:
        self.policy, self.reference, self.config = policy, reference, config
        self.optimizer, self.schedule = optimizer_for(policy, config)
        self.kl = AdaptiveKL(config.kl_coef, config.kl_target, config.kl_horizon)
        self.generator = torch.Generator().manual_seed(config.seed)

    def update(self, batch: RolloutBatch, scores: torch.Tensor) -> dict[str, float]:
        c = self.config
        mask = batch.response_mask.float()
        advantages = group_advantages(scores, c.samples_per_prompt, c.scale_advantages).unsqueeze(1)
        old_logp = sampled_logprobs(self.policy, batch.ids)
        ref_logp = sampled_logprobs(self.reference, batch.ids)
        self.policy.train()
        ent = []
        for _ in range(c.epochs):
            for rows in minibatches(batch.ids.size(0), c.minibatches, self.generator):
                logits = self.policy(batch.ids[rows])[0]
                logp = token_logprobs(logits, batch.ids[rows])
                per_token = (clipped_policy_loss(logp, old_logp[rows], advantages[rows], c.clip)
                             + self.kl.coef * kl_estimate(logp, ref_logp[rows]))
                loss = masked_mean(per_token, mask[rows])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.policy.parameters(), c.grad_clip)
                self.optimizer.step()
                ent.append(float(masked_mean(entropy(logits.detach()), mask[rows])))
        self.schedule.step()
        kl = kl_per_reply(old_logp, ref_logp, mask)
        coef = self.kl.coef
        self.kl.update(kl, batch.ids.size(0))
        return {"kl": kl, "kl_coef": coef, "entropy": sum(ent) / len(ent), "loss": loss.item()}
