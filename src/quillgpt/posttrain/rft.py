"""Rejection-sampling finetuning (RFT): the simple baseline every RL result is compared with.

Each round asks the policy fresh train-split questions, samples ``samples`` replies to each at
``temperature``, keeps the replies the checker accepts (exact match, the same verifier GRPO is
paid by), and finetunes on them with the SFT path: the kept conversations are written as a JSONL
file and trained on by the one ``Trainer``, started from the current policy (STaR, Zelikman et
al. 2022; Llama 2's rejection sampling; ReST). After each round the policy answers val questions
greedily; the round with the best val exact match is kept (round 0 is the start, so a run that
never beats its start keeps it). The test half is left for ``quill task eval``.

    RUN/                   a normal run: the last round's policy (latest) and the best round's (best)
      rft.json             config, summary, val exact match per round
      rounds/round-N.jsonl the replies kept in round N, one conversation per line
      rounds/round-N/      round N's SFT run (metrics, its own checkpoint)
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from quillgpt.chat import end_id, prompt_ids
from quillgpt.checkpoint import LoadedRun, load_run
from quillgpt.config import (
    MAX_DIGITS,
    MAX_EXAMPLES,
    check_positive_fields,
    check_range,
    check_seeds,
    preset,
)
from quillgpt.errors import ConfigError
from quillgpt.fsutil import atomic_write_bytes
from quillgpt.posttrain.chat_eval import MAX_ANSWER_TOKENS, ChatReport, answer_all
from quillgpt.posttrain.rl import BestSoFar, RewardFn, save_policy, task_reward
from quillgpt.posttrain.rollout import Rollout, sample_replies
from quillgpt.posttrain.sft import ChatDataset
from quillgpt.pretrained import apply_init
from quillgpt.tasks.questions import Question, fresh_questions, questions
from quillgpt.tokenizers import Tokenizer
from quillgpt.train import Trainer


@dataclass
class RFTConfig:
    """``quill rft``: every field is a flag."""

    ops: str = "+-"  # the questions asked: operators
    digits: int = 3  # and operands of 1..digits digits
    rounds: int = 3  # sample, keep the right replies, finetune: this many times
    questions: int = 512  # fresh train-split questions asked per round
    samples: int = 8  # replies sampled per question (K)
    temperature: float = 1.0
    max_new_tokens: int = MAX_ANSWER_TOKENS
    per_question: int = 4  # distinct right replies kept per question at most (a question answered
    # right 8 times in the same words would otherwise count 8 times)
    sft_steps: int = 200  # SFT steps per round (batches of batch_size kept conversations)
    batch_size: int = 64
    lr: float = 1e-4  # peak of each round's warmup-then-cosine schedule (to lr / 10)
    eval_questions: int = 500
    eval_seed: int = 1000  # draws the val questions (the val half; the test half is for quill task eval)
    seed: int = 0
    device: str = "cpu"  # cpu, cuda, mps or auto
    out_dir: str = ""

    def validate(self) -> None:
        check_positive_fields(self, "digits", "rounds", "questions", "samples", "max_new_tokens", "per_question",
                              "sft_steps", "batch_size", "eval_questions")
        if not self.ops or any(op not in "+-*" for op in self.ops) or len(set(self.ops)) != len(self.ops):
            raise ConfigError(f"ops must be distinct operators out of + - *, got {self.ops!r}")
        for name, high in (("digits", MAX_DIGITS), ("rounds", 1000), ("questions", MAX_EXAMPLES), ("samples", 1024),
                           ("max_new_tokens", 1024), ("per_question", 1024), ("sft_steps", 1_000_000),
                           ("batch_size", 4096), ("eval_questions", MAX_EXAMPLES)):
            check_range(self, name, high=high)
        for name in ("lr", "temperature"):
            check_range(self, name, above=0)
        check_range(self, "lr", high=1.0)
        check_range(self, "temperature", high=100.0)
        check_seeds(self, "eval_seed", "seed")


def accepted(asked: list[Question], rollouts: list[Rollout], scores: torch.Tensor, tokenizer: Tokenizer,
             per_question: int) -> list[tuple[Question, str]]:
    """The replies the checker scored 1 (``scores``, one per rollout), as (question, reply text):
    each distinct reply once per question, at most ``per_question`` per question, in order. A reply
    holding a chat token is never kept: as text it would not encode back to the same tokens."""
    kept: list[tuple[Question, str]] = []
    seen: dict[str, set[str]] = {}
    specials = set(tokenizer.special_ids.values())
    for question, rollout, score in zip(asked, rollouts, scores.tolist(), strict=True):
        body = rollout.response[:-1] if rollout.finished else rollout.response
        if score != 1.0 or specials.intersection(body):
            continue
        reply = tokenizer.decode(body)
        replies = seen.setdefault(question.text, set())
        if reply in replies or len(replies) >= per_question:
            continue
        replies.add(reply)
        kept.append((question, reply))
    return kept


def write_conversations(path: Path, kept: list[tuple[Question, str]]) -> None:
    """The kept replies as SFT data: one ``{"prompt", "response"}`` per line (``chat.read_conversations``)."""
    lines = [json.dumps({"prompt": q.text, "response": reply}) for q, reply in kept]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


class RFTRun:
    """Rounds of sample, verify, finetune, evaluate on val; the best round kept."""

    def __init__(self, start: LoadedRun, config: RFTConfig, progress: bool = True,
                 checker: RewardFn | None = None) -> None:
        config.validate()
        self.start, self.config, self.progress = start, config, progress
        self.tokenizer = start.tokenizer
        self.device = next(start.model.parameters()).device  # where the command put it (--device)
        self.checker = checker or task_reward(self.tokenizer)  # exact match of a finished reply: 1, else 0
        self.rng = random.Random(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.held_out = questions(config.ops, config.digits, config.eval_questions, config.eval_seed, "val")
        self.run_dir = Path(config.out_dir)

    def evaluate(self, model: torch.nn.Module) -> ChatReport:
        return ChatReport(answer_all(model, self.tokenizer, self.held_out))

    def sample_round(self, policy: torch.nn.Module) -> tuple[list[Question], list[Rollout], torch.Tensor]:
        """``samples`` replies to each of ``questions`` fresh train-split questions, and their checks."""
        c = self.config
        asked = [q for q in fresh_questions(self.rng, c.ops, c.digits, c.questions) for _ in range(c.samples)]
        prompts = [prompt_ids(self.tokenizer, q.messages()) for q in asked]
        rollouts = sample_replies(policy, prompts, c.max_new_tokens, end_id(self.tokenizer), c.temperature,
                                  generator=self.generator)
        return asked, rollouts, self.checker(asked, rollouts)

    def finetune(self, current: LoadedRun, data: Path, round_dir: Path, seed: int) -> LoadedRun:
        """One round's SFT on ``data``, through the Trainer (as ``quill sft --data FILE``), from ``current``."""
        c = self.config
        # One kept reply is held out for the val loss (the SFT path needs one); val exact match decides.
        config = preset("sft").replace({
            "train": {"out_dir": str(round_dir), "max_iters": c.sft_steps, "batch_size": c.batch_size, "lr": c.lr,
                      "min_lr": c.lr / 10, "warmup_iters": min(50, c.sft_steps // 10), "eval_interval": c.sft_steps,
                      "eval_iters": 2, "eval_first": False, "log_interval": max(1, c.sft_steps // 4),
                      "seed": seed, "device": self.device.type},
            "chat": {"chat_data": str(data), "chat_val": 1}})
        config.model = dataclasses.replace(current.config.model)
        config.validate()
        dataset = ChatDataset(config.chat, base=current.tokenizer)
        trainer = Trainer(config, dataset, round_dir, progress=self.progress)
        apply_init(trainer, current)
        trainer.train()
        return load_run(round_dir, which="latest", device=self.device)

    def train(self) -> dict[str, Any]:
        c, tic = self.config, time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        current = self.start
        report = self.evaluate(current.model)
        best = BestSoFar()
        best.offer(0, report.accuracy, current.model)
        history = [{"round": 0, "accuracy": report.accuracy, "format": report.format_rate}]
        for round_no in range(1, c.rounds + 1):
            asked, rollouts, scores = self.sample_round(current.model)
            kept = accepted(asked, rollouts, scores, self.tokenizer, c.per_question)
            record = {"round": round_no, "sampled": len(rollouts), "right": float(scores.mean()), "kept": len(kept),
                      "questions_kept": len({q.text for q, _ in kept})}
            if len(kept) < 2:  # the SFT path holds one conversation out: nothing left to learn from
                history.append({**record, "accuracy": history[-1]["accuracy"], "skipped": True})
                continue
            data = self.run_dir / "rounds" / f"round-{round_no}.jsonl"
            data.parent.mkdir(parents=True, exist_ok=True)
            write_conversations(data, kept)
            current = self.finetune(current, data, self.run_dir / "rounds" / f"round-{round_no}", c.seed + round_no)
            report = self.evaluate(current.model)
            best.offer(round_no, report.accuracy, current.model)
            history.append({**record, "accuracy": report.accuracy, "format": report.format_rate,
                            "seconds": time.perf_counter() - tic})
        summary = {"algorithm": "rft", "steps": c.rounds, "seconds": time.perf_counter() - tic,
                   "start_accuracy": history[0]["accuracy"], "accuracy": report.accuracy,
                   "best_step": best.step, "best_accuracy": best.accuracy, "held_out": len(self.held_out),
                   "final_report": report.format("held-out"), "rounds": history}
        save_policy(self.run_dir, self.start, current.model, "rft.json",
                    {"config": dataclasses.asdict(c), "summary": summary}, "rft:arithmetic", best)
        return summary


def describe_rounds(summary: dict[str, Any]) -> str:
    """One line per round: how many replies were right, how many kept, and val exact match after it."""
    lines = []
    for r in summary["rounds"][1:]:
        after = "skipped (fewer than 2 right replies)" if r.get("skipped") else \
            f"val exact match {100 * r['accuracy']:.2f}%"
        lines.append(f"round {r['round']}: {100 * r['right']:.1f}% of {r['sampled']} sampled replies right, "
                     f"{r['kept']} kept ({r['questions_kept']} questions); {after}")
    return "\n".join(lines)

