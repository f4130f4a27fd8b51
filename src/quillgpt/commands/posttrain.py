"""The post-training commands of ``quill``: a chat model from a pretrained run, then better answers.

    quill sft RUN_DIR --data FILE.jsonl|arithmetic     finetune on conversations (loss on replies only)
    quill chat RUN_DIR                                 talk to a chat model (history, streaming, /reset)
    quill reward train RUN_DIR --data FILE|arithmetic  a Bradley-Terry reward model on preference pairs
    quill reward score RM_DIR --prompt P --response R  its score for one reply (or --data: pair accuracy)
    quill rl ppo|grpo RUN_DIR --reward model:RM_DIR|task:arithmetic
    quill rft RUN_DIR                                  rejection-sampling finetuning: SFT on its own right replies
    quill dpo RUN_DIR --data FILE|arithmetic           direct preference optimization
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from quillgpt import argtypes
from quillgpt.chat import Message, end_id, prompt_ids, require_chat_format
from quillgpt.checkpoint import LoadedRun, load_run
from quillgpt.commands.common import (
    OneLineParser,
    add_config_flags,
    add_dataclass_flags,
    add_run_flags,
    config_overrides,
    dataclass_overrides,
    new_run_dir,
)
from quillgpt.commands.training import run_training
from quillgpt.config import preset
from quillgpt.device import resolve_device
from quillgpt.errors import ConfigError, SamplingError
from quillgpt.posttrain.dpo import DPOConfig, describe_pairs, train_dpo
from quillgpt.posttrain.grpo import GRPO
from quillgpt.posttrain.ppo import PPO, PPO_ONLY, PPOConfig
from quillgpt.posttrain.reward import (
    RewardConfig,
    describe,
    evaluate_pairs,
    load_reward_model,
    read_pairs,
    score_replies,
    train_reward_model,
)
from quillgpt.posttrain.rft import RFTConfig, RFTRun, describe_rounds
from quillgpt.posttrain.rl import GRPO_ONLY, RLConfig, RLRun
from quillgpt.pretrained import init_model_config, load_init
from quillgpt.sample import check_sampling, stream
from quillgpt.tokenizers import StreamDecoder


def cmd_sft(args: argparse.Namespace) -> int:
    """The sft preset, finetuned from RUN_DIR on --data, through the same training loop as quill train."""
    # Like reward/rl/dpo, the new run sits beside its source with a suffix (runs/cpu-small -> runs/cpu-small-sft),
    # so the next command can name it without reading this one's output; an existing run there is never reused.
    out_dir = new_run_dir(getattr(args, "train.out_dir", None) or "", args.run_dir, "sft", args.overwrite)
    overrides = config_overrides(args)
    overrides["train"]["out_dir"] = out_dir
    overrides["chat"]["chat_data"] = args.data
    config = preset("sft")
    init = load_init(args.run_dir)
    config.model = init_model_config(init, overrides["model"])  # the model's shape comes from RUN_DIR
    config = config.replace(overrides)  # after the swap: a model flag is checked against RUN_DIR's model
    config.validate()
    return run_training(config, "sft", init=init, overwrite=args.overwrite, progress=not args.no_progress,
                        stop_at=args.stop_at)


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


def _configured(args: argparse.Namespace, cls: type, section: str, suffix: str) -> Any:
    """The command's config dataclass from its flags, validated, with its output directory."""
    config = cls(**dataclass_overrides(args, cls, section))
    config.validate()
    config.out_dir = new_run_dir(config.out_dir, args.run_dir, suffix, args.overwrite)
    return config


def _chat_run(run_dir: str) -> LoadedRun:
    """The SFT run to start from (its best checkpoint); it must have the chat tokens."""
    run = load_init(run_dir)
    require_chat_format(run.tokenizer, str(run.run_dir))
    return run


def _print_outcome(summary: dict[str, Any], kl_what: str) -> None:
    print(f"validation exact match {100 * summary['start_accuracy']:.2f}% -> {100 * summary['accuracy']:.2f}% "
          f"({summary['held_out']} questions); KL to the reference {summary['kl']:.3f} nats per reply ({kl_what}); "
          f"{summary['seconds']:.0f} s")


def _print_sampling(summary: dict[str, Any], config: RLConfig) -> None:
    """How many of the drawn groups carried no signal (all rewards equal), and what was done about it."""
    line = f"groups whose rewards were all equal: {100 * summary['all_equal']:.1f}% of those drawn"
    if config.dynamic_sampling:
        line += (f", dropped (dynamic sampling); {summary['short_steps']} steps trained on fewer than "
                 f"{config.prompts_per_step} groups, {summary['skipped_steps']} had none")
    print(line)


def _print_best(summary: dict[str, Any], out_dir: str, unit: str, last: int) -> None:
    """The val-chosen checkpoint, and how to score it on the test half."""
    where = " (the start)" if summary["best_step"] == 0 else " (the last)" if summary["best_step"] == last else ""
    print(f"best validation exact match {100 * summary['best_accuracy']:.2f}% at {unit} {summary['best_step']}{where}, "
          f"kept as the best checkpoint; score it on the test half: quill task eval {out_dir} --checkpoint best")


