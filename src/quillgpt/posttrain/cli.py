"""The post-training commands of ``quill``.

    quill sft RUN_DIR --data FILE.jsonl|arithmetic     finetune on conversations (loss on replies only)
    quill chat RUN_DIR                                 talk to a chat model (history, streaming, /reset)
    quill reward train RUN_DIR --data FILE|arithmetic  a Bradley-Terry reward model on preference pairs
    quill reward score RM_DIR --prompt P --response R  its score for one reply (or --data: pair accuracy)
    quill rl ppo|grpo RUN_DIR --reward model:RM_DIR|task:arithmetic
    quill dpo RUN_DIR --data FILE|arithmetic           direct preference optimization
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from quillgpt import argtypes
from quillgpt.chat import Message, end_id, prompt_ids, require_chat_format
from quillgpt.checkpoint import load_run
from quillgpt.errors import ConfigError, SamplingError
from quillgpt.pretrained import load_init
from quillgpt.sample import check_sampling, stream
from quillgpt.tokenizers import StreamDecoder
from quillgpt.train import resolve_device


def cmd_sft(args: argparse.Namespace) -> int:
    """``quill train --init-from RUN_DIR --preset sft --chat-data DATA``: the one training loop."""
    from quillgpt.cli import cmd_train

    if args.resume:
        raise ConfigError("continue an SFT run with quill train --resume RUN_DIR")
    # Like reward/rl/dpo, the new run sits beside its source with a suffix (runs/cpu-small -> runs/cpu-small-sft),
    # so the next command can name it without reading this one's output; an existing run there is never reused.
    out_dir = getattr(args, "train.out_dir", None) or ""
    setattr(args, "train.out_dir", _out_dir(out_dir, args.run_dir, "sft", args.overwrite))
    args.init_from, args.config = args.run_dir, None
    args.preset, args.preset_given = "sft", True
    setattr(args, "chat.chat_data", args.data)
    return cmd_train(args)


class Conversation:
    """A chat's history, rendered to fit the model's context by dropping the oldest turns."""

    def __init__(self, tokenizer: Any, block_size: int, system: str | None, reply_room: int) -> None:
        self.tokenizer, self.block_size, self.reply_room = tokenizer, block_size, reply_room
        self.system = [Message("system", system)] if system else []
        self.turns: list[Message] = []

    def reset(self) -> None:
        self.turns = []

    def prompt(self, user_text: str) -> list[int]:
        self.tokenizer.encode(user_text)  # an unknown character fails here, before the turn is kept
        self.turns.append(Message("user", user_text))
        while True:
            ids = prompt_ids(self.tokenizer, self.system + self.turns)
            if len(ids) + self.reply_room <= self.block_size:
                return ids
            if len(self.turns) == 1:
                self.turns.pop()
                raise SamplingError(f"the message is {len(ids)} tokens with its chat tokens; the model's context is "
                                    f"{self.block_size} with {self.reply_room} left for the reply: write less")
            self.turns = self.turns[2:]  # forget the oldest exchange


def cmd_chat(args: argparse.Namespace) -> int:
    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    device = resolve_device(args.device)
    run = load_run(args.run_dir, which=args.checkpoint, device=device)
    require_chat_format(run.tokenizer, str(run.run_dir))
    stop = end_id(run.tokenizer)
    block = run.config.model.block_size
    room = min(args.max_new_tokens, block // 2)
    chat = Conversation(run.tokenizer, block, args.system, room)
    generator = torch.Generator(device=device)
    generator.manual_seed(args.seed) if args.seed is not None else generator.seed()
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {run.run_dir} ({run.model.num_parameters():,} parameters, context {block} tokens). "
              "/reset forgets the conversation, /quit or Ctrl-D ends.")
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            return 0
        if line.strip() in ("/quit", "/exit"):
            return 0
        if line.strip() == "/reset":
            chat.reset()
            print("(conversation forgotten)")
            continue
        if not line.strip():
            continue
        try:
            ids = chat.prompt(line)
        except SamplingError as exc:
            print(f"quill: {exc}", file=sys.stderr)
            continue
        reply = _stream_reply(run.model, run.tokenizer, ids, room, stop, args, generator, interactive)
        chat.turns.append(Message("assistant", reply))


def _stream_reply(model: Any, tokenizer: Any, ids: list[int], max_new_tokens: int, stop: int,
                  args: argparse.Namespace, generator: torch.Generator, interactive: bool) -> str:
    sys.stdout.write("bot> " if interactive else "")
    decoder, reply = StreamDecoder(tokenizer), []
    idx = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)
    for token in stream(model, idx, max_new_tokens, args.temperature, args.top_k, args.top_p, generator):
        token_id = int(token[0, 0])
        if token_id == stop:
            break
        reply.append(token_id)
        sys.stdout.write(decoder.feed([token_id]))
        sys.stdout.flush()
    sys.stdout.write(decoder.flush() + "\n")
    return tokenizer.decode(reply)


def _out_dir(given: str, base: str, suffix: str, overwrite: bool) -> str:
    """The output run directory (default: beside the base run, with a suffix); never reuses a run silently."""
    out = Path(given) if given else Path(base).parent / f"{Path(base).name}-{suffix}"
    if (out / "config.json").exists() and not overwrite:
        raise ConfigError(f"{out} already holds a run: choose another --out-dir, or pass --overwrite to replace it")
    return str(out)


def _configured(args: argparse.Namespace, cls: type, section: str, suffix: str, defaults: dict | None = None) -> Any:
    """The command's config dataclass from its flags (over ``defaults``), validated, with its output directory."""
    from quillgpt.cli import dataclass_overrides

    config = cls(**{**(defaults or {}), **dataclass_overrides(args, cls, section)})
    config.validate()
    config.out_dir = _out_dir(config.out_dir, args.run_dir, suffix, args.overwrite)
    return config


