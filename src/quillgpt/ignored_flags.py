"""Flags a run would silently ignore, and the one-line refusal for each (``RunConfig.replace``).

Every config field is also a ``quill train`` flag, but not every field acts on every run:
``--decay-frac`` shapes only the wsd schedule, ``--digits`` only an arithmetic task. A flag
given where it does nothing is refused, naming the fix, instead of being dropped. Model fields
are checked against the run's architecture (``MODEL_FIELDS_READ_BY``); with ``--init-from`` the
commands apply the flags to the pretrained run's model, so its architecture is the one checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quillgpt.config import RunConfig


def _needs_task(c: RunConfig, flag: str) -> str:
    if c.chat.enabled:  # a chat run's questions have their own flags
        return (f"{flag} sets up an arithmetic task, but this is a chat run: its built-in questions take "
                f"--chat-ops, --chat-digits, --chat-examples and --chat-seed; drop {flag}")
    return (f"{flag} sets up an arithmetic task, and this run has none: add --task (add, sub, mul, div or calc) "
            f"or drop {flag}")


def _needs_builtin_questions(c: RunConfig, flag: str) -> str:
    return (f"{flag} shapes the built-in arithmetic questions, and this run has none (--chat-data is "
            f"{c.chat.chat_data or 'not set'}): use --chat-data arithmetic (quill sft: --data arithmetic) "
            f"or drop {flag}")


def _not_constant(c: RunConfig, flag: str) -> str:
    return (f"{flag} shapes the cosine and wsd schedules, but this run's is constant (lr held at --lr): "
            f"add --lr-schedule cosine or wsd, or drop {flag}")


def _not_a_corpus_run(c: RunConfig, flag: str) -> str:
    data = (f"the arithmetic task --task {c.arithmetic.task} (its problems are generated)" if c.arithmetic.enabled
            else f"the conversations of --chat-data {c.chat.chat_data}")
    return f"{flag} names a text corpus, but this run trains on {data}: drop {flag}"


# model field -> the architectures (models/: gpt.py, bigram.py, zoo/) that read it; arch, block_size and
# vocab_size act on every model. tests/test_config.py checks this table against the models themselves.
_ZOO_STACKS = ("cnn", "rnn", "lstm", "gru")  # n_layer layers of n_embd channels
MODEL_FIELDS_READ_BY: dict[str, tuple[str, ...]] = {
    "n_layer": ("gpt", *_ZOO_STACKS),
    "n_embd": ("gpt", "mlp", *_ZOO_STACKS),
    "context_len": ("mlp",),
    **{name: ("gpt",) for name in ("n_head", "dropout", "attention", "norm", "position", "activation",
                                   "tie_weights", "qk_norm", "qkv_bias", "head_bias")},
}
# What every other architecture is anyway (no dropout, no QK-norm, ...): asking for it asks for nothing
# that is ignored, as --no-pack does not on a text run; quill zoo passes dropout 0 to every model.
_FEATURE_OFF: dict[str, object] = {"dropout": 0.0, "qk_norm": False, "qkv_bias": False, "tie_weights": False}


def _model_rule(name: str) -> tuple[Callable[[RunConfig], bool], Callable[[RunConfig, str], str]]:
    readers = MODEL_FIELDS_READ_BY[name]

    def acts(c: RunConfig) -> bool:
        value = getattr(c.model, name)
        return c.model.arch in readers or (name in _FEATURE_OFF and value == _FEATURE_OFF[name])

    def refusal(c: RunConfig, flag: str) -> str:
        return (f"{flag} is read only by arch {', '.join(readers)}, and this run's arch is {c.model.arch}, "
                f"which has no use for it: drop {flag}")

    return acts, refusal


_TASK = (lambda c: c.arithmetic.enabled, _needs_task)
_BUILTIN = (lambda c: c.chat.builtin, _needs_builtin_questions)
# (section, field) -> (does the field act on this run?, the one-line refusal when it does not)
IGNORED_UNLESS: dict[tuple[str, str], tuple[Callable[[RunConfig], bool], Callable[[RunConfig, str], str]]] = {
    ("train", "decay_frac"): (lambda c: c.train.lr_schedule == "wsd", lambda c, flag: (
        f"{flag} is the decay share of --lr-schedule wsd, but this run's schedule is {c.train.lr_schedule}: "
        f"add --lr-schedule wsd or drop {flag}")),
    ("train", "min_lr"): (lambda c: c.train.lr_schedule != "constant", _not_constant),
    ("train", "warmup_iters"): (lambda c: c.train.lr_schedule != "constant", _not_constant),
    ("train", "dataset"): (lambda c: not (c.arithmetic.enabled or c.chat.enabled), _not_a_corpus_run),
    ("train", "muon_lr"): (lambda c: c.train.optimizer == "muon", lambda c, flag: (
        f"{flag} is the learning rate of Muon's matrices, but this run's optimizer is {c.train.optimizer}: "
        f"add --optimizer muon or drop {flag}")),
    **{("arithmetic", name): _TASK
       for name in ("digits", "format", "train_examples", "data_seed", "eval_examples", "eval_seed")},
    ("arithmetic", "pack"): (lambda c: c.arithmetic.enabled or not c.arithmetic.pack, lambda c, flag: (
        f"{flag} packs arithmetic problems into rows and needs --task (a text run's rows are already full): "
        f"drop {flag}")),
    **{("chat", name): _BUILTIN for name in ("chat_ops", "chat_digits", "chat_examples", "chat_worked")},
    ("chat", "chat_work_style"): (lambda c: c.chat.builtin and c.chat.chat_worked > 0, lambda c, flag: (
        _needs_builtin_questions(c, flag) if not c.chat.builtin else
        f"{flag} styles the worked demonstrations, but --chat-worked is 0 (none is worked): "
        f"add --chat-worked (e.g. 0.4) or drop {flag}")),
    **{("model", name): _model_rule(name) for name in MODEL_FIELDS_READ_BY},
}
