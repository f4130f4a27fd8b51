"""A reward model: a GPT backbone with a scalar head, trained on preference pairs.

The model reads a whole conversation (prompt and reply, ending in ``<|end|>``) and its head
turns the final token's features into one number. It learns from pairs (the same prompt with
a chosen and a rejected reply) to score the chosen one higher: the Bradley-Terry loss
-log sigmoid(r_chosen - r_rejected) (InstructGPT, Ouyang et al. 2022, section 3.5). The
backbone starts from the SFT model, as in InstructGPT, so it already reads the chat format.

Pairs come from a JSONL file (``{"prompt", "chosen", "rejected"}`` per line) or are generated:
arithmetic questions with the right answer against a near miss (``tasks.questions.wrong_answer``).
A run directory holds the backbone as a normal run (config.json, tokenizer.json, checkpoint)
plus ``reward_head.safetensors`` in the checkpoint and ``reward.json``.
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

from quillgpt.chat import Message, encode_conversation, end_id, prompt_ids, read_jsonl, require_chat_format
from quillgpt.checkpoint import LoadedRun, load_run, read_tensors, write_checkpoint, write_run_files
from quillgpt.config import (
    MAX_DIGITS,
    MAX_EXAMPLES,
    MAX_WIDTH,
    WORK_STYLES,
    check_positive_fields,
    check_range,
    check_seeds,
    tracker_names,
)
from quillgpt.errors import CheckpointError, ConfigError, DataError
from quillgpt.fsutil import atomic_write_json
from quillgpt.metrics import MetricsLog
from quillgpt.posttrain.objectives import bradley_terry_loss, pairwise_accuracy
from quillgpt.posttrain.rollout import sample_replies, token_logprobs
from quillgpt.tasks.questions import (
    Question,
    exact_match,
    fresh_questions,
    misread_columns,
    questions,
    show_work,
    shows_work,
    slipped_columns,
    well_formed,
    work_style,
    wrong_answer,
)
from quillgpt.tokenizers import Tokenizer

HEAD_FILE = "reward_head.safetensors"
INFO_FILE = "reward.json"


class RewardModel(nn.Module):
    """GPT features -> one scalar per position; the reward is the scalar at a sequence's last token.

    With ``likelihood``, the score also adds the backbone's own log-likelihood of the reply (its
    language-model head, summed over the reply's tokens) times a learned scale that starts at 1.
    The SFT backbone already ranks right answers above near misses by likelihood; a head on one
    token has to learn to read that out through the whole network (a generative verifier in the
    sense of Zhang et al. 2024, kept inside the Bradley-Terry reward model).

    The same module serves PPO as a value model (``values``: a scalar at every position).
    """

    def __init__(self, backbone: nn.Module, likelihood: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.n_embd, 1)
        nn.init.zeros_(self.head.weight)  # every reply scores 0 at the start: no preference yet
        nn.init.zeros_(self.head.bias)
        self.likelihood_scale = nn.Parameter(torch.ones(())) if likelihood else None

    @property
    def block_size(self) -> int:
        return self.backbone.block_size

    def values(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) scalars, one per position."""
        return self.head(self.backbone.features(idx)).squeeze(-1).float()

    def forward(self, idx: torch.Tensor, last: torch.Tensor, reply_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) the score at each row's last token (index ``last``; rows are right-padded).

        ``reply_mask`` (B, T-1), true where the next token is the reply's (``RolloutBatch.response_mask``),
        is needed with ``likelihood``.
        """
        features = self.backbone.features(idx)
        score = self.head(features).squeeze(-1).float().gather(1, last.unsqueeze(1)).squeeze(1)
        if self.likelihood_scale is None:
            return score
        if reply_mask is None:
            raise ValueError("a reward model with the likelihood term needs each reply's positions (reply_mask)")
        logp = token_logprobs(self.backbone.lm_head(features), idx)
        return score + self.likelihood_scale * (logp * reply_mask).sum(1)

    def head_state(self) -> dict[str, torch.Tensor]:
        """What the reward model adds to its backbone: saved beside the backbone's checkpoint."""
        extra = {} if self.likelihood_scale is None else {"likelihood_scale": self.likelihood_scale.detach()}
        return {**self.head.state_dict(), **extra}

    def load_head_state(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        if self.likelihood_scale is not None:
            with torch.no_grad():
                self.likelihood_scale.copy_(state.pop("likelihood_scale"))
        self.head.load_state_dict(state)


@dataclass(frozen=True)
class Shapes:
    """How generated pairs show their work (shares of pairs, or of worked wrong replies)."""

    worked: float = 0.0  # both replies show their work
    style: str = "units"  # how: units ("units first 34, so 43") or columns (additions written out)
    cross: float = 0.0  # one reply shows its work and the other does not, either way round
    slips: float = 0.0  # columns: a wrong worked reply slips a column or the final number instead of misreading


@dataclass
class PairsConfig:
    """Where preference pairs come from: the fields ``quill reward train`` and ``quill dpo`` share."""

    data: str = "arithmetic"  # a JSONL file of {"prompt", "chosen", "rejected"}, or arithmetic
    ops: str = "+-"  # arithmetic: the operators asked about
    digits: int = 3  # arithmetic: operands have 1..digits digits
    val_pairs: int = 1000  # held-out pairs (JSONL: at most a tenth of the file)
    worked: float = 0.0  # arithmetic: share of pairs whose two replies both show their work
    work_style: str = "units"  # the worked replies: units ("units first 34, so 43") or columns (additions)
    cross_style: float = 0.0  # share of pairs where one reply shows its work and the other does not
    slips: float = 0.0  # columns: share of wrong worked replies that slip in a column sum or the final number
    seed: int = 0

    @property
    def shapes(self) -> Shapes:
        return Shapes(self.worked, self.work_style, self.cross_style, self.slips)

    def validate_pairs(self) -> None:
        check_positive_fields(self, "digits", "val_pairs")
        check_range(self, "digits", high=MAX_DIGITS)
        check_range(self, "val_pairs", high=MAX_EXAMPLES)
        check_seeds(self, "seed")
        for share in ("worked", "cross_style", "slips"):
            if not 0.0 <= getattr(self, share) <= 1.0:
                raise ConfigError(f"{share} is a share of the pairs, in [0, 1], got {getattr(self, share)}")
        if self.work_style not in WORK_STYLES:
            raise ConfigError(f"work_style must be one of {', '.join(WORK_STYLES)}, got {self.work_style!r}")


@dataclass
class RewardConfig(PairsConfig):
    """Training a reward model (``quill reward train``); every field is a flag."""

    steps: int = 1500
    batch_size: int = 64  # pairs per step
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int = 50
    eval_interval: int = 250
    policy_pairs: int = 0  # arithmetic: questions whose wrong answers are the SFT model's own samples (half a batch)
    likelihood: bool = False  # add the backbone's log-likelihood of the reply (learned scale) to the score
    out_dir: str = ""
    log_to: str = ""  # experiment trackers, comma-separated: tensorboard, wandb, mlflow (quillgpt.tracking)

    def validate(self) -> None:
        self.validate_pairs()
        tracker_names(self.log_to)
        check_positive_fields(self, "steps", "batch_size", "eval_interval")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        check_range(self, "lr", above=0)
        check_range(self, "batch_size", high=MAX_WIDTH)
        for name in ("weight_decay", "warmup", "policy_pairs"):
            check_range(self, name, low=0)
        check_range(self, "policy_pairs", high=MAX_EXAMPLES)


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str


def read_pairs(path: str | Path) -> list[Pair]:
    out = []
    for number, record in read_jsonl(path):
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("prompt", "chosen",
                                                                                          "rejected")):
            raise DataError(f"{path} line {number}: expected an object with 'prompt', 'chosen' and 'rejected' strings")
        out.append(Pair(record["prompt"], record["chosen"], record["rejected"]))
    if len(out) < 2:
        raise DataError(f"{path} has {len(out)} pairs: a reward model needs at least 2 (one is held out)")
    return out


