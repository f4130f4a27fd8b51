"""Exact-match evaluation of an arithmetic model: greedy decoding, parsing, accuracy breakdowns.

Every problem is decoded greedily from its prompt (``123+456=``) until the sample delimiter
``\\n``; the answer is parsed in the run's format and compared with Python's. A problem
counts as correct only if the parsed answer equals the true one exactly. Accuracy is
reported overall, per operator, per operand length (digits of the longer operand) and per
carry count (carries of an addition, borrows of a subtraction).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby

import torch

from quillgpt.config import POSITION_SCHEMES
from quillgpt.errors import QuillError
from quillgpt.sample import check_sampling, sample_next, stream
from quillgpt.tasks.arithmetic import (
    ALPHABET,
    OPS,
    Problem,
    answer_text,
    check_steps,
    encode,
    parse_answer,
    prompt_text,
)
from quillgpt.tasks.position_schemes import AnswerPlaces, position_ids

NEWLINE = encode("\n")[0]


class TaskError(QuillError):
    """A problem the model cannot be asked (wrong operator, bad expression)."""


def carries(problem: Problem) -> int | None:
    """Column carries of an addition, borrows of a subtraction (of the larger minus the smaller)."""
    a, b = problem.a, problem.b
    if problem.op == "-":
        a, b = max(a, b), min(a, b)
    elif problem.op != "+":
        return None
    count, carry = 0, 0
    while a or b:
        x, y = a % 10, b % 10
        column = x + y + carry if problem.op == "+" else x - y - carry
        carry = 1 if column >= 10 or column < 0 else 0
        count += carry
        a, b = a // 10, b // 10
    return count


@dataclass
class Attempt:
    problem: Problem
    prompt: str  # what the model was given
    completion: str  # what the model wrote after the prompt, up to the delimiter
    correct: bool
    steps_ok: bool | None  # scratchpad: were all steps true equations?

    @property
    def length(self) -> int:
        return max(len(str(self.problem.a)), len(str(self.problem.b)))


@torch.no_grad()
def placed_stream(model: torch.nn.Module, prompts: list[str], max_new_tokens: int, scheme: str, device: torch.device,
                  temperature: float | None = None, generator: torch.Generator | None = None
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``sample.stream`` for a model whose position ids come from the problem (--position abacus|coupled):
    yields each new token (B, 1) with the logits it was drawn from (B, vocab); greedy without ``temperature``.

    The prompts get their ids from their text (offset 0: no offset at evaluation); each generated
    token gets its id from the answer before it (``AnswerPlaces``), so with a KV cache only the new
    token and its id go in. Stops at the context's end (block_size): ids and positions have no rows past it.
    """
    if temperature is not None:
        check_sampling(max_new_tokens, temperature, None, None)
    idx = torch.tensor([encode(p) for p in prompts], dtype=torch.long, device=device)
    ids = torch.tensor([position_ids(p, scheme) for p in prompts], dtype=torch.long, device=device)
    places = [AnswerPlaces(scheme) for _ in prompts]  # each prompt ends with "=": its answer starts next
    was_training = model.training
    model.eval()
    cache = model.new_kv_cache(len(prompts)) if getattr(model, "supports_kv_cache", False) else None
    fed, fed_ids = idx, ids
    try:
        for _ in range(min(max_new_tokens, model.block_size - idx.size(1))):
            if cache is None:  # the lecture's attention has no cache: the whole context every time
                logits, _ = model(idx, position_ids=ids)
            else:
                logits, _ = model(fed, kv_cache=cache, position_ids=fed_ids)
            last = logits[:, -1, :]
            token = (last.argmax(-1, keepdim=True) if temperature is None
                     else sample_next(last, temperature, generator=generator))
            fed = token
            fed_ids = torch.tensor([[place.next(ALPHABET[t])] for place, t in zip(places, token[:, 0].tolist(),
                                                                                   strict=True)],
                                   dtype=torch.long, device=device)
            idx, ids = torch.cat((idx, fed), dim=1), torch.cat((ids, fed_ids), dim=1)
            yield token, last
    finally:
        model.train(was_training)


@torch.no_grad()
def complete(model: torch.nn.Module, prompts: list[str], max_new_tokens: int, device: torch.device,
             temperature: float | None = None, generator: torch.Generator | None = None,
             position: str = "learned") -> list[str]:
    """Continuations of prompts of equal length, each cut at the first newline: greedy, or sampled at
    ``temperature`` (for pass@k). ``position``: the model's (a scheme decodes through ``placed_stream``)."""
    idx = torch.tensor([encode(p) for p in prompts], dtype=torch.long, device=device)
    rows: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    # greedy is top-k 1: the most likely token, always
    choice = {"top_k": 1} if temperature is None else {"temperature": temperature, "generator": generator}
    tokens = (stream(model, idx, max_new_tokens, **choice) if position not in POSITION_SCHEMES else
              (token for token, _ in placed_stream(model, prompts, max_new_tokens, position, device, temperature,
                                                   generator)))
    for token in tokens:
        for row, value in zip(rows, token[:, 0].tolist(), strict=True):
            row.append(value)
        done |= token[:, 0] == NEWLINE
        if bool(done.all()):
            break
    texts = ["".join(ALPHABET[i] for i in row) for row in rows]
    return [text.split("\n", 1)[0] for text in texts]


