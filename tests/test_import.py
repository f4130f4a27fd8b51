"""quill import: a GPT-2 built by transformers itself becomes a quill run with the same logits,
and GPT-2 -> quill -> GPT-2 and quill -> GPT-2 -> quill keep every weight. No network: the
GPT-2 is random (GPT2Config(n_layer=2, n_embd=32, ...)) and its tokenizer is quill's BPE, or
one laid out like GPT-2's own (byte tokens and merges, then <|endoftext|> as the last id)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
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


def save_random_gpt2(folder: Path, vocab_size: int, tied: bool = True, activation: str = "gelu_new",
                     eos_id: int | None = None) -> None:
    """A random GPT-2 saved by transformers, with non-zero biases everywhere (its init zeroes them)."""
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                     activation_function=activation, tie_word_embeddings=tied,
                                     bos_token_id=eos_id, eos_token_id=eos_id)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder)


def make_gpt2(folder: Path, tokenizer: BPETokenizer, tied: bool = True, activation: str = "gelu_new") -> Path:
    """A random GPT-2 with quill's BPE (special tokens at ids 0-5)."""
    save_random_gpt2(folder, tokenizer.vocab_size, tied, activation)
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


@pytest.mark.parametrize("step", [-5, "7.5", True])
def test_a_bad_step_in_quill_json_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              bpe: BPETokenizer, step: object) -> None:
    """A negative step used to import (exit 0) into checkpoints/step--0000005, which no command could load."""
    source = make_gpt2(tmp_path / "gpt2", bpe)
    (source / "quill.json").write_text(json.dumps({"config": {}, "step": step}))
    capsys.readouterr()  # transformers' save progress
    code, output = run_cli(capsys, "import", str(source), "--out", str(tmp_path / "run"))
    assert code == 2 and "quill.json is not a quill export record" in one_error_line(output)
    assert not (tmp_path / "run").exists()

def test_a_config_larger_than_its_weights_is_refused_before_the_model_is_built(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], bpe: BPETokenizer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """config.json alone must not make quill allocate: a 2-layer file whose config claims 4 x 2048
    (200M parameters, 0.8 GB) is checked against the file's shapes on the meta device first."""
    import quillgpt.export.importer as importer

    source = make_gpt2(tmp_path / "gpt2", bpe)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "n_layer": 4, "n_embd": 2048, "n_head": 16}))
    capsys.readouterr()  # transformers' save progress
    built: list[str] = []

    def spy(model_config: ModelConfig) -> GPT:
        built.append(torch.empty(0).device.type)
        return GPT(model_config)

    monkeypatch.setattr(importer, "GPT", spy)
    code, output = run_cli(capsys, "import", str(source), "--out", str(tmp_path / "run"))
    assert code == 2 and "the weights do not match config.json" in one_error_line(output)
    assert built and set(built) == {"meta"}, built  # shapes checked without real weights
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------
# GPT-2's own tokenizer layout: what a real GPT-2 folder (e.g. `gpt2` from the Hub) has
# ---------------------------------------------------------------------------------------

EOT = "<|endoftext|>"
SAMPLES = ["the king shall speak", "Zebra \u00e9t\u00e9 \U0001f600\n\tx  y", ""]
SPELLED_EOT = "<|endoftext|> is text here"  # transformers parses it into the token; quill never does


