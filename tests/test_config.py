import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quillgpt.config import PRESETS, ModelConfig, RunConfig, TrainConfig, parse_value, preset
from quillgpt.errors import ConfigError


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid_and_round_trip_through_json(name: str) -> None:
    config = preset(name)
    config.validate()
    assert RunConfig.from_dict(config.to_dict()) == config


def test_preset_figures_match_the_lecture() -> None:
    bigram, seed = preset("bigram"), preset("seed-gpt")
    assert (bigram.train.batch_size, bigram.model.block_size, bigram.train.lr, bigram.train.max_iters) == \
        (32, 8, 1e-3, 10_000)
    assert (seed.train.batch_size, seed.model.block_size, seed.train.max_iters, seed.train.lr,
            seed.train.eval_interval, seed.model.dropout) == (64, 256, 5000, 3e-4, 500, 0.2)
    assert (seed.model.n_layer, seed.model.n_head, seed.model.n_embd) == (6, 6, 384)


def test_presets_are_fresh_copies() -> None:
    preset("tiny").train.lr = 123.0
    assert preset("tiny").train.lr != 123.0


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*cpu-small"):
        preset("huge")


@pytest.mark.parametrize("data,match", [
    ({"model": {"n_layers": 3}}, "unknown key.*n_layers"),
    ({"model": {"n_layer": "3"}}, "model.n_layer must be int"),
    ({"model": {"n_layer": 3.0}}, "model.n_layer must be int"),
    ({"train": {"compile": 1}}, "train.compile must be bool"),
    ({"train": {"batch_size": True}}, "train.batch_size must be int"),
    ({"optimizer": {}}, "unknown key.*optimizer"),
    ([], "must be a JSON object"),
])
def test_from_dict_rejects_bad_json(data: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict(data)


def test_int_is_accepted_where_a_float_is_expected() -> None:
    assert RunConfig.from_dict({"train": {"lr": 1}}).train.lr == 1.0


@pytest.mark.parametrize("change,match", [
    (dict(n_embd=100, n_head=6), "divisible"),
    (dict(n_layer=0), "n_layer must be a positive integer"),
    (dict(dropout=1.0), "dropout"),
    (dict(dropout=-0.1), "dropout"),
    (dict(attention="flash"), "attention must be one of"),
])
def test_model_validation(change: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(ModelConfig(), **change).validate()


@pytest.mark.parametrize("change,match", [
    (dict(lr=0.0), "lr must be a positive"),
    (dict(min_lr=1.0), "min_lr"),
    (dict(eval_iters=0), "eval_iters"),
    (dict(batch_size=-2), "batch_size"),
    (dict(device="tpu"), "device must be one of"),
    (dict(grad_clip=-1.0), "grad_clip"),
])
def test_train_validation(change: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(TrainConfig(), **change).validate()


@given(st.integers(-10**6, 10**6))
def test_parse_int_round_trips(value: int) -> None:
    assert parse_value("n_layer", str(value), int) == value


@given(st.text())
def test_parse_value_never_crashes_with_anything_but_config_error(text: str) -> None:
    for kind in (int, float, bool, str):
        try:
            parse_value("x", text, kind)
        except ConfigError as exc:
            assert "--x expects" in str(exc)


def test_a_flag_the_run_would_ignore_is_refused() -> None:
    """--decay-frac only shapes the wsd schedule and --pack only packs arithmetic problems: given
    where they do nothing, they are refused in one line instead of silently dropped."""
    with pytest.raises(ConfigError, match="--decay-frac .* schedule is cosine"):
        preset("tiny").replace({"train": {"decay_frac": 0.3}})
    assert preset("tiny").replace({"train": {"decay_frac": 0.3, "lr_schedule": "wsd"}}).train.decay_frac == 0.3
    assert preset("seed-fast").replace({"train": {"decay_frac": 0.1}}).train.decay_frac == 0.1  # a wsd preset
    with pytest.raises(ConfigError, match="decay_frac is a share"):  # out of range: said first
        preset("tiny").replace({"train": {"decay_frac": 2.0}})
    with pytest.raises(ConfigError, match="--pack .* needs --task"):
        preset("tiny").replace({"arithmetic": {"pack": True}})
    preset("calc3").replace({"arithmetic": {"pack": True}}).validate()


@pytest.mark.parametrize(("name", "change", "message"), [
    ("tiny", {"arithmetic": {"digits": 2}}, "--digits sets up an arithmetic task, .*: add --task .* or drop --digits"),
    ("tiny", {"arithmetic": {"format": "plain"}}, "--format sets up an arithmetic task"),
    ("tiny", {"arithmetic": {"eval_seed": 5}}, "--eval-seed sets up an arithmetic task"),
    ("tiny", {"arithmetic": {"data_seed": 3}}, "--data-seed sets up an arithmetic task"),
    ("tiny", {"arithmetic": {"eval_examples": 30}}, "--eval-examples sets up an arithmetic task"),
    ("sft", {"arithmetic": {"train_examples": 50}}, "--train-examples .* chat run: .*--chat-examples.*; drop "
                                                    "--train-examples"),
    ("bigram", {"train": {"min_lr": 1e-4}}, "--min-lr shapes the cosine and wsd schedules.*: add --lr-schedule"),
    ("bigram", {"train": {"warmup_iters": 10}}, "--warmup-iters shapes"),
    ("tiny", {"train": {"muon_lr": 0.5}}, "--muon-lr .* optimizer is adamw: add --optimizer muon or drop --muon-lr"),
    ("tiny", {"chat": {"chat_digits": 2}}, "--chat-digits shapes the built-in .* use --chat-data arithmetic"),
    ("sft", {"chat": {"chat_data": "talk.jsonl", "chat_worked": 0.4}}, "--chat-worked shapes the built-in"),
    ("sft", {"chat": {"chat_work_style": "columns"}}, "--chat-work-style .* --chat-worked is 0.*: add --chat-worked"),
])
def test_every_setting_a_run_would_ignore_is_refused(name: str, change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        preset(name).replace(change)


def test_the_same_settings_are_taken_where_they_act() -> None:
    preset("add3-reversed").replace({"arithmetic": {"digits": 2, "format": "plain", "eval_seed": 5,
                                                    "data_seed": 3, "eval_examples": 30}}).validate()
    preset("bigram").replace({"train": {"min_lr": 1e-4, "lr_schedule": "cosine"}}).validate()
    preset("seed-fast").replace({"train": {"min_lr": 1e-5, "warmup_iters": 5, "muon_lr": 0.01}}).validate()  # wsd
    preset("sft").replace({"chat": {"chat_work_style": "columns", "chat_worked": 0.4, "chat_digits": 3}}).validate()
    preset("tiny").replace({"arithmetic": {"pack": False}})  # --no-pack asks for nothing ignored
    preset("bigram").replace({"train": {"lr": 1e-4}}).validate()  # the constant schedule never reads min_lr


def test_a_saved_run_with_an_ignored_setting_still_loads() -> None:
    """Before the refusals above, --pack on a text run was accepted and saved in config.json."""
    saved = preset("tiny").to_dict()
    saved["arithmetic"]["pack"] = True
    RunConfig.from_dict(saved).validate()
