"""Reinforcement learning on a chat model: the loop PPO and GRPO share.

Each step asks the policy fresh arithmetic questions (train split), samples replies, scores
them (a Python function, or a reward model), and hands rollouts and rewards to the algorithm
(``ppo.PPO`` or ``grpo.GRPO``), which updates the policy while a frozen copy of the starting
model (the reference) anchors it through a KL penalty. Every ``eval_interval`` steps the
policy answers validation questions greedily (the val half of the held-out split: settings are
chosen on it); the chosen model is then scored once on the test half with ``quill task eval``.
The result is a normal run directory (the policy; ``quill chat``, ``quill task eval`` and
``quill serve`` take it), plus ``rl.json`` and ``rl.png`` with the curves.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from quillgpt.chat import end_id, prompt_ids, require_chat_format
from quillgpt.checkpoint import LoadedRun, mark_best, write_checkpoint, write_run_files
from quillgpt.config import (
    MAX_BLOCK_SIZE,
    MAX_DIGITS,
    MAX_EXAMPLES,
    MAX_WIDTH,
    check_positive_fields,
    check_range,
    check_seeds,
    tracker_names,
)
from quillgpt.errors import ConfigError
from quillgpt.fsutil import atomic_write, atomic_write_json
from quillgpt.metrics import MetricsLog
from quillgpt.posttrain.chat_eval import ChatReport, answer_all
from quillgpt.posttrain.objectives import LOSS_TYPES, kl_per_reply, signal_groups
from quillgpt.posttrain.reward import load_reward_model
from quillgpt.posttrain.rollout import Rollout, RolloutBatch, sample_replies, sampled_logprobs
from quillgpt.tasks.questions import Question, exact_match, fresh_questions, questions
from quillgpt.tokenizers import Tokenizer

RewardFn = Callable[[list[Question], list[Rollout]], torch.Tensor]
MAX_DRAWS = 100  # --dynamic-sampling: extra draws per step at most (each of at most prompts_per_step questions)
MAX_CLIP_HIGH = 10.0
# The fields only GRPO reads: quill rl ppo refuses them (PPO's advantages come from its value model).
GRPO_ONLY = ("scale_advantages", "loss_type", "dynamic_sampling")


@dataclass
class RLConfig:
    """``quill rl grpo``, and the fields PPO shares: every field is a flag. Defaults suit GRPO;
    ``ppo.PPOConfig`` adds PPO's own fields and changes some defaults."""

    reward: str = "task:arithmetic"  # task:arithmetic (exact match 1/0) or model:RM_DIR (a reward model)
    ops: str = "+-"  # the questions asked: operators
    digits: int = 3  # and operands of 1..digits digits
    steps: int = 150
    prompts_per_step: int = 16
    samples_per_prompt: int = 16  # GRPO's group size (nanochat: 16)
    max_new_tokens: int = 32  # a worked answer needs about 27 (a bare one 5)
    temperature: float = 1.0
    top_k: int = 0  # 0: the full distribution (what the policy gradient assumes)
    lr: float = 3e-5
    warmup: int = 10  # steps of linear learning-rate warmup (Adam's first steps are sign-sized: keep them small)
    lr_decay: bool = False  # decay the learning rate linearly to zero by the last step (PPO's usual annealing)
    epochs: int = 1  # passes over each batch of rollouts
    minibatches: int = 1  # optimizer steps per pass
    clip: float = 0.2  # PPO's ratio clip (both algorithms use it)
    clip_high: float = 0.0  # the upper ratio clip (DAPO's clip-higher: 0.28); 0: the same as clip
    kl_coef: float = 0.02  # beta: weight of the KL penalty to the reference
    kl_target: float = 0.0  # > 0: adapt kl_coef so the KL per reply tracks this (Ziegler et al. 2019)
    kl_horizon: float = 10_000.0
    scale_advantages: bool = True  # GRPO: divide by the group's std (False: nanochat's r - mean, Dr. GRPO)
    loss_type: str = "dapo"  # GRPO: dapo (token mean over the batch), grpo (per reply, then mean), dr_grpo
    # GRPO: DAPO's dynamic sampling: drop the groups whose rewards are all equal (zero advantage) and draw
    # up to this many more batches of questions per step to fill prompts_per_step; 0: off
    dynamic_sampling: int = 0
    unfinished_reward: float = -1.0  # model reward: a reply that never ends gets this, not a score
    grad_clip: float = 1.0
    eval_interval: int = 25
    eval_questions: int = 500
    # draws the validation questions (the val half of the held-out split; the test half is for quill task eval)
    eval_seed: int = 1000
    seed: int = 0
    out_dir: str = ""
    log_to: str = ""  # experiment trackers, comma-separated: tensorboard, wandb, mlflow (quillgpt.tracking)

    def validate(self) -> None:
        check_positive_fields(self, "digits", "steps", "prompts_per_step", "samples_per_prompt", "max_new_tokens",
                              "epochs", "minibatches", "eval_interval", "eval_questions")
        tracker_names(self.log_to)
        if not (self.lr > 0 and self.temperature > 0):
            raise ConfigError("lr and temperature must be > 0")
        self._check_bounds()
        if self.kl_coef < 0 or self.kl_target < 0 or not 0 < self.clip < 1:
            raise ConfigError("kl_coef and kl_target must be >= 0 and clip in (0, 1)")
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")
        if self.dynamic_sampling and self.samples_per_prompt < 2:
            raise ConfigError("dynamic_sampling needs samples_per_prompt >= 2 (a group of one is always all-equal)")
        if not (self.reward == "task:arithmetic" or self.reward.startswith("model:")):
            raise ConfigError(f"unknown reward {self.reward!r}: use task:arithmetic or model:RM_DIR")
        if (self.prompts_per_step * self.samples_per_prompt) % self.minibatches:
            raise ConfigError("prompts_per_step * samples_per_prompt must divide into minibatches evenly")

    def _check_bounds(self) -> None:
        """Finite numbers, and sizes that fit in memory (one step holds prompts x samples rollouts)."""
        for name, high in (("digits", MAX_DIGITS), ("prompts_per_step", MAX_WIDTH), ("samples_per_prompt", 1024),
                           ("max_new_tokens", MAX_BLOCK_SIZE), ("epochs", 1000), ("minibatches", MAX_WIDTH),
                           ("eval_questions", MAX_EXAMPLES)):
            check_range(self, name, high=high)
        for name in ("top_k", "warmup", "kl_coef", "kl_target", "grad_clip", "dynamic_sampling"):
            check_range(self, name, low=0)
        check_range(self, "dynamic_sampling", high=MAX_DRAWS)
        check_range(self, "clip_high", low=0, high=MAX_CLIP_HIGH)
        for name in ("lr", "temperature", "kl_horizon"):
            check_range(self, name, above=0)
        check_range(self, "unfinished_reward")
        check_seeds(self, "eval_seed", "seed")


