"""Packed arithmetic rows (ArithmeticConfig.pack): several problems per row, each at positions 0, 1, ...
and attending only to itself, give the same loss as one problem per row in fewer tokens."""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType, ModuleType

import pytest
import torch

from quillgpt.checkpoint import load_run
from quillgpt.cli import main
from quillgpt.config import ModelConfig, preset
from quillgpt.errors import ConfigError
from quillgpt.models import build_model
from quillgpt.models.attention import Packing
from quillgpt.tasks import arithmetic
from quillgpt.tasks.arithmetic import (
    ALPHABET,
    IGNORE,
    PACKED_ROW_TOKENS,
    ProblemBatches,
    batch,
    masked_example,
    pack_rows,
    packed_batch,
    padding_fraction,
    problems,
)
from quillgpt.tasks.dataset import ArithmeticDataset, open_dataset
from quillgpt.train import Trainer
from test_task_dataset import small_config

PROBLEMS = problems("+-*/", 3, 40, seed=0)  # scratchpad lengths from ~10 to ~80 tokens


def gpt(attention: str = "fused", position: str = "learned", dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(vocab_size=len(ALPHABET), block_size=96, n_layer=2, n_head=4, n_embd=32,
                                   dropout=dropout, attention=attention, position=position))


def segments(positions: torch.Tensor) -> list[tuple[int, int, int]]:
    """(row, start, end) of every packed problem: a problem starts where its position is 0."""
    out = []
    for r, row in enumerate(positions.tolist()):
        starts = [t for t, p in enumerate(row) if p == 0] + [len(row)]
        out += [(r, s, e) for s, e in zip(starts, starts[1:], strict=False)]
    return out