def _chat_run(run_dir: str) -> Any:
    """The SFT run to start from (its best checkpoint); it must have the chat tokens."""
    run = load_init(run_dir)
    require_chat_format(run.tokenizer, str(run.run_dir))
    return run


def _print_outcome(summary: dict[str, Any], kl_what: str) -> None:
    print(f"validation exact match {100 * summary['start_accuracy']:.2f}% -> {100 * summary['accuracy']:.2f}% "
          f"({summary['held_out']} questions); KL to the reference {summary['kl']:.3f} nats per reply ({kl_what}); "
          f"{summary['seconds']:.0f} s")


def cmd_reward_train(args: argparse.Namespace) -> int:
    from quillgpt.posttrain.reward import RewardConfig, describe, train_reward_model

    config = _configured(args, RewardConfig, "reward", "rm")
    base = _chat_run(args.run_dir)
    print(f"training a reward model from {base.run_dir} ({base.checkpoint.name}) on {config.data} pairs")
    summary = train_reward_model(base, config, progress=not args.no_progress)
    print(describe(summary))
    print(f"saved {config.out_dir}; next: quill rl ppo {args.run_dir} --reward model:{config.out_dir}")
    return 0


def cmd_reward_score(args: argparse.Namespace) -> int:
    from quillgpt.posttrain.reward import evaluate_pairs, load_reward_model, read_pairs, score_replies

    model, tokenizer = load_reward_model(args.rm_dir, resolve_device(args.device))
    if args.data:
        result = evaluate_pairs(model, tokenizer, read_pairs(args.data))
        print(f"pairwise accuracy {100 * result['accuracy']:.2f}% (loss {result['loss']:.4f}, mean margin "
              f"{result['margin']:.2f}) on {args.data}")
        return 0
    if args.prompt is None or args.response is None:
        raise ConfigError("give --prompt and --response (a score for one reply), or --data PAIRS.jsonl")
    with torch.no_grad():
        score = float(score_replies(model, tokenizer, [(args.prompt, args.response)]))
    print(f"{score:.4f}")
    return 0


# PPO's defaults where they differ from GRPO's: one batch of rollouts feeds 4 epochs x 4 minibatches, and a
# stronger KL leash that adapts within tens of steps (a learned reward is easy to exploit: with beta 0.05
# and horizon 10,000 the policy drifted to KL 3 nats per reply and halved its accuracy while the score held).
PPO_DEFAULTS = {"prompts_per_step": 64, "samples_per_prompt": 2, "epochs": 4, "minibatches": 4,
                "kl_coef": 0.3, "kl_target": 0.5, "kl_horizon": 1000.0, "lr": 5e-5}


def cmd_rl(args: argparse.Namespace) -> int:
    from quillgpt.posttrain.rl import RLConfig, RLRun

    if args.algorithm == "ppo" and getattr(args, "rl.reward", None) is None:
        raise ConfigError("PPO needs a reward: --reward model:RM_DIR (quill reward train) or task:arithmetic")
    config = _configured(args, RLConfig, "rl", args.algorithm, PPO_DEFAULTS if args.algorithm == "ppo" else {})
    from quillgpt.posttrain.grpo import GRPO
    from quillgpt.posttrain.ppo import PPO

    algorithm = PPO if args.algorithm == "ppo" else GRPO
    policy = _chat_run(args.run_dir)
    policy.model.to(resolve_device(args.device))
    run = RLRun(policy, config, algorithm, progress=not args.no_progress)
    print(f"{args.algorithm} from {policy.run_dir} ({policy.checkpoint.name}), reward {config.reward}: "
          f"{config.steps} steps of {config.prompts_per_step} questions x {config.samples_per_prompt} samples")
    summary = run.train()
    target = f", target {config.kl_target:g}" if config.kl_target > 0 else ""
    _print_outcome(summary, f"mean of the last 10 steps{target}; {summary['kl_held_out']:.3f} on validation questions")
    print(summary["final_report"])
    print(f"saved {config.out_dir} (curves: {config.out_dir}/rl.png); next: quill chat {config.out_dir}")
    return 0


