"""Why GRPO does not move held-out accuracy here: two measurements on an SFT chat run.

1. Headroom: greedy accuracy vs accuracy of temperature-1 samples vs pass@16, on 100
   held-out (test split) and 100 train-split questions, and the share of questions whose 16
   samples are mixed (some right, some wrong: the only groups that give GRPO a signal).
2. The algorithm works: GRPO on 8 fixed train questions, 20 steps; the reward on them rises.

    python benchmarks/rl_diagnostics.py runs/posttrain/sft [--ops + --digits 2]
"""

from __future__ import annotations

import argparse
import random

import torch

import quillgpt.posttrain.rl as rl
from quillgpt.chat import end_id, prompt_ids
from quillgpt.posttrain.grpo import GRPO
from quillgpt.posttrain.rollout import sample_replies
from quillgpt.pretrained import load_init
from quillgpt.tasks.questions import exact_match, fresh_questions, questions


def headroom(run_dir: str, ops: str, digits: int) -> None:
    run = load_init(run_dir)
    tok = run.tokenizer
    for split, asked in (("test", questions(ops, digits, 100, 1000, "test")),
                         ("train", fresh_questions(random.Random(5), ops, digits, 100))):
        prompts = [prompt_ids(tok, q.messages()) for q in asked]
        greedy = sample_replies(run.model, prompts, 8, end_id(tok), top_k=1)
        many = sample_replies(run.model, [p for p in prompts for _ in range(16)], 8, end_id(tok),
                              generator=torch.Generator().manual_seed(0))
        def score(q, r):
            return exact_match(q, tok.decode(r.response[:-1])) if r.finished else 0.0
        ok = torch.tensor([score(asked[i // 16], r) for i, r in enumerate(many)]).view(100, 16)
        print(f"{split:5}: greedy {sum(score(q, r) for q, r in zip(asked, greedy, strict=True)):.0f}%, "
              f"T=1 samples {100 * ok.mean():.1f}%, pass@16 {100 * ok.max(1).values.mean():.0f}%, "
              f"mixed groups {100 * ((ok.sum(1) > 0) & (ok.sum(1) < 16)).float().mean():.0f}%")


def fixed_prompts(run_dir: str, ops: str, digits: int, out_dir: str) -> None:
    fixed = fresh_questions(random.Random(7), ops, digits, 8)
    rl.fresh_questions = lambda rng, o, d, count: fixed[:count]  # the same 8 questions every step
    config = rl.RLConfig(ops=ops, digits=digits, steps=20, prompts_per_step=8, samples_per_prompt=16, lr=1e-4,
                         warmup=1, kl_coef=0.0, eval_interval=1000, eval_questions=5, out_dir=out_dir)
    run = rl.RLRun(load_init(run_dir), config, GRPO, progress=False)
    run.train()
    rewards = [r["reward"] for r in run.log.read() if r["kind"] == "train"]
    print("GRPO on 8 fixed questions, reward per step:", " ".join(f"{r:.2f}" for r in rewards))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--ops", default="+")
    parser.add_argument("--digits", type=int, default=2)
    parser.add_argument("--out-dir", default="/tmp/rl-diagnostics")
    args = parser.parse_args()
    headroom(args.run_dir, args.ops, args.digits)
    fixed_prompts(args.run_dir, args.ops, args.digits, args.out_dir)