def attempt_all(model: torch.nn.Module, problems: list[Problem], fmt: str, device: torch.device,
                batch_size: int = 500, position: str = "learned") -> list[Attempt]:
    """Each problem decoded greedily (batched by prompt length, so positions line up).

    ``position``: the model's ``ModelConfig.position`` (abacus and coupled need ids from the problems)."""
    attempts: dict[Problem, Attempt] = {}
    for chunk, prompts, longest in _chunks_by_prompt_length(problems, fmt, batch_size):
        texts = complete(model, prompts, longest, device, position=position)
        for problem, prompt, text in zip(chunk, prompts, texts, strict=True):
            correct = parse_answer(text, problem.op, fmt) == problem.result
            attempts[problem] = Attempt(problem, prompt, text, correct,
                                        check_steps(text) if fmt == "scratchpad" else None)
    return [attempts[p] for p in problems]


def count_correct(model: torch.nn.Module, problems: list[Problem], fmt: str, device: torch.device, samples: int,
                  temperature: float, seed: int, batch_size: int = 500, position: str = "learned") -> list[int]:
    """Right answers among ``samples`` sampled at ``temperature`` for each problem (for pass@k)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    right: dict[Problem, int] = {}
    for chunk, prompts, longest in _chunks_by_prompt_length(problems, fmt, max(1, batch_size // samples)):
        texts = complete(model, [p for p in prompts for _ in range(samples)], longest, device, temperature, generator,
                         position)
        for i, problem in enumerate(chunk):
            right[problem] = sum(parse_answer(t, problem.op, fmt) == problem.result
                                 for t in texts[i * samples:(i + 1) * samples])
    return [right[p] for p in problems]


def _chunks_by_prompt_length(problems: list[Problem], fmt: str,
                             batch_size: int) -> Iterator[tuple[list[Problem], list[str], int]]:
    """Problems in batches of equal prompt length (so positions line up), with their prompts and the
    answer room each batch needs (its longest answer and the delimiter)."""
    prompts = {p: prompt_text(p, fmt) for p in problems}
    by_length = sorted(problems, key=lambda p: len(prompts[p]))
    for _, group in groupby(by_length, key=lambda p: len(prompts[p])):
        group = list(group)
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            yield chunk, [prompts[p] for p in chunk], max(len(answer_text(p, fmt)) for p in chunk) + 1


@dataclass
class Report:
    attempts: list[Attempt]

    @property
    def accuracy(self) -> float:
        return sum(a.correct for a in self.attempts) / max(1, len(self.attempts))

    def breakdown(self, key: str) -> dict[object, tuple[int, int]]:
        """{value: (correct, total)} grouped by ``op``, ``length`` or ``carries``."""
        out: dict[object, list[int]] = defaultdict(lambda: [0, 0])
        for a in self.attempts:
            value = a.problem.op if key == "op" else a.length if key == "length" else carries(a.problem)
            if value is None:
                continue
            out[value][0] += a.correct
            out[value][1] += 1
        return {k: (v[0], v[1]) for k, v in sorted(out.items(), key=lambda kv: str(kv[0]).zfill(3))}

    @property
    def steps_valid(self) -> float | None:
        """Share of scratchpad answers whose every step is a true equation (None: no scratchpad)."""
        steps = [a.steps_ok for a in self.attempts if a.steps_ok is not None]
        return sum(steps) / len(steps) if steps else None

    def wrong(self, limit: int) -> list[str]:
        """Up to ``limit`` wrong answers, prompt and completion as the model saw and wrote them."""
        return [f"{a.prompt}{a.completion}" for a in self.attempts if not a.correct][:limit]

    def to_dict(self) -> dict[str, object]:
        return {"n": len(self.attempts), "accuracy": self.accuracy,
                **{f"by_{key}": {str(k): {"correct": c, "n": n, "accuracy": c / n}
                                 for k, (c, n) in self.breakdown(key).items()}
                   for key in ("op", "length", "carries")},
                "steps_valid": self.steps_valid, "wrong_examples": self.wrong(10)}

    def format(self, title: str) -> str:
        lines = [f"{title}: {sum(a.correct for a in self.attempts)}/{len(self.attempts)} exact = "
                 f"{100 * self.accuracy:.2f}%"]
        for key, label in (("op", "operator"), ("length", "digits (longer operand)"), ("carries", "carries/borrows")):
            table = self.breakdown(key)
            if len(table) > 1 or key == "length":
                cells = ", ".join(f"{k}: {100 * c / n:.1f}% ({n})" for k, (c, n) in table.items())
                lines.append(f"  by {label}: {cells}")
        if self.steps_valid is not None:
            lines.append(f"  scratchpad steps all true: {100 * self.steps_valid:.1f}%")
        if self.wrong(3):
            lines.append("  e.g. wrong: " + "   ".join(self.wrong(3)))
        return "\n".join(lines)


_EXPRESSION = re.compile(r"^\s*(\d+)\s*([-+*/x×÷])\s*(\d+)\s*$")


def parse_expression(text: str) -> Problem:
    """``"123*45"`` (also ``x``, ``×``, ``÷``) as a Problem; a one-line TaskError otherwise."""
    match = _EXPRESSION.match(text)
    if not match:
        raise TaskError(f"cannot read {text!r}: write two whole numbers and one of + - * /, e.g. \"123*45\"")
    op = {"x": "*", "×": "*", "÷": "/"}.get(match.group(2), match.group(2))
    problem = Problem(int(match.group(1)), op, int(match.group(3)))
    if op == "/" and problem.b == 0:
        raise TaskError("division by zero: give a divisor of 1 or more")
    assert op in OPS
    return problem