def cmd_reward_train(args: argparse.Namespace) -> int:
    config = _configured(args, RewardConfig, "reward", "rm")
    base = _chat_run(args.run_dir)
    print(f"training a reward model from {base.run_dir} ({base.checkpoint.name}) on {config.data} pairs")
    summary = train_reward_model(base, config, progress=not args.no_progress)
    print(describe(summary))
    print(f"saved {config.out_dir}; next: quill rl ppo {args.run_dir} --reward model:{config.out_dir}")
    return 0


def cmd_reward_score(args: argparse.Namespace) -> int:
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


def cmd_rl(args: argparse.Namespace) -> int:
    if args.algorithm == "ppo" and getattr(args, "rl.reward", None) is None:
        raise ConfigError("PPO needs a reward: --reward model:RM_DIR (quill reward train) or task:arithmetic")
    # The parser has PPOConfig's flags (one parser for both): each algorithm refuses the other's own.
    others, why, instead = ((PPO_ONLY, "a PPO setting (GRPO has no value model)", "quill rl ppo")
                            if args.algorithm == "grpo" else
                            (GRPO_ONLY, "a GRPO setting (PPO's advantages come from its value model)", "quill rl grpo"))
    given = [name for name in others if getattr(args, f"rl.{name}", None) is not None]
    if given:
        raise ConfigError(f"--{given[0].replace('_', '-')} is {why}: drop it, or use {instead}")
    config = _configured(args, PPOConfig if args.algorithm == "ppo" else RLConfig, "rl", args.algorithm)
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
    _print_sampling(summary, config)
    print(f"saved {config.out_dir} (curves: {config.out_dir}/rl.png); next: quill chat {config.out_dir}")
    _print_best(summary, config.out_dir, "step", config.steps)
    return 0


def cmd_rft(args: argparse.Namespace) -> int:
    config = _configured(args, RFTConfig, "rft", "rft")
    policy = _chat_run(args.run_dir)
    policy.model.to(resolve_device(config.device))
    rounds = f"{config.rounds} round{'s' if config.rounds != 1 else ''}"
    print(f"rft from {policy.run_dir} ({policy.checkpoint.name}): {rounds} of {config.questions} "
          f"questions x {config.samples} samples, the right replies kept, {config.sft_steps} SFT steps each")
    summary = RFTRun(policy, config, progress=not args.no_progress).train()
    print(describe_rounds(summary))
    print(f"validation exact match {100 * summary['start_accuracy']:.2f}% -> {100 * summary['accuracy']:.2f}% "
          f"({summary['held_out']} questions); {summary['seconds']:.0f} s")
    print(summary["final_report"])
    print(f"saved {config.out_dir} (the kept replies: {config.out_dir}/rounds); next: quill chat {config.out_dir}")
    _print_best(summary, config.out_dir, "round", config.rounds)
    return 0


def cmd_dpo(args: argparse.Namespace) -> int:
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


def add_posttrain_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``sft``, ``chat``, ``reward``, ``rl``, ``rft`` and ``dpo`` to the ``quill`` subcommands."""
    sft = commands.add_parser("sft", help="finetune a trained run on conversations (loss on the replies only)")
    _from_run(sft, "the pretrained run to start from (its best checkpoint)")
    sft.add_argument("--data", default="arithmetic",
                     help="a JSONL file ({\"messages\": [...]} or {\"prompt\", \"response\"} per line), or "
                          "arithmetic: generated questions like 'What is 17 plus 26?' (default)")
    sft.add_argument("--stop-at", type=argtypes.count, metavar="STEP",
                     help="save a checkpoint and exit after this step (continue with quill train --resume)")
    sft.set_defaults(func=cmd_sft)
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
    add_dataclass_flags(rl, PPOConfig, "rl", "RL config (defaults: RLConfig for grpo, PPOConfig for ppo; "
                        "gamma, lam, vf-coef, value-clip, value-lr and center-scores are PPO's only; "
                        "scale-advantages, loss-type and dynamic-sampling GRPO's only)", frozenset())
    rl.set_defaults(func=cmd_rl)

    rft = commands.add_parser("rft", help="rejection-sampling finetuning: sample, keep the right replies, SFT, repeat")
    _from_run(rft, POLICY_RUN_HELP.replace(" (and the frozen reference)", ""))
    add_dataclass_flags(rft, RFTConfig, "rft", "RFT config", frozenset())
    rft.set_defaults(func=cmd_rft)

    dpo = commands.add_parser("dpo", help="direct preference optimization on preference pairs")
    _from_run(dpo, POLICY_RUN_HELP)
    add_dataclass_flags(dpo, DPOConfig, "dpo", "DPO config", frozenset())
    dpo.set_defaults(func=cmd_dpo)
