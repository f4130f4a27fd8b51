"""--log-to tensorboard/wandb/mlflow: what a run wrote, read back with each tracker's own reader.

TensorBoard: ``EventAccumulator``; W&B: the offline run's ``.wandb`` log through ``wandb leet inspect
--json`` (W&B's own reader of that file); MLflow: ``MlflowClient`` on the local ./mlruns store.
W&B runs offline here, with its config and cache directories in the test's folder: no network, no account.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import tomllib

from quillgpt.cli import main
from quillgpt.config import TrainConfig
from quillgpt.errors import ConfigError
from quillgpt.metrics import MetricsLog
from quillgpt.tracking import TrackerError, open_trackers, require, wandb_mode

pytest.importorskip("tensorboard", reason="the track extra: pip install -e '.[track]'")
pytest.importorskip("wandb", reason="the track extra: pip install -e '.[track]'")
pytest.importorskip("mlflow", reason="the track extra: pip install -e '.[track]'")

from mlflow import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--preset", "tiny", "--max-iters", "20", "--eval-interval", "10", "--eval-iters", "2",
         "--log-interval", "5", "--save-every", "5", "--sample-chars", "0", "--no-progress"]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path (./mlruns lands there), W&B offline and quiet with its own folders there too."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_API_KEY", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    return tmp_path


def metrics(run_dir: Path, kind: str, field: str) -> list[tuple[int, float]]:
    return [(r["step"], r[field]) for r in MetricsLog(run_dir / "metrics.jsonl").read() if r["kind"] == kind]


def tensorboard(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def tb_scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def tb_hparams(events: EventAccumulator) -> dict[str, object]:
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of the offline run's .wandb log, decoded by W&B's own reader."""
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    out = []
    for file in files:
        done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(file)],
                              capture_output=True, text=True, timeout=120, check=True)
        out += [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return out


def wandb_history(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(int(r["history"]["step"]["num"]), r["history"]["item"][key]) for r in records
            if r["type"] == "history" and key in r["history"]["item"]]


def mlflow_run(workdir: Path):
    client = MlflowClient(tracking_uri=(workdir / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("quillgpt").experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def approx(pairs: list[tuple[int, float]]) -> list[tuple[int, object]]:
    return [(step, pytest.approx(value, rel=1e-6)) for step, value in pairs]


def test_a_train_run_logs_the_same_numbers_to_all_three(workdir: Path, dataset_dir: Path):
    assert main([*TRAIN, "--dataset", str(dataset_dir), "--out-dir", "run",
                 "--log-to", "tensorboard", "--log-to", "wandb,mlflow"]) == 0  # repeated and comma-separated
    run = workdir / "run"
    val, loss = metrics(run, "eval", "val_loss"), metrics(run, "train", "loss")
    assert [s for s, _ in val] == [0, 10, 20] and [s for s, _ in loss] == [5, 10, 15, 20]

    events = tensorboard(run)
    assert tb_scalars(events, "eval/val_loss") == approx(val)
    assert tb_scalars(events, "train/loss") == approx(loss)
    image = events.Images("loss")[-1]
    assert image.step == 20 and image.encoded_image_string == (run / "loss.png").read_bytes()
    hparams = tb_hparams(events)
    assert hparams["model.n_embd"] == 32 and hparams["train.log_to"] == "tensorboard,wandb,mlflow"

    records = wandb_records(run)
    assert wandb_history(records, "eval/val_loss") == approx(val)
    assert wandb_history(records, "train/loss") == approx(loss)
    config = next(r["run"]["config"]["update"] for r in records if r["type"] == "run")
    assert config["model"]["n_embd"] == 32 and config["train"]["max_iters"] == 20
    assert wandb_history(records, "loss._type") == [(20, "image-file")]  # the plot, copied into the run's files
    (image_path,) = [v for _, v in wandb_history(records, "loss.path")]
    copied = next((run / "wandb").glob("offline-run-*")) / "files" / image_path
    assert copied.read_bytes() == (run / "loss.png").read_bytes()

    client, logged = mlflow_run(workdir)
    history = client.get_metric_history(logged.info.run_id, "eval/val_loss")
    assert [(m.step, m.value) for m in history] == approx(val)
    assert logged.data.params["model.n_embd"] == "32" and logged.info.status == "FINISHED"
    assert logged.info.run_name == "run"
    assert [a.path for a in client.list_artifacts(logged.info.run_id, "plots")] == ["plots/loss.png"]
    ids = json.loads((run / "trackers.json").read_text())
    assert ids["mlflow"]["run_id"] == logged.info.run_id and ids["wandb"]


def test_a_resumed_run_continues_the_same_tracker_runs(workdir: Path, dataset_dir: Path):
    common = [*TRAIN, "--dataset", str(dataset_dir), "--out-dir", "run", "--keep-last", "5"]
    assert main([*common, "--log-to", "tensorboard,mlflow", "--stop-at", "17"]) == 0
    run = workdir / "run"
    # A kill -9 after step 15 was logged but before its checkpoint: latest.json still at step 10.
    for step in (15, 17):
        shutil.rmtree(run / "checkpoints" / f"step-{step:08d}")
    (run / "latest.json").write_text(json.dumps({"checkpoint": "checkpoints/step-00000010", "step": 10}))
    assert main(["train", "--resume", "run", "--no-progress", "--sample-chars", "0"]) == 0  # the config's log_to
    loss = metrics(run, "train", "loss")
    assert [s for s, _ in loss] == [5, 10, 15, 20]  # metrics.jsonl: cut back to step 10, then on

    # TensorBoard hides what the first part logged past the resumed step (15): one value per step.
    events = tensorboard(run)
    assert tb_scalars(events, "train/loss") == approx(loss)
    assert [s for s, _ in tb_scalars(events, "eval/val_loss")] == [0, 10, 20]

    client, logged = mlflow_run(workdir)  # one run, not two
    steps = [m.step for m in client.get_metric_history(logged.info.run_id, "train/loss")]
    assert sorted(set(steps)) == [5, 10, 15, 20] and logged.info.status == "FINISHED"


def test_dpo_and_reward_runs_log_through_the_same_path(workdir: Path):
    from quillgpt.posttrain.dpo import DPOConfig, train_dpo
    from quillgpt.posttrain.reward import RewardConfig, train_reward_model
    from test_rl import parity_pairs, tiny_chat_run

    pairs = str(parity_pairs(workdir / "pairs.jsonl", 100))
    config = DPOConfig(data=pairs, val_pairs=10, steps=4, batch_size=4, eval_interval=2, eval_questions=2,
                       out_dir=str(workdir / "dpo"), log_to="tensorboard,wandb")
    train_dpo(tiny_chat_run(workdir), config, progress=False)
    events = tensorboard(workdir / "dpo")
    assert tb_scalars(events, "eval/pair_margin") == approx(metrics(workdir / "dpo", "eval", "pair_margin"))
    assert tb_scalars(events, "train/loss") == approx(metrics(workdir / "dpo", "train", "loss"))
    assert events.Images("dpo")[-1].encoded_image_string == (workdir / "dpo" / "dpo.png").read_bytes()
    assert tb_hparams(events)["beta"] == pytest.approx(0.1)
    records = wandb_records(workdir / "dpo")
    assert wandb_history(records, "train/loss") == approx(metrics(workdir / "dpo", "train", "loss"))

    reward = RewardConfig(data=pairs, val_pairs=10, steps=4, batch_size=4, eval_interval=2,
                          out_dir=str(workdir / "rm"), log_to="mlflow")
    train_reward_model(tiny_chat_run(workdir), reward, progress=False)
    client, logged = mlflow_run(workdir)
    history = client.get_metric_history(logged.info.run_id, "eval/val_accuracy")
    assert [(m.step, m.value) for m in history] == approx(metrics(workdir / "rm", "eval", "val_accuracy"))
    assert logged.data.params["steps"] == "4" and logged.data.params["from"].endswith("policy")


def test_a_missing_package_is_a_one_line_error_naming_the_extra(workdir: Path, dataset_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(TrackerError, match=r"^--log-to wandb needs the wandb package: pip install -e '\.\[track\]'"):
        require("wandb")
    assert main([*TRAIN, "--dataset", str(dataset_dir), "--out-dir", "run", "--log-to", "wandb"]) == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[track]'" in err and len(err.strip().splitlines()) == 1
    assert not (workdir / "run").exists()  # refused before the run directory was made

    for name in ("torch.utils.tensorboard", "tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(TrackerError, match="tensorboard package"):
        open_trackers("tensorboard", workdir / "other", {})


def test_unknown_tracker_names_are_refused(workdir: Path, dataset_dir: Path, capsys):
    with pytest.raises(ConfigError, match="'comet' is not a tracker: use tensorboard, wandb, mlflow"):
        TrainConfig(log_to="tensorboard,comet").validate()
    assert main([*TRAIN, "--dataset", str(dataset_dir), "--out-dir", "run", "--log-to", "tensorbord"]) == 2
    assert "'tensorbord' is not a tracker" in capsys.readouterr().err


def test_wandb_runs_offline_unless_logged_in_or_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_mode() == "offline"  # no key, no netrc file
    import wandb

    host = urlparse(wandb.Settings().base_url).hostname  # where this wandb's `wandb login` writes the key
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert wandb_mode() == ("online" if host == "api.wandb.ai" else "offline")  # another server's key
    (tmp_path / "netrc").write_text(f"machine {host}\n  login user\n  password " + "k" * 40 + "\n")
    assert wandb_mode() == "online"  # what `wandb login` writes
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode() == "offline"  # WANDB_MODE wins
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / "netrc").write_text("machine example.com\n  login user\n  password x\n")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode() == "online"


def test_the_core_install_has_no_tracker_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    trackers = ("tensorboard", "wandb", "mlflow")
    assert not [d for d in project["dependencies"] if d.lower().startswith(trackers)]
    assert sorted(d.split(">")[0].split("=")[0] for d in project["optional-dependencies"]["track"]) == \
        ["mlflow-skinny", "tensorboard", "wandb"]
    assert ".[dev,export,track]" in (ROOT / "Makefile").read_text()
    # and importing quill, the trainer and the post-training loops loads none of them
    code = ("import sys, quillgpt.cli, quillgpt.train, quillgpt.posttrain.dpo, quillgpt.posttrain.rl; "
            "print([m for m in ('wandb', 'mlflow', 'tensorboard') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
