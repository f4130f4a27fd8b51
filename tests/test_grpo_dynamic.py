"""GRPO's DAPO settings (dynamic sampling, clip-higher, loss aggregation), the best val step kept,
and rejection-sampling finetuning, on hand-made tensors and tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from quillgpt.chat import prompt_ids
from quillgpt.checkpoint import load_run
from quillgpt.cli import main
from quillgpt.errors import ConfigError
from quillgpt.posttrain import rft as rft_module
from quillgpt.posttrain.chat_eval import Answer, ChatReport
from quillgpt.posttrain.grpo import GRPO
from quillgpt.posttrain.objectives import aggregate_loss, clipped_policy_loss, signal_groups
from quillgpt.posttrain.rft import RFTConfig, RFTRun, accepted
from quillgpt.posttrain.rl import RLConfig, RLRun
from quillgpt.posttrain.rollout import Rollout
from quillgpt.tasks.arithmetic import Problem
from quillgpt.tasks.questions import TEMPLATES, Question, questions
from test_rl import tiny_chat_run

# -- the selection of dynamic sampling -------------------------------------------------------------


def test_signal_groups_are_exactly_the_groups_whose_rewards_differ():
    rewards = torch.tensor([1.0, 1.0, 1.0,   0.0, 1.0, 0.0,   0.0, 0.0, 0.0,   0.5, 0.5, 0.25])
    assert signal_groups(rewards, 3).tolist() == [False, True, False, True]
    assert signal_groups(rewards, 1).tolist() == [False] * 12  # a group of one never has signal
    assert signal_groups(rewards, 6).tolist() == [True, True]


class Recorder:
    """An algorithm that only records what it was asked to train on."""

    name = "recorder"

    def __init__(self, policy, reference, config) -> None:
        self.calls: list[torch.Tensor] = []

    def update(self, batch, scores):
        assert batch.ids.size(0) == scores.numel()
        self.calls.append(scores.clone())
        return {"kl": 0.0}


def parity_reward(drawn: list[tuple[int, int, float]]):
    """All samples of a question with an even first operand score 1 (an all-equal group); the others
    alternate 0, 1 within the group. Records (groups, all-equal groups, summed reward) of every call."""
    def score(asked, rollouts):
        values = [1.0 if q.problem.a % 2 == 0 else float(i % 2) for i, q in enumerate(asked)]
        evens = len({i // 2 for i, q in enumerate(asked) if q.problem.a % 2 == 0})
        drawn.append((len(asked) // 2, evens, sum(values)))
        return torch.tensor(values)
    return score


def small_rl(tmp_path: Path, **fields) -> RLConfig:
    settings = {"reward": "task:arithmetic", "ops": "+", "digits": 1, "steps": 3, "prompts_per_step": 4,
                "samples_per_prompt": 2, "max_new_tokens": 2, "eval_interval": 100, "eval_questions": 4,
                "out_dir": str(tmp_path / "out"), **fields}
    return RLConfig(**settings)


def test_dynamic_sampling_trains_only_groups_with_signal_and_logs_the_dropped_share(tmp_path: Path):
    drawn: list[tuple[int, int, float]] = []
    rl = RLRun(tiny_chat_run(tmp_path), small_rl(tmp_path, dynamic_sampling=6), Recorder, progress=False,
               reward=parity_reward(drawn))
    rl.evaluate = lambda: report_with(0.5)  # (val answers are not what this test is about: it saves the time)
    summary = rl.train()
    train = [r for r in rl.log.read() if r["kind"] == "train"]
    assert len(rl.algorithm.calls) == 3
    for scores in rl.algorithm.calls:  # 4 groups a step, every one of them 0, 1: no all-equal group got through
        assert scores.view(-1, 2).tolist() == [[0.0, 1.0]] * 4
    calls = iter(drawn)
    for record in train:  # the share dropped is what the reward saw, draw by draw
        step = [next(calls) for _ in range(record["draws"])]
        groups, equal = sum(g for g, _, _ in step), sum(e for _, e, _ in step)
        assert record["groups"] == 4 and record["dropped"] == pytest.approx(equal / groups)
        assert record["all_equal"] == record["dropped"]
        # the logged reward is every drawn reply's, the dropped ones' too (not the 0.5 of the kept groups)
        assert record["reward"] == pytest.approx(sum(r for _, _, r in step) / (2 * groups))
    assert next(calls, None) is None
    assert sum(e for _, e, _ in drawn) > 0  # the test drew some all-equal groups to drop
    assert summary["dropped"] == pytest.approx(sum(r["dropped"] for r in train) / 3)
    assert summary["skipped_steps"] == summary["short_steps"] == 0


def test_without_dynamic_sampling_every_group_is_trained_and_the_all_equal_share_still_logged(tmp_path: Path):
    drawn: list[tuple[int, int, float]] = []
    rl = RLRun(tiny_chat_run(tmp_path), small_rl(tmp_path), Recorder, progress=False, reward=parity_reward(drawn))
    rl.evaluate = lambda: report_with(0.5)
    rl.train()
    train = [r for r in rl.log.read() if r["kind"] == "train"]
    assert [s.numel() for s in rl.algorithm.calls] == [8, 8, 8]
    assert [r["all_equal"] for r in train] == pytest.approx([e / g for g, e, _ in drawn])
    assert all(r["dropped"] == 0.0 and r["draws"] == 1 for r in train)


def test_dynamic_sampling_is_bounded_and_skips_a_step_without_any_signal(tmp_path: Path):
    calls: list[int] = []

    def always_one(asked, rollouts):
        calls.append(len(asked))
        return torch.ones(len(asked))

    rl = RLRun(tiny_chat_run(tmp_path), small_rl(tmp_path, dynamic_sampling=2), Recorder, progress=False,
               reward=always_one)
    rl.evaluate = lambda: report_with(0.5)
    summary = rl.train()
    train = [r for r in rl.log.read() if r["kind"] == "train"]
    assert rl.algorithm.calls == []  # nothing with signal: no update at all
    assert len(calls) == 3 * 3  # 1 draw + at most 2 more, per step
    assert all(r["skipped"] and r["draws"] == 3 and r["groups"] == 0 and r["dropped"] == 1.0 for r in train)
    assert summary["skipped_steps"] == 3 and summary["dropped"] == 1.0


# -- clip-higher and the loss types ----------------------------------------------------------------


def test_clip_high_changes_the_objective_only_between_the_two_upper_bounds():
    ratio = torch.tensor([0.7, 0.9, 1.1, 1.19, 1.25, 1.4])
    old = torch.zeros(6)
    for sign in (1.0, -1.0):
        advantages = torch.full((6,), sign)
        logp = ratio.log().requires_grad_()
        symmetric = clipped_policy_loss(logp, old, advantages, 0.2)
        higher = clipped_policy_loss(logp, old, advantages, 0.2, clip_high=0.28)
        if sign < 0:  # a falling token: the upper clip never binds (min picks the unclipped ratio)
            assert torch.equal(symmetric, higher)
            continue
        assert symmetric.tolist() == pytest.approx([-0.7, -0.9, -1.1, -1.19, -1.2, -1.2])
        assert higher.tolist() == pytest.approx([-0.7, -0.9, -1.1, -1.19, -1.25, -1.28])
        (grad_symmetric,) = torch.autograd.grad(symmetric.sum(), logp)
        (grad_higher,) = torch.autograd.grad(higher.sum(), logp)
        # the token at ratio 1.25 still learns under clip-higher, not under the symmetric clip; 1.4 under neither
        assert grad_symmetric[4] == 0 and grad_higher[4] == pytest.approx(-1.25)
        assert grad_symmetric[5] == 0 and grad_higher[5] == 0
        assert torch.equal(grad_symmetric[:4], grad_higher[:4])
    assert torch.equal(clipped_policy_loss(ratio.log(), old, torch.ones(6), 0.2, None),
                       clipped_policy_loss(ratio.log(), old, torch.ones(6), 0.2, 0.2))


def test_loss_types_aggregate_tokens_as_their_papers_do():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    assert float(aggregate_loss(per_token, mask, "dapo", 4)) == pytest.approx(10 / 4)  # every token alike
    assert float(aggregate_loss(per_token, mask, "grpo", 4)) == pytest.approx((2 + 4) / 2)  # every reply alike
    assert float(aggregate_loss(per_token, mask, "dr_grpo", 4)) == pytest.approx(10 / (2 * 4))  # a constant
    with pytest.raises(ValueError, match="loss_type"):
        aggregate_loss(per_token, mask, "mean", 4)


def test_new_rl_settings_are_checked_in_one_line():
    with pytest.raises(ConfigError, match="loss_type must be one of dapo, grpo, dr_grpo"):
        RLConfig(loss_type="sum").validate()
    with pytest.raises(ConfigError, match="dynamic_sampling needs samples_per_prompt >= 2"):
        RLConfig(dynamic_sampling=2, samples_per_prompt=1).validate()
    with pytest.raises(ConfigError, match="dynamic_sampling must be at most 100"):
        RLConfig(dynamic_sampling=101).validate()
    with pytest.raises(ConfigError, match="clip_high must be >= 0"):
        RLConfig(clip_high=-0.1).validate()


def test_the_cli_refuses_a_grpo_setting_for_ppo_and_a_bad_rft_setting(tmp_path: Path, capsys):
    assert main(["rl", "ppo", str(tmp_path), "--reward", "task:arithmetic", "--dynamic-sampling", "4"]) == 2
    assert "--dynamic-sampling is a GRPO setting" in capsys.readouterr().err
    assert main(["rl", "grpo", str(tmp_path), "--gamma", "0.9"]) == 2
    assert "--gamma is a PPO setting" in capsys.readouterr().err
    assert main(["rft", str(tmp_path), "--rounds", "0"]) == 2
    assert "rounds must be a positive integer" in capsys.readouterr().err


# -- the best val step is the checkpoint kept -------------------------------------------------------


def report_with(accuracy: float) -> ChatReport:
    asked = [Question(Problem(a, "+", 1)) for a in range(4)]
    right = round(4 * accuracy)
    return ChatReport([Answer(q, q.answer if i < right else "x", True) for i, q in enumerate(asked)])


def scripted_evaluations(model: torch.nn.Module, accuracies: list[float], seen: list[dict[str, torch.Tensor]]):
    """An evaluator that returns the given accuracies in turn and keeps a copy of the weights it was shown."""
    scripted = iter(accuracies)

    def evaluate(*_):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return report_with(next(scripted))
    return evaluate


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("accuracies", "best_step"), [([0.5, 0.25, 0.75, 0.5], 2), ([0.5, 0.25, 0.5, 0.5], 0)])
def test_the_checkpoint_kept_as_best_is_the_best_val_step(tmp_path: Path, accuracies: list[float], best_step: int):
    run = tiny_chat_run(tmp_path)
    generator = torch.Generator().manual_seed(0)
    config = small_rl(tmp_path, eval_interval=1, lr=1e-2, samples_per_prompt=4)
    rl = RLRun(run, config, GRPO, progress=False,
               reward=lambda asked, rollouts: torch.rand(len(rollouts), generator=generator))
    seen: list[dict[str, torch.Tensor]] = []
    rl.evaluate = scripted_evaluations(rl.policy, accuracies, seen)
    summary = rl.train()
    assert summary["best_step"] == best_step and summary["best_accuracy"] == accuracies[best_step]
    assert summary["accuracy"] == accuracies[-1]
    best, last = load_run(tmp_path / "out", which="best"), load_run(tmp_path / "out")
    assert best.step == best_step and last.step == 3
    assert same_weights(best.model.state_dict(), seen[best_step])  # the weights val saw at that step
    assert same_weights(last.model.state_dict(), seen[-1])
    assert not same_weights(seen[best_step], seen[-1])  # the policy moved after it: two different checkpoints
    pointer = json.loads((tmp_path / "out" / "best.json").read_text())
    assert pointer["val_accuracy"] == accuracies[best_step] and "val_loss" not in pointer


# -- rejection-sampling finetuning ------------------------------------------------------------------


def test_rft_keeps_only_the_replies_the_checker_accepts_each_once():
    run = tiny_chat_run(Path("."))
    tok = run.tokenizer
    end = tok.special_ids["<|end|>"]
    q1, q2 = Question(Problem(12, "+", 30)), Question(Problem(5, "-", 7))

    def rollout(text: str, finished: bool = True) -> Rollout:
        return Rollout([0], tok.encode(text) + ([end] if finished else []), finished)

    asked = [q1, q1, q1, q1, q2, q2, q2]
    rollouts = [rollout("42"), rollout("41"), rollout("42"), rollout("units first 24, so 42"),
                rollout("-2"), rollout("-2", finished=False), Rollout([0], [tok.special_ids["<|user|>"], end], True)]
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])  # the checker's verdicts
    kept = accepted(asked, rollouts, scores, tok, per_question=4)
    # the wrong reply is dropped, the repeated right one kept once, a reply with a chat token never
    assert kept == [(q1, "42"), (q1, "units first 24, so 42"), (q2, "-2")]
    assert accepted(asked, rollouts, scores, tok, per_question=1) == [(q1, "42"), (q2, "-2")]


def one_digit_prompts(tokenizer) -> dict[tuple[int, ...], Question]:
    """Every 1-digit addition question in every wording, by its prompt's token ids."""
    return {tuple(prompt_ids(tokenizer, q.messages())): q
            for a in range(10) for b in range(10) for t in range(len(TEMPLATES["+"]))
            for q in [Question(Problem(a, "+", b), t)]}