def cmd_dpo(args: argparse.Namespace) -> int:
    from quillgpt.posttrain.dpo import DPOConfig, describe_pairs, train_dpo

    config = _configured(args, DPOConfig, "dpo", "dpo")
    policy = _chat_run(args.run_dir)
    print(f"dpo from {policy.run_dir} ({policy.checkpoint.name}) on {config.data} pairs, beta {config.beta}")
    summary = train_dpo(policy, config, progress=not args.no_progress)
    _print_outcome(summary, "on sampled replies to validation questions")
    print(describe_pairs(summary))
    print(f"saved {config.out_dir}; next: quill chat {config.out_dir}")
    return 0


POLICY_RUN_HELP = "the SFT run to start the policy (and the frozen reference) from"


def _from_run(parser: argparse.ArgumentParser, run_help: str) -> argparse.ArgumentParser:
    """The arguments of every command that starts from a run and writes a new one."""
    parser.add_argument("run_dir", help=run_help)
    parser.add_argument("--overwrite", action="store_true", help="start over in an --out-dir that holds a run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def add_posttrain_commands(commands: Any) -> None:
    """Add ``sft``, ``chat``, ``reward``, ``rl`` and ``dpo`` to the ``quill`` subcommands."""
    from quillgpt.cli import OneLineParser, add_config_flags, add_dataclass_flags, add_run_flags

    sft = commands.add_parser("sft", help="finetune a trained run on conversations (loss on the replies only)")
    _from_run(sft, "the pretrained run to start from (its best checkpoint)")
    sft.add_argument("--data", default="arithmetic",
                     help="a JSONL file ({\"messages\": [...]} or {\"prompt\", \"response\"} per line), or "
                          "arithmetic: generated questions like 'What is 17 plus 26?' (default)")
    sft.add_argument("--stop-at", type=argtypes.count, metavar="STEP",
                     help="save a checkpoint and exit after this step (continue with quill train --resume)")
    sft.set_defaults(func=cmd_sft, resume=None)
    add_config_flags(sft, skip={"chat_data"})  # --data names the conversations; a second flag for them would clash

    chat = commands.add_parser("chat", help="talk to a chat model: history, streaming, /reset")
    chat.add_argument("run_dir")
    chat.add_argument("--system", help="a system message that starts the conversation")
    chat.add_argument("--max-new-tokens", type=argtypes.count, default=200, help="longest reply")
    chat.add_argument("--temperature", type=float, default=0.8)
    chat.add_argument("--top-k", type=argtypes.count, default=None)
    chat.add_argument("--top-p", type=float, default=None)
    chat.add_argument("--seed", type=argtypes.seed, default=None)
    add_run_flags(chat)
    chat.set_defaults(func=cmd_chat)

    from quillgpt.posttrain.reward import RewardConfig
    from quillgpt.posttrain.rl import RLConfig

    reward = commands.add_parser("reward", help="reward models: train one on preference pairs, score replies")
    reward_commands = reward.add_subparsers(dest="reward_command", required=True, parser_class=OneLineParser)
    reward_train = reward_commands.add_parser("train", help="a Bradley-Terry reward model from an SFT run")
    _from_run(reward_train, "the SFT run whose weights start the backbone")
    add_dataclass_flags(reward_train, RewardConfig, "reward", "reward model config", frozenset())
    reward_train.set_defaults(func=cmd_reward_train)
    reward_score = reward_commands.add_parser("score", help="score a reply, or pairwise accuracy on a pairs file")
    reward_score.add_argument("rm_dir")
    reward_score.add_argument("--prompt")
    reward_score.add_argument("--response")
    reward_score.add_argument("--data", help="a JSONL file of {prompt, chosen, rejected}: print pairwise accuracy")
    reward_score.add_argument("--device", default="cpu")
    reward_score.set_defaults(func=cmd_reward_score)

    rl = commands.add_parser("rl", help="reinforcement learning from a reward: ppo or grpo")
    rl.add_argument("algorithm", choices=["ppo", "grpo"])
    _from_run(rl, POLICY_RUN_HELP)
    rl.add_argument("--device", default="cpu")
    add_dataclass_flags(rl, RLConfig, "rl", "RL config (PPO changes some defaults, see quill rl --help)",
                        frozenset())
    rl.set_defaults(func=cmd_rl)

    from quillgpt.posttrain.dpo import DPOConfig

    dpo = commands.add_parser("dpo", help="direct preference optimization on preference pairs")
    _from_run(dpo, POLICY_RUN_HELP)
    add_dataclass_flags(dpo, DPOConfig, "dpo", "DPO config", frozenset())
    dpo.set_defaults(func=cmd_dpo)
