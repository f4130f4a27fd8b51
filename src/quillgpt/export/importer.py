"""Hugging Face GPT-2-family folder -> quill run directory (``quill import DIR --out RUN_DIR``).

The folder needs config.json (model_type gpt2), model.safetensors (never a pickle) and a
tokenizer.json that quill can use: a byte-level BPE (GPT-2's own, with ``<|endoftext|>`` at
50256, or quill's, with its six special tokens at 0-5), kept id for id so the embedding rows
stay where they are, or a character vocabulary (what ``quill export`` writes for a char run).
GPT-2 maps onto quill's flags: learned positions, LayerNorm (eps 1e-5), activation
gelu_tanh ("gelu_new"), gelu or relu, qkv_bias (GPT-2's c_attn has biases; dropped when
they are all zero, as in a quill export), tie_weights when lm_head is the embedding, and
no head bias (head_bias False: GPT-2's head has none). Conv1D weights are (in, out): transposed.

The run directory gets one checkpoint (step 0, or the step the exporting quill recorded in
quill.json), so quill sample/serve/eval/task eval and train --init-from take it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from quillgpt.checkpoint import read_tensors, write_checkpoint, write_run_files
from quillgpt.config import ModelConfig, RunConfig
from quillgpt.errors import CheckpointError, ConfigError, QuillError, TokenizerError
from quillgpt.models.gpt import GPT
from quillgpt.tokenizers import BPETokenizer, CharTokenizer, Tokenizer

ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
QUILL_META = "quill.json"  # what quill export adds: the run's config and data record


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None


def gpt2_model_config(hf: dict[str, Any], folder: Path) -> ModelConfig:
    """quill's ModelConfig for a GPT-2 config.json, or a one-line error naming what does not fit."""
    if not isinstance(hf, dict) or hf.get("model_type") != "gpt2":
        kind = hf.get("model_type") if isinstance(hf, dict) else None
        raise ConfigError(f"{folder} is not a GPT-2-family model (model_type {kind!r}): quill import reads "
                          "model_type gpt2")

    def need(name: str, default: Any = None) -> Any:
        value = hf.get(name, default)
        if value is None:
            raise ConfigError(f"{folder / 'config.json'} has no {name}: is it a complete GPT-2 config?")
        return value

    n_embd, n_head = need("n_embd"), need("n_head")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation_function {activation!r} is not one quill has ({', '.join(ACTIVATIONS)})")
    inner = hf.get("n_inner")
    if inner not in (None, 4 * n_embd):
        raise ConfigError(f"n_inner {inner}: quill's feed-forward is 4 * n_embd = {4 * n_embd} wide")
    if abs(float(hf.get("layer_norm_epsilon", 1e-5)) - 1e-5) > 1e-12:
        raise ConfigError(f"layer_norm_epsilon {hf['layer_norm_epsilon']}: quill's LayerNorm uses 1e-5")
    for flag, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                     ("add_cross_attention", False)):
        if hf.get(flag, ok) != ok:
            raise ConfigError(f"{flag} {hf[flag]}: quill's attention does not have this GPT-2 option")
    config = ModelConfig(arch="gpt", vocab_size=need("vocab_size"), block_size=need("n_positions"),
                         n_layer=need("n_layer"), n_head=n_head, n_embd=n_embd, dropout=0.0, attention="fused",
                         norm="torch", position="learned", activation=ACTIVATIONS[activation], qkv_bias=True,
                         head_bias=False, tie_weights=bool(hf.get("tie_word_embeddings", True)))
    config.validate()
    return config


def read_gpt2_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / "model.safetensors"
    if not path.is_file():
        other = "pytorch_model.bin (a pickle, which quill never loads)" if (folder / "pytorch_model.bin").exists() \
            else "no weights"
        raise CheckpointError(f"{folder} has {other}: quill import needs model.safetensors (sharded checkpoints: "
                              "merge them first)")
    tensors = read_tensors(path)
    # GPT2LMHeadModel saves "transformer.h.0...", GPT2Model (and the original gpt2 upload) "h.0...".
    return {(k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}"): v.float()
            for k, v in tensors.items()}


