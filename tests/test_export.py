"""quill export --format hf: the transformers folder computes what quill computes.

Models are built in-process with random weights (gains, biases and the lm_head bias all
non-zero, so every mapping and the bias fold matter) and saved as run directories; no
network. One test trains a real run with `quill train` (a few seconds).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers  # the export extra: `make test` installs it, so these tests never skip

from quillgpt.chat import Message, encode_conversation, with_chat_tokens
from quillgpt.checkpoint import load_run, write_checkpoint, write_run_files
from quillgpt.cli import main
from quillgpt.config import CHAT_ARITHMETIC, ChatConfig, ModelConfig, RunConfig
from quillgpt.export.hf import fold_head_bias
from quillgpt.models.gpt import GPT
from quillgpt.sample import generate
from quillgpt.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, byte_alphabet

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak.\n"


def randomize(model: GPT, seed: int = 0) -> GPT:
    """Random weights everywhere (norm gains near 1), so no mapping is tested on zeros or ones."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("weight") and param.dim() == 1:  # LayerNorm/RMSNorm gains
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.2 * noise if param.dim() == 1 else noise / param.shape[-1] ** 0.5)
    return model.eval()


def make_run(path: Path, model_config: ModelConfig, tokenizer: Tokenizer, seed: int = 0, head_bias: bool = True,
             chat: bool = False) -> Path:
    model_config.vocab_size = tokenizer.vocab_size
    model_config.head_bias = head_bias
    model = randomize(GPT(model_config), seed)
    config = RunConfig(model=model_config, chat=ChatConfig(chat_data=CHAT_ARITHMETIC) if chat else ChatConfig())
    write_run_files(path, config, tokenizer, {"dataset": "generated", "source": {"name": "generated", "chars": 70,
                                                                                 "sha256": "0" * 64}})
    last_eval = {"kind": "eval", "step": 7, "val_loss": 2.5, "val_bpc": 3.6}
    write_checkpoint(path, 7, model.state_dict(), trainer_state={"last_eval": last_eval})
    return path


def char_tokenizer() -> CharTokenizer:
    return CharTokenizer.from_text(TEXT)