def test_pack_rows_puts_every_item_in_one_row_within_capacity() -> None:
    lengths = [len(masked_example(p, "scratchpad")[0]) for p in PROBLEMS]
    rows = pack_rows(lengths, 96)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 96 for row in rows)
    assert len(rows) <= -(-sum(lengths) // 96) + 1  # within one row of the bound (here 13 rows for 12)
    assert pack_rows(lengths, 96) == rows
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([97], 96)


def first_fit_by_scanning(lengths: list[int], capacity: int) -> list[list[int]]:
    """pack_rows as it was before the room tree: each item scans the rows for the first with room."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return [sorted(row) for row in rows]


def test_pack_rows_packs_as_scanning_first_fit_did() -> None:
    rng = random.Random(0)
    for trial in range(400):
        capacity = rng.choice([1, 2, 7, 64, 128, 200])
        n = rng.randrange(0, 300)
        low = rng.choice([1, capacity // 2 or 1, capacity])  # short items, or ones that barely pair up
        distinct = [rng.randint(low, capacity) for _ in range(rng.choice([1, 3, 50]))]  # ties in length too
        lengths = [rng.choice(distinct) for _ in range(n)]
        assert pack_rows(lengths, capacity) == first_fit_by_scanning(lengths, capacity), (trial, capacity, lengths)


def lines_run(function: Callable[[], object], module: ModuleType) -> int:
    """How many lines of ``module``'s code ``function()`` executes: a measure of work that, unlike a
    clock, is the same on every machine and every run."""
    count = 0

    def local(frame: FrameType, event: str, arg: object) -> object:
        nonlocal count
        count += event == "line"
        return local

    def calls(frame: FrameType, event: str, arg: object) -> object:
        return local if frame.f_code.co_filename == module.__file__ else None

    sys.settrace(calls)
    try:
        function()
    finally:
        sys.settrace(None)
    return count


def test_pack_rows_work_grows_as_n_log_n_not_n_squared() -> None:
    """8x the items: O(n log n) does ~8 x 11/8 = 11x the work; scanning the rows (n x n/6 steps for
    these lengths, 5-40 tokens in rows of 128) did ~50x (measured: 10.3x and 51x)."""
    rng = random.Random(1)
    lengths = [rng.randint(5, 40) for _ in range(2000)]
    small = lines_run(lambda: pack_rows(lengths[:250], 128), arithmetic)
    large = lines_run(lambda: pack_rows(lengths, 128), arithmetic)
    assert large / small < 14


def test_a_packed_batch_holds_each_problem_exactly_as_its_own_row() -> None:
    x, y, positions = packed_batch(PROBLEMS, "scratchpad", 96)
    assert x.size(1) <= 96 and x.shape == y.shape == positions.shape
    found = []
    for r, start, end in segments(positions):
        if (y[r, start:end] == IGNORE).all():  # padding: each token alone at position 0
            assert end - start == 1
            continue
        ids, targets = x[r, start:end].tolist(), y[r, start:end].tolist()
        assert positions[r, start:end].tolist() == list(range(end - start))
        found.append((ids, targets))
    expected = [masked_example(p, "scratchpad") for p in PROBLEMS]
    assert sorted(found) == sorted(expected)  # every problem once, unchanged


@pytest.mark.parametrize("attention", ["fused", "classic"])
@pytest.mark.parametrize("position", ["learned", "rope"])
def test_packed_loss_equals_the_loss_of_one_problem_per_row(attention: str, position: str) -> None:
    model = gpt(attention, position).eval()
    x, y, positions = packed_batch(PROBLEMS, "scratchpad", 96)
    assert x.size(0) < len(PROBLEMS) / 2  # far fewer rows
    with torch.no_grad():
        logits, packed = model(x, y, positions=positions)
        _, padded = model(*batch(PROBLEMS, "scratchpad", 96))  # today's layout: one row each, right-padded
        # each problem alone in a row of its own (no padding at all): its summed token loss
        total, count = 0.0, 0
        for problem in PROBLEMS:
            ids, targets = (torch.tensor([t]) for t in masked_example(problem, "scratchpad"))
            alone, loss = model(ids, targets)
            n = int((targets != IGNORE).sum())
            total, count = total + loss.item() * n, count + n
            # the same logits wherever the problem sits in the packed batch
            r, start, end = next((r, s, e) for r, s, e in segments(positions)
                                 if x[r, s:e].tolist() == ids[0].tolist())
            torch.testing.assert_close(logits[r, start:end], alone[0], atol=1e-5, rtol=1e-5)
    assert packed.item() == pytest.approx(total / count, abs=1e-5)
    assert packed.item() == pytest.approx(padded.item(), abs=1e-5)


@pytest.mark.parametrize(("attention", "position", "dropout"),
                         [("fused", "learned", 0.0), ("fused", "rope", 0.0), ("classic", "learned", 0.0),
                          ("fused", "learned", 0.2), ("classic", "rope", 0.2)])  # 0.2: training, dropout on
def test_a_packed_problem_never_sees_the_problem_before_it(attention: str, position: str, dropout: float) -> None:
    model = gpt(attention, position, dropout)
    model.train(dropout > 0)  # with dropout: the CPU byte-mask path (fused) or the lecture's Head
    x, y, positions = packed_batch(PROBLEMS, "scratchpad", 96)
    r = next(r for r in range(x.size(0)) if len(segments(positions[r:r + 1])) > 1)  # a row with two problems
    (_, _, first_end), *_ = segments(positions[r:r + 1])
    changed = x[r:r + 1].clone()
    changed[0, :first_end] = torch.randint(len(ALPHABET), (first_end,), generator=torch.Generator().manual_seed(1))
    assert not torch.equal(changed, x[r:r + 1])

    def later_logits(idx: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(3)  # the same dropout masks for both inputs
        with torch.no_grad():
            return model(idx, **kwargs)[0][0, first_end:]

    torch.testing.assert_close(later_logits(changed, positions=positions[r:r + 1]),
                               later_logits(x[r:r + 1], positions=positions[r:r + 1]), atol=1e-6, rtol=0)
    # the check can fail: without the mask and positions the later problem does see the first
    assert not torch.allclose(later_logits(changed), later_logits(x[r:r + 1]), atol=1e-3)


def test_the_mask_is_block_diagonal_and_causal() -> None:
    mask = Packing.from_positions(torch.tensor([[0, 1, 2, 0, 1, 0]])).mask[0].int()
    assert mask.tolist() == [[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [0, 0, 0, 1, 0, 0],
                             [0, 0, 0, 1, 1, 0],
                             [0, 0, 0, 0, 0, 1]]


def test_packed_calc3_batches_are_almost_all_problem() -> None:
    config = preset("calc3")
    assert config.arithmetic.pack
    data = ArithmeticDataset(config.arithmetic)
    packed = data.batches("train", config.train.batch_size, config.model.block_size, seed=0)
    config.arithmetic.pack = False
    padded = ArithmeticDataset(config.arithmetic).batches("train", config.train.batch_size, 96, seed=0)
    for _ in range(3):
        x, y, inputs = packed.next()
        px, py = padded.next()  # the same problems, one per row
        assert int((y != IGNORE).sum()) == int((py != IGNORE).sum())
        assert padding_fraction(px, py) > 0.5  # measured: ~0.67 (rows padded to the batch's longest)
        assert padding_fraction(x, y) < 0.08  # measured: 0.036 over 18 batches
        assert x.numel() < 0.4 * px.numel()


def test_a_long_block_size_does_not_make_packed_rows_long() -> None:
    """Rows stop at PACKED_ROW_TOKENS (or the longest problem): attention over a row costs its square."""
    many = PROBLEMS * 40
    x, _, positions = packed_batch(many, "scratchpad", 4096)
    longest = max(len(masked_example(p, "scratchpad")[0]) for p in many)
    assert x.size(1) <= max(longest, PACKED_ROW_TOKENS)
    assert x.size(0) > 1
    assert packed_batch(many, "scratchpad", 96)[0].size(1) <= 96  # a short block_size still bounds a row


def test_packed_batches_resume_exactly() -> None:
    fly = ProblemBatches("scratchpad", 32, 96, seed=0, ops="+-*/", digits=3, pack=True)
    fly.next()
    state = fly.state_dict()
    x2, y2, inputs2 = fly.next()
    again = ProblemBatches("scratchpad", 32, 96, seed=99, ops="+-*/", digits=3, pack=True)
    again.load_state_dict(state)
    x3, y3, inputs3 = again.next()
    assert torch.equal(x2, x3) and torch.equal(y2, y3) and torch.equal(inputs2["positions"], inputs3["positions"])
    pool = ProblemBatches("plain", 16, 32, seed=0, pool=problems("+", 3, 100, seed=0), pack=True)
    assert pool.next()[0].size(0) < 16  # a fixed training set packs too


def packed_config(**train):
    config = small_config(**train)
    config.arithmetic.format, config.model.block_size, config.arithmetic.pack = "scratchpad", 48, True
    return config


def test_packed_training_is_today_training_in_fewer_tokens(tmp_path: Path) -> None:
    """The same seed draws the same problems either way, so the losses match step by step."""
    runs = {}
    for pack in (False, True):
        config = packed_config(dtype="float32", max_iters=12, eval_interval=4)
        config.arithmetic.pack = pack
        Trainer(config, open_dataset(config), tmp_path / str(pack), progress=False).train()
        runs[pack] = [json.loads(line) for line in (tmp_path / str(pack) / "metrics.jsonl").read_text().splitlines()]
    evals = {pack: [r for r in records if r["kind"] == "eval"] for pack, records in runs.items()}
    assert len(evals[True]) == len(evals[False]) >= 3
    for a, b in zip(evals[False], evals[True], strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_a_packed_run_resumes_bitwise_identically(tmp_path: Path) -> None:
    straight = Trainer(packed_config(), open_dataset(packed_config()), tmp_path / "straight", progress=False)
    straight.train()
    first = Trainer(packed_config(), open_dataset(packed_config()), tmp_path / "resumed", progress=False)
    first.train(stop_at=13)
    assert main(["train", "--resume", str(tmp_path / "resumed"), "--no-progress"]) == 0
    a, b = load_run(tmp_path / "straight"), load_run(tmp_path / "resumed")
    assert b.config.arithmetic.pack
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[name]), name


def test_pack_is_refused_where_it_cannot_work() -> None:
    config = preset("add3-hinted")
    config.arithmetic.pack = True
    with pytest.raises(ConfigError, match="hinted"):
        config.validate()
    config = packed_config()
    config.model.arch = "lstm"
    with pytest.raises(ConfigError, match="arch gpt"):
        config.validate()
    model = gpt()
    x, _, positions = packed_batch(PROBLEMS[:4], "scratchpad", 96)
    with pytest.raises(ValueError, match="KV cache"):
        model(x, positions=positions, kv_cache=model.new_kv_cache(x.size(0)))
    with pytest.raises(ValueError, match="shape"):
        model(x, positions=positions[:, :-1])


def test_pack_is_a_flag(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "--preset", "calc3", "--no-pack", "--max-iters", "1", "--n-layer", "1", "--n-embd", "32",
                 "--batch-size", "8", "--eval-iters", "1", "--eval-examples", "20", "--out-dir", str(run),
                 "--no-progress"]) == 0
    assert not load_run(run).config.arithmetic.pack
