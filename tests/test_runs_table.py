"""quill runs / compare / report on real tiny runs of every kind: pretrain -> SFT -> reward model -> PPO,
an arithmetic task run, and copies of them made old, orphaned or circular."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from quillgpt.cli import main
from quillgpt.metrics import MetricsLog
from quillgpt.runs_table import COLUMNS, _trainer_wall, ancestry, read_run

TRAIN = ["--max-iters", "4", "--eval-iters", "1", "--eval-interval", "2", "--log-interval", "2", "--batch-size", "4",
         "--sample-chars", "0", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models of 30k parameters: a second thread only spins against the first (greedy replies to a few
    questions took 8.6 s with two threads on a busy 2-core machine, 0.24 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/pre (Shakespeare), runs/sft (chat arithmetic from pre), runs/rm (from sft), runs/ppo (sft, paid by rm),
    runs/task (3-digit addition): a few seconds each."""
    root = tmp_path_factory.mktemp("notebook") / "runs"
    run = {name: str(root / name) for name in ("pre", "sft", "rm", "ppo", "task")}
    assert main(["train", "--preset", "tiny", "--block-size", "40", "--out-dir", run["pre"], *TRAIN]) == 0
    assert main(["sft", run["pre"], "--chat-ops", "+", "--chat-digits", "2", "--chat-val", "20", "--out-dir",
                 run["sft"], *TRAIN]) == 0
    assert main(["reward", "train", run["sft"], "--digits", "2", "--steps", "2", "--eval-interval", "1",
                 "--val-pairs", "10", "--batch-size", "4", "--out-dir", run["rm"], "--no-progress"]) == 0
    assert main(["rl", "ppo", run["sft"], "--reward", f"model:{run['rm']}", "--digits", "1", "--steps", "2",
                 "--prompts-per-step", "2", "--samples-per-prompt", "2", "--minibatches", "1", "--eval-interval", "1",
                 "--eval-questions", "5", "--out-dir", run["ppo"], "--no-progress"]) == 0
    assert main(["train", "--preset", "add3-reversed", "--n-layer", "1", "--n-embd", "32", "--eval-examples", "10",
                 "--out-dir", run["task"], *TRAIN]) == 0
    return root


# The tests that use `runs` train five tiny runs first (about 30 s on a busy 2-core machine).
slow = pytest.mark.slow