@dataclass
class StepSamples:
    """The groups of replies one step trains on (the samples of a question side by side), scored,
    and how many groups were drawn to find them (more than trained on under dynamic sampling)."""

    asked: list[Question]
    rollouts: list[Rollout]
    scores: torch.Tensor
    drawn: int  # groups drawn this step
    all_equal: int  # of them, the groups whose rewards were all equal
    reward_sum: float  # over every reply drawn (kept or not), so the logged means are not biased by the drops
    correct_sum: float
    replies: int
    draws: int = 1  # sampling rounds this step took

    def groups(self, size: int) -> int:
        return len(self.asked) // size

    def with_signal(self, size: int) -> StepSamples:
        """Only the groups whose rewards differ (the counts of what was drawn stay)."""
        keep = signal_groups(self.scores, size).repeat_interleave(size)
        rows = keep.nonzero().flatten().tolist()
        return dataclasses.replace(self, asked=[self.asked[i] for i in rows], rollouts=[self.rollouts[i] for i in rows],
                                   scores=self.scores[keep])

    def extend(self, more: StepSamples) -> StepSamples:
        return StepSamples(self.asked + more.asked, self.rollouts + more.rollouts,
                           torch.cat([self.scores, more.scores]), self.drawn + more.drawn,
                           self.all_equal + more.all_equal, self.reward_sum + more.reward_sum,
                           self.correct_sum + more.correct_sum, self.replies + more.replies,
                           self.draws + more.draws)

    def first_groups(self, count: int, size: int) -> StepSamples:
        n = count * size
        return dataclasses.replace(self, asked=self.asked[:n], rollouts=self.rollouts[:n], scores=self.scores[:n])


@dataclass
class BestSoFar:
    """The policy at its best val exact match so far (a CPU copy of its weights); a tie keeps the
    earlier step, so a run that never beats its start keeps the start (step 0)."""

    step: int = -1
    accuracy: float = -1.0
    state: dict[str, torch.Tensor] | None = None

    def offer(self, step: int, accuracy: float, model: nn.Module) -> bool:
        if accuracy <= self.accuracy:
            return False
        self.step, self.accuracy = step, accuracy
        self.state = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}
        return True


