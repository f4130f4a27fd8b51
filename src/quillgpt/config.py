"""Typed configuration: the model, the training run, and named presets.

The CLI maps one flag onto each field (``--n-embd`` sets ``ModelConfig.n_embd``), and a
run directory stores both dataclasses as JSON. Loading JSON goes through ``from_dict``,
which rejects unknown keys and wrong types, so a hand-edited config fails loudly.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from quillgpt.errors import ConfigError
from quillgpt.ignored_flags import IGNORED_UNLESS

ARCHS = ("bigram", "gpt", "mlp", "cnn", "rnn", "lstm", "gru")  # mlp..gru: the model zoo (models/zoo/)
ATTENTIONS = ("classic", "fused")
NORMS = ("torch", "scratch", "rms")
POSITION_SCHEMES = ("abacus", "coupled")  # position ids from the digits' places (tasks/position_schemes.py)
POSITIONS = ("learned", "rope", *POSITION_SCHEMES)
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swiglu")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
LR_SCHEDULES = ("cosine", "constant", "wsd")
OPTIMIZERS = ("adamw", "muon")
TASK_OPS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "calc": "+-*/"}  # arithmetic task -> operators
TASK_FORMATS = ("plain", "reversed", "scratchpad", "hinted")
WORK_STYLES = ("units", "columns")
TRACKERS = ("tensorboard", "wandb", "mlflow")  # --log-to: experiment trackers (quillgpt.tracking)
# Upper bounds. Past them a value cannot work on any machine quill is for: the model or a step's
# activations would not fit in memory, or the problem generator would loop for hours before a
# single step. A value that only takes long (a million steps) stays the user's choice.
MAX_PARAMETERS = 2**32  # ~4.3 billion: fp32 weights, gradients and AdamW moments alone would be ~69 GB
MAX_BLOCK_SIZE = 2**20
MAX_WIDTH = 65_536  # n_embd, and batch sizes
MAX_TOKENS_PER_STEP = 2**24  # batch_size x block_size: the logits of one step are this x vocab floats
MAX_EVAL_ITERS = 1_000_000
MAX_SAMPLE_CHARS = 1_000_000
MAX_EXAMPLES = 10_000_000  # a fixed set of problems or questions is held in memory as Python objects
MAX_DIGITS = 20  # arithmetic operands; a 20-digit scratchpad already needs a context of thousands
MAX_SEED = 2**32 - 1  # NumPy's seed range  # how a chat answer shows its work (tasks/questions.py)


@dataclass
class ModelConfig:
    """Shape of the network. ``vocab_size`` comes from the tokenizer when training starts."""

    arch: str = "gpt"
    vocab_size: int = 65
    block_size: int = 256  # the context length: how many tokens attention can see
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.2
    attention: str = "fused"  # "classic": the lecture's per-head loop; "fused": SDPA + fast paths
    norm: str = "torch"  # "scratch": the lecture's hand-written LayerNorm
    # Paper features, all off by default (the lecture's GPT); benchmarks/ablation.py measures each.
    # "rms": RMSNorm, LayerNorm without the mean and the bias (Zhang & Sennrich 2019, eq. 4).
    # position "rope": rotate q and k by their position instead of adding a learned position
    # table (Su et al. 2021, arXiv 2104.09864, "RoFormer"), so scores depend on the offset only.
    # "abacus" (McLeish et al. 2024) and "coupled" (Cho et al. 2024): the learned table read at ids
    # the arithmetic task computes from each digit's place (tasks/position_schemes.py); reversed format.
    position: str = "learned"
    # feed-forward nonlinearity: relu (the lecture), gelu (Hendrycks & Gimpel 2016, arXiv 1606.08415),
    # gelu_tanh (GELU's tanh approximation, GPT-2's "gelu_new"),
    # swiglu (Shazeer 2020, arXiv 2002.05202: a gated unit, Swish(xW) * xV, then W2)
    activation: str = "relu"
    tie_weights: bool = False  # lm_head reuses the token embedding matrix (Press & Wolf 2017, arXiv 1608.05859)
    # normalize q and k of each head before their dot product (Henry et al. 2020, arXiv 2010.04245;
    # Dehghani et al. 2023, arXiv 2302.05442, sec. 3.1): bounded attention logits, steadier training
    qk_norm: bool = False
    # biases on the query/key/value projections (GPT-2 has them; quill import sets this for GPT-2 checkpoints)
    qkv_bias: bool = False
    # the bias of lm_head (the lecture has one). Off for a Llama-style model: Llama's head has no bias
    # and RMSNorm no shift to fold one into, so only a bias-free head exports exactly (quill export).
    # A config.json from before this field loads with the default, True, matching its weights.
    head_bias: bool = True
    context_len: int = 8  # arch "mlp": how many previous tokens it sees (Bengio et al. 2003's n - 1)

    def validate(self) -> None:
        _check_choice("arch", self.arch, ARCHS)
        _check_choice("attention", self.attention, ATTENTIONS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("position", self.position, POSITIONS)
        _check_choice("activation", self.activation, ACTIVATIONS)
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "context_len"):
            _check_positive(name, getattr(self, name))
        _check_at_most("block_size", self.block_size, MAX_BLOCK_SIZE)
        _check_at_most("context_len", self.context_len, MAX_BLOCK_SIZE)
        _check_at_most("n_embd", self.n_embd, MAX_WIDTH)
        if self.approx_parameters > MAX_PARAMETERS:
            raise ConfigError(f"a model of n_layer {self.n_layer} x n_embd {self.n_embd} has about "
                              f"{self.approx_parameters:.3g} parameters, more than quill trains "
                              f"({MAX_PARAMETERS:.3g}): use a smaller --n-layer or --n-embd")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}: use e.g. 0.0 or 0.2")
        if self.arch == "gpt" and self.n_embd % self.n_head != 0:
            lower = self.n_embd - self.n_embd % self.n_head
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                f"use e.g. --n-embd {max(lower, self.n_head)} or --n-embd {lower + self.n_head}"
            )
        if self.arch == "gpt" and self.position == "rope" and self.head_size % 2:
            raise ConfigError(f"position rope rotates pairs of features, but head_size n_embd / n_head = "
                              f"{self.head_size} is odd: choose n_embd and n_head with an even quotient")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def approx_parameters(self) -> int:
        """12 n_embd^2 per block (attention 4, feed-forward 8) plus the embedding tables and lm_head."""
        return 12 * self.n_layer * self.n_embd**2 + (2 * self.vocab_size + self.block_size) * self.n_embd


@dataclass
class TrainConfig:
    """How to train: data, optimizer, schedule, evaluation, checkpoints, hardware."""

    dataset: str = "shakespeare"  # a registered corpus name or a prepared dataset folder
    out_dir: str = ""  # run directory; empty means runs/<preset>
    batch_size: int = 64
    max_iters: int = 5000
    eval_interval: int = 500
    eval_iters: int = 200
    eval_first: bool = True  # also evaluate before the first step (the start of the loss curve)
    log_interval: int = 10
    lr: float = 3e-4
    min_lr: float = 3e-5
    lr_schedule: str = "cosine"  # linear warmup, then cosine decay to min_lr; "wsd": see decay_frac
    # lr_schedule "wsd" (warmup-stable-decay, a trapezoid): hold lr after the warmup, then decay it
    # linearly to min_lr over this last share of max_iters (Hu et al. 2024, arXiv 2404.06395, sec. 4;
    # Hägele et al. 2024, arXiv 2405.18392: a short linear cool-down matches cosine at equal steps)
    decay_frac: float = 0.2
    warmup_iters: int = 100
    weight_decay: float = 0.1
    optimizer: str = "adamw"  # "muon": Muon for the matrices inside the blocks, AdamW for the rest
    muon_lr: float = 0.02  # peak learning rate of the Muon matrices (follows the same schedule)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    grad_accum: int = 1
    seed: int = 1337
    device: str = "auto"
    dtype: str = "float32"  # autocast dtype; "auto" picks bfloat16 where the hardware has it
    compile: bool = False
    save_every: int = 0  # 0 means: save at every eval
    keep_last: int = 2  # step checkpoints kept besides the best one
    sample_chars: int = 300  # sample printed at the end of training (0 = none)
    skip_nonfinite: bool = False  # skip updates whose loss is NaN/inf instead of stopping
    max_minutes: float = 0.0  # also stop (eval, save) after this many wall-clock minutes; 0 = no limit
    log_to: str = ""  # experiment trackers, comma-separated: tensorboard, wandb, mlflow (quillgpt.tracking)

    def validate(self) -> None:
        _check_choice("device", self.device, DEVICES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if not self.dataset:
            raise ConfigError("dataset is empty: name a corpus (e.g. shakespeare) or a prepared folder")
        for name in ("batch_size", "max_iters", "eval_interval", "eval_iters", "log_interval",
                     "grad_accum", "keep_last"):
            _check_positive(name, getattr(self, name))
        for name in ("warmup_iters", "save_every", "sample_chars"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        _check_at_most("batch_size", self.batch_size, MAX_WIDTH)
        _check_at_most("grad_accum", self.grad_accum, MAX_WIDTH)
        _check_at_most("eval_iters", self.eval_iters, MAX_EVAL_ITERS)
        _check_at_most("sample_chars", self.sample_chars, MAX_SAMPLE_CHARS)
        _check_seed("seed", self.seed)
        for name in ("lr", "min_lr", "muon_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value}: try e.g. 3e-4")
        if self.min_lr > self.lr and self.lr_schedule != "constant":  # the constant schedule never reads min_lr
            raise ConfigError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr}): lower --min-lr or raise --lr")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ConfigError(f"grad_clip must be >= 0 (0 disables it), got {self.grad_clip}")
        if not (math.isfinite(self.decay_frac) and 0.0 <= self.decay_frac <= 1.0):
            raise ConfigError(f"decay_frac is a share of max_iters, in [0, 1], got {self.decay_frac}: try e.g. 0.2")
        if not (math.isfinite(self.max_minutes) and self.max_minutes >= 0):
            raise ConfigError(f"max_minutes must be >= 0 (0 means no time limit), got {self.max_minutes}")
        tracker_names(self.log_to)


@dataclass
class ArithmeticConfig:
    """Train on arithmetic problems instead of a text corpus (``quillgpt.tasks.arithmetic``).

    With ``task`` empty the run is language modelling on ``TrainConfig.dataset``.
    """

    task: str = ""  # add, sub, mul, div, or calc (all four)
    digits: int = 3  # operands have 1..digits digits
    format: str = "reversed"  # plain, reversed, scratchpad or hinted
    train_examples: int = 10_000  # the fixed training set; 0 = fresh problems every batch
    data_seed: int = 0  # draws the training set
    eval_examples: int = 2000  # held-out problems (val loss, and the accuracy after training)
    eval_seed: int = 1  # draws the held-out set (disjoint from training by construction)
    # several whole problems per training row, each at positions 0, 1, ... and attending only to
    # itself (tasks.arithmetic.packed_batch): the same loss in fewer tokens; batch_size counts problems
    pack: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.task)

    @property
    def ops(self) -> str:
        return TASK_OPS[self.task]

    def validate(self) -> None:
        # The numbers are checked even when no task is set, so a wrong one is never silently ignored.
        _check_positive("digits", self.digits)
        _check_at_most("digits", self.digits, MAX_DIGITS)
        _check_positive("eval_examples", self.eval_examples)
        if self.train_examples < 0:
            raise ConfigError(f"train_examples must be >= 0 (0: fresh problems every batch), got {self.train_examples}")
        _check_at_most("train_examples", self.train_examples, MAX_EXAMPLES)
        _check_at_most("eval_examples", self.eval_examples, MAX_EXAMPLES)
        _check_seed("data_seed", self.data_seed)
        _check_seed("eval_seed", self.eval_seed)
        if not self.enabled:
            return
        _check_choice("task", self.task, tuple(TASK_OPS))
        _check_choice("format", self.format, TASK_FORMATS)
        if self.pack and self.format == "hinted":
            raise ConfigError("--pack puts every problem at position 0, but the hinted format trains each at a "
                              "random position: drop --pack")


@dataclass
class ChatConfig:
    """Supervised finetuning on conversations (``quillgpt.posttrain.sft``, ``quill sft``).

    With ``chat_data`` empty the run is not a chat run. The fields carry a ``chat_`` prefix
    because every config field is also a ``quill train`` flag.
    """

    chat_data: str = ""  # a JSONL file of conversations, or "arithmetic": generated questions
    chat_ops: str = "+-"  # arithmetic: the operators asked about (+ - *)
    chat_digits: int = 3  # arithmetic: operands have 1..chat_digits digits
    chat_examples: int = 0  # arithmetic: a fixed training set of this many; 0 = fresh questions every batch
    chat_val: int = 500  # held-out conversations (JSONL: at most a tenth of the file)
    chat_seed: int = 0  # draws the held-out questions (arithmetic) or split (JSONL)
    chat_worked: float = 0.0  # arithmetic: share of demonstrations that show their work ("units first 34, so 43")
    chat_work_style: str = "units"  # units: "units first 34, so 43"; columns (+ only): "7+6=13 1+2+1=4: 43"

    @property
    def enabled(self) -> bool:
        return bool(self.chat_data)

    @property
    def builtin(self) -> bool:
        return self.chat_data == CHAT_ARITHMETIC

    def validate(self) -> None:
        _check_positive("chat_digits", self.chat_digits)
        _check_at_most("chat_digits", self.chat_digits, MAX_DIGITS)
        _check_positive("chat_val", self.chat_val)
        if self.chat_examples < 0:
            raise ConfigError(f"chat_examples must be >= 0 (0: fresh questions every batch), got {self.chat_examples}")
        if not 0.0 <= self.chat_worked <= 1.0:
            raise ConfigError(f"chat_worked is a share of the demonstrations, in [0, 1], got {self.chat_worked}")
        _check_at_most("chat_examples", self.chat_examples, MAX_EXAMPLES)
        _check_at_most("chat_val", self.chat_val, MAX_EXAMPLES)
        _check_seed("chat_seed", self.chat_seed)
        if not self.enabled:
            return
        if self.builtin and (not self.chat_ops or any(op not in "+-*" for op in self.chat_ops)
                             or len(set(self.chat_ops)) != len(self.chat_ops)):
            raise ConfigError(f"chat_ops must be distinct operators out of + - *, got {self.chat_ops!r}")
        _check_choice("chat_work_style", self.chat_work_style, WORK_STYLES)


CHAT_ARITHMETIC = "arithmetic"  # ChatConfig.chat_data naming the built-in generated dataset


@dataclass
class RunConfig:
    """Everything that defines a training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)

    def validate(self) -> None:
        self.model.validate()
        self.train.validate()
        self.arithmetic.validate()
        self.chat.validate()
        tokens = self.train.batch_size * self.model.block_size
        if tokens > MAX_TOKENS_PER_STEP:
            raise ConfigError(f"batch_size x block_size = {tokens:,} tokens per step is more than fits in memory "
                              f"({MAX_TOKENS_PER_STEP:,}): use a smaller --batch-size (--grad-accum for a large batch)")
        if self.arithmetic.enabled and self.arithmetic.pack and self.model.arch != "gpt":
            raise ConfigError(f"--pack needs arch gpt (its attention keeps packed problems apart), got "
                              f"{self.model.arch}: drop --pack")
        if self.model.position in POSITION_SCHEMES and (not self.arithmetic.enabled
                                                        or self.arithmetic.format != "reversed"
                                                        or self.model.arch != "gpt"):
            raise ConfigError(f"--position {self.model.position} numbers each digit by its place, known only for "
                              "an arithmetic task in the reversed format, and only arch gpt reads it: add --task add "
                              "--format reversed (arch gpt), or use --position learned or rope")
        if self.arithmetic.enabled and self.chat.enabled:
            raise ConfigError("a run trains on an arithmetic task or on conversations, not both: drop --task or "
                              "--chat-data")

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        _reject_unknown(data, set(SECTIONS), "config")
        return cls(**{name: dataclass_from_dict(kind, data.get(name, {}), name) for name, kind in SECTIONS.items()})

    def replace(self, overrides: dict[str, dict[str, Any]]) -> RunConfig:
        """A copy with some fields changed: ``{"model": {"n_layer": 4}, ...}``.

        A field given that the copy would ignore (``IGNORED_UNLESS``) is refused rather than
        silently dropped, after its section's own checks, so a value out of range is named as
        such first. (Checked here, on what is being changed, not in ``validate``: runs saved
        before these checks may carry such settings in their config.json and must still load.)
        """
        changed = RunConfig(**{name: dataclasses.replace(getattr(self, name), **overrides.get(name, {}))
                               for name in SECTIONS})
        for section, given in overrides.items():
            for name in given:
                rule = IGNORED_UNLESS.get((section, name))
                if rule is not None and not rule[0](changed):
                    getattr(changed, section).validate()
                    no = "no-" if given[name] is False else ""  # a false boolean was given as --no-NAME
                    raise ConfigError(rule[1](changed, f"--{no}{name.replace('_', '-')}"))
        return changed


SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "arithmetic": ArithmeticConfig,
                             "chat": ChatConfig}


# ---------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------


def _bigram() -> RunConfig:
    # The lecture's bigram: batch 32, block 8, lr 1e-3, 10,000 steps, plain AdamW.
    return RunConfig(
        ModelConfig(arch="bigram", block_size=8, n_layer=1, n_head=1, n_embd=1, dropout=0.0),
        TrainConfig(batch_size=32, max_iters=10_000, eval_interval=1000, eval_iters=200,
                    lr=1e-3, min_lr=1e-3, lr_schedule="constant", warmup_iters=0,
                    weight_decay=0.01, beta2=0.999, grad_clip=0.0, log_interval=100),
    )


def _seed_gpt() -> RunConfig:
    # The lecture's final model: 6 layers, 6 heads, 384 wide, context 256, dropout 0.2.
    return RunConfig(
        ModelConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
        TrainConfig(batch_size=64, max_iters=5000, eval_interval=500, eval_iters=200,
                    lr=3e-4, min_lr=3e-5, warmup_iters=100),
    )


def _cpu_small() -> RunConfig:
    # Minutes on a 2-core laptop: a small, wide-enough model with a short context and a
    # higher learning rate (small models tolerate it), no dropout (it underfits anyway).
    return RunConfig(
        ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
        TrainConfig(batch_size=32, max_iters=2000, eval_interval=250, eval_iters=50,
                    lr=2e-3, min_lr=2e-4, warmup_iters=100, weight_decay=0.1),
    )


