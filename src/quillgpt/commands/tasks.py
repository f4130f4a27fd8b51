"""The arithmetic commands of ``quill``: ``quill task eval`` and ``quill calc``.

    quill task eval RUN_DIR --task add --digits 3 --n 2000 --eval-seed S
    quill task eval RUN_DIR --digits 30 --n 1000 --eval-seed S   # past the trained length: exactly 30 digits
    quill calc RUN_DIR "123*45" [--show-work]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from quillgpt import argtypes
from quillgpt.checkpoint import LoadedRun, load_run
from quillgpt.commands.common import OneLineParser, add_run_flags
from quillgpt.config import MAX_DIGITS, TASK_OPS
from quillgpt.device import resolve_device
from quillgpt.errors import ConfigError
from quillgpt.posttrain.chat_eval import ChatReport, answer_all, count_correct
from quillgpt.tasks.arithmetic import (
    answer_text,
    check_steps,
    parse_answer,
    problems,
    prompt_text,
    readable_step,
    sample_text,
)
from quillgpt.tasks.dataset import arithmetic_tokenizer, extreme_problems
from quillgpt.tasks.exact_match import Report, attempt_all, complete, parse_expression
from quillgpt.tasks.exact_match import count_correct as count_correct_answers
from quillgpt.tasks.pass_at_k import PassAtK
from quillgpt.tasks.questions import questions

MAX_SAMPLES = 1024  # pass@k's cost is n x K sampled answers: a bound a typo cannot exceed
MAX_EVAL_DIGITS = 1000  # a test length; the run's block_size is the bound that binds (_check_fits)


def _arithmetic_run(run_dir: str, checkpoint: str, device: torch.device) -> LoadedRun:
    return _check_arithmetic(load_run(run_dir, which=checkpoint, device=device))


def _check_arithmetic(run: LoadedRun) -> LoadedRun:
    if not run.config.arithmetic.enabled or run.tokenizer != arithmetic_tokenizer(run.config.arithmetic.format):
        raise ConfigError(f"{run.run_dir} was not trained on an arithmetic task: train one with e.g. "
                          "quill train --preset add3-reversed")
    return run


def _chat_eval(run: LoadedRun, args: argparse.Namespace) -> int:
    """A chat model trained on the built-in questions (quill sft, quill rl): format and exact match."""
    trained = run.config.chat
    digits = args.digits or trained.chat_digits
    if digits > MAX_DIGITS:
        raise ConfigError(f"--digits {digits}: chat questions have at most {MAX_DIGITS} digits")
    n = 500 if args.n is None else args.n
    seed = 1000 if args.eval_seed is None else args.eval_seed
    if args.task:
        raise ConfigError("--task is for arithmetic-task runs; a chat run is asked what it was trained on")
    try:
        held_out = questions(trained.chat_ops, digits, n, seed, args.split)
    except ValueError as exc:
        raise ConfigError(f"{exc} (--n)") from None
    tic = time.perf_counter()
    report = ChatReport(answer_all(run.model, run.tokenizer, held_out))
    sampled = None if args.samples is None else PassAtK(
        count_correct(run.model, run.tokenizer, held_out, args.samples, args.temperature, args.sample_seed),
        args.samples, args.temperature)
    seconds = time.perf_counter() - tic
    if args.json:
        print(json.dumps({"run": str(run.run_dir), "checkpoint": run.checkpoint.name, "step": run.step,
                          "ops": trained.chat_ops, "digits": digits, "split": args.split, "eval_seed": seed,
                          "seconds": seconds,
                          **report.to_dict(), **_sampled_dict(sampled)}))
    else:
        print(report.format(f"chat questions ({trained.chat_ops}, up to {digits} digits), {args.split} half, "
                            f"eval seed {seed} "
                            f"({run.checkpoint.name}, {seconds:.1f} s)"))
        if sampled is not None:
            print(sampled.format())
    return 0


def _sampled_dict(sampled: PassAtK | None) -> dict[str, object]:
    return {} if sampled is None else {"sampled": sampled.to_dict()}


def cmd_task_eval(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    run = load_run(args.run_dir, which=args.checkpoint, device=device)
    if run.config.chat.builtin:
        return _chat_eval(run, args)
    _check_arithmetic(run)
    trained = run.config.arithmetic
    task = args.task or trained.task
    if task not in TASK_OPS:
        raise ConfigError(f"unknown task {task!r}: choose one of {', '.join(TASK_OPS)}")
    missing = set(TASK_OPS[task]) - set(trained.ops)
    if missing:
        raise ConfigError(f"{run.run_dir} was trained on {trained.task} ({trained.ops}), not on "
                          f"{''.join(sorted(missing))}: evaluate with --task {trained.task}")
    digits = args.digits or trained.digits
    seed = trained.eval_seed + 1 if args.eval_seed is None else args.eval_seed
    n = trained.eval_examples if args.n is None else args.n
    if n < 1 or digits < 1:
        raise ConfigError("--n and --digits must be >= 1")
    # Within the trained range the test set is like the training set (1..digits); past it, every problem
    # is of the untrained length, so the score at that length is not diluted by shorter ones.
    exact = digits > trained.digits
    _check_fits(run, TASK_OPS[task], digits)
    try:
        tests = problems(TASK_OPS[task], digits, n, seed, "test", exact=exact)
    except ValueError as exc:
        raise ConfigError(f"{exc} (--n)") from None
    position = run.config.model.position
    tic = time.perf_counter()
    report = Report(attempt_all(run.model, tests, trained.format, device, position=position))
    sampled = None if args.samples is None else PassAtK(
        count_correct_answers(run.model, tests, trained.format, device, args.samples, args.temperature,
                              args.sample_seed, position=position), args.samples, args.temperature)
    seconds = time.perf_counter() - tic
    if args.json:
        print(json.dumps({"run": str(run.run_dir), "checkpoint": run.checkpoint.name, "step": run.step, "task": task,
                          "digits": digits, "exact_digits": exact, "trained_digits": trained.digits,
                          "position": position, "format": trained.format, "eval_seed": seed, "seconds": seconds,
                          **report.to_dict(), **_sampled_dict(sampled)}))
    else:
        lengths = f"exactly {digits} digits (trained on 1..{trained.digits})" if exact else f"up to {digits} digits"
        print(report.format(f"{task}, operands {lengths}, {trained.format} format, eval seed {seed} "
                            f"({run.checkpoint.name}, {seconds:.1f} s)"))
        if sampled is not None:
            print(sampled.format())
    return 0


def _check_fits(run: LoadedRun, ops: str, digits: int) -> None:
    """A one-line error where a problem of ``digits`` digits and its answer do not fit the run's context
    (with a position scheme, block_size is also the size of the position table)."""
    block = run.config.model.block_size
    need = max(len(sample_text(p, run.config.arithmetic.format)) - 1 for p in extreme_problems(ops, digits))
    if need > block:
        fits = max((d for d in range(1, digits) if max(len(sample_text(p, run.config.arithmetic.format)) - 1
                                                       for p in extreme_problems(ops, d)) <= block), default=0)
        raise ConfigError(f"--digits {digits} needs a context of {need} tokens, but {run.run_dir} has block_size "
                          f"{block}: evaluate at most --digits {fits}, or train with a larger --block-size")


def cmd_calc(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    problem = parse_expression(args.expression)
    run = _arithmetic_run(args.run_dir, args.checkpoint, device)
    trained = run.config.arithmetic
    if problem.op not in trained.ops:
        raise ConfigError(f"{run.run_dir} was trained on {trained.ops} only, not {problem.op}: use a calc model")
    prompt = prompt_text(problem, trained.format)
    room = run.config.model.block_size - len(prompt)
    text = complete(run.model, [prompt], max(room, len(answer_text(problem, trained.format)) + 1), device,
                    position=run.config.model.position)[0]
    answer = parse_answer(text, problem.op, trained.format)
    value, remainder = problem.result
    truth = f"{value}" if remainder is None else f"{value} r {remainder}"
    if args.show_work and trained.format == "scratchpad":
        for step in filter(None, text.split("|", 1)[0].split(";")):
            print(f"  {readable_step(step):<28} (as written: {step})")
        print(f"  steps all true: {'yes' if check_steps(text) else 'no'}")
    if answer is None:
        print(f"{prompt}?  (the model wrote {text!r}, not an answer; Python: {truth})")
        return 1
    shown = f"{answer[0]}" if answer[1] is None else f"{answer[0]} r {answer[1]}"
    verdict = "correct" if answer == problem.result else f"WRONG, Python says {truth}"
    print(f"{prompt}{shown}  ({verdict})")
    return 0 if answer == problem.result else 1


def add_task_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``task eval`` and ``calc`` to the ``quill`` subcommands."""
    task = commands.add_parser("task", help="arithmetic tasks: exact-match evaluation")
    task_commands = task.add_subparsers(dest="task_command", required=True, parser_class=OneLineParser)
    task_eval = task_commands.add_parser("eval", help="greedy exact-match accuracy on held-out problems")
    task_eval.add_argument("run_dir")
    task_eval.add_argument("--task", help="add, sub, mul, div or calc (default: the run's task)")
    task_eval.add_argument("--digits", type=argtypes.whole(1, MAX_EVAL_DIGITS),
                           help="operands of 1..N digits (default: the run's); past the run's trained digits, "
                                "the longer operand has exactly N (a test of length generalization)")
    task_eval.add_argument("--n", type=argtypes.count, default=None,
                           help="held-out problems (default: the run's eval_examples, 2000 for add3/calc3)")
    task_eval.add_argument("--eval-seed", type=argtypes.seed, default=None,
                           help="draws the held-out set (default: the run's eval seed + 1, a set training never saw)")
    task_eval.add_argument("--split", choices=("val", "test"), default="test",
                           help="chat runs: the half of the held-out questions to score: val to choose settings on, "
                                "test (default) to report the chosen model once")
    task_eval.add_argument("--samples", type=argtypes.whole(1, MAX_SAMPLES), default=None, metavar="K",
                           help="also sample K answers a problem and report pass@1..K (unbiased estimator); "
                                "costs K times the greedy pass")
    task_eval.add_argument("--temperature", type=argtypes.real(above=0.0), default=1.0,
                           help="with --samples: the sampling temperature (default 1.0)")
    task_eval.add_argument("--sample-seed", type=argtypes.seed, default=0,
                           help="with --samples: seeds the sampling (default 0)")
    add_run_flags(task_eval)
    task_eval.add_argument("--json", action="store_true", help="print one JSON object")
    task_eval.set_defaults(func=cmd_task_eval)

    calc = commands.add_parser("calc", help="ask an arithmetic model, e.g. quill calc RUN_DIR \"123*45\"")
    calc.add_argument("run_dir")
    calc.add_argument("expression", help="two whole numbers and one of + - * / (x and ÷ work too)")
    calc.add_argument("--show-work", action="store_true", help="print the scratchpad steps, checked")
    add_run_flags(calc)
    calc.set_defaults(func=cmd_calc)