class Algorithm(Protocol):
    name: str

    def update(self, batch: RolloutBatch, scores: torch.Tensor) -> dict[str, float]: ...


def task_reward(tokenizer: Tokenizer) -> RewardFn:
    """Exact match: 1.0 when the reply ends and is exactly the right number (nanochat's GSM8K reward)."""
    def score(asked: list[Question], rollouts: list[Rollout]) -> torch.Tensor:
        return torch.tensor([exact_match(q, tokenizer.decode(r.response[:-1])) if r.finished else 0.0
                             for q, r in zip(asked, rollouts, strict=True)])
    return score


def model_reward(path: str, tokenizer: Tokenizer, unfinished: float, device: torch.device) -> RewardFn:
    """A reward model's score of the whole conversation (it shares the policy's tokenizer, so it
    reads the sampled ids as they are); a reply without ``<|end|>`` gets ``unfinished``."""
    model, rm_tokenizer = load_reward_model(path, device)
    if rm_tokenizer != tokenizer:
        raise ConfigError(f"the reward model {path} uses another tokenizer than the policy: train it from "
                          "the policy's SFT run (quill reward train SFT_RUN)")

    @torch.no_grad()
    def score(asked: list[Question], rollouts: list[Rollout]) -> torch.Tensor:
        batch = RolloutBatch.from_rollouts(rollouts, end_id(tokenizer), device)
        scores = model(batch.ids, batch.last, batch.response_mask).cpu()
        finished = torch.tensor([r.finished for r in rollouts])
        return torch.where(finished, scores, torch.full_like(scores, unfinished))
    return score


def optimizer_for(model: nn.Module, config: RLConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW with a linear warmup over ``config.warmup`` RL steps and, with ``config.lr_decay``, a
    linear decay to zero by the last step (the scheduler steps once per RL step)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0, betas=(0.9, 0.95))

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, config.warmup))
        return warm * (1.0 - step / config.steps if config.lr_decay else 1.0)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def frozen_copy(model: nn.Module) -> nn.Module:
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