def _tiny() -> RunConfig:
    # Seconds: for tests and smoke runs. Learns little.
    return RunConfig(
        ModelConfig(block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0),
        TrainConfig(batch_size=8, max_iters=40, eval_interval=20, eval_iters=4, log_interval=5,
                    lr=3e-3, min_lr=3e-4, warmup_iters=5, sample_chars=100),
    )


def _cpu_fast() -> RunConfig:
    # The speedrun: nanoGPT's CPU recipe (this model at batch 12, 2000 AdamW steps) ends at val
    # 1.886 on Tiny Shakespeare; this gets lower in a third of its wall time on 2 cores
    # (benchmarks/speedrun_nanogpt.py). A step here is bound by matmul FLOPs, not by overhead,
    # so the gain is in loss per sample: Muon for the block matrices, RoPE and SwiGLU (which
    # learn fastest early: benchmarks/ablation.py's 500-step table), batch 32, a short warmup,
    # a warmup-stable-decay schedule, and one eval at the end. 180 steps here reach what the
    # same model with learned positions and ReLU reached in 280, and AdamW alone in ~600.
    return RunConfig(
        ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, norm="rms", position="rope",
                    activation="swiglu"),
        TrainConfig(batch_size=32, max_iters=180, eval_interval=180, eval_iters=20, eval_first=False,
                    log_interval=30, lr=4e-3, min_lr=4e-4, lr_schedule="wsd", decay_frac=0.3, warmup_iters=30,
                    weight_decay=0.1, optimizer="muon", muon_lr=0.025),
    )


