"""GRPO: group relative policy optimization (Shao et al. 2024, DeepSeekMath, section 4.1).

No value network: the baseline of a reply is the mean reward of the other samples of the same
question, so a group of ``samples_per_prompt`` replies per question is what makes the signal.
Advantages are the group-normalized rewards, shared by every token of a reply; the loss is
PPO's clipped surrogate plus beta times the KL estimate to the reference. With one epoch and
one minibatch the ratio is 1 and this is REINFORCE with a group baseline (nanochat's chat_rl).

Where this differs from DeepSeekMath's GRPO (eq. 3 and algorithm 1), and why:

1. By default the loss is averaged over all reply tokens of the batch (``loss_type=dapo``:
   token-level, as in DAPO and nanochat), not over each reply's tokens and then over replies
   (``loss_type=grpo``, the paper's): a long reply counts per token, so short wrong replies are
   not weighted up. ``loss_type=dr_grpo`` divides the summed loss by a constant (Dr. GRPO).
2. ``scale_advantages=False`` gives nanochat's ``r - mean``: no division by the group's std,
   which weights up the questions whose samples barely differ (nearly always or nearly never
   solved; Liu et al. 2025, "Dr. GRPO"). The default keeps the paper's ``(r - mean) / std``.
3. The reference is the starting SFT model for the whole run; the paper's iterative variant
   (updating the reference to the current policy, section 4.1.3) is not done.
4. The KL coefficient can adapt to a target (``kl_target > 0``, Ziegler et al. 2019); the paper
   keeps beta fixed. With ``kl_target=0`` (the default) beta is the fixed ``kl_coef``.
5. The reward is outcome only (exact match, or a reward model's score of the whole reply); the
   paper's process supervision (a reward per reasoning step) is not implemented.

From DAPO (Yu et al. 2025), off by default: ``clip_high`` (clip-higher, an upper ratio clip
above the lower one) and ``dynamic_sampling`` (``rl.RLRun.samples``: groups whose rewards are all
equal are dropped and more questions drawn, so every group of a step carries signal).
"""

from __future__ import annotations

import torch
from torch import nn

from quillgpt.posttrain.objectives import (
    AdaptiveKL,
    aggregate_loss,
    clipped_policy_loss,
    group_advantages,
    kl_estimate,
    kl_per_reply,
)
from quillgpt.posttrain.rl import RLConfig, optimizer_for
from quillgpt.posttrain.rollout import (
    RolloutBatch,
    entropy,
    masked_mean,
    minibatches,
    sampled_logprobs,
    token_logprobs,
)


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
        clip_high = c.clip_high or c.clip
        old_logp = sampled_logprobs(self.policy, batch.ids)
        ref_logp = sampled_logprobs(self.reference, batch.ids)
        self.policy.train()
        ent = []
        for _ in range(c.epochs):
            for rows in minibatches(batch.ids.size(0), c.minibatches, self.generator):
                logits = self.policy(batch.ids[rows])[0]
                logp = token_logprobs(logits, batch.ids[rows])
                per_token = (clipped_policy_loss(logp, old_logp[rows], advantages[rows], c.clip, clip_high)
                             + self.kl.coef * kl_estimate(logp, ref_logp[rows]))
                loss = aggregate_loss(per_token, mask[rows], c.loss_type, c.max_new_tokens)
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
