"""RL and reward models end to end on tiny models: rewards rise, pairs get ranked, runs are saved."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from quillgpt.chat import CHAT_TOKENS
from quillgpt.checkpoint import LoadedRun, load_run
from quillgpt.cli import main
from quillgpt.config import ModelConfig, RunConfig
from quillgpt.errors import ConfigError
from quillgpt.models import build_model
from quillgpt.posttrain.grpo import GRPO
from quillgpt.posttrain.ppo import PPO, PPOConfig, reply_rewards
from quillgpt.posttrain.reward import RewardConfig, load_reward_model, train_reward_model
from quillgpt.posttrain.rl import RLConfig, RLRun
from quillgpt.posttrain.rollout import Rollout, RolloutBatch, sample_replies
from quillgpt.tasks.questions import alphabet
from quillgpt.tokenizers import CharTokenizer


def tiny_chat_run(tmp_path: Path, seed: int = 0) -> LoadedRun:
    torch.manual_seed(seed)
    tokenizer = CharTokenizer(list(alphabet()), CHAT_TOKENS)
    config = RunConfig(model=ModelConfig(vocab_size=tokenizer.vocab_size, block_size=48, n_layer=1, n_head=2,
                                         n_embd=32, dropout=0.0))
    model = build_model(config.model)
    return LoadedRun(tmp_path / "policy", config, tokenizer, model, 0, tmp_path, {}, {})


def first_token_reward(token_id: int):
    def score(asked, rollouts):
        return torch.tensor([float(bool(r.response) and r.response[0] == token_id) for r in rollouts])
    return score


@pytest.mark.parametrize(("algorithm", "center"), [(GRPO, False), (PPO, False), (PPO, True)])
def test_a_tiny_policy_learns_a_trivial_reward(tmp_path: Path, algorithm, center: bool):
    run = tiny_chat_run(tmp_path)
    seven = run.tokenizer.stoi["7"]
    # PPOConfig carries value_lr and center_scores; epochs..kl_horizon pinned to RLConfig's (GRPO's) values
    config = PPOConfig(reward="task:arithmetic", digits=1, steps=25, prompts_per_step=8, samples_per_prompt=8,
                       max_new_tokens=2, lr=1e-2, value_lr=1e-2, kl_coef=0.0, eval_interval=100, eval_questions=5,
                       center_scores=center, out_dir=str(tmp_path / "out"),
                       epochs=1, minibatches=1, kl_target=0.0, kl_horizon=10_000.0)
    rl = RLRun(run, config, algorithm, progress=False, reward=first_token_reward(seven))
    summary = rl.train()
    rewards = [r["reward"] for r in rl.log.read() if r["kind"] == "train"]
    assert sum(rewards[:3]) / 3 < 0.2  # about 1 in 40 tokens by chance
    assert sum(rewards[-3:]) / 3 > 0.8, rewards
    assert summary["steps"] == 25 and (tmp_path / "out" / "rl.png").stat().st_size > 1000
    assert load_run(tmp_path / "out").step == 25  # the policy is a normal run


@torch.no_grad()
def first_token_kl(policy: torch.nn.Module, reference: torch.nn.Module, run: LoadedRun) -> float:
    """Exact KL(policy || reference) of the first reply token's distribution, averaged over fixed questions:
    no sampling noise, unlike the per-step estimate the RL loop logs."""
    from quillgpt.chat import prompt_ids
    from quillgpt.tasks.questions import questions

    total = 0.0
    asked = questions("+-", 1, 20, 5, "train")
    for q in asked:
        ids = torch.tensor([prompt_ids(run.tokenizer, q.messages())])
        logp = torch.log_softmax(policy.eval()(ids)[0][0, -1], -1)
        ref_logp = torch.log_softmax(reference.eval()(ids)[0][0, -1], -1)
        total += float((logp.exp() * (logp - ref_logp)).sum())
    return total / len(asked)


def drifted_policy_run(tmp_path: Path, algorithm, kl_coef: float) -> tuple[RLRun, float]:
    """An RL run whose policy starts away from its reference (noise on the output bias), with zero reward:
    the KL penalty is the only thing that can move it. Returns the run and the KL at the start."""
    run = tiny_chat_run(tmp_path)
    config = RLConfig(digits=1, steps=12, prompts_per_step=4, samples_per_prompt=4, max_new_tokens=2, lr=1e-2,
                      warmup=1, kl_coef=kl_coef, eval_interval=100, eval_questions=5, out_dir=str(tmp_path / "out"))
    rl = RLRun(run, config, algorithm, progress=False, reward=lambda asked, rollouts: torch.zeros(len(rollouts)))
    with torch.no_grad():  # the reference is the frozen copy made above; only the policy moves
        noise = torch.randn(rl.policy.lm_head.bias.shape, generator=torch.Generator().manual_seed(1))
        rl.policy.lm_head.bias.add_(3.0 * noise)
    return rl, first_token_kl(rl.policy, rl.reference, run)


@pytest.mark.parametrize("algorithm", [GRPO, PPO])
def test_kl_penalty_pulls_a_drifted_policy_back_to_the_reference(tmp_path: Path, algorithm):
    rl, start = drifted_policy_run(tmp_path, algorithm, kl_coef=0.5)
    rl.train()
    end = first_token_kl(rl.policy, rl.reference, rl.run)
    assert start > 1.5  # far from the reference to begin with
    assert end < 0.5 * start, (start, end)  # no reward signal: only the KL term pulled it back


def test_without_a_kl_penalty_a_drifted_policy_stays_where_it_is(tmp_path: Path):
    """The control for the test above: with kl_coef 0 and zero reward nothing pulls, nothing moves."""
    rl, start = drifted_policy_run(tmp_path, GRPO, kl_coef=0.0)
    rl.train()
    assert first_token_kl(rl.policy, rl.reference, rl.run) == pytest.approx(start, rel=1e-4)


def test_rollouts_batch_by_prompt_length_and_stop_at_end(tmp_path: Path):
    run = tiny_chat_run(tmp_path)
    end = run.tokenizer.special_ids["<|end|>"]
    prompts = [[1, 2, 3], [4, 5], [1, 2, 3, 4], [6, 7]]
    out = sample_replies(run.model, prompts, 5, end, generator=torch.Generator().manual_seed(0))
    assert [r.prompt for r in out] == prompts
    for r in out:
        assert (r.finished and r.response[-1] == end and end not in r.response[:-1]) or (
            not r.finished and len(r.response) == 5)
    greedy = sample_replies(run.model, prompts, 5, end, top_k=1)
    assert greedy == sample_replies(run.model, prompts, 5, end, top_k=1)
    batch = RolloutBatch.from_rollouts([Rollout([1, 2], [3, 4], True), Rollout([1, 2, 3], [5], False)], 0, "cpu")
    assert batch.ids.tolist() == [[1, 2, 3, 4], [1, 2, 3, 5]]
    assert batch.response_mask.tolist() == [[False, True, True], [False, False, True]]
    assert batch.last.tolist() == [3, 3]
    rewards = reply_rewards(torch.tensor([1.0, 2.0]), torch.full((2, 3), 0.1), batch)
    assert torch.allclose(rewards, torch.tensor([[0.0, -0.1, 0.9], [0.0, 0.0, 1.9]]))


def parity_pairs(path: Path, count: int, seed: int = 0) -> Path:
    """A JSONL file of pairs whose chosen reply is an even number and rejected one an odd number: a rule
    a tiny model learns in tens of steps. Every number is used once, so a held-out pair's replies were
    never trained on: ranking them right means the rule was learned, not the pairs."""
    rng = random.Random(seed)
    evens, odds = rng.sample(range(0, 2000, 2), count), rng.sample(range(1, 2000, 2), count)
    path.write_text("".join(json.dumps({"prompt": f"What is {rng.randint(1, 99)} plus {rng.randint(1, 99)}?",
                                        "chosen": str(even), "rejected": str(odd)}) + "\n"
                            for even, odd in zip(evens, odds, strict=True)))
    return path


def test_reward_model_ranks_held_out_pairs_and_round_trips(tmp_path: Path):
    from quillgpt.posttrain.reward import evaluate_pairs, split_pairs

    run = tiny_chat_run(tmp_path)
    config = RewardConfig(data=str(parity_pairs(tmp_path / "pairs.jsonl", 400)), val_pairs=40, steps=60,
                          batch_size=32, lr=3e-3, eval_interval=30, out_dir=str(tmp_path / "rm"))
    trained_on, held_out = split_pairs(config)
    assert len(held_out) == 40 and not {p.chosen for p in held_out} & {p.chosen for p in trained_on}

    summary = train_reward_model(run, config, progress=False)
    assert summary["val_pairs"] == 40
    assert summary["val_accuracy"] >= 0.9 and summary["val_margin"] > 1.0, summary  # chance: 50%, margin 0
    model, tokenizer = load_reward_model(tmp_path / "rm")
    assert tokenizer == run.tokenizer
    assert evaluate_pairs(model, tokenizer, held_out)["accuracy"] == summary["val_accuracy"]  # saved, read back
    with pytest.raises(ConfigError):
        RewardConfig(steps=0).validate()
    with pytest.raises(ConfigError, match="cross_style is a share"):
        RewardConfig(cross_style=1.5).validate()


def test_dpo_widens_the_chosen_over_rejected_margin_on_held_out_pairs(tmp_path: Path):
    from quillgpt.metrics import MetricsLog
    from quillgpt.posttrain.dpo import DPOConfig, describe_pairs, train_dpo

    run = tiny_chat_run(tmp_path)
    config = DPOConfig(data=str(parity_pairs(tmp_path / "pairs.jsonl", 400)), val_pairs=40, steps=20,
                       batch_size=16, lr=3e-3, beta=0.1, eval_interval=10, eval_questions=5,
                       out_dir=str(tmp_path / "dpo"))
    summary = train_dpo(run, config, progress=False)
    evals = [r for r in MetricsLog(tmp_path / "dpo" / "metrics.jsonl").read() if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 10, 20]
    assert evals[0]["pair_margin"] == 0.0 and evals[0]["pair_accuracy"] == 0.5  # the policy starts as the reference
    margins = [r["pair_margin"] for r in evals]
    assert margins == sorted(margins) and margins[-1] > 0.3, margins  # widening, on pairs never trained on
    assert summary["pair_accuracy"] >= 0.9 and summary["val_pairs"] == 40
    assert (summary["start_pair_margin"], summary["pair_margin"]) == (0.0, margins[-1])
    assert json.loads((tmp_path / "dpo" / "dpo.json").read_text())["summary"]["pair_margin"] == margins[-1]
    assert "held-out pairs (40)" in describe_pairs(summary) and "50.00% -> " in describe_pairs(summary)


def test_the_likelihood_term_is_the_replys_log_probability_and_round_trips(tmp_path: Path):
    from quillgpt.chat import Message, prompt_ids
    from quillgpt.posttrain.reward import RewardModel, encode_reply, score_replies
    from quillgpt.posttrain.rollout import token_logprobs

    run = tiny_chat_run(tmp_path)
    model = RewardModel(run.model, likelihood=True)
    replies = [("What is 1 plus 2?", "3"), ("Add 40 and 4.", "units first 44, so 44")]
    with torch.no_grad():
        scores = score_replies(model, run.tokenizer, replies)
        for (prompt, reply), score in zip(replies, scores, strict=True):
            ids = torch.tensor([encode_reply(run.tokenizer, prompt, reply)])
            start = len(prompt_ids(run.tokenizer, [Message("user", prompt)]))
            by_hand = token_logprobs(run.model(ids)[0], ids)[0, start - 1:].sum()  # the reply and its <|end|>
            assert torch.allclose(score, by_hand, atol=1e-5)  # the head starts at 0, the scale at 1
    with pytest.raises(ValueError, match="reply_mask"):
        model(ids, torch.tensor([ids.size(1) - 1]))

    config = RewardConfig(ops="+", digits=2, val_pairs=10, steps=3, batch_size=8, eval_interval=3, likelihood=True,
                          out_dir=str(tmp_path / "rm"))
    train_reward_model(run, config, progress=False)
    loaded, tokenizer = load_reward_model(tmp_path / "rm")
    state = loaded.head_state()
    assert state["likelihood_scale"].item() != 1.0  # trained, saved and read back
    again = RewardModel(run.model.eval(), likelihood=True)  # run.model is the trained backbone
    again.load_head_state(state)
    with torch.no_grad():
        assert torch.allclose(score_replies(loaded, tokenizer, replies), score_replies(again, tokenizer, replies),
                              atol=1e-5)


def test_policy_pairs_are_the_models_own_wrong_answers(tmp_path: Path):
    from quillgpt.posttrain.reward import Shapes, policy_pairs
    from quillgpt.tasks.questions import questions, shows_work, well_formed

    run = tiny_chat_run(tmp_path)
    digits = [run.tokenizer.stoi[c] for c in "0123456789"]
    with torch.no_grad():  # make the untrained model answer with digits, then <|end|>
        run.model.lm_head.bias.fill_(-10.0)
        run.model.lm_head.bias[digits] = 5.0
        run.model.lm_head.bias[run.tokenizer.special_ids["<|end|>"]] = 4.0
    asked = questions("+", 2, 10, 0, "train")
    pairs = policy_pairs(run.model, run.tokenizer, asked, samples=4)
    assert pairs
    answers = {q.text: q.answer for q in asked}
    for pair in pairs:  # the right answer in the wrong reply's shape: bare, as the model answers bare
        assert pair.chosen == answers[pair.prompt] and pair.rejected != pair.chosen and well_formed(pair.rejected)
    crossed = policy_pairs(run.model, run.tokenizer, asked, samples=4, shapes=Shapes(style="columns", cross=1.0))
    assert [p.rejected for p in crossed] == [p.rejected for p in pairs]  # the same samples
    by_text = {q.text: q for q in asked}
    for pair in crossed:  # now the right answer shows its work: a worked reply is not only ever the loser
        assert pair.chosen == by_text[pair.prompt].demonstration(True, "columns") and shows_work(pair.chosen)


@pytest.mark.parametrize(("worked", "style"), [(0.0, "units"), (1.0, "units"), (1.0, "columns")])
def test_generated_pairs_show_their_work_in_both_replies_or_neither(worked: float, style: str):
    import random

    from quillgpt.posttrain.reward import Shapes, arithmetic_pairs, fresh_pairs
    from quillgpt.tasks.questions import final_answer, questions, shows_work, well_formed

    answers = {q.text: q.answer for q in questions("+", 3, 50, 1, "test")}
    shapes = Shapes(worked, style)
    held_out = arithmetic_pairs("+", 3, 50, 1, "test", shapes)
    assert held_out == arithmetic_pairs("+", 3, 50, 1, "test", shapes)  # the same held-out pairs every run
    for pair in held_out + fresh_pairs(random.Random(0), "+", 3, 50, shapes):
        assert shows_work(pair.chosen) == shows_work(pair.rejected) == (worked == 1.0)
        assert well_formed(pair.rejected) and final_answer(pair.rejected) != final_answer(pair.chosen)
        assert pair.chosen.startswith("units first") == pair.rejected.startswith("units first") == (
            worked == 1.0 and style == "units")
    assert all(final_answer(p.chosen) == answers[p.prompt] for p in held_out)


@pytest.mark.parametrize("style", ["units", "columns"])
def test_cross_style_pairs_compare_a_worked_reply_with_a_bare_one_both_ways(style: str):
    import random

    from quillgpt.posttrain.reward import Shapes, arithmetic_pairs, fresh_pairs
    from quillgpt.tasks.questions import final_answer, questions, shows_work, well_formed, work_style

    answers = {q.text: q.answer for q in questions("+", 3, 100, 1, "test")}
    pairs = arithmetic_pairs("+", 3, 100, 1, "test", Shapes(style=style, cross=1.0))
    for pair in pairs + fresh_pairs(random.Random(0), "+", 3, 100, Shapes(style=style, cross=1.0)):
        assert shows_work(pair.chosen) != shows_work(pair.rejected)  # exactly one shows its work
        assert work_style(pair.chosen) in (None, style) and work_style(pair.rejected) in (None, style)
        assert well_formed(pair.rejected) and final_answer(pair.rejected) != final_answer(pair.chosen)
    assert all(final_answer(p.chosen) == answers[p.prompt] for p in pairs)
    worked_chosen = sum(shows_work(p.chosen) for p in pairs)
    assert 25 < worked_chosen < 75  # either side may be the worked one
    mixed = arithmetic_pairs("+", 3, 200, 1, "test", Shapes(0.5, style, cross=0.5))
    crossed = sum(shows_work(p.chosen) != shows_work(p.rejected) for p in mixed)
    assert 70 < crossed < 130


def test_a_slipped_column_addition_reads_the_operands_right_and_ends_wrong():
    import random

    from quillgpt.posttrain.reward import Shapes, arithmetic_pairs
    from quillgpt.tasks.questions import WORKED, final_answer, questions, show_columns, slipped_columns

    rng = random.Random(0)
    kinds = {"column": 0, "final": 0}
    for q in questions("+", 3, 200, 2, "test"):
        wrong = slipped_columns(q, rng)
        steps, total = wrong.split(": ")
        right_steps = show_columns(q.problem.a, q.problem.b).split(": ")[0]
        assert WORKED.fullmatch(wrong) and final_answer(wrong) != q.answer
        assert len(wrong) <= len(show_columns(q.problem.a, q.problem.b))  # fits wherever the right one does
        assert [s.split("=")[0] for s in steps.split()] == [s.split("=")[0] for s in right_steps.split()]  # read right
        if steps == right_steps:
            kinds["final"] += 1  # every column right, the final number not theirs
        else:
            slipped = [(a, b) for a, b in zip(steps.split(), right_steps.split(), strict=True) if a != b]
            (mine, theirs), = slipped  # one column, one off
            place = steps.split().index(mine)
            delta = int(mine.split("=")[1]) - int(theirs.split("=")[1])
            assert abs(delta) == 1 and int(total) == int(q.answer) + delta * 10 ** place  # the final follows it
            kinds["column"] += 1
    assert min(kinds.values()) > 50

    def columns_read(reply: str) -> list[str]:
        return [step.split("=")[0].removesuffix("+1") for step in reply.split(": ")[0].split()]

    pairs = arithmetic_pairs("+", 3, 200, 1, "test", Shapes(1.0, "columns", slips=0.5))
    read_right = sum(columns_read(p.rejected) == columns_read(p.chosen) for p in pairs)
    assert 70 < read_right < 130  # half slip, half misread an operand digit


def test_a_misread_column_addition_is_consistent_but_wrong():
    import random

    from quillgpt.tasks.questions import WORKED, misread_columns, questions

    rng = random.Random(0)
    for q in questions("+", 3, 100, 2, "test"):
        wrong = misread_columns(q, rng)
        steps, total = wrong.split(": ")
        x = int("".join(step[0] for step in steps.split())[::-1])  # the operands as the reply read them
        y = int("".join(step[2] for step in steps.split())[::-1])
        assert WORKED.fullmatch(wrong) and int(total) == x + y != int(q.answer)
        assert sorted([abs(x - q.problem.a), abs(y - q.problem.b)])[0] == 0  # one operand misread, not both


@pytest.mark.parametrize(("decay", "factors"), [(False, [0.5, 1.0, 1.0, 1.0]), (True, [0.5, 0.75, 0.5, 0.25])])
def test_rl_learning_rate_warms_up_then_stays_or_decays_to_zero(decay: bool, factors: list[float]):
    from quillgpt.posttrain.rl import RLConfig, optimizer_for

    optimizer, schedule = optimizer_for(torch.nn.Linear(2, 1), RLConfig(lr=2.0, warmup=2, steps=4, lr_decay=decay))
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx([2.0 * f for f in factors])


def test_rl_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="center_scores"):
        PPOConfig(center_scores=True, samples_per_prompt=1).validate()
    with pytest.raises(ConfigError, match="unknown reward"):
        RLConfig(reward="magic").validate()
    with pytest.raises(ConfigError, match="steps"):
        RLConfig(steps=0).validate()


@pytest.mark.slow
def test_reward_and_rl_commands(tmp_path: Path, capsys):
    sft = tmp_path / "sft"
    assert main(["train", "--chat-data", "arithmetic", "--chat-digits", "2", "--chat-val", "20", "--preset", "tiny",
                 "--block-size", "40", "--max-iters", "3", "--out-dir", str(sft), "--no-progress"]) == 0
    rm = tmp_path / "rm"
    assert main(["reward", "train", str(sft), "--digits", "2", "--steps", "4", "--val-pairs", "10",
                 "--policy-pairs", "4", "--eval-interval", "2", "--out-dir", str(rm), "--no-progress"]) == 0
    assert "pairwise accuracy" in capsys.readouterr().out
    assert main(["reward", "score", str(rm), "--prompt", "What is 1 plus 2?", "--response", "3"]) == 0
    float(capsys.readouterr().out)
    for algorithm, reward in (("ppo", f"model:{rm}"), ("grpo", "task:arithmetic")):
        assert main(["rl", algorithm, str(sft), "--reward", reward, "--digits", "1", "--steps", "2",
                     "--prompts-per-step", "2", "--samples-per-prompt", "2", "--minibatches", "1",
                     "--eval-questions", "5", "--out-dir", str(tmp_path / algorithm), "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert "validation exact match" in out and "on validation questions" in out
        assert ("target 0.5" in out) == (algorithm == "ppo")  # PPO's default KL target; GRPO has none
    assert main(["dpo", str(sft), "--digits", "2", "--steps", "2", "--batch-size", "4", "--val-pairs", "10",
                 "--eval-questions", "5", "--out-dir", str(tmp_path / "dpo"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "KL to the reference" in out and "held-out pairs (10): implicit-reward pairwise accuracy" in out
    assert main(["dpo", str(sft), "--cross-style", "2", "--out-dir", str(tmp_path / "dpo2")]) == 2  # the pair options
    assert "cross_style is a share" in capsys.readouterr().err  # are the reward model's, checked the same way
    assert load_run(tmp_path / "dpo").step == 2
    assert main(["task", "eval", str(tmp_path / "grpo"), "--n", "5", "--json"]) == 0
    assert '"format"' in capsys.readouterr().out
    assert main(["rl", "ppo", str(sft), "--digits", "1", "--out-dir", str(tmp_path / "x")]) == 2
    assert "needs a reward" in capsys.readouterr().err
    assert main(["rl", "grpo", str(sft), "--digits", "1", "--out-dir", str(tmp_path / "grpo")]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["reward", "score", str(sft), "--prompt", "x", "--response", "y"]) == 2
    assert "not a reward model" in capsys.readouterr().err