def _seed_fast() -> RunConfig:
    # The lecture's result (val 1.4856 on Tiny Shakespeare) in under 30 minutes on 2 CPU cores
    # (benchmarks/lecture_speedrun.py; the recipe search is in benchmarks/RESULTS.md). seed-gpt needs
    # ~5.5 hours here. At this budget a smaller, deeper-than-wide model wins over the lecture's
    # 6x384 (its tokens cost less), and each token teaches more: Muon for the block matrices,
    # RoPE and SwiGLU (benchmarks/ablation.py: -0.04 and -0.02 val at cpu-small's scale),
    # RMSNorm (as good, cheaper), batch 32 for more updates per token, and a warmup-stable-decay
    # schedule that spends its last 30% of steps cooling down. bf16 where the CPU has it.
    return RunConfig(
        ModelConfig(block_size=256, n_layer=6, n_head=4, n_embd=256, dropout=0.1, norm="rms",
                    position="rope", activation="swiglu"),
        TrainConfig(batch_size=32, max_iters=1050, eval_interval=350, eval_iters=10, eval_first=False,
                    log_interval=50, lr=2e-3, min_lr=1e-4, lr_schedule="wsd", decay_frac=0.3, warmup_iters=50,
                    weight_decay=0.1, optimizer="muon", muon_lr=0.02, dtype="auto"),
    )


