"""Position schemes for length generalization (--position abacus|coupled, tasks/position_schemes.py):
hand-computed ids, training-only offsets, packing, cached decoding, and tests at untrained lengths."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from quillgpt.cli import main
from quillgpt.config import ModelConfig, preset
from quillgpt.errors import ConfigError
from quillgpt.models import build_model
from quillgpt.tasks.arithmetic import (
    ALPHABET,
    BASE_ALPHABET,
    IGNORE,
    Problem,
    ProblemBatches,
    batch,
    longer_operand,
    packed_batch,
    problems,
    sample_text,
    scheme_position_ids,
)
from quillgpt.tasks.dataset import ArithmeticDataset
from quillgpt.tasks.exact_match import placed_stream
from quillgpt.tasks.position_schemes import position_ids, shifted

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def model(position: str, attention: str = "fused", block_size: int = 64) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=len(BASE_ALPHABET), block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                         dropout=0.0, position=position, attention=attention)
    return build_model(config).eval()


def spread(net: torch.nn.Module) -> None:
    """Position rows and the head far from their small initial values, so a wrong id shows in the logits."""
    with torch.no_grad():
        net.position_embedding_table.weight.mul_(30)
        net.lm_head.weight.mul_(30)


# 123+45=168, the answer reversed: 861. By hand, per token:
#   abacus:  each digit its significance + 1 in its own number, everything else 0;
#   coupled: operand digits as abacus; "=" and each answer digit carry the id of the digit written next.
WORKED = {"abacus": [3, 2, 1, 0, 2, 1, 0, 1, 2, 3, 0],
          "coupled": [3, 2, 1, 0, 2, 1, 1, 2, 3, 4, 0]}


@pytest.mark.parametrize("scheme", ["abacus", "coupled"])
def test_the_worked_example_has_the_hand_computed_ids(scheme: str) -> None:
    assert sample_text(Problem(123, "+", 45), "reversed") == "123+45=861\n"
    assert position_ids("123+45=861\n", scheme) == WORKED[scheme]


def test_signs_remainders_and_carries_by_hand() -> None:
    # 5-17=-12, reversed "-21": the sign comes before the units digit
    assert position_ids("5-17=-21", "abacus") == [1, 0, 2, 1, 0, 0, 1, 2]
    assert position_ids("5-17=-21", "coupled") == [1, 0, 2, 1, 1, 1, 2, 3]
    # 17/5=3r2: the remainder is a number of its own, its units at 1 again
    assert position_ids("17/5=3r2", "abacus") == [2, 1, 0, 1, 0, 1, 0, 1]
    assert position_ids("17/5=3r2", "coupled") == [2, 1, 0, 1, 1, 2, 1, 2]
    # 99+1=100, reversed "001": the carried-out digit has a place no operand digit has
    assert position_ids("99+1=001", "coupled") == [2, 1, 0, 1, 1, 2, 3, 4]
    # digits of equal significance share an id however long the numbers are
    ids = position_ids("1234567890123+9=", "coupled")
    assert ids[12] == ids[14] == ids[15] == 1 and ids[0] == 13
    assert shifted([3, 0, 1], 5) == [8, 0, 6]


def decoded(row: torch.Tensor) -> str:
    return "".join(ALPHABET[i] for i in row.tolist())


@pytest.mark.parametrize("scheme", ["abacus", "coupled"])
def test_training_batches_shift_ids_by_a_random_offset_and_evaluation_does_not(scheme: str) -> None:
    train = ProblemBatches("reversed", 64, 48, seed=0, ops="+", digits=5, position=scheme, offsets=True)
    x, _, inputs = train.next()
    offsets = set()
    for row, ids in zip(x, inputs["position_ids"], strict=True):
        plain = torch.tensor(position_ids(decoded(row), scheme))
        nonzero = plain != 0
        assert torch.equal(ids[~nonzero], plain[~nonzero])  # no place stays no place
        shift = (ids[nonzero] - plain[nonzero]).unique()
        assert shift.numel() == 1  # one offset for the whole problem
        offsets.add(int(shift))
        assert int(ids.max()) < 48  # inside the table (block_size rows)
    assert len(offsets) > 10 and max(offsets) > 20  # random, and reaching rows past the trained lengths
    # the held-out split (val loss) is measured as tested: offset 0
    config = preset("add3-reversed").arithmetic
    config.eval_examples = 64
    val = ArithmeticDataset(config, scheme).batches("val", 64, 48, seed=0)
    x, _, inputs = val.next()
    for row, ids in zip(x, inputs["position_ids"], strict=True):
        assert ids.tolist() == position_ids(decoded(row), scheme)
    # and so is decoding: every id fed to the model equals the text's ids at offset 0
    fed: list[torch.Tensor] = []
    net = model(scheme)
    net.register_forward_pre_hook(lambda _, args, kwargs: fed.append(kwargs["position_ids"]), with_kwargs=True)
    prompts = ["123+45=", "999+99="]
    tokens = [t for t, _ in placed_stream(net, prompts, 5, scheme, torch.device("cpu"))]
    texts = [p + "".join(ALPHABET[t] for t in column) for p, column in zip(prompts, torch.cat(tokens, 1).tolist(),
                                                                           strict=True)]
    assert torch.cat(fed, 1)[:, :len(texts[0]) - 1].tolist() == [position_ids(t, scheme)[:-1] for t in texts]


def test_a_training_run_never_sees_an_untrained_length_and_every_length_has_a_test_split() -> None:
    trained = 3
    fly = ProblemBatches("reversed", 256, 32, seed=1, ops="+", digits=trained, position="coupled", offsets=True)
    seen = []
    for _ in range(20):
        x, y, _ = fly.next()
        for row in x:
            a, rest = decoded(row).split("+", 1)
            seen.append(max(len(a), len(rest.split("=", 1)[0])))
    assert max(seen) == trained  # 5,120 fresh training problems, none longer than trained
    config = preset("add3-reversed").arithmetic
    config.train_examples, config.eval_examples = 3000, 100
    data = ArithmeticDataset(config, "coupled")
    assert max(longer_operand(p) for p in data.train_pool) == trained
    for digits in range(1, 10):  # a held-out set at every length, trained or not
        tests = problems("+", digits, 50, seed=7, split="test", exact=True, all_if_fewer=True)
        assert len(tests) == (9 if digits == 1 else 50)  # 1-digit sums: only 9 of the 100 are held out
        assert {longer_operand(p) for p in tests} == {digits}
        assert all(p.split == "test" for p in tests)
    assert all(p.split == "train" for p in data.train_pool)


@pytest.mark.parametrize("scheme", ["abacus", "coupled"])
def test_packed_rows_with_a_scheme_give_the_unpacked_loss(scheme: str) -> None:
    chosen = problems("+-", 6, 40, seed=3)
    net = model(scheme)
    spread(net)
    x, y = batch(chosen, "reversed", 64)
    px, py, positions = packed_batch(chosen, "reversed", 64)
    assert px.size(0) < x.size(0)
    ids = scheme_position_ids(x, None, scheme, 64)
    packed_ids = scheme_position_ids(px, positions, scheme, 64)
    with torch.no_grad():
        _, loss = net(x, y, position_ids=ids)
        _, packed_loss = net(px, py, positions=positions, position_ids=packed_ids)
        _, wrong = net(px, py, positions=positions, position_ids=scheme_position_ids(px, None, scheme, 64))
    assert int((y != IGNORE).sum()) == int((py != IGNORE).sum())
    assert packed_loss.item() == pytest.approx(loss.item(), rel=1e-5)
    assert wrong.item() != pytest.approx(loss.item(), rel=1e-5)  # ids over the whole row: another loss


@pytest.mark.parametrize(("scheme", "attention"), [("abacus", "fused"), ("coupled", "fused"), ("coupled", "classic")])
def test_cached_decoding_has_the_logits_of_the_full_forward(scheme: str, attention: str) -> None:
    net = model(scheme, attention)
    spread(net)
    prompts = ["1234+987=", "55+99999="]
    steps = list(placed_stream(net, prompts, 8, scheme, torch.device("cpu")))
    tokens = torch.cat([t for t, _ in steps], 1)
    full = [p + "".join(ALPHABET[t] for t in row) for p, row in zip(prompts, tokens.tolist(), strict=True)]
    idx = torch.tensor([[ALPHABET.index(c) for c in text] for text in full])
    ids = torch.tensor([position_ids(text, scheme) for text in full])
    with torch.no_grad():
        logits, _ = net(idx, position_ids=ids)
    start = len(prompts[0]) - 1
    for step, (_, cached) in enumerate(steps):
        torch.testing.assert_close(cached, logits[:, start + step], rtol=1e-4, atol=1e-5)


def test_a_scheme_model_refuses_to_run_without_ids_and_configs_are_checked() -> None:
    net = model("abacus")
    with pytest.raises(ConfigError, match="come from its arithmetic problems"):
        net(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="position ids run from 0 to 63"):
        net(torch.zeros(1, 4, dtype=torch.long), position_ids=torch.full((1, 4), 64))
    config = preset("add3-reversed")
    config.model.position = "coupled"
    config.validate()
    config.arithmetic.format = "plain"
    with pytest.raises(ConfigError, match="reversed format"):
        config.validate()
    with pytest.raises(ConfigError, match="reversed format"):
        preset("tiny").replace({"model": {"position": "abacus"}}).validate()


def test_task_eval_past_the_trained_length_and_calc(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["train", "--preset", "add3-reversed", "--digits", "2", "--position", "coupled", "--max-iters", "3",
                 "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--batch-size", "16", "--train-examples", "0",
                 "--eval-interval", "3", "--eval-examples", "20", "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["task", "eval", str(run), "--digits", "6", "--n", "30", "--eval-seed", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["exact_digits"] and report["position"] == "coupled" and report["n"] == 30
    assert list(report["by_length"]) == ["6"]  # exactly the untrained length, one row
    assert main(["task", "eval", str(run), "--digits", "2", "--n", "30", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["by_length"]) <= {"1", "2"}  # the trained range: 1..2
    assert main(["calc", str(run), "123456+654321"]) in (0, 1)  # an answer or not; it runs at 6 digits
    assert capsys.readouterr().out.startswith("123456+654321=")
    assert main(["task", "eval", str(run), "--digits", "10"]) == 2  # 10+1+10+1+11 inputs > block_size 32
    assert capsys.readouterr().err.strip() == (f"quill: error: --digits 10 needs a context of 33 tokens, but {run} "
                                               "has block_size 32: evaluate at most --digits 9, or train with a "
                                               "larger --block-size")


def test_the_benchmark_script_writes_its_table_and_plot_at_a_tiny_size(tmp_path: Path) -> None:
    """benchmarks/length_generalization.py end to end with --tiny: 3 positions x 1 seed (seconds each), 1..3N."""
    spec = importlib.util.spec_from_file_location("length_generalization", BENCHMARKS / "length_generalization.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--tiny", "--seeds", "5", "--n", "4", "--work", str(tmp_path / "runs"), "--results", str(tmp_path)])
    rows = json.loads((tmp_path / "length_generalization.json").read_text())["rows"]
    assert [(r["position"], r["seed"]) for r in rows] == [("learned", 5), ("abacus", 5), ("coupled", 5)]
    assert all(list(r["exact_match"]) == ["1", "2", "3", "4", "5", "6"] for r in rows)  # trained on 2: up to 6
    assert rows[0]["model"]["position"] == "learned" and rows[-1]["model"]["position"] == "coupled"
    lines = (tmp_path / "length_generalization.md").read_text().splitlines()
    assert lines[0] == "| run | seed | wall s | 1 | 2 | 3 | 4 | 5 | 6 |" and len(lines) == 2 + 3
    assert (tmp_path / "length_generalization.png").read_bytes()[:4] == b"\x89PNG"
