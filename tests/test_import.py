"""quill import: a GPT-2 built by transformers itself becomes a quill run with the same logits,
and GPT-2 -> quill -> GPT-2 and quill -> GPT-2 -> quill keep every weight. No network: the
GPT-2 is random (GPT2Config(n_layer=2, n_embd=32, ...)) and its tokenizer is quill's BPE."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers  # the export extra: `make test` installs it, so these tests never skip
from safetensors.torch import load_file

from quillgpt.checkpoint import load_run
from quillgpt.cli import main
from quillgpt.config import ModelConfig
from quillgpt.export.hf import tokenizer_files
from quillgpt.models.gpt import GPT
from quillgpt.tokenizers import BPETokenizer

TEXT = "the king shall speak to thee and thou art my lord, good night sweet prince.\n" * 30


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train([TEXT], 300)


def make_gpt2(folder: Path, tokenizer: BPETokenizer, tied: bool = True, activation: str = "gelu_new") -> Path:
    """A random GPT-2 saved by transformers, with non-zero biases everywhere (its init zeroes them)."""
    config = transformers.GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                     activation_function=activation, tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder)
    for name, data in tokenizer_files(tokenizer, 32, chat=False).items():
        (folder / name).write_text(json.dumps(data))
    return folder


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def hf_state(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("tied", [True, False])
def test_imported_gpt2_has_the_same_logits_and_round_trips_every_weight(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], bpe: BPETokenizer, tied: bool) -> None:
    source = make_gpt2(tmp_path / "gpt2", bpe, tied)
    code, output = run_cli(capsys, "import", str(source), "--out", str(tmp_path / "run"))
    assert code == 0, output
    run = load_run(tmp_path / "run")
    assert run.config.model.activation == "gelu_tanh" and run.config.model.qkv_bias
    assert run.config.model.tie_weights == tied
    assert not run.config.model.head_bias and run.model.lm_head.bias is None  # GPT-2's head has no bias
    hf = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    idx = torch.randint(0, bpe.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (run.model(idx)[0] - hf(input_ids=idx).logits).abs().max() <= 1e-4

    # GPT-2 -> quill -> GPT-2: every tensor of the original file comes back bit for bit
    code, output = run_cli(capsys, "export", str(tmp_path / "run"), "--out", str(tmp_path / "back"))
    assert code == 0, output
    original, back = hf_state(source), hf_state(tmp_path / "back")
    assert original.keys() == back.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor, back[name]), name

    # quill -> GPT-2 -> quill: every weight of the run comes back bit for bit
    code, output = run_cli(capsys, "import", str(tmp_path / "back"), "--out", str(tmp_path / "again"))
    assert code == 0, output
    first, second = run.model.state_dict(), load_run(tmp_path / "again").model.state_dict()
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


def test_an_imported_run_samples_evaluates_and_finetunes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         bpe: BPETokenizer) -> None:
    source = make_gpt2(tmp_path / "gpt2", bpe)
    run = tmp_path / "run"
    assert run_cli(capsys, "import", str(source), "--out", str(run))[0] == 0
    code, output = run_cli(capsys, "sample", str(run), "--prompt", "the king", "--max-new-tokens", "5", "--top-k", "1")
    assert code == 0 and output.startswith("the king"), output
    (tmp_path / "text.txt").write_text(TEXT)
    code, output = run_cli(capsys, "eval", str(run), "--text", str(tmp_path / "text.txt"), "--json")
    assert code == 0, output
    assert json.loads(output.splitlines()[-1])["loss"] > 0
    data = tmp_path / "data"
    assert run_cli(capsys, "prepare", "--text", str(tmp_path / "text.txt"), "--out", str(data),
                   "--tokenizer-from", str(run))[0] == 0
    code, output = run_cli(capsys, "train", "--preset", "tiny", "--init-from", str(run), "--dataset", str(data),
                           "--out-dir", str(tmp_path / "tuned"), "--max-iters", "2", "--eval-interval", "2",
                           "--eval-iters", "1", "--sample-chars", "0", "--batch-size", "2", "--no-progress")
    assert code == 0, output
    assert load_run(tmp_path / "tuned").config.model.qkv_bias


def test_qkv_bias_gives_the_same_logits_on_both_attention_paths() -> None:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0, qkv_bias=True,
                         activation="gelu_tanh", attention="classic")
    classic = GPT(config).eval()
    with torch.no_grad():
        for name, param in classic.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.5)
    fused = GPT(ModelConfig(**{**config.__dict__, "attention": "fused"})).eval()
    fused.load_state_dict(classic.state_dict())
    idx = torch.randint(0, 20, (2, 8))
    with torch.no_grad():
        assert torch.allclose(classic(idx)[0], fused(idx)[0], atol=1e-5)
        no_bias = GPT(ModelConfig(**{**config.__dict__, "qkv_bias": False})).eval()
        no_bias.load_state_dict({k: v for k, v in classic.state_dict().items() if ".heads." not in k
                                 or not k.endswith("bias")})
        assert (no_bias(idx)[0] - classic(idx)[0]).abs().max() > 1e-3  # the biases matter


def one_error_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("quill: error:"), output
    return lines[0]


def test_bad_folders_are_one_line_and_leave_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    bpe: BPETokenizer) -> None:
    good = make_gpt2(tmp_path / "gpt2", bpe)

    def variant(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(good, folder)
        return folder

    llama = variant("llama")
    config = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    no_tokenizer = variant("no_tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    wrong_shape = variant("wrong_shape")
    config = json.loads((wrong_shape / "config.json").read_text())
    (wrong_shape / "config.json").write_text(json.dumps({**config, "n_positions": 64}))
    cases = {llama: "not a GPT-2-family model", no_tokenizer: "tokenizer.json is missing",
             wrong_shape: "has shape", tmp_path / "nowhere": "not a folder"}
    for folder, message in cases.items():
        out = tmp_path / f"run-{folder.name}"
        code, output = run_cli(capsys, "import", str(folder), "--out", str(out))
        assert code == 2 and message in one_error_line(output), output
        assert not out.exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    code, output = run_cli(capsys, "import", str(good), "--out", str(tmp_path / "taken"))
    assert code == 2 and "not empty" in one_error_line(output)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
