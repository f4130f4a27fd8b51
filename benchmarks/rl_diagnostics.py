"""Why GRPO does not move held-out accuracy here: two measurements on an SFT chat run.

1. Headroom: greedy accuracy vs temperature-1 samples vs the majority vote of 16 vs pass@4/16,
   on --questions (100) held-out (test split) and train-split questions, and the share whose 16
   samples are mixed (some right, some wrong: the only groups that give GRPO a signal).
2. The algorithm works: GRPO on 8 fixed train questions, 20 steps; the reward on them rises.
3. Styles: greedy accuracy on 500 held-out questions, the share of replies that show their work,
   and the accuracy when every reply is made to show its work (the reply starts "units first ").
4. With --reward-model RM (instead of 1-3): how a reward model scores the policy's own samples,
   the signal PPO climbs. Mean score by shape (bare or worked) and correctness, and how often it
   ranks a right sample above a wrong one for the same question (all of them, and those of
   different shapes).

    python benchmarks/rl_diagnostics.py runs/posttrain/sft [--ops + --digits 2] [--reward-model RM]
"""

from __future__ import annotations

import argparse
import random
from collections import Counter

import torch

import quillgpt.posttrain.rl as rl
from quillgpt.chat import end_id, prompt_ids
from quillgpt.posttrain.chat_eval import ChatReport, answer_all
from quillgpt.posttrain.grpo import GRPO
from quillgpt.posttrain.reward import load_reward_model, score_replies
from quillgpt.posttrain.rollout import sample_replies
from quillgpt.pretrained import load_init
from quillgpt.tasks.questions import WORKED_LEAD, exact_match, fresh_questions, questions, well_formed, work_style


