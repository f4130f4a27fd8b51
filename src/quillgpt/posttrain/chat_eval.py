"""How well a chat model answers held-out arithmetic questions: format and exact match.

Greedy replies (``top_k=1``, as nanochat's chat_eval decodes) to test-split questions; a reply
is *well formed* when it is a number and ends with ``<|end|>``, and *correct* when it is the
right number. SFT's target is the first, RL's the second.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from quillgpt.chat import end_id, prompt_ids
from quillgpt.posttrain.rollout import sample_replies
from quillgpt.tasks.questions import Question, exact_match, shows_work, well_formed
from quillgpt.tokenizers import Tokenizer

MAX_ANSWER_TOKENS = 32  # room for a worked answer ("units first 6521, so 1256") and <|end|> in a char vocabulary


@dataclass
class Answer:
    question: Question
    reply: str
    finished: bool

    @property
    def well_formed(self) -> bool:
        return self.finished and well_formed(self.reply)

    @property
    def correct(self) -> bool:
        return self.finished and exact_match(self.question, self.reply) == 1.0


def answer_all(model: nn.Module, tokenizer: Tokenizer, questions: list[Question],
               max_new_tokens: int = MAX_ANSWER_TOKENS) -> list[Answer]:
    stop = end_id(tokenizer)
    prompts = [prompt_ids(tokenizer, q.messages()) for q in questions]
    rollouts = sample_replies(model, prompts, max_new_tokens, stop, top_k=1)
    return [Answer(q, tokenizer.decode(r.response[:-1] if r.finished else r.response), r.finished)
            for q, r in zip(questions, rollouts, strict=True)]


def count_correct(model: nn.Module, tokenizer: Tokenizer, questions: list[Question], samples: int,
                  temperature: float, seed: int, max_new_tokens: int = MAX_ANSWER_TOKENS) -> list[int]:
    """Right replies among ``samples`` sampled at ``temperature`` for each question (for pass@k)."""
    stop = end_id(tokenizer)
    prompts = [prompt_ids(tokenizer, q.messages()) for q in questions]
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    rollouts = sample_replies(model, [p for p in prompts for _ in range(samples)], max_new_tokens, stop,
                              temperature=temperature, generator=generator)
    right = [Answer(questions[i // samples], tokenizer.decode(r.response[:-1] if r.finished else r.response),
                    r.finished).correct for i, r in enumerate(rollouts)]
    return [sum(right[i * samples:(i + 1) * samples]) for i in range(len(questions))]


@dataclass
class ChatReport:
    answers: list[Answer]

    @property
    def accuracy(self) -> float:
        return sum(a.correct for a in self.answers) / len(self.answers)

    @property
    def format_rate(self) -> float:
        return sum(a.well_formed for a in self.answers) / len(self.answers)

    @property
    def worked_rate(self) -> float:
        """Share of replies that show their work (either style: ``questions.WORKED``)."""
        return sum(a.finished and shows_work(a.reply) for a in self.answers) / len(self.answers)

    def by_operator(self) -> dict[str, float]:
        groups: dict[str, list[Answer]] = defaultdict(list)
        for a in self.answers:
            groups[a.question.problem.op].append(a)
        return {op: sum(a.correct for a in group) / len(group) for op, group in sorted(groups.items())}

    def to_dict(self) -> dict[str, object]:
        return {"n": len(self.answers), "accuracy": self.accuracy, "format": self.format_rate,
                "worked": self.worked_rate, "by_operator": self.by_operator()}

    def format(self, title: str, examples: int = 3) -> str:
        ops = ", ".join(f"{op} {100 * acc:.1f}%" for op, acc in self.by_operator().items())
        lines = [f"{title}: exact match {100 * self.accuracy:.2f}% ({ops}); well formed {100 * self.format_rate:.2f}%"
                 f"; showing work {100 * self.worked_rate:.1f}%"]
        wrong = [a for a in self.answers if not a.correct][:examples]
        lines += [f"  {a.question.text} -> {a.reply!r} (expected {a.question.answer})" for a in wrong]
        return "\n".join(lines)