def wrong_reply(q: Question, rng: random.Random, wrong: str, worked: bool, shapes: Shapes) -> str:
    """A wrong reply with the number ``wrong``, bare or with its work shown. A ``columns`` addition
    goes wrong as a model's does instead: it misreads an operand digit (``misread_columns``) or,
    for a share ``slips``, slips in one column or in the final number (``slipped_columns``)."""
    if not worked:
        return wrong
    if shapes.style == "columns" and q.problem.op == "+":
        if shapes.slips and rng.random() < shapes.slips:
            return slipped_columns(q, rng)
        return misread_columns(q, rng)
    return show_work(wrong)


def question_pair(q: Question, rng: random.Random, shapes: Shapes) -> Pair:
    """The right answer against a wrong one; with probability ``shapes.worked`` both show their work.

    With probability ``shapes.cross`` the two replies differ in shape instead (either one shows its
    work, at random): a reward model that never compares a worked reply with a bare one has no
    reason to score a right worked answer above a wrong bare one, and PPO then drops the work.
    """
    wrong = wrong_answer(q, rng)
    if shapes.cross and rng.random() < shapes.cross:
        chosen_worked = rng.random() < 0.5
        return Pair(q.text, q.demonstration(chosen_worked, shapes.style),
                    wrong_reply(q, rng, wrong, not chosen_worked, shapes))
    worked = rng.random() < shapes.worked
    return Pair(q.text, q.demonstration(worked, shapes.style), wrong_reply(q, rng, wrong, worked, shapes))


