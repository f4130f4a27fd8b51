"""DPO: direct preference optimization (Rafailov et al. 2023), on the reward model's pairs.

No reward model and no sampling: the policy itself is the reward model, with implicit reward
beta * log(pi(y|x) / pi_ref(y|x)), and the Bradley-Terry loss on that reward (eq. 7) raises
the chosen reply's log-probability relative to the reference more than the rejected one's.
``beta`` sets how far from the reference the policy may go (0.1 in the paper).

The held-out pairs (``--val-pairs``) are scored at every eval point with that implicit reward:
the share of pairs whose chosen reply it ranks above the rejected one (the reward model's
pairwise accuracy; a tie, as at step 0 where the policy is the reference, counts half) and
the mean margin beta * ((log pi_c - log ref_c) - (log pi_r - log ref_r)), 0 at the start.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from quillgpt.chat import Message, encode_conversation, end_id, require_chat_format
from quillgpt.checkpoint import LoadedRun
from quillgpt.config import MAX_EXAMPLES, MAX_WIDTH, check_positive_fields, check_range, check_seeds, tracker_names
from quillgpt.errors import ConfigError
from quillgpt.metrics import MetricsLog
from quillgpt.posttrain.chat_eval import ChatReport, answer_all
from quillgpt.posttrain.objectives import dpo_loss
from quillgpt.posttrain.reward import Pair, PairsConfig, fresh_pairs, split_pairs
from quillgpt.posttrain.rl import frozen_copy, measure_kl, plot_rl, save_policy
from quillgpt.posttrain.rollout import token_logprobs
from quillgpt.tasks.questions import questions
from quillgpt.tokenizers import Tokenizer


@dataclass
class DPOConfig(PairsConfig):
    """``quill dpo``: every field is a flag (the pairs' fields are the reward model's)."""

    val_pairs: int = 500
    steps: int = 300
    batch_size: int = 64  # pairs per step
    lr: float = 5e-5
    beta: float = 0.1
    eval_interval: int = 50
    eval_questions: int = 500
    eval_seed: int = 1000
    out_dir: str = ""
    log_to: str = ""  # experiment trackers, comma-separated: tensorboard, wandb, mlflow (quillgpt.tracking)

    def validate(self) -> None:
        self.validate_pairs()
        tracker_names(self.log_to)
        check_positive_fields(self, "steps", "batch_size", "eval_interval", "eval_questions")
        if not (self.lr > 0 and self.beta > 0):
            raise ConfigError("lr and beta must be > 0")
        for name in ("lr", "beta"):
            check_range(self, name, above=0)
        check_range(self, "batch_size", high=MAX_WIDTH)
        check_range(self, "eval_questions", high=MAX_EXAMPLES)
        check_seeds(self, "eval_seed")


def reply_logprobs(model: nn.Module, tokenizer: Tokenizer, pairs: list[Pair], side: str) -> torch.Tensor:
    """Summed log-probability of each pair's ``side`` reply (its tokens and <|end|>) given its prompt."""
    encoded = [encode_conversation(tokenizer, [Message("user", p.prompt), Message("assistant", getattr(p, side))])
               for p in pairs]
    device = next(model.parameters()).device
    longest = max(len(e.ids) for e in encoded)
    ids = torch.full((len(encoded), longest), end_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(encoded), longest - 1))
    for row, e in enumerate(encoded):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        mask[row, : len(e.ids) - 1] = torch.tensor(e.trained[1:], dtype=torch.float)
    ids, mask = ids.to(device), mask.to(device)
    return (token_logprobs(model(ids)[0], ids) * mask).sum(-1)