def export(run: Path, out: Path, capsys: pytest.CaptureFixture[str], fmt: str = "hf") -> tuple[int, str]:
    code = main(["export", str(run), "--format", fmt, "--out", str(out)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def quill_and_hf_logits(run: Path, out: Path) -> tuple[torch.Tensor, torch.Tensor]:
    loaded = load_run(run)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    idx = torch.randint(0, loaded.config.model.vocab_size, (3, loaded.config.model.block_size),
                        generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return loaded.model(idx)[0], hf(input_ids=idx).logits


def check_greedy(run: Path, out: Path, prompt: str, new_tokens: int) -> None:
    """transformers' greedy generate gives the text quill's --top-k 1 sampling gives."""
    loaded = load_run(run)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert ids[0].tolist() == loaded.tokenizer.encode(prompt)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    theirs = hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    ours = generate(loaded.model, torch.tensor([loaded.tokenizer.encode(prompt)]), new_tokens, top_k=1)
    assert tokenizer.decode(theirs[0]) == loaded.tokenizer.decode(ours[0].tolist())


@pytest.mark.parametrize(("n_embd", "route"), [(48, "least-squares"), (16, "mean-direction")])
def test_lecture_gpt_exports_to_gpt2_with_the_same_logits_and_greedy_text(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], n_embd: int, route: str) -> None:
    # vocab 30: n_embd 48 gives the head full row rank (bias = W c), n_embd 16 does not.
    config = ModelConfig(block_size=24, n_layer=2, n_head=2, n_embd=n_embd, dropout=0.0)
    run = make_run(tmp_path / "run", config, char_tokenizer())
    assert load_run(run).model.lm_head.bias.abs().max() > 0.1  # the fold has something to do
    code, output = export(run, tmp_path / "hf", capsys)
    assert code == 0, output
    assert route in output
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["model_type"] == "gpt2" and hf_config["activation_function"] == "relu"
    ours, theirs = quill_and_hf_logits(run, tmp_path / "hf")
    assert (ours - theirs).abs().max() <= 1e-4
    check_greedy(run, tmp_path / "hf", "All:\nSpeak", 12)


def test_bias_fold_routes_are_exact() -> None:
    generator = torch.Generator().manual_seed(0)
    n = torch.randn(5, 16, generator=generator)
    n = (n - n.mean(-1, keepdim=True)) / n.std(-1, unbiased=False, keepdim=True)  # LayerNorm's output: mean 0
    for vocab in (10, 40):  # full row rank, then not
        head, bias = torch.randn(vocab, 16, generator=generator), torch.randn(vocab, generator=generator)
        g, beta = 1 + 0.2 * torch.randn(16, generator=generator), torch.randn(16, generator=generator)
        fold = fold_head_bias(head, bias, g, beta)
        assert fold.route == ("least-squares" if vocab == 10 else "mean-direction")
        expected = (n * g + beta) @ head.T + bias
        assert ((n * fold.ln_weight + fold.ln_bias) @ fold.head.T - expected).abs().max() < 1e-4
        # without the fold the bias would be lost: a test that can fail
        assert ((n * g + beta) @ head.T - expected).abs().max() > 0.1


@pytest.mark.parametrize("variant", [{}, {"tie_weights": True}, {"qkv_bias": True}])
def test_rope_rms_swiglu_exports_to_llama(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          variant: dict) -> None:
    config = ModelConfig(block_size=24, n_layer=2, n_head=2, n_embd=32, dropout=0.0, position="rope", norm="rms",
                         activation="swiglu", **variant)
    run = make_run(tmp_path / "run", config, char_tokenizer(), head_bias=False)
    code, output = export(run, tmp_path / "hf", capsys)
    assert code == 0, output
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["model_type"] == "llama" and hf_config["rms_norm_eps"] == 1e-6
    assert hf_config["tie_word_embeddings"] == bool(variant.get("tie_weights"))
    ours, theirs = quill_and_hf_logits(run, tmp_path / "hf")
    assert (ours - theirs).abs().max() <= 1e-4
    check_greedy(run, tmp_path / "hf", "Speak", 12)


def test_a_trained_no_head_bias_run_exports_to_llama_with_quills_greedy_text(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A real `quill train` run: every weight, the head included, has moved from its init.
    (tmp_path / "text.txt").write_text(TEXT * 20)
    run = tmp_path / "run"
    code = main(["train", "--preset", "tiny", "--position", "rope", "--norm", "rms", "--activation", "swiglu",
                 "--no-head-bias", "--max-iters", "5", "--eval-interval", "5", "--eval-iters", "1",
                 "--sample-chars", "0", "--no-progress", "--dataset", str(tmp_path / "text.txt"),
                 "--out-dir", str(run)])
    assert code == 0, capsys.readouterr().err
    loaded = load_run(run)
    assert not loaded.config.model.head_bias and loaded.model.lm_head.bias is None
    code, output = export(run, tmp_path / "hf", capsys)
    assert code == 0, output
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "llama"
    ours, theirs = quill_and_hf_logits(run, tmp_path / "hf")
    assert (ours - theirs).abs().max() <= 1e-4
    # transformers' greedy generate writes what `quill sample --top-k 1` prints
    prompt, new_tokens = "Speak", 11  # the tiny preset's whole context (16): quill crops past it, Llama does not
    assert main(["sample", str(run), "--prompt", prompt, "--max-new-tokens", str(new_tokens), "--top-k", "1"]) == 0
    quill_text = capsys.readouterr().out.rstrip("\n")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    generated = hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    assert tokenizer.decode(generated[0]) == quill_text


def one_error_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("quill: error:"), output
    return lines[0]


@pytest.mark.parametrize(("config", "head_bias", "feature"), [
    (ModelConfig(qk_norm=True), True, "qk_norm"),
    (ModelConfig(arch="lstm"), True, "arch lstm"),
    (ModelConfig(position="rope"), True, "--position rope --norm torch"),
    (ModelConfig(position="rope", norm="rms", activation="swiglu"), True, "train with --no-head-bias"),
])
def test_what_no_standard_architecture_represents_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             config: ModelConfig, head_bias: bool,
                                                             feature: str) -> None:
    config.block_size, config.n_layer, config.n_head, config.n_embd, config.dropout = 16, 1, 2, 16, 0.0
    tokenizer = char_tokenizer()
    config.vocab_size = tokenizer.vocab_size
    if config.arch == "gpt":
        make_run(tmp_path / "run", config, tokenizer, head_bias=head_bias)
    else:
        from quillgpt.models import build_model

        write_run_files(tmp_path / "run", RunConfig(model=config), tokenizer, {"dataset": "generated"})
        write_checkpoint(tmp_path / "run", 1, build_model(config).state_dict())
    code, output = export(tmp_path / "run", tmp_path / "hf", capsys)
    assert code == 2 and feature in one_error_line(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no output, no temp folder


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_an_output_place_that_cannot_be_written_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           fmt: str) -> None:
    """A parent that is a file (so no folder can be made there): one line, exit 2, not a traceback."""
    run = make_run(tmp_path / "run", ModelConfig(block_size=8, n_layer=1, n_head=1, n_embd=8,
                                                 activation="gelu_tanh"), char_tokenizer())
    (tmp_path / "afile").write_text("not a folder")
    code, output = export(run, tmp_path / "afile" / ("out.gguf" if fmt == "gguf" else "hf"), capsys, fmt)
    assert code == 2 and "cannot write --out" in one_error_line(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "run"]


def test_an_existing_output_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run", ModelConfig(block_size=8, n_layer=1, n_head=1, n_embd=8), char_tokenizer())
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    code, output = export(run, tmp_path / "hf", capsys)
    assert code == 2 and "not empty" in one_error_line(output)
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["keep.txt"]


def chat_prompts() -> list[list[Message]]:
    return [[Message("user", "What is 17 plus 26?"), Message("assistant", "43")],
            [Message("system", "Be brief."), Message("user", "What is 2 minus 9?"), Message("assistant", "-7"),
             Message("user", "And 3 times 4?")]]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_sft_chat_template_renders_quills_chat_format_token_for_token(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    texts = TEXT + "What is 17 plus 26? 43 Be brief. 2 minus 9 -7 And 3 times 4"
    tokenizer = with_chat_tokens(None, texts) if kind == "char" else BPETokenizer.train([texts * 20], 300)
    config = ModelConfig(block_size=48, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    run = make_run(tmp_path / "run", config, tokenizer, chat=True)
    code, output = export(run, tmp_path / "hf", capsys)
    assert code == 0, output
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tokenizer.eos_token == "<|end|>"
    for messages in chat_prompts():
        as_dicts = [{"role": m.role, "content": m.content} for m in messages]
        ending = messages[-1].role == "user"
        theirs = hf_tokenizer.apply_chat_template(as_dicts, add_generation_prompt=ending, tokenize=True,
                                                  return_dict=False)
        assert list(theirs) == encode_conversation(tokenizer, messages, add_generation_prompt=ending).ids
    ours, hf_logits = quill_and_hf_logits(run, tmp_path / "hf")
    assert (ours - hf_logits).abs().max() <= 1e-4


def test_the_folder_has_a_model_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run", ModelConfig(block_size=8, n_layer=1, n_head=1, n_embd=8), char_tokenizer())
    assert export(run, tmp_path / "hf", capsys)[0] == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    header = card.split("---")[1]
    assert "license:" in header and "library_name: transformers" in header and "pipeline_tag: text-generation" in header
    for fact in ("steps: 7", "val loss: 2.5000", "bits per character: 3.6000", "generated", "quill export",
                 "quill train --config"):
        assert fact in card, fact


def test_a_missing_extra_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path / "run", ModelConfig(block_size=8, n_layer=1, n_head=1, n_embd=8), char_tokenizer())
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    code, output = export(run, tmp_path / "hf", capsys)
    assert code == 2 and "pip install quillgpt[export]" in one_error_line(output)
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(("fmt", "name"), [("hf", "hf"), ("gguf", "m.gguf")])
def test_a_killed_exports_temp_output_is_cleaned_up_and_a_live_ones_kept(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str, name: str) -> None:
    run = make_run(tmp_path / "run", ModelConfig(block_size=8, n_layer=1, n_head=1, n_embd=8,
                                                 activation="gelu_tanh"), char_tokenizer())
    dead, live = exited_pid(), subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (dead, live.pid):  # a folder (hf) or a file (gguf), as each export stages it
            stale = tmp_path / f".{name}.tmp-{pid}"
            if fmt == "hf":
                stale.mkdir()
                stale = stale / "model.safetensors"
            stale.write_bytes(b"half written")
        odd = [f".{name}.tmp-notapid", f".{name}.tmp-\u00b2", f".{name}.tmp-{'9' * 23}"]  # none of ours:
        for folder in odd:  # a word, a superscript digit (int() refuses it), a number os.kill overflows on
            (tmp_path / folder).mkdir()
        assert export(run, tmp_path / name, capsys, fmt)[0] == 0
    finally:
        live.kill()
        live.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".{name}.tmp-{live.pid}", *odd, name, "run"])


def exited_pid() -> int:
    """The PID of a process that has ended (what a killed export leaves in its temp name)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def test_the_logit_check_compares_every_logit_in_bounded_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tensor the check makes holds a window's logits; a change at the last position or token is seen."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from quillgpt.export import hf

    class Biggest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    Biggest.numel = max(Biggest.numel, t.numel())
            return out

    block, vocab = 48, 3000  # a window's logits: 144,000 numbers
    model = randomize(GPT(ModelConfig(block_size=block, n_layer=1, n_head=2, n_embd=16, dropout=0.0,
                                      activation="gelu_tanh", vocab_size=vocab)))
    reference, _, _, _ = hf.build_hf_model(model, False, CharTokenizer([chr(i) for i in range(32, 32 + vocab)]))
    monkeypatch.setattr(hf, "LOGIT_SLICE", 1000)
    with Biggest():
        assert hf.logit_difference(model, reference) < 1e-4
    assert Biggest.numel <= block * vocab // 8  # before: (2, 48, 3000) logits, twice
    with torch.no_grad():
        reference.transformer.wpe.weight[block - 1, 0] += 0.5  # only the last position's logits change
    assert hf.logit_difference(model, reference) > 1e-3
    with torch.no_grad():
        reference.transformer.wpe.weight[block - 1, 0] -= 0.5
        reference.lm_head.weight[vocab - 1, 0] += 0.5  # only the last token's logit changes
    assert hf.logit_difference(model, reference) > 1e-3


@pytest.mark.parametrize(("out", "problem"), [
    ("exists.gguf", "already exists"),
    ("adir", "does not end in .gguf"),
    ("adir.gguf", "is a folder"),
    ("afile/m.gguf", "cannot write --out"),
])
def test_gguf_checks_out_before_loading_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], out: str,
                                                problem: str) -> None:
    (tmp_path / "exists.gguf").write_text("mine")
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir.gguf").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    before = sorted(p.name for p in tmp_path.iterdir())
    # No run there at all: the --out problem must be what is reported, found before any loading.
    code, output = export(tmp_path / "no-such-run", tmp_path / out, capsys, "gguf")
    assert code == 2 and problem in one_error_line(output) and "--out" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ---------------------------------------------------------------------------------------
# GGUF (llama.cpp, Ollama): read back with gguf's own reader here; tests/test_llama_cpp.py
# runs the files in llama.cpp's own llama-simple.
# ---------------------------------------------------------------------------------------


def read_gguf(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    tensors = {t.name: np.asarray(t.data).reshape(tuple(reversed([int(d) for d in t.shape]))) for t in reader.tensors}
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    return tensors, fields


def test_gguf_gpt2_has_llama_cpp_names_shapes_values_and_tokenizer(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer = BPETokenizer.train([TEXT * 20], 300)
    config = ModelConfig(block_size=24, n_layer=2, n_head=2, n_embd=16, dropout=0.0, activation="gelu_tanh",
                         qkv_bias=True)
    run = make_run(tmp_path / "run", config, tokenizer, chat=True)
    code, output = export(run, tmp_path / "m.gguf", capsys, "gguf")
    assert code == 0, output
    tensors, fields = read_gguf(tmp_path / "m.gguf")
    model = load_run(run).model
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert fields["general.architecture"] == "gpt2" and fields["gpt2.block_count"] == 2
    assert fields["gpt2.context_length"] == 24 and fields["gpt2.embedding_length"] == 16
    assert len(tensors) == 4 + 12 * 2 + 1  # embeddings, output norm/head, 12 per block
    np.testing.assert_array_equal(tensors["token_embd.weight"], state["token_embedding_table.weight"])
    np.testing.assert_array_equal(tensors["position_embd.weight"], state["position_embedding_table.weight"])
    qkv = np.concatenate([state[f"blocks.1.sa.heads.{h}.{part}.weight"] for part in ("query", "key", "value")
                          for h in range(2)])
    np.testing.assert_array_equal(tensors["blk.1.attn_qkv.weight"], qkv)
    np.testing.assert_array_equal(tensors["blk.0.ffn_up.weight"], state["blocks.0.ffwd.net.0.weight"])
    assert tensors["output.weight"].shape == (tokenizer.vocab_size, 16)
    # the folded head reproduces quill's logits from the final LayerNorm's normalized input
    n = torch.randn(4, 16)
    n = ((n - n.mean(-1, keepdim=True)) / n.std(-1, unbiased=False, keepdim=True)).numpy()
    ours = (n * state["ln_f.weight"] + state["ln_f.bias"]) @ state["lm_head.weight"].T + state["lm_head.bias"]
    theirs = (n * tensors["output_norm.weight"] + tensors["output_norm.bias"]) @ tensors["output.weight"].T
    assert np.abs(ours - theirs).max() < 1e-4
    assert fields["tokenizer.ggml.model"] == "gpt2"
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == tokenizer.vocab_size and tokens[:6] == list(tokenizer.special_ids)
    assert fields["tokenizer.ggml.token_type"][:7] == [3] * 6 + [1]
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.special_ids["<|end|>"]
    assert len(fields["tokenizer.ggml.merges"]) == 300 - 6 - 256
    assert "<|assistant|>" in fields["tokenizer.chat_template"]


def test_gguf_llama_keeps_quills_interleaved_rope_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = ModelConfig(block_size=24, n_layer=1, n_head=2, n_embd=16, dropout=0.0, position="rope", norm="rms",
                         activation="swiglu")
    run = make_run(tmp_path / "run", config, char_tokenizer(), head_bias=False)
    code, output = export(run, tmp_path / "m.gguf", capsys, "gguf")
    assert code == 0, output
    tensors, fields = read_gguf(tmp_path / "m.gguf")
    state = {k: v.numpy() for k, v in load_run(run).model.state_dict().items()}
    assert fields["general.architecture"] == "llama" and fields["llama.rope.dimension_count"] == 8
    assert abs(fields["llama.attention.layer_norm_rms_epsilon"] - 1e-6) < 1e-12
    # llama.cpp's llama graph rotates adjacent pairs, like quill: q rows stay in quill's order
    q = np.concatenate([state[f"blocks.0.sa.heads.{h}.query.weight"] for h in range(2)])
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight"], q)
    np.testing.assert_array_equal(tensors["blk.0.ffn_gate.weight"], state["blocks.0.ffwd.gate.weight"])
    np.testing.assert_array_equal(tensors["output_norm.weight"], state["ln_f.weight"])
    alphabet = byte_alphabet()
    assert fields["tokenizer.ggml.tokens"] == [alphabet[ord(c)] for c in char_tokenizer().chars]


@pytest.mark.parametrize(("flags", "feature"), [
    ({}, "activation relu"),
    ({"position": "rope", "norm": "rms", "activation": "swiglu"}, "train with --no-head-bias"),
])
def test_gguf_refuses_what_llama_cpp_does_not_compute(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      flags: dict, feature: str) -> None:
    run = make_run(tmp_path / "run", ModelConfig(block_size=8, n_layer=1, n_head=1, n_embd=8, **flags),
                   char_tokenizer())
    code, output = export(run, tmp_path / "m.gguf", capsys, "gguf")
    assert code == 2 and feature in one_error_line(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_gguf_char_vocabulary_spells_every_character_in_bytes_with_merges_that_rebuild_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Non-ASCII characters (2, 3 and 4 UTF-8 bytes), a newline and a space go in as byte-level tokens."""
    tokenizer = CharTokenizer.from_text(TEXT + "café €5 ₹9 𝄞\n")
    run = make_run(tmp_path / "run", ModelConfig(block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0,
                                                 activation="gelu_tanh"), tokenizer)
    code, output = export(run, tmp_path / "m.gguf", capsys, "gguf")
    assert code == 0, output
    _, fields = read_gguf(tmp_path / "m.gguf")
    tokens, merges = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.merges"]
    byte_of = {symbol: b for b, symbol in byte_alphabet().items()}
    # detokenizing (symbols -> bytes -> UTF-8) gives each character back at quill's id
    assert [bytes(byte_of[s] for s in token).decode() for token in tokens] == tokenizer.chars
    assert tokens[tokenizer.stoi["\n"]] == "Ċ" and tokens[tokenizer.stoi[" "]] == "Ġ"
    # tokenizing: the merges join each character's byte symbols into its token, and nothing more
    ranks = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
    for ch in tokenizer.chars:
        symbols = [byte_alphabet()[b] for b in ch.encode()]
        while len(symbols) > 1 and (symbols[0], symbols[1]) in ranks:
            symbols[:2] = [symbols[0] + symbols[1]]
        assert symbols == [tokens[tokenizer.stoi[ch]]], ch
    assert len(merges) == 1 + 2 + 1 + 3  # é; €; ₹ shares €'s first; 𝄞
    # an ASCII vocabulary still carries the merges key llama.cpp requires (one that never applies)
    run = make_run(tmp_path / "ascii", ModelConfig(block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0,
                                                   activation="gelu_tanh"), char_tokenizer())
    assert export(run, tmp_path / "ascii.gguf", capsys, "gguf")[0] == 0
    assert len(read_gguf(tmp_path / "ascii.gguf")[1]["tokenizer.ggml.merges"]) == 1