def table(capsys: pytest.CaptureFixture, *args: str) -> list[dict]:
    assert main(["runs", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@slow
def test_the_table_has_one_row_per_run_with_its_kind_parent_and_numbers(runs: Path, capsys) -> None:
    capsys.readouterr()
    rows = {r["name"]: r for r in table(capsys, str(runs))}
    assert {n: r["kind"] for n, r in rows.items()} == {"pre": "pretrain", "sft": "sft", "rm": "rm", "ppo": "rl",
                                                      "task": "task"}
    assert rows["ppo"]["algorithm"] == "ppo" and rows["ppo"]["metric"] == "accuracy"
    assert set(rows["pre"]) >= set(COLUMNS)
    assert rows["sft"]["from"].endswith("pre") and rows["rm"]["from"].endswith("sft")
    assert rows["ppo"]["from"].endswith("sft") and rows["pre"]["from"] == "-"  # a reward model is no weight parent
    assert rows["pre"]["steps"] == 4 and rows["rm"]["steps"] == 2
    evals = [r for r in MetricsLog(runs / "pre" / "metrics.jsonl").read() if r["kind"] == "eval"]
    assert rows["pre"]["best"] == min(r["val_loss"] for r in evals)
    assert rows["pre"]["last"] == evals[-1]["val_loss"] and rows["pre"]["wall_s"] == evals[-1]["elapsed_s"]
    rm_summary = json.loads((runs / "rm" / "reward.json").read_text())["summary"]
    assert rows["rm"]["best"] == pytest.approx(rm_summary["val_accuracy"]) and rows["rm"]["metric"] == "val_accuracy"
    assert rows["rm"]["wall_s"] == pytest.approx(rm_summary["seconds"])
    assert rows["pre"]["tokens_per_s"] > 0 and rows["rm"]["tokens_per_s"] is None
    assert rows["pre"]["params"] == 30_785  # the tiny preset's GPT at block size 40, built on the meta device

    assert main(["runs", str(runs), "--sort", "steps"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "kind", "params", "steps"]
    assert [line.split()[0] for line in lines[1:3]] == ["ppo", "rm"]  # 2 steps before 4
    assert "rl/ppo" in lines[1] and "-" in lines[2].split()  # rm logs no tokens/s
    assert [r["name"] for r in table(capsys, str(runs), "--sort", "wall_s")][0] == "rm"


@slow
def test_sort_by_an_unknown_column_and_a_missing_folder_are_one_line_errors(runs: Path, capsys) -> None:
    assert main(["runs", str(runs), "--sort", "speed"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown column 'speed'" in err and "tokens_per_s" in err
    assert main(["runs", str(runs / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


@slow
def test_an_older_run_without_elapsed_times_or_a_latest_pointer_shows_dashes(runs: Path, tmp_path: Path,
                                                                                capsys) -> None:
    old = tmp_path / "runs" / "old"
    shutil.copytree(runs / "pre", old)
    records = [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")}
               for r in MetricsLog(old / "metrics.jsonl").read()]
    (old / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (old / "latest.json").unlink()
    capsys.readouterr()
    row = table(capsys, str(tmp_path / "runs"))[0]
    assert row["wall_s"] is None and row["steps"] is None and row["tokens_per_s"] is None and row["best"] > 0
    assert main(["runs", str(tmp_path / "runs")]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[3] == "-"


def test_wall_time_adds_up_the_segments_of_a_resumed_run() -> None:
    evals = [{"kind": "eval", "elapsed_s": s} for s in (0.1, 2.0, 3.0, 0.4, 1.5)]  # resumed after 3.0 s
    assert _trainer_wall(evals) == pytest.approx(4.5)
    assert _trainer_wall([{"kind": "train"}]) is None


@slow
def test_compare_draws_one_line_per_run(runs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp.png"
    assert main(["compare", str(runs / "pre"), str(runs / "sft"), str(runs / "task"), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "val_loss of pre, sft, task against steps" in said and "panels" not in said
    mixed = tmp_path / "mixed.png"
    assert main(["compare", str(runs / "pre"), str(runs / "ppo"), str(runs / "rm"), "--x", "minutes",
                 "--out", str(mixed)]) == 0
    said = capsys.readouterr().out
    assert "val_loss of pre; accuracy of ppo; val_accuracy of rm against minutes (3 panels" in said
    assert mixed.is_file()


@slow
def test_compare_refuses_what_a_run_cannot_draw(runs: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "c.png")
    assert main(["compare", str(runs / "pre"), str(runs / "ppo"), "--x", "tokens", "--out", out]) == 2
    assert "does not count the tokens" in capsys.readouterr().err
    assert main(["compare", str(runs / "pre"), str(runs / "ppo"), "--metric", "val_bpc", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "logs no 'val_bpc'" in err and "accuracy" in err and err.count("\n") == 1
    assert main(["compare", str(runs / "pre"), "--out", str(tmp_path / "c.jpg")]) == 2
    assert ".png" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


@slow
def test_the_report_follows_the_ancestry_back_to_pretraining(runs: Path, capsys) -> None:
    assert [s.name for s in ancestry(runs / "ppo").stages] == ["pre", "sft", "rm", "ppo"]
    assert main(["report", str(runs / "ppo"), "--n", "5"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {runs / 'ppo' / 'report.md'}"
    card = (runs / "ppo" / "report.md").read_text()
    heads = [line for line in card.splitlines() if line.startswith("## ")]
    assert heads == ["## 1. pre: pretrain", "## 2. sft: sft", "## 3. rm: rm", "## 4. ppo: rl (ppo)",
                     "## Machine and software (that wrote this card)"]
    sections = dict(zip(heads, card.split("\n## ")[1:], strict=True))
    pre_evals = [r for r in MetricsLog(runs / "pre" / "metrics.jsonl").read() if r["kind"] == "eval"]
    assert f"last {pre_evals[-1]['val_loss']:.4f}" in sections[heads[0]]
    assert f"val bits per char: last {pre_evals[-1]['val_bpc']:.4f}" in sections[heads[0]]
    assert f"config digest: `{read_run(runs / 'pre').digest}`" in sections[heads[0]]
    rm = json.loads((runs / "rm" / "reward.json").read_text())["summary"]
    assert f"pairwise accuracy on 10 val pairs: {100 * rm['val_accuracy']:.2f}%" in sections[heads[2]]
    ppo = json.loads((runs / "ppo" / "rl.json").read_text())["summary"]
    assert (f"val exact match: start {100 * ppo['start_accuracy']:.2f}% -> end {100 * ppo['accuracy']:.2f}%"
            in sections[heads[3]])
    assert "reward model `" in sections[heads[3]] and "data: chat:arithmetic" in sections[heads[1]]
    # The held-out halves the card measures are the numbers quill task eval gives for the same draw.
    for split in ("val", "test"):
        assert main(["task", "eval", str(runs / "sft"), "--n", "5", "--split", split, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert (f"held-out exact match, {split} half: {100 * result['accuracy']:.2f}% of {result['n']}"
                in sections[heads[1]])
    assert "held-out exact match" not in sections[heads[2]]  # a reward model answers no questions
    assert "CPU: " in card and "quillgpt 0.1.0, commit " in card and "GPU: " in card


@slow
def test_a_missing_parent_or_a_cycle_ends_the_chain_with_a_line(runs: Path, tmp_path: Path, capsys) -> None:
    orphan = tmp_path / "orphan"
    shutil.copytree(runs / "sft", orphan)
    (orphan / "report.md").unlink(missing_ok=True)
    (orphan / "init.json").write_text(json.dumps({"run": str(tmp_path / "gone"), "checkpoint": "step-00000004"}))
    out = tmp_path / "card.md"
    assert main(["report", str(orphan), "--n", "0", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"orphan's init-from run {tmp_path / 'gone'} is missing" in err and err.count("\n") == 1
    card = out.read_text()
    assert "**The chain is incomplete:**" in card and "## 1. orphan: sft" in card and "## 2." not in card.split(
        "## Machine")[0]
    assert "held-out exact match" not in card  # --n 0 skips the scoring
    # Two runs, each recorded as started from the other.
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs / "sft", a)
    shutil.copytree(runs / "sft", b)
    (a / "init.json").write_text(json.dumps({"run": str(b)}))
    (b / "init.json").write_text(json.dumps({"run": str(a)}))
    assert main(["report", str(a), "--n", "0"]) == 0
    err = capsys.readouterr().err
    assert "is its own ancestor (a -> b -> a)" in err
    assert [s.name for s in ancestry(a).stages] == ["b", "a"]


@slow
def test_the_card_asks_the_held_out_questions_quill_task_eval_asks(runs: Path, tmp_path: Path, monkeypatch,
                                                                   capsys) -> None:
    import quillgpt.commands.tasks as task_command
    import quillgpt.report as report

    asked: dict[str, list[list[str]]] = {"card": [], "task eval": []}

    def recording(where: str, real):
        def answer_all(model, tokenizer, questions, *args, **kwargs):
            asked[where].append([q.text for q in questions])
            return real(model, tokenizer, questions, *args, **kwargs)
        return answer_all

    monkeypatch.setattr(report, "answer_all", recording("card", report.answer_all))
    monkeypatch.setattr(task_command, "answer_all", recording("task eval", task_command.answer_all))
    assert main(["report", str(runs / "sft"), "--n", "3", "--out", str(tmp_path / "card.md")]) == 0
    for split in ("val", "test"):
        assert main(["task", "eval", str(runs / "sft"), "--n", "3", "--split", split, "--json"]) == 0
    capsys.readouterr()
    assert len(asked["card"]) == 2 and asked["card"] == asked["task eval"]  # val, then test: the same questions
    assert asked["card"][0] != asked["card"][1]
