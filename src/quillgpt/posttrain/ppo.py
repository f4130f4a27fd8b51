"""PPO for language models (Schulman et al. 2017; as used for RLHF by Ziegler et al. 2019 and
InstructGPT, Ouyang et al. 2022).

Each reply is an episode whose actions are its tokens. The reward of token t is
-beta * (log pi(t) - log pi_ref(t)), a per-token KL penalty that keeps the policy near the
reference, plus, at the reply's last token, the score of the whole reply (a reward model's, or
a Python function's). A value model (a GPT with a scalar head, started from the reward model
as in InstructGPT, or from the policy) estimates the return at every token; GAE turns rewards
and values into advantages, whitened per batch. Then several epochs of minibatch updates with
the clipped policy loss and the clipped value loss; beta adapts to a KL target when one is set.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from quillgpt.config import check_range
from quillgpt.errors import ConfigError
from quillgpt.posttrain.objectives import (
    AdaptiveKL,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_per_reply,
    whiten,
)
from quillgpt.posttrain.reward import RewardModel, load_reward_model
from quillgpt.posttrain.rl import RLConfig, optimizer_for
from quillgpt.posttrain.rollout import (
    RolloutBatch,
    entropy,
    masked_mean,
    minibatches,
    sampled_logprobs,
    token_logprobs,
)


@dataclass
class PPOConfig(RLConfig):
    """``quill rl ppo``: RLConfig's fields with PPO's defaults, plus the fields only PPO reads.

    One batch of rollouts feeds 4 epochs x 4 minibatches, and a stronger KL leash that adapts
    within tens of steps (a learned reward is easy to exploit: with beta 0.05 and horizon 10,000
    the policy drifted to KL 3 nats per reply and halved its accuracy while the score held).
    """

    prompts_per_step: int = 64
    samples_per_prompt: int = 2
    epochs: int = 4
    minibatches: int = 4
    kl_coef: float = 0.3
    kl_target: float = 0.5
    kl_horizon: float = 1000.0
    lr: float = 5e-5
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    vf_coef: float = 0.5  # weight of the value loss
    value_clip: float = 0.2
    value_lr: float = 1e-4  # the value model's learning rate
    center_scores: bool = False  # subtract each question's mean score over its samples (see PPO.update)

    def validate(self) -> None:
        super().validate()
        if self.center_scores and self.samples_per_prompt < 2:
            raise ConfigError("center_scores needs samples_per_prompt >= 2 (a question's mean score is the baseline)")
        check_range(self, "vf_coef", low=0)
        for name in ("value_clip", "value_lr"):
            check_range(self, name, above=0)
        for name in ("gamma", "lam"):
            check_range(self, name, 0, 1)


PPO_ONLY = tuple(f.name for f in dataclasses.fields(PPOConfig) if f.name not in RLConfig.__dataclass_fields__)


def value_model_for(policy: nn.Module, config: PPOConfig) -> RewardModel:
    """The critic: the reward model's weights when there is one (InstructGPT), else the policy's."""
    if config.reward.startswith("model:"):
        model, _ = load_reward_model(config.reward.removeprefix("model:"), next(policy.parameters()).device)
        return model.train()
    return RewardModel(copy.deepcopy(policy)).train()


def reply_rewards(scores: torch.Tensor, kl_penalty: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:
    """Per-token rewards (B, T-1): minus the KL penalty on every reply token, the score on the last."""
    rewards = -kl_penalty * batch.response_mask
    rows = torch.arange(rewards.size(0), device=rewards.device)
    rewards[rows, batch.last - 1] += scores  # logits at position last-1 produced the last token
    return rewards


class PPO:
    name = "ppo"

    def __init__(self, policy: nn.Module, reference: nn.Module, config: RLConfig) -> None:
        if not isinstance(config, PPOConfig):  # a plain RLConfig (shared by both algorithms): PPO's own fields
            config = PPOConfig(**dataclasses.asdict(config))  # take their defaults; the shared ones stay as given
        self.policy, self.reference, self.config = policy, reference, config
        self.value = value_model_for(policy, config)
        self.optimizer, self.schedule = optimizer_for(policy, config)
        self.value_optimizer = torch.optim.AdamW(self.value.parameters(), lr=config.value_lr, weight_decay=0.0)
        self.kl = AdaptiveKL(config.kl_coef, config.kl_target, config.kl_horizon)
        self.generator = torch.Generator().manual_seed(config.seed)

    def update(self, batch: RolloutBatch, scores: torch.Tensor) -> dict[str, float]:
        c = self.config
        mask = batch.response_mask.float()
        if c.center_scores:
            # A Bradley-Terry reward model learns only differences between replies to one prompt, so each
            # prompt's scores carry an offset of their own (here: how sure the backbone is of any answer).
            # With few samples per prompt that offset swamps right-vs-wrong in the advantages, and a value
            # model needs many steps to learn it; the mean score of the prompt's samples removes it now
            # (the leave-in baseline of RLOO / GRPO, applied to the terminal reward before GAE).
            scores = scores - scores.view(-1, c.samples_per_prompt).mean(1).repeat_interleave(c.samples_per_prompt)
        old_logp = sampled_logprobs(self.policy, batch.ids)
        ref_logp = sampled_logprobs(self.reference, batch.ids)
        with torch.no_grad():
            old_values = self.value.values(batch.ids)[:, :-1] * mask  # V at t: return from token t+1 on
        rewards = reply_rewards(scores, self.kl.coef * (old_logp - ref_logp), batch)
        advantages, returns = gae(rewards, old_values, mask, c.gamma, c.lam)
        advantages = whiten(advantages, mask)
        self.policy.train()
        ent, clipped = [], []
        for _ in range(c.epochs):
            for rows in minibatches(batch.ids.size(0), c.minibatches, self.generator):
                logits = self.policy(batch.ids[rows])[0]
                logp = token_logprobs(logits, batch.ids[rows])
                policy_loss = masked_mean(clipped_policy_loss(logp, old_logp[rows], advantages[rows], c.clip,
                                                              c.clip_high or c.clip), mask[rows])
                values = self.value.values(batch.ids[rows])[:, :-1]
                value_loss = masked_mean(clipped_value_loss(values, old_values[rows], returns[rows], c.value_clip),
                                         mask[rows])
                self.optimizer.zero_grad(set_to_none=True)
                self.value_optimizer.zero_grad(set_to_none=True)
                (policy_loss + c.vf_coef * value_loss).backward()
                nn.utils.clip_grad_norm_(self.policy.parameters(), c.grad_clip)
                nn.utils.clip_grad_norm_(self.value.parameters(), c.grad_clip)
                self.optimizer.step()
                self.value_optimizer.step()
                ent.append(float(masked_mean(entropy(logits.detach()), mask[rows])))
                ratio = torch.exp(logp.detach() - old_logp[rows])
                outside = (ratio < 1 - c.clip) | (ratio > 1 + (c.clip_high or c.clip))
                clipped.append(float(masked_mean(outside.float(), mask[rows])))
        self.schedule.step()
        kl = kl_per_reply(old_logp, ref_logp, mask)
        coef = self.kl.coef
        self.kl.update(kl, batch.ids.size(0))
        return {"kl": kl, "kl_coef": coef, "entropy": sum(ent) / len(ent), "policy_loss": policy_loss.item(),
                "value_loss": value_loss.item(), "clip_fraction": sum(clipped) / len(clipped)}