def headroom(run_dir: str, ops: str, digits: int, n: int = 100) -> None:
    run = load_init(run_dir)
    tok = run.tokenizer
    for split, asked in (("val", questions(ops, digits, n, 1000, "val")),
                         ("train", fresh_questions(random.Random(5), ops, digits, n))):
        prompts = [prompt_ids(tok, q.messages()) for q in asked]
        greedy = sample_replies(run.model, prompts, 32, end_id(tok), top_k=1)
        many = sample_replies(run.model, [p for p in prompts for _ in range(16)], 32, end_id(tok),
                              generator=torch.Generator().manual_seed(0))
        texts = [tok.decode(r.response[:-1]) if r.finished else None for r in many]
        ok = torch.tensor([exact_match(asked[i // 16], t) if t is not None else 0.0
                           for i, t in enumerate(texts)]).view(n, 16)
        votes = [Counter(t for t in texts[16 * i: 16 * i + 16] if t is not None).most_common(1) for i in range(n)]
        majority = sum(exact_match(q, v[0][0]) for q, v in zip(asked, votes, strict=True) if v) / n
        right = sum(exact_match(q, tok.decode(r.response[:-1])) for q, r in zip(asked, greedy, strict=True)
                    if r.finished)
        print(f"{split:5}: greedy {100 * right / n:.1f}%, T=1 samples {100 * ok.mean():.1f}%, "
              f"majority of 16 {100 * majority:.1f}%, pass@4 {100 * ok[:, :4].max(1).values.mean():.1f}%, "
              f"pass@16 {100 * ok.max(1).values.mean():.1f}%, "
              f"mixed groups {100 * ((ok.sum(1) > 0) & (ok.sum(1) < 16)).float().mean():.0f}%")


def style_of(reply: str) -> str:
    return work_style(reply) or ("bare" if well_formed(reply) else "malformed")


def styles(run_dir: str, ops: str, digits: int) -> None:
    """Greedy accuracy and how often greedy replies show work, on 500 held-out questions; then
    8 temperature-1 samples of each of 200 of them, the accuracy of each style of reply."""
    run = load_init(run_dir)
    tok = run.tokenizer
    asked = questions(ops, digits, 500, 1000, "val")
    report = ChatReport(answer_all(run.model, tok, asked))
    print(f"held-out, greedy: {100 * report.accuracy:.1f}% right, {100 * report.worked_rate:.1f}% showing work")
    sampled = sample_replies(run.model, [prompt_ids(tok, q.messages()) for q in asked[:200] for _ in range(8)], 32,
                             end_id(tok), generator=torch.Generator().manual_seed(0))
    by_style: dict[str, list[float]] = {}
    for i, r in enumerate(sampled):
        reply = tok.decode(r.response[:-1]) if r.finished else ""
        by_style.setdefault(style_of(reply), []).append(exact_match(asked[i // 8], reply))
    shares = [f"{name} {100 * len(v) / len(sampled):.1f}% of replies, {100 * sum(v) / len(v):.1f}% right"
              for name, v in sorted(by_style.items())]
    print("  samples: " + ", ".join(shares))
    lead = tok.encode(WORKED_LEAD)
    forced = sample_replies(run.model, [prompt_ids(tok, q.messages()) + lead for q in asked], 30, end_id(tok),
                            top_k=1)
    shown = sum(exact_match(q, WORKED_LEAD + tok.decode(r.response[:-1])) for q, r in zip(asked, forced, strict=True)
                if r.finished)
    print(f"  made to show work units first: {100 * shown / len(asked):.1f}% right")


@torch.no_grad()
def reward_ranking(run_dir: str, rm_dir: str, ops: str, digits: int, n: int = 100, samples: int = 8) -> None:
    run = load_init(run_dir)
    model, tok = load_reward_model(rm_dir)
    asked = questions(ops, digits, n, 1000, "val")
    sampled = sample_replies(run.model, [prompt_ids(tok, q.messages()) for q in asked for _ in range(samples)], 32,
                             end_id(tok), generator=torch.Generator().manual_seed(0))
    replies = [tok.decode(r.response[:-1]) if r.finished else "" for r in sampled]
    scores = torch.cat([score_replies(model, tok, [(asked[j // samples].text, replies[j]) for j in
                                                   range(i, min(i + 256, len(replies)))])
                        for i in range(0, len(replies), 256)]).tolist()
    right = [bool(exact_match(asked[i // samples], r)) for i, r in enumerate(replies)]
    groups: dict[str, list[float]] = {}
    for reply, ok, score in zip(replies, right, scores, strict=True):
        groups.setdefault(f"{'worked' if work_style(reply) else style_of(reply)} {'right' if ok else 'wrong'}",
                          []).append(score)
    print(f"{rm_dir} on {samples} samples of {n} held-out questions from {run_dir}:")
    for name, values in sorted(groups.items()):
        print(f"  {name:15} {len(values):4} samples, mean score {sum(values) / len(values):8.2f}")
    ranked = {"all": [0, 0], "different shapes": [0, 0]}
    for q in range(n):
        group = range(q * samples, (q + 1) * samples)
        for a in (i for i in group if right[i]):
            for b in (i for i in group if not right[i]):
                keys = ["all"] + (["different shapes"] if bool(work_style(replies[a])) != bool(work_style(replies[b]))
                                  else [])
                for key in keys:
                    ranked[key][0] += scores[a] > scores[b]
                    ranked[key][1] += 1
    print("  a right sample scored above a wrong one for the same question: " + ", ".join(
        f"{key} {100 * won / max(1, pairs):.1f}% of {pairs}" for key, (won, pairs) in ranked.items()))


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
    parser.add_argument("--questions", type=int, default=100, help="held-out and train questions for the headroom")
    parser.add_argument("--out-dir", default="/tmp/rl-diagnostics")
    parser.add_argument("--reward-model", help="only measure how this reward model ranks the run's own samples")
    args = parser.parse_args()
    if args.reward_model:
        reward_ranking(args.run_dir, args.reward_model, args.ops, args.digits, args.questions)
        raise SystemExit(0)
    styles(args.run_dir, args.ops, args.digits)
    headroom(args.run_dir, args.ops, args.digits, args.questions)
    fixed_prompts(args.run_dir, args.ops, args.digits, args.out_dir)