class RLRun:
    """Rollouts, evaluation, logging and saving around an ``Algorithm``."""

    def __init__(self, policy_run: LoadedRun, config: RLConfig, make_algorithm: Callable[..., Algorithm],
                 progress: bool = True, reward: RewardFn | None = None) -> None:
        config.validate()
        self.run, self.config, self.progress = policy_run, config, progress
        self.tokenizer = policy_run.tokenizer
        require_chat_format(self.tokenizer, str(policy_run.run_dir))
        self.device = next(policy_run.model.parameters()).device
        torch.manual_seed(config.seed)
        self.policy = policy_run.model
        self.reference = frozen_copy(self.policy)
        self.exact_match = task_reward(self.tokenizer)  # logged as "correct" whatever the reward
        self.reward = reward or (self.exact_match if config.reward == "task:arithmetic" else
                                 model_reward(config.reward.removeprefix("model:"), self.tokenizer,
                                              config.unfinished_reward, self.device))
        self.algorithm = make_algorithm(self.policy, self.reference, config)
        self.rng = random.Random(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.held_out = questions(config.ops, config.digits, config.eval_questions, config.eval_seed, "val")
        self.run_dir = Path(config.out_dir)
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")

    def evaluate(self) -> ChatReport:
        return ChatReport(answer_all(self.policy, self.tokenizer, self.held_out))

    def draw(self, count: int) -> StepSamples:
        """``count`` fresh train-split questions, a group of ``samples_per_prompt`` replies to each, scored."""
        c = self.config
        asked = [q for q in fresh_questions(self.rng, c.ops, c.digits, count)
                 for _ in range(c.samples_per_prompt)]  # a group of samples per question, side by side
        prompts = [prompt_ids(self.tokenizer, q.messages()) for q in asked]
        rollouts = sample_replies(self.policy, prompts, c.max_new_tokens, end_id(self.tokenizer), c.temperature,
                                  c.top_k or None, generator=self.generator)
        scores = self.reward(asked, rollouts)
        correct = scores if self.reward is self.exact_match else self.exact_match(asked, rollouts)
        equal = int((~signal_groups(scores, c.samples_per_prompt)).sum())
        return StepSamples(asked, rollouts, scores, drawn=count, all_equal=equal, reward_sum=float(scores.sum()),
                           correct_sum=float(correct.sum()), replies=len(rollouts))

    def samples(self) -> StepSamples:
        """The step's groups: one draw of ``prompts_per_step`` questions or, with dynamic sampling,
        only the groups whose rewards differ, drawing again (at most ``dynamic_sampling`` times)
        until there are ``prompts_per_step`` of them. When the bound is hit the step trains on the
        groups it has, fewer than asked; with none at all, it skips the update."""
        c = self.config
        first = self.draw(c.prompts_per_step)
        if not c.dynamic_sampling:
            return first
        kept = first.with_signal(c.samples_per_prompt)
        for _ in range(c.dynamic_sampling):
            missing = c.prompts_per_step - kept.groups(c.samples_per_prompt)
            if missing <= 0:
                break
            # Ask for as many questions as the signal rate so far says will fill the gap, one batch at most.
            useful = kept.drawn - kept.all_equal
            expected = -(-missing * kept.drawn // useful) if useful else c.prompts_per_step  # ceiling division
            more = self.draw(min(c.prompts_per_step, expected))
            kept = kept.extend(more.with_signal(c.samples_per_prompt))
        return kept.first_groups(c.prompts_per_step, c.samples_per_prompt)

    def train(self) -> dict[str, Any]:
        """Train, with the trackers of --log-to fed from the metrics log; returns the summary."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log.path.unlink(missing_ok=True)
        hyperparams = {**dataclasses.asdict(self.config), "algorithm": self.algorithm.name,
                       "from": str(self.run.run_dir)}
        with self.log.tracking(self.config.log_to, hyperparams) as trackers:
            summary = self._train()
            trackers.log_image("rl", self.run_dir / "rl.png", self.config.steps)
        return summary

    def _train(self) -> dict[str, Any]:
        tic = time.perf_counter()
        best = BestSoFar()
        start = self.evaluate()
        history = [_eval_record(0, start)]
        best.offer(0, start.accuracy, self.policy)
        self.log.append({"kind": "eval", **history[0]})
        bar = tqdm(range(1, self.config.steps + 1), desc=f"rl {self.algorithm.name}", disable=not self.progress,
                   leave=False)
        for step in bar:
            record = self.train_step(step, tic)
            self.log.append(record)
            if step % self.config.eval_interval == 0 or step == self.config.steps:
                report = self.evaluate()
                history.append(_eval_record(step, report))
                best.offer(step, report.accuracy, self.policy)
                self.log.append({"kind": "eval", **history[-1]})
            bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{record.get('kl', float('nan')):.3f}",
                            drop=f"{record['dropped']:.2f}", acc=f"{history[-1]['accuracy']:.3f}")
        records = self.log.read()
        summary = {"algorithm": self.algorithm.name, "steps": self.config.steps,
                   "seconds": time.perf_counter() - tic, "start_accuracy": history[0]["accuracy"],
                   "accuracy": history[-1]["accuracy"], "format": history[-1]["format"],
                   "best_step": best.step, "best_accuracy": best.accuracy,
                   "kl": _mean_last(records, "kl"), "reward": _mean_last(records, "reward"),
                   **_sampling_summary(records, self.config.prompts_per_step),
                   "held_out": len(self.held_out), "final_report": report.format("held-out"),
                   "kl_held_out": measure_kl(self.policy, self.reference, self.tokenizer, self.held_out[:200],
                                             self.generator, self.config.max_new_tokens)}
        self.save(summary, best)
        return summary

    def train_step(self, step: int, tic: float) -> dict[str, Any]:
        """Sample, score and (when any group has signal) update once; returns the step's metrics record."""
        c = self.config
        samples = self.samples()
        # reward and correct: means over every reply drawn, the dropped groups' too (what the policy does)
        record: dict[str, Any] = {"kind": "train", "step": step, "groups": samples.groups(c.samples_per_prompt),
                                  "draws": samples.draws, "all_equal": samples.all_equal / samples.drawn,
                                  "dropped": samples.all_equal / samples.drawn if c.dynamic_sampling else 0.0,
                                  "reward": samples.reward_sum / samples.replies,
                                  "correct": samples.correct_sum / samples.replies}
        if not samples.rollouts:  # dynamic sampling found no group with signal within its bound
            return {**record, "skipped": True, "seconds": time.perf_counter() - tic}
        rollouts = samples.rollouts
        batch = RolloutBatch.from_rollouts(rollouts, end_id(self.tokenizer), self.device)
        stats = self.algorithm.update(batch, samples.scores.to(self.device))
        return {**record, "length": sum(len(r.response) for r in rollouts) / len(rollouts),
                "seconds": time.perf_counter() - tic, **stats}

    def save(self, summary: dict[str, Any], best: BestSoFar | None = None) -> None:
        save_policy(self.run_dir, self.run, self.policy, "rl.json",
                    {"config": dataclasses.asdict(self.config), "summary": summary}, f"rl:{self.config.reward}",
                    best)
        plot_rl(self.log.read(), self.run_dir / "rl.png", f"{self.algorithm.name} from {self.run.run_dir.name}",
                self.config.kl_target)


def save_policy(run_dir: Path, base: LoadedRun, policy: nn.Module, info_name: str, info: dict[str, Any],
                dataset: str, best: BestSoFar | None = None) -> None:
    """Save a post-trained policy as a normal run (config, tokenizer, checkpoint) plus ``info_name``.

    The last step's weights are the latest checkpoint; with ``best``, the best val step's weights
    are a checkpoint too (the same one when it is the last) and ``best.json`` points at it, so
    ``--checkpoint best`` (and ``--init-from``, which prefers best) takes the step val chose."""
    steps = int(info["summary"]["steps"])
    write_run_files(run_dir, base.config, base.tokenizer, {"dataset": dataset, "from": str(base.run_dir)})
    kept = None
    if best is not None and best.state is not None and best.step != steps:
        kept = write_checkpoint(run_dir, best.step, best.state)
    last = write_checkpoint(run_dir, steps, policy.state_dict())  # after the best: latest.json is the last step
    if best is not None and best.state is not None:
        mark_best(run_dir, kept or last, best.step, val_accuracy=best.accuracy)
    atomic_write_json(run_dir / info_name, {**info, "from": str(base.run_dir)})


@torch.no_grad()
def measure_kl(policy: nn.Module, reference: nn.Module, tokenizer: Tokenizer, asked: list[Question],
               generator: torch.Generator, max_new_tokens: int = 32) -> float:
    """KL(policy || reference) per reply, estimated on replies the policy samples (temperature 1) to
    ``asked``: the same yardstick for every algorithm (the x axis of the DPO paper's Fig. 2)."""
    prompts = [prompt_ids(tokenizer, q.messages()) for q in asked]
    rollouts = sample_replies(policy, prompts, max_new_tokens, end_id(tokenizer), generator=generator)
    batch = RolloutBatch.from_rollouts(rollouts, end_id(tokenizer), next(policy.parameters()).device)
    return kl_per_reply(sampled_logprobs(policy, batch.ids), sampled_logprobs(reference, batch.ids),
                        batch.response_mask.float())


def _eval_record(step: int, report: ChatReport) -> dict[str, Any]:
    return {"step": step, "accuracy": report.accuracy, "format": report.format_rate, "worked": report.worked_rate}


def _sampling_summary(records: list[dict[str, Any]], wanted: int) -> dict[str, Any]:
    """Over the run: the mean share of drawn groups whose rewards were all equal, the mean share
    dropped (dynamic sampling), the steps that trained on fewer groups than asked, and those skipped."""
    train = [r for r in records if r.get("kind") == "train"]
    return {"all_equal": sum(r["all_equal"] for r in train) / max(1, len(train)),
            "dropped": sum(r["dropped"] for r in train) / max(1, len(train)),
            "short_steps": sum(1 for r in train if 0 < r["groups"] < wanted),
            "skipped_steps": sum(1 for r in train if r.get("skipped"))}


def _mean_last(records: list[dict[str, Any]], key: str, n: int = 10) -> float:
    values = [r[key] for r in records if r.get("kind") == "train" and key in r][-n:]
    return sum(values) / max(1, len(values))


def plot_rl(records: list[dict[str, Any]], path: Path, title: str, kl_target: float = 0.0) -> None:
    """Reward, KL (and its target, if any), entropy and reply length per step, and held-out accuracy, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    panels = [("reward", "mean reward"), ("kl", "KL to reference (per reply)"), ("entropy", "entropy (nats/token)"),
              ("length", "reply length (tokens)")]
    fig, axes = plt.subplots(1, 5, figsize=(18, 3.4), dpi=100)
    for ax, (key, label) in zip(axes, panels, strict=False):
        ax.plot([r["step"] for r in train], [r.get(key, float("nan")) for r in train], linewidth=1)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if kl_target > 0:
        axes[1].axhline(kl_target, color="tab:red", linestyle="--", linewidth=1, label=f"target {kl_target:g}")
        axes[1].legend(fontsize=8)
    axes[-1].plot([r["step"] for r in evals], [100 * r["accuracy"] for r in evals], "o-", color="tab:green")
    axes[-1].set_title("held-out exact match (%)", fontsize=9)
    axes[-1].set_xlabel("step")
    axes[-1].grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