def _arithmetic(task: str, fmt: str, digits: int, train_examples: int, block_size: int, n_layer: int,
                max_iters: int, batch_size: int, dtype: str = "float32", pack: bool = False) -> RunConfig:
    # Char-level like Lee et al. 2023 ("Teaching Arithmetic to Small Transformers": 6 layers,
    # 384 wide, ~10.7M parameters), but ~1M parameters to train in minutes on 2 CPU cores.
    # Each problem starts at position 0, in training and at test time alike: one problem per
    # row, or with ``pack`` several per row, each at positions 0.. and seeing only itself (the
    # same loss; for problems of very different lengths, 1/3 of the tokens). No dropout; a higher
    # learning rate suits the small model.
    # bf16 pays only for the longer chain-of-thought rows; at 13 tokens a row fp32 is faster.
    return RunConfig(
        ModelConfig(block_size=block_size, n_layer=n_layer, n_head=4, n_embd=128, dropout=0.0),
        TrainConfig(dataset="arithmetic", batch_size=batch_size, max_iters=max_iters,
                    eval_interval=max(1, max_iters // 10), eval_iters=4, log_interval=50, lr=2e-3, min_lr=2e-4,
                    warmup_iters=100, weight_decay=0.1, dtype=dtype, sample_chars=0),
        ArithmeticConfig(task=task, digits=digits, format=fmt, train_examples=train_examples,
                         eval_examples=min(2000, 10 ** (2 * digits) // 20), pack=pack),  # at most half the test split
    )


def _add_long() -> RunConfig:
    # Length generalization (issue 27): train on operands of 1..10 digits, test at up to 30
    # (benchmarks/length_generalization.py). Position coupling (Cho et al. 2024) gives digits of
    # equal significance one id, so the ids a 30-digit problem needs were trained through the random
    # offsets. block_size 96 fits a 30-digit sum (3 x 30 + 3 inputs) and is the id table's size.
    # Sizes: the niced trial on the shared 2-core machine (load ~10) ran 8.9 s a step, too noisy to size
    # with; the add3-reversed rate in RESULTS (0.16 s/step, 256 x ~16 tokens, idle machine) scaled
    # to ~2,400 packed tokens a step gives ~0.2 s, so 5,000 steps; max_minutes stops it at 27 on a
    # slower machine (the later timed run checks this).
    config = _arithmetic("add", "reversed", 10, 0, 96, 4, 5000, 128, pack=True)
    config.model.position = "coupled"
    config.train.eval_interval, config.train.max_minutes = 500, 27.0
    return config


def _sft() -> RunConfig:
    # Finetuning a pretrained model on conversations (quill sft): the model comes from the run
    # being finetuned; a lower learning rate than pretraining, one conversation per row.
    return RunConfig(
        ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
        TrainConfig(dataset="chat", batch_size=64, max_iters=600, eval_interval=100, eval_iters=4, log_interval=50,
                    lr=1e-3, min_lr=1e-4, warmup_iters=50, weight_decay=0.1, sample_chars=0),
        chat=ChatConfig(chat_data=CHAT_ARITHMETIC),
    )


PRESETS = {"bigram": _bigram, "seed-gpt": _seed_gpt, "seed-fast": _seed_fast, "cpu-small": _cpu_small,
           "cpu-fast": _cpu_fast,
           "tiny": _tiny,
           # 3-digit addition from 10,000 examples (Lee et al.: reversed 99.8% at 5k, plain 87.4% at 10k);
           # block 32 leaves room to test 4- and 5-digit problems (length generalization).
           "add3-reversed": lambda: _arithmetic("add", "reversed", 3, 10_000, 32, 4, 2000, 256),
           "add3-plain": lambda: _arithmetic("add", "plain", 3, 10_000, 32, 4, 2000, 256),
           # the same with place hints and random offsets: a remedy for length generalization
           "add3-hinted": lambda: _arithmetic("add", "hinted", 3, 10_000, 48, 4, 2000, 256),
           # 2-digit multiplication from 3,000 examples with a chain of thought (Lee et al.: 95.8%)
           "mul2-scratchpad": lambda: _arithmetic("mul", "scratchpad", 2, 3000, 64, 4, 3000, 128),
           # + - * / on operands up to 3 digits, chain of thought, fresh problems every batch; packed:
           # the same 128 problems a step in ~1/3 of the tokens (one per row, 2/3 of them were padding)
           "calc3": lambda: _arithmetic("calc", "scratchpad", 3, 0, 96, 6, 4000, 128, "bfloat16", pack=True),
           # 1..10-digit addition that carries past 10 digits: position coupling (benchmarks/length_generalization.py)
           "add-long": _add_long,
           "sft": _sft,  # quill sft's defaults: generated arithmetic questions in a chat
           }


def preset(name: str) -> RunConfig:
    """Return a fresh copy of the named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


# ---------------------------------------------------------------------------------------
# Strict conversion from JSON-like dicts and CLI strings
# ---------------------------------------------------------------------------------------


def field_types(cls: type) -> dict[str, type]:
    """The runtime type (int, float, str, bool) of each field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def dataclass_from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where}' must be an object, got {type(data).__name__}")
    types = field_types(cls)
    _reject_unknown(data, set(types), where)
    values = {name: _coerce_json(f"{where}.{name}", value, types[name]) for name, value in data.items()}
    return cls(**values)


def _coerce_json(name: str, value: Any, kind: type) -> Any:
    # JSON has no int/float split for whole floats; accept an int where a float is expected.
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{name} must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def parse_value(name: str, text: str, kind: type) -> Any:
    """Parse a CLI string into a field's type, with an error that names the field."""
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        return kind(text)
    except ValueError:
        raise ConfigError(f"--{name.replace('_', '-')} expects {kind.__name__}, got {text!r}") from None


def _reject_unknown(data: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value}")


def _check_at_most(name: str, value: float, high: float) -> None:
    if value > high:
        raise ConfigError(f"{name} must be at most {high:,}, got {value:,}")


def _check_seed(name: str, value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{name} must be between 0 and {MAX_SEED} (2**32 - 1), got {value}")


def check_seeds(config: Any, *names: str) -> None:
    for name in names:
        _check_seed(name, getattr(config, name))


def check_range(config: Any, name: str, low: float | None = None, high: float | None = None,
                above: float | None = None) -> None:
    """A one-line ConfigError unless field ``name`` is finite, >= low, <= high and > above (each if given)."""
    value = getattr(config, name)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if above is not None and value <= above:
        raise ConfigError(f"{name} must be > {above:g}, got {value:g}")
    if low is not None and value < low:
        raise ConfigError(f"{name} must be >= {low:g}, got {value:g}")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be at most {high:,}, got {value:,}")


def tracker_names(log_to: str) -> tuple[str, ...]:
    """The trackers named in a ``--log-to`` value ("tensorboard,wandb"), each once, in order; checked."""
    names = tuple(dict.fromkeys(n.strip() for n in log_to.split(",") if n.strip()))
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"--log-to {unknown[0]!r} is not a tracker: use {', '.join(TRACKERS)} "
                          "(repeat the flag or separate them with commas)")
    return names


def check_positive_fields(config: Any, *names: str) -> None:
    """A one-line ConfigError for the first of ``names`` that is not a positive integer."""
    for name in names:
        _check_positive(name, getattr(config, name))
