"""The bad-input corpus: every way a user can hold quillgpt wrong gets one clear line.

CLI cases run ``quill`` in-process on a copy of a small workspace (a prepared dataset, a
trained tiny run, some broken files) and check: exit code 2, exactly one line on stderr that
names the problem (the fragment) and a fix, nothing on stdout, and not one byte on disk
changed. API cases check the specific exception type.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from quillgpt.checkpoint import load_run
from quillgpt.cli import main
from quillgpt.config import ModelConfig, RunConfig, TrainConfig
from quillgpt.corpora import read_text
from quillgpt.data import Batches, TokenDataset, prepare_text
from quillgpt.errors import CheckpointError, ConfigError, DataError, SamplingError, TokenizerError
from quillgpt.models import build_model
from quillgpt.sample import generate
from quillgpt.text_loss import evaluate_ids
from quillgpt.tokenizers import BPETokenizer, CharTokenizer

TEXT = "\n".join(f"the king and the queen walk to the sea, line {i}." for i in range(300)) + "\n"
CKPT = "runs/ok/checkpoints/step-00000010"
OTHER = "ZEBRA QUIZ, JUMPING FOX!\n" * 30  # letters the run's character vocabulary lacks


@pytest.fixture(scope="module")
def base_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workspace")
    prepare_text(TEXT, root / "data/ok", {"name": "ok", "sha256": hashlib.sha256(TEXT.encode()).hexdigest()})
    import os

    cwd = Path.cwd()
    os.chdir(root)
    try:
        assert main(["train", "--preset", "tiny", "--dataset", "data/ok", "--out-dir", "runs/ok", "--max-iters",
                     "10", "--eval-interval", "10", "--sample-chars", "0", "--no-progress"]) == 0
    finally:
        os.chdir(cwd)
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.txt").write_bytes(b" \n\t\n")
    (root / "latin1.txt").write_bytes("na\u00efve caf\u00e9\n".encode("latin-1") * 20)
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (root / "nul.txt").write_bytes(b"text\x00with\x00nuls\n" * 10)
    (root / "cfg_unknown.json").write_text(json.dumps({"model": {"n_layers": 2}}))
    (root / "cfg_type.json").write_text(json.dumps({"train": {"batch_size": "64"}}))
    (root / "cfg_bad.json").write_text("{model: 1")
    (root / "ok.txt").write_text(TEXT)
    (root / "other.txt").write_text(OTHER)
    prepare_text(OTHER, root / "data/other", {"name": "other", "sha256": "0" * 64})
    (root / "empty_dir").mkdir()
    (root / "bad.txt.gz").write_bytes(b"\x1f\x8b" + b"not really gzip" * 4)
    return root


@pytest.fixture
def workspace(base_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(base_workspace, root)
    monkeypatch.chdir(root)
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- ways to break a run directory -------------------------------------------------------


def edit_json(path: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        data = json.loads((root / path).read_text())
        change(data)
        (root / path).write_text(json.dumps(data))
    return setup


def flip_byte(root: Path) -> None:
    path = root / CKPT / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))


def truncate(root: Path) -> None:
    path = root / CKPT / "model.safetensors"
    path.write_bytes(path.read_bytes()[:200])


def delete(path: str) -> Callable[[Path], None]:
    return lambda root: (root / path).unlink()


def write(path: str, content: str) -> Callable[[Path], None]:
    return lambda root: (root / path).write_text(content)


def forge(name: str, content: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """Replace a checkpoint file *and* fix up its manifest, so only deeper checks can catch it."""
    def setup(root: Path) -> None:
        path = root / CKPT / name
        path.write_bytes(content(path.read_bytes()))
        manifest = json.loads((root / CKPT / "manifest.json").read_text())
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        manifest["files"][name] = {"bytes": path.stat().st_size, "sha256": digest}
        (root / CKPT / "manifest.json").write_text(json.dumps(manifest))
    return setup


def to_float16(raw: bytes) -> bytes:
    from safetensors.torch import load, save

    return save({k: v.half() for k, v in load(raw).items()})


def garbage_optimizer_meta(raw: bytes) -> bytes:
    state = json.loads(raw)
    state["optimizer"] = 5
    return json.dumps(state).encode()


TRAIN = ["train", "--preset", "tiny", "--dataset", "data/ok", "--no-progress"]
TASK = ["train", "--preset", "tiny", "--no-progress"]  # an arithmetic run reads no corpus: --dataset is refused
SAMPLE = ["sample", "runs/ok", "--max-new-tokens", "5"]

CLI_CASES = [
    # paths and files
    ("missing file", None, ["prepare", "--text", "nope.txt"], "not found: nope.txt"),
    ("directory", None, ["prepare", "--text", "data"], "data is a directory"),
    ("empty file", None, ["prepare", "--text", "empty.txt"], "empty.txt is empty"),
    ("blank file", None, ["prepare", "--text", "blank.txt"], "blank.txt is empty"),
    ("binary file", None, ["prepare", "--text", "image.png"], "image.png is not UTF-8"),
    ("NUL bytes", None, ["prepare", "--text", "nul.txt"], "binary file"),
    ("latin-1 file", None, ["prepare", "--text", "latin1.txt"], "not UTF-8 text (byte 0xef"),
    ("unknown corpus", None, ["prepare", "wikipedia"], "unknown corpus 'wikipedia'"),
    ("nothing to prepare", None, ["prepare"], "nothing to prepare"),
    ("name and --text", None, ["prepare", "shakespeare", "--text", "x.txt"], "not both"),
    ("dataset not found", None, [*TRAIN, "--dataset", "nowhere"], "dataset 'nowhere' not found"),
    ("dataset without meta", None, [*TRAIN, "--dataset", "runs"], "has no meta.json"),
    # config values
    ("batch size 0", None, [*TRAIN, "--batch-size", "0"], "batch_size must be a positive integer, got 0"),
    ("negative batch size", None, [*TRAIN, "--batch-size", "-4"], "batch_size must be a positive integer, got -4"),
    ("zero layers", None, [*TRAIN, "--n-layer", "0"], "n_layer must be a positive integer"),
    ("negative max_iters", None, [*TRAIN, "--max-iters", "-1"], "max_iters must be a positive integer"),
    ("lr 0", None, [*TRAIN, "--lr", "0"], "lr must be a positive number, got 0.0"),
    ("negative lr", None, [*TRAIN, "--lr=-1e-3"], "lr must be a positive number"),
    ("lr not a number", None, [*TRAIN, "--lr", "1e-3x"], "--lr expects float, got '1e-3x'"),
    ("min_lr above lr", None, [*TRAIN, "--min-lr", "1"], "min_lr (1.0) must not exceed lr"),
    ("dropout 1", None, [*TRAIN, "--dropout", "1.0"], "dropout must be in [0, 1)"),
    ("negative dropout", None, [*TRAIN, "--dropout", "-0.1"], "dropout must be in [0, 1)"),
    ("n_embd % n_head", None, [*TRAIN, "--n-embd", "100", "--n-head", "6"], "must be divisible by n_head (6)"),
    ("block larger than data", None, [*TRAIN, "--block-size", "100000"], "too few for block_size 100000"),
    ("eval_iters 0", None, [*TRAIN, "--eval-iters", "0"], "eval_iters must be a positive integer"),
    ("grad_accum 0", None, [*TRAIN, "--grad-accum", "0"], "grad_accum must be a positive integer"),
    ("wrong type int", None, [*TRAIN, "--batch-size", "abc"], "--batch-size expects int, got 'abc'"),
    ("wrong type float for int", None, [*TRAIN, "--n-layer", "2.5"], "--n-layer expects int, got '2.5'"),
    ("unknown device", None, [*TRAIN, "--device", "tpu"], "device must be one of"),
    ("unknown dtype", None, [*TRAIN, "--dtype", "int8"], "dtype must be one of"),
    ("float16 on cpu", None, [*TRAIN, "--dtype", "float16", "--device", "cpu"], "float16 needs a CUDA GPU"),
    ("unknown attention", None, [*TRAIN, "--attention", "flash"], "attention must be one of"),
    ("unknown preset", None, ["train", "--preset", "huge"], "unknown preset 'huge'"),
    ("unknown flag", None, ["train", "--n-layers", "3"], "unrecognized arguments: --n-layers"),
    ("config unknown key", None, ["train", "--config", "cfg_unknown.json"], "unknown key(s) in model: n_layers"),
    ("config wrong type", None, ["train", "--config", "cfg_type.json"], "train.batch_size must be int"),
    ("config not JSON", None, ["train", "--config", "cfg_bad.json"], "cfg_bad.json is not valid JSON"),
    ("config missing", None, ["train", "--config", "nope.json"], "config file not found: nope.json"),
    ("out-dir holds a run", None, [*TRAIN, "--out-dir", "runs/ok"], "runs/ok already holds a run"),
    # sampling
    ("unknown prompt character", None, [*SAMPLE, "--prompt", "Zounds"], "character 'Z' (U+005A)"),
    ("negative max_new_tokens", None, [*SAMPLE, "--max-new-tokens", "-1"], "max_new_tokens must be >= 0"),
    ("max_new_tokens not int", None, [*SAMPLE, "--max-new-tokens", "ten"], "expected an integer, got 'ten'"),
    ("temperature 0", None, [*SAMPLE, "--temperature", "0"], "temperature must be > 0"),
    ("negative temperature", None, [*SAMPLE, "--temperature", "-1"], "temperature must be > 0"),
    ("top_p 0", None, [*SAMPLE, "--top-p", "0"], "top_p must be in (0, 1]"),
    ("top_p above 1", None, [*SAMPLE, "--top-p", "1.5"], "top_p must be in (0, 1]"),
    ("top_k 0", None, [*SAMPLE, "--top-k", "0"], "top_k must be >= 1"),
    ("prompt longer than context", None, [*SAMPLE, "--prompt", "the king " * 5], "longer than the model's context"),
    ("unknown checkpoint name", None, [*SAMPLE, "--checkpoint", "newest"], "unknown checkpoint 'newest'"),
    ("not a run directory", None, ["sample", "data/ok"], "config.json is missing"),
    ("run directory missing", None, ["info", "runs/nope"], "run directory not found: runs/nope"),
    # checkpoints
    ("corrupt weights", flip_byte, SAMPLE, "does not match its sha256"),
    ("truncated weights", truncate, SAMPLE, "has the wrong size (truncated?)"),
    ("missing weights", delete(f"{CKPT}/model.safetensors"), SAMPLE, "model.safetensors is missing"),
    ("missing manifest", delete(f"{CKPT}/manifest.json"), SAMPLE, "manifest.json is missing"),
    ("missing config", delete("runs/ok/config.json"), ["info", "runs/ok"], "config.json is missing"),
    ("missing latest", delete("runs/ok/latest.json"), SAMPLE, "latest.json is missing"),
    ("wrong format version", edit_json("runs/ok/config.json", lambda d: d.update(format_version=99)), SAMPLE,
     "format version 99"),
    ("shape mismatch", edit_json("runs/ok/config.json", lambda d: d["model"].update(n_embd=64)), SAMPLE,
     "has shape"),
    ("config edited to nonsense", edit_json("runs/ok/config.json", lambda d: d["model"].update(n_head=5)), SAMPLE,
     "must be divisible by n_head (5)"),
    ("latest.json garbage", write("runs/ok/latest.json", "{oops"), SAMPLE, "latest.json is not valid JSON"),
    ("latest.json escapes", write("runs/ok/latest.json", json.dumps({"checkpoint": "../../etc"})), SAMPLE,
     "does not name a checkpoint folder"),
    ("tokenizer corrupt", write("runs/ok/tokenizer.json", json.dumps({"kind": "char", "version": 1})), SAMPLE,
     "tokenizer.json is invalid"),
    ("forged safetensors header", forge("model.safetensors", lambda raw: b"\xff" * 64), SAMPLE,
     "not a readable safetensors file"),
    ("forged dtype", forge("model.safetensors", to_float16), SAMPLE, "has dtype F16"),
    # resuming
    ("resume with another shape", None, ["train", "--resume", "runs/ok", "--n-embd", "64"], "n_embd 32 -> 64"),
    ("resume with another batch", None, ["train", "--resume", "runs/ok", "--batch-size", "4"], "batch_size 8 -> 4"),
    ("resume with a preset", None, ["train", "--resume", "runs/ok", "--preset", "tiny"], "drop --preset"),
    ("resume a missing run", None, ["train", "--resume", "runs/nope"], "config.json is missing"),
    ("resume edited trainer.json", forge("trainer.json", garbage_optimizer_meta), ["train", "--resume", "runs/ok"],
     "trainer.json is malformed: 'optimizer' must be"),
    ("resume changed data", edit_json("data/ok/meta.json", lambda d: d["source"].update(sha256="f" * 64)),
     ["train", "--resume", "runs/ok"], "not the one this run trained on"),
    # any text: folders, globs, gzip, tokenizers
    ("folder without text files", None, ["prepare", "--text", "empty_dir"], "empty_dir is a directory with no .txt"),
    ("glob matching nothing", None, ["prepare", "--text", "nope/*.txt"], "no files match 'nope/*.txt'"),
    ("corrupt gzip", None, ["prepare", "--text", "bad.txt.gz"], "bad.txt.gz is not a valid gzip file"),
    ("vocab size too small", None, ["prepare", "--text", "ok.txt", "--tokenizer", "bpe", "--vocab-size", "100"],
     "--vocab-size 100 is out of range for a byte-level BPE: it needs at least 262"),
    ("vocab size too large", None, ["prepare", "--text", "ok.txt", "--tokenizer", "bpe", "--vocab-size", "9999999"],
     "at most 1,000,000"),
    ("bpe without vocab size", None, ["prepare", "--text", "ok.txt", "--tokenizer", "bpe"], "needs --vocab-size N"),
    ("vocab size for char", None, ["prepare", "--text", "ok.txt", "--vocab-size", "512"], "add --tokenizer bpe"),
    ("unknown tokenizer", None, ["prepare", "--text", "ok.txt", "--tokenizer", "wordpiece"],
     "invalid choice: 'wordpiece'"),
    ("tokenizer-from nowhere", None, ["prepare", "--text", "ok.txt", "--tokenizer-from", "nowhere"],
     "no tokenizer found in nowhere"),
    ("tokenizer-from a non-run", None, ["prepare", "--text", "ok.txt", "--tokenizer-from", "cfg_bad.json"],
     "cannot read cfg_bad.json"),
    ("tokenizer-from and --tokenizer", None,
     ["prepare", "--text", "ok.txt", "--tokenizer-from", "runs/ok", "--tokenizer", "bpe"], "drop --tokenizer"),
    ("reused char vocabulary lacks characters", None, ["prepare", "--text", "other.txt", "--tokenizer-from", "runs/ok"],
     "outside the character vocabulary of runs/ok ('!', 'A', 'B'"),
    ("time budget negative", None, [*TRAIN, "--max-minutes", "-1"], "max_minutes must be >= 0"),
    # pretrain -> finetune
    ("init from a missing run", None, [*TRAIN, "--init-from", "runs/nope"], "--init-from runs/nope: run directory"),
    ("init from another tokenizer", None, [*TRAIN, "--dataset", "data/other", "--init-from", "runs/ok"],
     "data/other (char, vocab 20) is not tokenized with the tokenizer of runs/ok"),
    ("init from with another shape", None, [*TRAIN, "--init-from", "runs/ok", "--n-layer", "3"],
     "n_layer is 2 there, not 3"),
    ("init from and resume", None, ["train", "--resume", "runs/ok", "--init-from", "runs/ok"], "--init-from"),
    # eval
    ("eval a missing run", None, ["eval", "runs/nope"], "run directory not found: runs/nope"),
    ("eval another tokenizer", None, ["eval", "runs/ok", "--dataset", "data/other"], "tokenized differently"),
    ("eval a missing text", None, ["eval", "runs/ok", "--text", "nope.txt"], "text file not found: nope.txt"),
    ("eval text and dataset", None, ["eval", "runs/ok", "--text", "ok.txt", "--dataset", "data/ok"], "not both"),
    ("eval max tokens 0", None, ["eval", "runs/ok", "--max-tokens", "0"], "--max-tokens must be >= 1"),
    ("eval unknown characters", None, ["eval", "runs/ok", "--text", "other.txt"], "not in the vocabulary"),
    ("bench prepare bad vocab", None, ["bench", "prepare", "--tokenizer", "bpe", "--vocab-size", "5"], "out of range"),
    # arithmetic tasks
    ("unknown task", None, [*TASK, "--task", "pow"], "task must be one of add, sub, mul, div, calc"),
    ("unknown task format", None, [*TASK, "--task", "add", "--format", "roman"], "format must be one of"),
    ("task block too small", None, [*TASK, "--task", "add", "--digits", "3", "--block-size", "8"],
     "needs block_size >= 12"),
    ("task more held-out than exist", None, [*TASK, "--task", "add", "--digits", "1"], "--eval-examples"),
    ("task and a corpus", None, [*TRAIN, "--task", "add"], "--dataset names a text corpus, but this run trains on "
                                                          "the arithmetic task --task add"),
    ("task eval on a text run", None, ["task", "eval", "runs/ok"], "not trained on an arithmetic task"),
    ("calc on a text run", None, ["calc", "runs/ok", "1+1"], "not trained on an arithmetic task"),
    ("calc a missing run", None, ["calc", "runs/nope", "1+1"], "run directory not found: runs/nope"),
    # post-training
    ("sft a missing data file", None, ["sft", "runs/ok", "--data", "nope.jsonl"], "no such file: nope.jsonl"),
    ("sft a line without a reply", write("bad.jsonl", '{"prompt": "a"}\n{"prompt": "b", "response": "c"}\n'),
     ["sft", "runs/ok", "--data", "bad.jsonl"], "bad.jsonl line 1: expected an object with 'messages'"),
    ("chat with a text run", None, ["chat", "runs/ok"], "has no chat tokens"),
    ("rl unknown reward", None, ["rl", "grpo", "runs/ok", "--reward", "magic"], "unknown reward 'magic'"),
    ("rl on a text run", None, ["rl", "grpo", "runs/ok"], "has no chat tokens"),
    ("reward model of a text run", None, ["reward", "train", "runs/ok", "--steps", "1"], "has no chat tokens"),
    ("reward score with no reward model", None, ["reward", "score", "runs/ok", "--prompt", "a", "--response", "b"],
     "not a reward model"),
    ("dpo on a text run", None, ["dpo", "runs/ok"], "has no chat tokens"),
    # the lab: lessons, attention heatmaps, seq2seq
    ("attention layer out of range", None, ["attention", "runs/ok", "--text", "the", "--layer", "2"], "layers 0 to 1"),
    ("attention head out of range", None, ["attention", "runs/ok", "--text", "the", "--head", "-1"], "heads 0 to 1"),
    ("attention text too long", None, ["attention", "runs/ok", "--text", "the king " * 3], "longer than the model's"),
    ("attention unknown characters", None, ["attention", "runs/ok", "--text", "ZEBRA"], "not in the vocabulary"),
    ("attention empty text", None, ["attention", "runs/ok", "--text", ""], "--text is empty"),
    ("attention out is a folder", None, ["attention", "runs/ok", "--text", "the", "--out", "data"], "is a folder"),
    ("attention a missing run", None, ["attention", "runs/nope", "--text", "the"], "run directory not found"),
    ("lesson bigram missing text", None, ["lesson", "bigram", "--text", "nope.txt"], "text file not found: nope.txt"),
    ("lesson bigram 0 steps", None, ["lesson", "bigram", "--text", "ok.txt", "--steps", "0"], "--steps"),
    ("seq2seq min length 0", None, ["seq2seq", "--min-len", "0"], "need 1 <= --min-len <= --max-len"),
    ("seq2seq too many letters", None, ["seq2seq", "--letters", "30"], "--letters must be 2 to 26"),
    ("seq2seq test set too big", None, ["seq2seq", "--max-len", "1", "--letters", "2", "--n-test", "5"],
     "nothing to train on"),
    ("seq2seq 0 steps", None, ["seq2seq", "--steps", "0"], "--steps"),
]


@pytest.mark.parametrize("setup,argv,fragment", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(workspace: Path, capsys: pytest.CaptureFixture, setup, argv: list[str], fragment: str) -> None:
    if setup:
        setup(workspace)
    capsys.readouterr()
    before = snapshot(workspace)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("quill: error: ") and "Traceback" not in err
    assert fragment in lines[0], lines[0]
    assert out == ""
    assert snapshot(workspace) == before  # nothing on disk changed or lost


def unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("hello")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    read_text(path)


def tiny_model() -> torch.nn.Module:
    return build_model(ModelConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4))


def novels_nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import quillgpt.corpora as corpora

    monkeypatch.setenv("QUILL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(corpora, "_shared_data_dirs", lambda: [])
    corpora.find_corpus("english-novels")


def unknown_token_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = prepare_text(TEXT, tmp_path / "ds", {})
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "dtype": "int8"}))
    TokenDataset(folder)


API_CASES = [
    ("unreadable file", unreadable, DataError, "permission denied"),
    ("unknown character", lambda *_: CharTokenizer.from_text("abc").encode("abd"), TokenizerError, "'d'"),
    ("n_embd % n_head", lambda *_: ModelConfig(n_embd=10, n_head=3).validate(), ConfigError, "divisible"),
    ("unknown config key", lambda *_: RunConfig.from_dict({"train": {"lr_max": 1}}), ConfigError, "lr_max"),
    ("wrong config type", lambda *_: RunConfig.from_dict({"model": {"dropout": "0.1"}}), ConfigError, "float"),
    ("eval_iters 0", lambda *_: TrainConfig(eval_iters=0).validate(), ConfigError, "eval_iters"),
    ("temperature 0", lambda *_: generate(tiny_model(), torch.zeros(1, 1, dtype=torch.long), 3, temperature=0.0),
     SamplingError, "temperature"),
    ("load missing run", lambda tmp, _: load_run(tmp / "nope"), CheckpointError, "not found"),
    ("batches bigger than data", lambda *_: Batches(np.zeros(5, dtype=np.uint16), 2, 8, 0), DataError, "too few"),
    ("empty text to tokenizer", lambda *_: CharTokenizer.from_text(""), TokenizerError, "empty"),
    ("corpus nowhere, no download", novels_nowhere, DataError, "cannot be downloaded: put novels95.txt.gz"),
    ("BPE vocabulary too small", lambda *_: BPETokenizer.train(["text"], 10), TokenizerError, "at least 262"),
    ("unknown token dtype", unknown_token_dtype, DataError, "token dtype 'int8'"),
    ("evaluate one token", lambda *_: evaluate_ids(tiny_model(), np.zeros(1, dtype=np.int64),
                                                   CharTokenizer.from_text("abcde"), 4), DataError, "too few"),
]


@pytest.mark.parametrize("call,error,fragment", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call, error: type, fragment: str) -> None:
    with pytest.raises(error) as info:
        call(tmp_path, monkeypatch)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_corpus_has_at_least_30_cases() -> None:
    assert len(CLI_CASES) + len(API_CASES) >= 30