def quill_state(hf: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """GPT-2 tensors -> quill's state dict names and layouts (the inverse of hf.gpt2_weights)."""
    C, H, hs = config.n_embd, config.n_head, config.head_size
    t = "transformer."
    out = {"token_embedding_table.weight": hf[t + "wte.weight"],
           "position_embedding_table.weight": hf[t + "wpe.weight"],
           "ln_f.weight": hf[t + "ln_f.weight"], "ln_f.bias": hf[t + "ln_f.bias"]}
    for i in range(config.n_layer):
        p, h = f"blocks.{i}.", f"{t}h.{i}."
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out[p + ours + ".weight"], out[p + ours + ".bias"] = hf[h + theirs + ".weight"], hf[h + theirs + ".bias"]
        qkv, qkv_bias = hf[h + "attn.c_attn.weight"].t(), hf[h + "attn.c_attn.bias"]  # (3C, C), (3C,)
        for j, part in enumerate(("query", "key", "value")):
            for head in range(H):
                rows = slice(j * C + head * hs, j * C + (head + 1) * hs)
                out[f"{p}sa.heads.{head}.{part}.weight"] = qkv[rows]
                if config.qkv_bias:
                    out[f"{p}sa.heads.{head}.{part}.bias"] = qkv_bias[rows]
        for ours, theirs in (("sa.proj", "attn.c_proj"), ("ffwd.net.0", "mlp.c_fc"), ("ffwd.net.2", "mlp.c_proj")):
            out[p + ours + ".weight"] = hf[h + theirs + ".weight"].t()  # Conv1D (in, out) -> Linear (out, in)
            out[p + ours + ".bias"] = hf[h + theirs + ".bias"]
    out["lm_head.weight"] = hf.get("lm_head.weight", hf[t + "wte.weight"])  # no bias: head_bias is False
    return {k: v.contiguous().clone() for k, v in out.items()}


def tokenizer_from_hf(folder: Path) -> Tokenizer:
    """quill's tokenizer for the folder's tokenizer.json: a byte-level BPE or a char vocabulary."""
    data = _read_json(folder / "tokenizer.json", "quill import needs the model's tokenizer (tokenizer.json)")
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise TokenizerError(f"{folder / 'tokenizer.json'} is not a BPE tokenizer JSON: quill imports byte-level BPE "
                             "or character tokenizers")
    vocab: dict[str, int] = model["vocab"]
    added = {t["content"]: t["id"] for t in data.get("added_tokens", []) if isinstance(t, dict)}
    if not model.get("merges") and (data.get("decoder") or {}).get("type") == "Fuse":
        # A character vocabulary (quill export of a char run): chars by id, then specials.
        chars = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
        if [vocab[c] for c in chars] != list(range(len(chars))):
            raise TokenizerError(f"{folder / 'tokenizer.json'}: character ids are not 0..{len(chars) - 1}")
        specials = [name for name, _ in sorted(added.items(), key=lambda item: item[1])]
        if [added[s] for s in specials] != list(range(len(chars), len(chars) + len(specials))):
            raise TokenizerError(f"{folder / 'tokenizer.json'}: special tokens must follow the characters")
        return CharTokenizer(chars, specials)
    try:
        return BPETokenizer(data)  # any byte-level layout: GPT-2's, quill's, a GPT-2 finetune's
    except TokenizerError as exc:
        raise TokenizerError(f"{folder / 'tokenizer.json'}: {exc}") from None


def import_gpt2(folder: Path, out: Path, command: str = "") -> dict[str, Any]:
    """Write a run directory for the GPT-2 folder into ``out`` (an empty staging dir).

    Returns what was imported (for the CLI's summary line).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder: give a local Hugging Face model folder")
    hf_config = _read_json(folder / "config.json", "is this a Hugging Face model folder?")
    config = gpt2_model_config(hf_config, folder)
    tokenizer = tokenizer_from_hf(folder)
    if tokenizer.vocab_size != config.vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens but config.json says vocab_size "
                          f"{config.vocab_size}: they do not belong together")
    weights = read_gpt2_weights(folder)
    if "lm_head.weight" in weights and config.tie_weights and not torch.equal(
            weights["lm_head.weight"], weights["transformer.wte.weight"]):
        raise ConfigError("tie_word_embeddings is true but lm_head.weight differs from wte.weight: the folder "
                          "is inconsistent")
    if all(not w.abs().max().item() for k, w in weights.items() if k.endswith("attn.c_attn.bias")):
        config.qkv_bias = False  # the lecture's bias-free heads (e.g. a quill export): keep them so
    with torch.device("meta"):  # shapes only: config.json alone must not make us allocate its model
        expected = GPT(config).state_dict()
    try:
        state = quill_state(weights, config)
    except KeyError as missing:
        raise CheckpointError(f"{folder / 'model.safetensors'} has no tensor {missing.args[0]} that GPT-2 with "
                              f"{config.n_layer} layers needs: the weights do not match config.json") from None
    for name, ref in expected.items():
        if tuple(state[name].shape) != tuple(ref.shape):
            raise CheckpointError(f"{folder / 'model.safetensors'}: {name} has shape {tuple(state[name].shape)}, "
                                  f"config.json implies {tuple(ref.shape)}: the weights do not match the config")
    model = GPT(config)  # the file's tensors fit: now the real model
    model.load_state_dict(state)

    run_config, data_info, step = _quill_metadata(folder, config)
    try:
        run_config.validate()
    except QuillError as exc:
        raise ConfigError(f"{folder / QUILL_META} is invalid: {exc}") from None
    data_info = {**data_info, "imported_from": {"folder": str(folder.resolve()), "command": command}}
    write_run_files(out, run_config, tokenizer, data_info)
    write_checkpoint(out, step, model.state_dict(), trainer_state={"imported": True})
    return {"layers": config.n_layer, "n_embd": config.n_embd, "vocab": config.vocab_size,
            "tokenizer": tokenizer.describe(), "activation": config.activation, "tied": config.tie_weights}


def _quill_metadata(folder: Path, model: ModelConfig) -> tuple[RunConfig, dict[str, Any], int]:
    """The run config, data record and step of a quill export (quill.json), else defaults.

    Only the train/arithmetic/chat sections are taken from it (so task eval and chat work on a
    round trip); the model section always comes from config.json and the weights.
    """
    path = folder / QUILL_META
    if not path.is_file():
        return RunConfig(model=model), {"dataset": ""}, 0
    meta = _read_json(path, "")
    try:
        saved = RunConfig.from_dict(meta["config"])
        step = meta.get("step", 0)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step {step!r} is not a whole number >= 0")
        data = dict(meta.get("data", {}))
    except (QuillError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path} is not a quill export record ({exc}): remove it to import the weights only") \
            from None
    model.dropout, model.attention = saved.model.dropout, saved.model.attention
    return RunConfig(model=model, train=saved.train, arithmetic=saved.arithmetic, chat=saved.chat), data, step