def arithmetic_pairs(ops: str, digits: int, count: int, seed: int, split: str,
                     shapes: Shapes = Shapes()) -> list[Pair]:
    """``count`` pairs of distinct questions of ``split``: the right answer against a wrong one."""
    rng = random.Random(f"pairs:{seed}:{split}")
    return [question_pair(q, rng, shapes) for q in questions(ops, digits, count, seed, split)]


def fresh_pairs(rng: random.Random, ops: str, digits: int, count: int, shapes: Shapes = Shapes()) -> list[Pair]:
    return [question_pair(q, rng, shapes) for q in fresh_questions(rng, ops, digits, count)]


def split_pairs(config: PairsConfig) -> tuple[list[Pair] | None, list[Pair]]:
    """(train pairs, or None for fresh generated pairs every step; held-out pairs)."""
    if config.data == "arithmetic":
        try:
            return None, arithmetic_pairs(config.ops, config.digits, config.val_pairs, config.seed + 1, "val",
                                          config.shapes)
        except ValueError as exc:
            raise ConfigError(f"{exc} (--val-pairs)") from None
    pairs = read_pairs(config.data)
    random.Random(config.seed).shuffle(pairs)
    n_val = max(1, min(config.val_pairs, len(pairs) // 10))
    return pairs[n_val:], pairs[:n_val]


@torch.no_grad()
def policy_pairs(model: nn.Module, tokenizer: Tokenizer, asked: list[Question], samples: int = 4,
                 seed: int = 0, shapes: Shapes = Shapes()) -> list[Pair]:
    """Pairs whose rejected reply is a wrong answer the model itself samples (temperature 1).

    A reward model trained only on made-up near misses can score the policy's own mistakes
    highly, and PPO then climbs those scores instead of correctness; comparisons of model
    samples are also what InstructGPT's labelers ranked. The chosen reply is the right answer in
    the wrong one's shape (bare, or worked in its style), or with probability ``shapes.cross`` in
    the other shape (worked in ``shapes.style``), so that no shape is only ever the loser.
    """
    prompts = [prompt_ids(tokenizer, q.messages()) for q in asked for _ in range(samples)]
    rollouts = sample_replies(model, prompts, 32, end_id(tokenizer), generator=torch.Generator().manual_seed(seed))
    rng = random.Random(f"policy-pairs:{seed}")
    out, seen = [], set()
    for i, r in enumerate(rollouts):
        q = asked[i // samples]
        reply = tokenizer.decode(r.response[:-1]) if r.finished else ""
        if well_formed(reply) and not exact_match(q, reply) and (q, reply) not in seen:
            seen.add((q, reply))
            worked = shows_work(reply) != (shapes.cross > 0 and rng.random() < shapes.cross)
            out.append(Pair(q.text, q.demonstration(worked, work_style(reply) or shapes.style), reply))
    return out


def encode_reply(tokenizer: Tokenizer, prompt: str, reply: str) -> list[int]:
    return encode_conversation(tokenizer, [Message("user", prompt), Message("assistant", reply)]).ids


def reply_mask(starts: list[int], lengths: list[int], width: int, device: torch.device | str) -> torch.Tensor:
    """(B, width - 1), true at t where token t+1 belongs to the reply (from ``starts[b]`` to the end of row b)."""
    mask = torch.zeros((len(starts), width - 1), dtype=torch.bool)
    for row, (start, length) in enumerate(zip(starts, lengths, strict=True)):
        mask[row, start - 1: length - 1] = True
    return mask.to(device)


def score_replies(model: RewardModel, tokenizer: Tokenizer, replies: list[tuple[str, str]]) -> torch.Tensor:
    """The score of each (prompt, reply)."""
    device = next(model.parameters()).device
    rows = [encode_reply(tokenizer, prompt, reply) for prompt, reply in replies]
    starts = [len(prompt_ids(tokenizer, [Message("user", prompt)])) for prompt, _ in replies]
    ids, last = pad_rows(rows, tokenizer.special_ids["<|end|>"], model.block_size, device)
    return model(ids, last, reply_mask(starts, [len(r) for r in rows], ids.size(1), device))


def pad_rows(rows: list[list[int]], pad_id: int, block_size: int,
             device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids and each row's last index; a row longer than the context is an error."""
    longest = max(len(r) for r in rows)
    if longest > block_size:
        raise DataError(f"a conversation of {longest} tokens does not fit the context of {block_size}: "
                        "shorten the prompt or reply")
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids.to(device), torch.tensor([len(r) - 1 for r in rows], device=device)


def score_pairs(model: RewardModel, tokenizer: Tokenizer, pairs: list[Pair],
                batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (chosen, rejected) of every pair."""
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        scores = score_replies(model, tokenizer, [(p.prompt, p.chosen) for p in chunk] +
                               [(p.prompt, p.rejected) for p in chunk])
        chosen.append(scores[: len(chunk)])
        rejected.append(scores[len(chunk):])
    return torch.cat(chosen), torch.cat(rejected)


@torch.no_grad()
def evaluate_pairs(model: RewardModel, tokenizer: Tokenizer, pairs: list[Pair]) -> dict[str, float]:
    was_training = model.training
    model.eval()
    chosen, rejected = score_pairs(model, tokenizer, pairs)
    model.train(was_training)
    return {"accuracy": pairwise_accuracy(chosen, rejected), "loss": float(bradley_terry_loss(chosen, rejected)),
            "margin": float((chosen - rejected).mean())}


def train_reward_model(base: LoadedRun, config: RewardConfig, progress: bool = True) -> dict[str, Any]:
    """Train a reward model from ``base`` (an SFT run); save it in ``config.out_dir``; return the summary.

    The trackers of ``config.log_to`` get every metrics record (the reward model has no plot to send).
    """
    config.validate()
    require_chat_format(base.tokenizer, str(base.run_dir))
    pairs = split_pairs(config)  # bad pairs fail before the run directory is made
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    log = MetricsLog(Path(config.out_dir) / "metrics.jsonl")
    log.path.unlink(missing_ok=True)
    with log.tracking(config.log_to, {**dataclasses.asdict(config), "from": str(base.run_dir)}):
        return _train_reward_model(base, config, pairs, log, progress)


def _train_reward_model(base: LoadedRun, config: RewardConfig, pairs: tuple[list[Pair] | None, list[Pair]],
                        log: MetricsLog, progress: bool) -> dict[str, Any]:
    train_pairs, val_pairs = pairs
    own_train, own_val = [], []
    if config.policy_pairs and config.data == "arithmetic":  # sampled before the backbone starts to change
        own_train = policy_pairs(base.model, base.tokenizer,
                                 fresh_questions(random.Random(config.seed + 2), config.ops, config.digits,
                                                 config.policy_pairs), seed=config.seed, shapes=config.shapes)
        own_val = policy_pairs(base.model, base.tokenizer, questions(
            config.ops, config.digits, config.val_pairs, config.seed + 3, "val"), seed=config.seed + 1,
            shapes=config.shapes)
    torch.manual_seed(config.seed)
    model = RewardModel(base.model, likelihood=config.likelihood)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, config.warmup)))
    rng = random.Random(config.seed)
    history: list[dict[str, Any]] = []
    tic = time.perf_counter()
    bar = tqdm(range(1, config.steps + 1), desc="reward model", disable=not progress, leave=False)
    for step in bar:
        n_own = config.batch_size // 2 if own_train else 0
        n_new = config.batch_size - n_own
        batch = (fresh_pairs(rng, config.ops, config.digits, n_new, config.shapes)
                 if train_pairs is None
                 else [train_pairs[rng.randrange(len(train_pairs))] for _ in range(n_new)])
        batch += [own_train[rng.randrange(len(own_train))] for _ in range(n_own)]
        chosen, rejected = score_pairs(model, base.tokenizer, batch, batch_size=len(batch))
        loss = bradley_terry_loss(chosen, rejected)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % config.eval_interval == 0 or step == config.steps:
            held_out = evaluate_pairs(model, base.tokenizer, val_pairs)
            own = ({f"val_own_{k}": v for k, v in evaluate_pairs(model, base.tokenizer, own_val).items()}
                   if own_val else {})
            history.append({"step": step, "train_loss": loss.item(), "train_accuracy": pairwise_accuracy(
                chosen.detach(), rejected.detach()), **{f"val_{k}": v for k, v in held_out.items()}, **own,
                "seconds": time.perf_counter() - tic})
            log.append({"kind": "eval", **history[-1]})
            mine = f", on the model's own wrong answers {100 * own['val_own_accuracy']:.2f}%" if own else ""
            tqdm.write(f"  step {step:>5}: train loss {loss.item():.4f}, held-out pairwise accuracy "
                       f"{100 * held_out['accuracy']:.2f}%{mine} ({history[-1]['seconds']:.0f} s)")
    summary = {"steps": config.steps, "seconds": time.perf_counter() - tic, "val_pairs": len(val_pairs),
               "policy_pairs": len(own_train), "val_own_pairs": len(own_val),
               **history[-1], "history": history}
    save_reward_model(Path(config.out_dir), model, base, config, summary)
    return summary


def save_reward_model(run_dir: Path, model: RewardModel, base: LoadedRun, config: RewardConfig,
                      summary: dict[str, Any]) -> None:
    write_run_files(run_dir, base.config, base.tokenizer, {"dataset": f"reward:{config.data}",
                                                           "reward": dataclasses.asdict(config)})
    write_checkpoint(run_dir, config.steps, model.backbone.state_dict(),
                     extra_files={HEAD_FILE: model.head_state()})
    atomic_write_json(run_dir / INFO_FILE, {"base": str(base.run_dir), "config": dataclasses.asdict(config),
                                            "summary": summary})


def load_reward_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[RewardModel, Tokenizer]:
    """A reward model saved by ``quill reward train``, in eval mode."""
    run = load_run(run_dir, which="latest", device=device)
    head_path = run.checkpoint / HEAD_FILE
    if not head_path.is_file():
        raise CheckpointError(f"{run.run_dir} is not a reward model (no {HEAD_FILE}): train one with "
                              "quill reward train SFT_RUN")
    trained_with = run.data_info.get("reward", {})  # the RewardConfig, saved in data.json by save_reward_model
    model = RewardModel(run.model, likelihood=bool(trained_with.get("likelihood", False)))
    model.load_head_state(read_tensors(head_path, model.head_state()))
    return model.to(device).eval(), run.tokenizer


def describe(summary: dict[str, Any]) -> str:
    own = (f"; {100 * summary['val_own_accuracy']:.2f}% on {summary['val_own_pairs']} held-out pairs against the "
           "model's own wrong answers" if summary.get("val_own_pairs") else "")
    return (f"reward model: held-out pairwise accuracy {100 * summary['val_accuracy']:.2f}% on "
            f"{summary['val_pairs']} pairs (loss {summary['val_loss']:.4f}, mean margin {summary['val_margin']:.2f})"
            f"{own}; {summary['steps']} steps in {summary['seconds']:.0f} s")