def make_gpt2_own_layout(folder: Path) -> Path:
    """A random GPT-2 with a GPT-2-layout tokenizer, saved by transformers as GPT-2's is.

    Like GPT-2's: byte-level pre-tokenizer without prefix space, no normalizer, the 256 byte
    symbols and the merges first, then <|endoftext|> as the last id and the only special token
    (also in the BPE vocabulary, as in GPT-2's vocab.json, where it is id 50256).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    hf.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, special_tokens=[], show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    data = json.loads(hf.to_str())
    eot_id = len(data["model"]["vocab"])
    data["model"]["vocab"][EOT] = eot_id
    data["added_tokens"] = [{"id": eot_id, "content": EOT, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": True, "special": True}]
    fast = transformers.GPT2TokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), bos_token=EOT,
                                          eos_token=EOT, unk_token=EOT)
    assert fast.convert_tokens_to_ids(EOT) == eot_id == len(fast) - 1 and eot_id > 256
    save_random_gpt2(folder, len(fast), eos_id=eot_id)  # GPT-2's config: bos = eos = <|endoftext|>
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_own(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_gpt2_own_layout(tmp_path_factory.mktemp("own") / "gpt2")


def test_gpt2s_own_tokenizer_imports_id_for_id(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                gpt2_own: Path) -> None:
    run_dir = tmp_path / "run"
    code, output = run_cli(capsys, "import", str(gpt2_own), "--out", str(run_dir))
    assert code == 0, output
    run = load_run(run_dir)
    theirs = transformers.AutoTokenizer.from_pretrained(gpt2_own)
    vocab_size = len(theirs)
    assert isinstance(run.tokenizer, BPETokenizer) and run.tokenizer.vocab_size == vocab_size
    assert run.tokenizer.special_ids == {EOT: vocab_size - 1}  # by its real id; no chat tokens
    for text in SAMPLES:
        ids = run.tokenizer.encode(text)
        assert ids == theirs(text)["input_ids"], text
        assert run.tokenizer.decode(ids) == text
    ids = run.tokenizer.encode(SPELLED_EOT)
    assert vocab_size - 1 not in ids and run.tokenizer.decode(ids) == SPELLED_EOT
    assert run.tokenizer.decode([vocab_size - 1]) == EOT

    hf = transformers.AutoModelForCausalLM.from_pretrained(gpt2_own, dtype=torch.float32).eval()
    idx = torch.randint(0, vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (run.model(idx)[0] - hf(input_ids=idx).logits).abs().max() <= 1e-4

    # quill sample's greedy text is transformers' greedy generate, token for token
    prompt = "the king"
    prompt_ids = torch.tensor([theirs(prompt)["input_ids"]])
    generated = hf.generate(prompt_ids, do_sample=False, max_new_tokens=8, min_new_tokens=8,
                            pad_token_id=vocab_size - 1)
    capsys.readouterr()  # transformers' loading progress
    code, output = run_cli(capsys, "sample", str(run_dir), "--prompt", prompt, "--max-new-tokens", "8",
                           "--top-k", "1")
    assert code == 0, output
    assert output.rstrip("\n") == theirs.decode(generated[0]).rstrip("\n")

    # commands that need the chat tokens refuse in one line
    code, output = run_cli(capsys, "sft", str(run_dir), "--out-dir", str(tmp_path / "sft"))
    assert code == 2 and "has no chat tokens" in one_error_line(output)

    # quill -> GPT-2: the same tokenizer.json (vocab, merges, added tokens) and the same ids
    code, output = run_cli(capsys, "export", str(run_dir), "--out", str(tmp_path / "back"))
    assert code == 0, output
    before = json.loads((gpt2_own / "tokenizer.json").read_text())
    after = json.loads((tmp_path / "back" / "tokenizer.json").read_text())
    for key in ("model", "added_tokens", "pre_tokenizer", "normalizer", "decoder"):
        assert after[key] == before[key], key
    back = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    assert back.eos_token == EOT and back.eos_token_id == vocab_size - 1
    assert json.loads((tmp_path / "back" / "config.json").read_text())["eos_token_id"] == vocab_size - 1
    for text in SAMPLES:
        assert back(text)["input_ids"] == theirs(text)["input_ids"], text


def test_gpt2_own_layout_evaluates_and_finetunes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  gpt2_own: Path) -> None:
    """nanoGPT's finetune_shakespeare path: import, prepare with its tokenizer, train --init-from."""
    run_dir = tmp_path / "run"
    assert run_cli(capsys, "import", str(gpt2_own), "--out", str(run_dir))[0] == 0
    (tmp_path / "text.txt").write_text(TEXT)
    code, output = run_cli(capsys, "eval", str(run_dir), "--text", str(tmp_path / "text.txt"), "--json")
    assert code == 0, output
    assert json.loads(output.splitlines()[-1])["loss"] > 0
    data = tmp_path / "data"
    code, output = run_cli(capsys, "prepare", "--text", str(tmp_path / "text.txt"), "--out", str(data),
                           "--tokenizer-from", str(run_dir))
    assert code == 0, output
    meta = json.loads((data / "meta.json").read_text())
    theirs = transformers.AutoTokenizer.from_pretrained(gpt2_own)
    assert meta["tokenizer"]["special_tokens"] == [EOT]
    train_ids = np.fromfile(data / "train.bin", dtype=np.uint16)
    head = TEXT[:200]
    assert train_ids[:len(theirs(head)["input_ids"]) - 1].tolist() == theirs(head)["input_ids"][:-1]
    code, output = run_cli(capsys, "train", "--preset", "tiny", "--init-from", str(run_dir), "--dataset", str(data),
                           "--out-dir", str(tmp_path / "tuned"), "--max-iters", "3", "--eval-interval", "3",
                           "--eval-iters", "1", "--sample-chars", "0", "--batch-size", "2", "--no-progress")
    assert code == 0, output
    tuned = load_run(tmp_path / "tuned")
    assert tuned.tokenizer == load_run(run_dir).tokenizer and tuned.tokenizer.special_ids == {EOT: len(theirs) - 1}