def test_rft_samples_train_questions_only_and_keeps_the_best_val_round(tmp_path: Path, monkeypatch):
    run = tiny_chat_run(tmp_path)
    every = one_digit_prompts(run.tokenizer)
    sampled: list[Question] = []
    real_sample = rft_module.sample_replies

    def spy(model, prompts, *args, **kwargs):
        sampled.extend(every[tuple(p)] for p in prompts)
        return real_sample(model, prompts, *args, **kwargs)

    monkeypatch.setattr(rft_module, "sample_replies", spy)
    config = RFTConfig(ops="+", digits=1, rounds=2, questions=6, samples=4, max_new_tokens=3, sft_steps=2,
                       batch_size=4, lr=1e-2, eval_questions=4, out_dir=str(tmp_path / "rft"))

    def anything(asked, rollouts):  # accepts every reply, so that a random tiny model has something to learn
        return torch.ones(len(rollouts))

    rft = RFTRun(run, config, progress=False, checker=anything)
    seen: list[dict[str, torch.Tensor]] = []

    def evaluate(model):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return report_with([0.25, 0.75, 0.5][len(seen) - 1])

    rft.evaluate = evaluate
    summary = rft.train()
    assert len(sampled) == 2 * 6 * 4  # two rounds of 6 questions x 4 samples, all through the spy
    held_out = {q.problem for split in ("val", "test") for q in questions("+", 1, 1000, 1000, split)}
    assert held_out and all(q.problem.split == "train" and q.problem not in held_out for q in sampled)
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2] and summary["rounds"][1]["kept"] >= 2
    best, last = load_run(tmp_path / "rft", which="best"), load_run(tmp_path / "rft")
    assert summary["best_step"] == 1 and best.step == 1 and last.step == 2
    assert same_weights(best.model.state_dict(), seen[1]) and same_weights(last.model.state_dict(), seen[2])
    assert same_weights(load_run(tmp_path / "rft" / "rounds" / "round-1").model.state_dict(), seen[1])
    kept = (tmp_path / "rft" / "rounds" / "round-1.jsonl").read_text().splitlines()
    assert len(kept) == summary["rounds"][1]["kept"]
    assert json.loads((tmp_path / "rft" / "rft.json").read_text())["summary"]["best_step"] == 1