def pair_logprobs(model: nn.Module, tokenizer: Tokenizer, pairs: list[Pair], batch_size: int = 256) -> torch.Tensor:
    """(N, 2): ``model``'s summed log-probability of each pair's chosen and rejected reply, in eval mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        rows = [torch.stack([reply_logprobs(model, tokenizer, pairs[i:i + batch_size], side)
                             for side in ("chosen", "rejected")], dim=1) for i in range(0, len(pairs), batch_size)]
    model.train(was_training)
    return torch.cat(rows).cpu()


def preference_stats(policy_logprobs: torch.Tensor, reference_logprobs: torch.Tensor,
                     beta: float) -> dict[str, float]:
    """DPO's implicit reward on pairs, from (N, 2) ``pair_logprobs`` of the policy and the reference:
    pairwise accuracy (a tie counts half) and the mean chosen-minus-rejected margin."""
    logratios = policy_logprobs - reference_logprobs
    margin = beta * (logratios[:, 0] - logratios[:, 1])
    accuracy = (margin > 0).float() + 0.5 * (margin == 0).float()
    return {"pair_accuracy": float(accuracy.mean()), "pair_margin": float(margin.mean())}


def describe_pairs(summary: dict[str, Any]) -> str:
    """One line on the held-out pairs, start -> end (printed by ``quill dpo``)."""
    return (f"held-out pairs ({summary['val_pairs']}): implicit-reward pairwise accuracy "
            f"{100 * summary['start_pair_accuracy']:.2f}% -> {100 * summary['pair_accuracy']:.2f}%, mean "
            f"chosen-minus-rejected margin {summary['start_pair_margin']:.3f} -> {summary['pair_margin']:.3f}")


def train_dpo(policy_run: LoadedRun, config: DPOConfig, progress: bool = True) -> dict[str, Any]:
    """DPO from ``policy_run``, saved in ``config.out_dir``, with the trackers of ``config.log_to`` fed from
    its metrics log; returns the summary."""
    config.validate()
    require_chat_format(policy_run.tokenizer, str(policy_run.run_dir))
    pairs = split_pairs(config)  # bad pairs fail before the run directory is made
    run_dir = Path(config.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(run_dir / "metrics.jsonl")
    log.path.unlink(missing_ok=True)
    with log.tracking(config.log_to, {**dataclasses.asdict(config), "from": str(policy_run.run_dir)}) as trackers:
        summary = _train_dpo(policy_run, config, pairs, log, progress)
        trackers.log_image("dpo", run_dir / "dpo.png", config.steps)
    return summary


def _train_dpo(policy_run: LoadedRun, config: DPOConfig, pairs: tuple[list[Pair] | None, list[Pair]],
               log: MetricsLog, progress: bool) -> dict[str, Any]:
    tokenizer = policy_run.tokenizer
    train_pairs, val_pairs = pairs
    torch.manual_seed(config.seed)
    policy = policy_run.model
    reference = frozen_copy(policy)
    reference_logprobs = pair_logprobs(reference, tokenizer, val_pairs)  # fixed: computed once
    held_out = questions(config.ops, config.digits, config.eval_questions, config.eval_seed, "val")
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=0.0)
    run_dir = Path(config.out_dir)
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    def evaluate(step: int) -> dict[str, Any]:
        report = ChatReport(answer_all(policy, tokenizer, held_out))
        record = {"kind": "eval", "step": step, "accuracy": report.accuracy, "format": report.format_rate,
                  "kl": measure_kl(policy, reference, tokenizer, held_out[:200], generator),
                  **preference_stats(pair_logprobs(policy, tokenizer, val_pairs), reference_logprobs,
                                     config.beta)}
        log.append(record)
        tqdm.write(f"  step {step:>5}: held-out pairs: implicit-reward pairwise accuracy "
                   f"{100 * record['pair_accuracy']:.2f}%, mean margin {record['pair_margin']:.3f}")
        return record

    tic = time.perf_counter()
    start = evaluate(0)
    last = start
    for step in tqdm(range(1, config.steps + 1), desc="dpo", disable=not progress, leave=False):
        batch = (fresh_pairs(rng, config.ops, config.digits, config.batch_size, config.shapes) if train_pairs is None
                 else [train_pairs[rng.randrange(len(train_pairs))] for _ in range(config.batch_size)])
        policy.train()
        chosen, rejected = (reply_logprobs(policy, tokenizer, batch, side) for side in ("chosen", "rejected"))
        with torch.no_grad():
            ref_chosen, ref_rejected = (reply_logprobs(reference, tokenizer, batch, side)
                                        for side in ("chosen", "rejected"))
        loss = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, config.beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        margin = config.beta * ((chosen - ref_chosen) - (rejected - ref_rejected)).detach()
        log.append({"kind": "train", "step": step, "loss": loss.item(), "reward": float(margin.mean()),
                    "reward_accuracy": float((margin > 0).float().mean()), "seconds": time.perf_counter() - tic})
        if step % config.eval_interval == 0 or step == config.steps:
            last = evaluate(step)
    summary = {"algorithm": "dpo", "steps": config.steps, "seconds": time.perf_counter() - tic,
               "start_accuracy": start["accuracy"], "accuracy": last["accuracy"], "format": last["format"],
               "kl": last["kl"], "held_out": len(held_out), "val_pairs": len(val_pairs),
               "start_pair_accuracy": start["pair_accuracy"], "pair_accuracy": last["pair_accuracy"],
               "start_pair_margin": start["pair_margin"], "pair_margin": last["pair_margin"]}
    save_policy(run_dir, policy_run, policy, "dpo.json", {"config": dataclasses.asdict(config), "summary": summary},
                f"dpo:{config.data}")
    plot_rl(log.read(), run_dir / "dpo.png", f"dpo from {policy_run.run_dir.name}")
    return summary
