"""quill run -> one GGUF file for llama.cpp and Ollama (``quill export RUN --format gguf --out F.gguf``).

Written with the ``gguf`` package (llama.cpp's own writer), fp32 tensors, in the layouts of
llama.cpp's ``gpt2`` and ``llama`` graphs (tensor names as in gguf.constants.TENSOR_NAMES):

- gpt2: fused ``attn_qkv`` (q, k, v rows; with bias), LayerNorms with biases, ``output_norm``
  carrying the folded lm_head bias (hf.fold_head_bias). llama.cpp's gpt2 graph applies GELU
  with the tanh approximation, so only activation gelu_tanh (e.g. an imported GPT-2) runs
  exactly; ReLU and exact GELU are refused.
- llama: separate q/k/v. llama.cpp's llama graph rotates *adjacent* pairs (its rope "norm"
  mode), which is quill's own interleaved convention: no permutation here (the HF export
  needs one, and llama.cpp's converter undoes it).

Tokenizer: llama.cpp's "gpt2" (byte-level BPE) model with quill's tokens, merges and special
tokens as control tokens; a char vocabulary goes in the same way, each character spelled in
byte-level symbols, with the merges that put a multi-byte character back together (see
``char_vocabulary``). SFT runs carry the chat template. tests/test_llama_cpp.py runs the files
in llama.cpp's own ``llama-simple``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quillgpt.checkpoint import LoadedRun
from quillgpt.errors import ConfigError
from quillgpt.export import require, staged_file, unwritable_is_one_line
from quillgpt.export.hf import (
    CHAT_TEMPLATE,
    LAYERNORM_EPS,
    RMS_EPS,
    ROPE_THETA,
    check_no_head_bias,
    fold_head_bias,
    special_token_roles,
    target_architecture,
)
from quillgpt.models.gpt import swiglu_hidden
from quillgpt.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, byte_alphabet

TOKEN_NORMAL, TOKEN_CONTROL = 1, 3  # gguf.TokenType values


@dataclass
class GGUFExport:
    arch: str
    n_tensors: int


def gguf_tensors(run: LoadedRun, arch: str) -> dict[str, np.ndarray]:
    """llama.cpp tensor names -> fp32 arrays in nn.Linear layout (out, in); gguf reverses the dims."""
    c = run.config.model
    state = {k: v.detach().float().cpu() for k, v in run.model.state_dict().items()}

    def heads(layer: int, part: str, what: str = "weight") -> torch.Tensor:
        names = [f"blocks.{layer}.sa.heads.{h}.{part}.{what}" for h in range(c.n_head)]
        if names[0] not in state:
            return torch.zeros(c.n_embd)  # no qkv_bias: zero biases are exact
        return torch.cat([state[n] for n in names])

    out: dict[str, torch.Tensor] = {"token_embd.weight": state["token_embedding_table.weight"]}
    for i in range(c.n_layer):
        p, b = f"blocks.{i}.", f"blk.{i}."
        out[b + "attn_norm.weight"], out[b + "ffn_norm.weight"] = state[p + "ln1.weight"], state[p + "ln2.weight"]
        out[b + "attn_output.weight"] = state[p + "sa.proj.weight"]
        out[b + "attn_output.bias"] = state[p + "sa.proj.bias"]
        if arch == "gpt2":
            out[b + "attn_norm.bias"], out[b + "ffn_norm.bias"] = state[p + "ln1.bias"], state[p + "ln2.bias"]
            out[b + "attn_qkv.weight"] = torch.cat([heads(i, part) for part in ("query", "key", "value")])
            out[b + "attn_qkv.bias"] = torch.cat([heads(i, part, "bias") for part in ("query", "key", "value")])
            out[b + "ffn_up.weight"] = state[p + "ffwd.net.0.weight"]
            out[b + "ffn_up.bias"] = state[p + "ffwd.net.0.bias"]
            out[b + "ffn_down.weight"] = state[p + "ffwd.net.2.weight"]
            out[b + "ffn_down.bias"] = state[p + "ffwd.net.2.bias"]
        else:
            for part, name in (("query", "attn_q"), ("key", "attn_k"), ("value", "attn_v")):
                out[b + name + ".weight"], out[b + name + ".bias"] = heads(i, part), heads(i, part, "bias")
            out[b + "ffn_gate.weight"] = state[p + "ffwd.gate.weight"]
            out[b + "ffn_up.weight"] = state[p + "ffwd.up.weight"]
            out[b + "ffn_down.weight"] = state[p + "ffwd.proj.weight"]
    if arch == "gpt2":
        out["position_embd.weight"] = state["position_embedding_table.weight"]
        fold = fold_head_bias(state["lm_head.weight"], state.get("lm_head.bias"), state["ln_f.weight"],
                              state["ln_f.bias"])
        out["output_norm.weight"], out["output_norm.bias"] = fold.ln_weight, fold.ln_bias
        out["output.weight"] = fold.head
    else:
        check_no_head_bias(state, "llama.cpp's llama graph")
        out["output_norm.weight"], out["output.weight"] = state["ln_f.weight"], state["lm_head.weight"]
    return {name: t.contiguous().numpy().astype(np.float32) for name, t in out.items()}


def char_vocabulary(chars: list[str]) -> tuple[list[str], list[str]]:
    """A char vocabulary as llama.cpp byte-level BPE tokens and merges that give quill's ids back.

    Why byte-level BPE ("gpt2") and not llama.cpp's SentencePiece model ("llama"): SPM turns
    spaces into U+2581, which a vocabulary may hold as a character of its own, and a character
    it cannot find goes to byte tokens that a char vocabulary lacks. Byte-level BPE is a
    bijection between bytes and symbols, so any character set, spaces and newlines included,
    survives it: llama.cpp spells the text in byte symbols (GPT-2's table, ``byte_alphabet``),
    applies the merges inside each pre-tokenized word and looks the results up; decoding maps
    the symbols back to bytes. Each character's token is its UTF-8 bytes spelled so, and the
    merges join a multi-byte character's bytes left to right (``é``: ``Ã ©``). A merge's right
    part is always a UTF-8 continuation byte and its left part starts with a lead byte, so no
    merge ever joins two characters, and the order of the merges does not matter.
    """
    alphabet = byte_alphabet()
    tokens, merges = [], []
    for ch in chars:
        try:
            symbols = [alphabet[b] for b in ch.encode("utf-8")]
        except UnicodeEncodeError:
            raise ConfigError(f"character {ch!r} of the vocabulary has no UTF-8 form (a lone surrogate): "
                              "GGUF stores text as UTF-8; prepare the data from valid UTF-8 text") from None
        tokens.append("".join(symbols))
        merges += ["".join(symbols[:i]) + " " + symbols[i] for i in range(1, len(symbols))]
    merges = list(dict.fromkeys(merges))  # é and è share no merge, but € and ₹ share their first
    if not merges:
        # An ASCII vocabulary needs none, yet llama.cpp refuses a gpt2 tokenizer without the merges
        # key ("cannot find tokenizer merges") and gguf's writer refuses an empty array. This one
        # never applies: its left part is two continuation bytes, which no merge builds.
        merges = [alphabet[0x80] * 2 + " " + alphabet[0x80]]
    return tokens, merges


def gguf_vocabulary(tokenizer: Tokenizer) -> tuple[list[str], list[int], list[str]]:
    """Tokens (byte-level strings), their types and the merges, for llama.cpp's gpt2 tokenizer."""
    specials = {token_id: name for name, token_id in tokenizer.special_ids.items()}
    if isinstance(tokenizer, BPETokenizer):
        model = tokenizer.to_dict()["hf_tokenizer"]["model"]
        by_id = {token_id: token for token, token_id in model["vocab"].items()}
        tokens = [specials.get(i) or by_id[i] for i in range(tokenizer.vocab_size)]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    else:
        assert isinstance(tokenizer, CharTokenizer)
        tokens, merges = char_vocabulary(tokenizer.chars)
        tokens += list(tokenizer.specials)
    types = [TOKEN_CONTROL if i in specials else TOKEN_NORMAL for i in range(len(tokens))]
    return tokens, types, merges


def _metadata(writer: Any, run: LoadedRun, arch: str) -> None:
    c = run.config.model
    writer.add_name(run.run_dir.name)
    writer.add_file_type(0)  # all fp32
    writer.add_context_length(c.block_size)
    writer.add_embedding_length(c.n_embd)
    writer.add_block_count(c.n_layer)
    writer.add_head_count(c.n_head)
    writer.add_head_count_kv(c.n_head)
    if arch == "gpt2":
        writer.add_feed_forward_length(4 * c.n_embd)
        writer.add_layer_norm_eps(LAYERNORM_EPS)
    else:
        writer.add_feed_forward_length(swiglu_hidden(c.n_embd))
        writer.add_layer_norm_rms_eps(RMS_EPS)
        writer.add_rope_freq_base(ROPE_THETA)
        writer.add_rope_dimension_count(c.head_size)
        writer.add_vocab_size(c.vocab_size)
    tokens, types, merges = gguf_vocabulary(run.tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # GPT-2's pre-tokenization regex, as quill's BPE
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_add_bos_token(False)
    chat = run.config.chat.enabled
    roles = special_token_roles(run.tokenizer, chat)
    if "eos_token" in roles:
        writer.add_eos_token_id(run.tokenizer.special_ids[roles["eos_token"]])
    if "pad_token" in roles:
        writer.add_pad_token_id(run.tokenizer.special_ids[roles["pad_token"]])
    if chat:
        writer.add_chat_template(CHAT_TEMPLATE)


def export_gguf(run: LoadedRun, out: Path) -> GGUFExport:
    """Write ``out`` (via a temp file next to it, renamed at the end)."""
    gguf = require("gguf")
    arch = target_architecture(run.config.model)
    if arch == "gpt2" and run.config.model.activation != "gelu_tanh":
        raise ConfigError(f"activation {run.config.model.activation}: llama.cpp's gpt2 graph applies GELU with the "
                          "tanh approximation, so only gelu_tanh models run exactly; use --format hf")
    tensors = gguf_tensors(run, arch)
    tmp = staged_file(out)
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        with unwritable_is_one_line(out):
            _metadata(writer, run, arch)
            for name, array in tensors.items():
                writer.add_tensor(name, array)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return GGUFExport(arch, len(tensors))
