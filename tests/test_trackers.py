"""Experiment trackers beside TensorBoard: logger=mlflow (local SQLite store), logger=wandb (offline), several at once,
a resumed run continuing its tracker run, a multirun's jobs grouped. Nothing here uses the network."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow.tracking import MlflowClient
from omegaconf import open_dict, read_write
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests import formats
from tests.conftest import run_cli, run_process
from tests.test_cli import run_dirs
from visiontrain.runs import loggers
from visiontrain.runs.config import compose_config
from visiontrain.runs.user_errors import user_error_of

RUN = [
    "extras.print_config=false",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "data.val_size=100",
    "data.batch_size=32",
    "model.net.width=8",
    "trainer.log_every_n_steps=1",
]
KILL = ["+callbacks.kill._target_=tests.interrupt.KillAtStep", "+callbacks.kill.step=18"]
# any HTTP(S) request goes to a closed local port and fails at once: a run that needed the network would show it
NO_NETWORK = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
RUN_IDS = "TrackerRunsInCheckpoint"  # the callback's entry in a checkpoint


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> Path:
    return formats.write_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture
def offline_env(tmp_path, monkeypatch) -> None:
    """The tests' own W&B settings and cache folders, and no network (see NO_NETWORK); W&B's mode is left to the
    config."""
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.delenv("WANDB_ERROR_REPORTING", raising=False)
    for name, value in {**NO_NETWORK, **{name.lower(): value for name, value in NO_NETWORK.items()}}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_MODE", raising=False)


def store(cwd: Path) -> MlflowClient:
    """The local MLflow store of the runs started in ``cwd``, as ``mlflow ui`` would open it."""
    assert (cwd / "outputs" / "mlflow.db").is_file()
    return MlflowClient(tracking_uri=f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")


def final_metrics(run: Path) -> dict[str, float]:
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("best_model_path")
    return metrics


def test_mlflow_beside_tensorboard_holds_the_config_and_the_final_metrics(tmp_path, mnist):
    result = run_cli("train.py", [*RUN, "trainer.max_epochs=1", "logger=[tensorboard,mlflow]"], tmp_path, mnist)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(tmp_path)

    client = store(tmp_path)
    experiment = client.get_experiment_by_name("train")  # the task name
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.run_name == run.name and mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.tags["run_dir"] == str(run.resolve()) and "sweep" not in mlflow_run.data.tags
    # artifacts (none without log_model) would go under outputs/, not into an mlruns/ folder where the command ran
    assert Path(experiment.artifact_location) == tmp_path / "outputs" / "mlflow-artifacts" / "train"
    assert not (tmp_path / "mlruns").exists()

    params = mlflow_run.data.params
    assert params["model.net.width"] == "8" and params["data.batch_size"] == "32" and params["task_name"] == "train"
    assert params["lr"] == params["model.optimizer.lr"] == "0.05"  # the short names of TensorBoard's HParams too
    assert params["trainer.max_epochs"] == "1" and not any(key.startswith("hydra") for key in params)

    # the final metrics, by the names metrics.json and TensorBoard use
    assert mlflow_run.data.metrics == pytest.approx(final_metrics(run))
    tensorboard = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    tensorboard.Reload()
    assert set(mlflow_run.data.metrics) == set(tensorboard.Tags()["scalars"])
    # the checkpoint keeps the MLflow run to continue
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["callbacks"][RUN_IDS] == {"mlflow": mlflow_run.info.run_id}


@pytest.mark.process
def test_a_killed_run_resumed_in_place_continues_its_mlflow_run(tmp_path, mnist):
    # SIGKILL in epoch 2 (15 steps per epoch), after the checkpoint of epoch 1: the MLflow run is left "running"
    args = [*RUN, "trainer.max_epochs=2", "logger=mlflow", *KILL]
    result = run_process("train.py", args, tmp_path, mnist)
    assert result.returncode == -9
    (run,) = run_dirs(tmp_path)
    client = store(tmp_path)
    (first,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert first.info.status == "RUNNING"
    # it logged steps after its last checkpoint (step 15): the resumed run trains and logs them again
    assert max(m.step for m in client.get_metric_history(first.info.run_id, "train/loss_step")) >= 15

    result = run_cli("train.py", [f"resume={run}", "callbacks.kill=null"], tmp_path, mnist)
    assert result.returncode == 0, result.stderr[-3000:]

    (resumed,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert resumed.info.run_id == first.info.run_id and resumed.info.status == "FINISHED"
    # the history goes on from the first attempt: both epochs' validation, training steps up to the last
    assert [m.step for m in client.get_metric_history(resumed.info.run_id, "val/acc")] == [14, 29]
    steps = {m.step for m in client.get_metric_history(resumed.info.run_id, "train/loss_step")}
    assert steps == set(range(30))
    assert resumed.data.metrics == pytest.approx(final_metrics(run))
    # params of the first attempt stay; the override the resume added is logged beside them; resume= itself is no
    # param (it would differ from the first attempt's: a warning)
    assert resumed.data.params["callbacks.kill.step"] == "18" and resumed.data.params["callbacks.kill"] == "None"
    assert "resume" not in resumed.data.params and "MLflow keeps" not in result.stdout + result.stderr
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["callbacks"][RUN_IDS] == {"mlflow": first.info.run_id}


def test_wandb_writes_an_offline_run_in_the_run_folder(tmp_path, mnist, offline_env):
    args = [*RUN, "trainer.max_epochs=1", "trainer.limit_train_batches=3", "test=false", "logger=wandb"]
    result = run_cli("train.py", args, tmp_path, mnist)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(tmp_path)

    (offline,) = (run / "wandb").glob("offline-run-*")
    run_id = offline.name.rsplit("-", 1)[-1]
    assert (offline / f"run-{run_id}.wandb").stat().st_size > 0
    assert "wandb sync" in result.stderr + result.stdout
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["callbacks"][RUN_IDS] == {"wandb": run_id}
    # nothing tried to reach W&B (it would have met the closed proxy port), and W&B's service ran without its
    # error reports and telemetry (which otherwise look up their server even offline)
    logs = "".join(path.read_text(errors="replace") for path in (run / "wandb").rglob("*.log"))
    assert "127.0.0.1:9" not in logs and "connection refused" not in logs.lower()
    assert '"disable-analytics":true' in (offline / "logs" / "debug-core.log").read_text()


def test_a_multirun_groups_its_jobs_in_both_trackers(tmp_path, mnist, offline_env):
    args = ["-m", *RUN, "trainer.max_epochs=1", "trainer.limit_train_batches=3", "test=false", "seed=1,2"]
    result = run_cli("train.py", [*args, "logger=[mlflow,wandb]"], tmp_path, mnist)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = run_dirs(tmp_path, "multiruns")

    client = store(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("train").experiment_id], order_by=["params.seed"])
    assert [r.info.run_name for r in runs] == [f"{sweep.name}/0", f"{sweep.name}/1"]
    assert [r.data.tags["sweep"] for r in runs] == [str(sweep.resolve())] * 2
    assert [r.data.params["seed"] for r in runs] == ["1", "2"]

    # each job its own W&B run (the second job did not log into the first job's run)
    wandb_ids = []
    for job in ("0", "1"):
        (offline,) = (sweep / job / "wandb").glob("offline-run-*")
        wandb_ids.append(offline.name.rsplit("-", 1)[-1])
        checkpoint = torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)
        assert checkpoint["callbacks"][RUN_IDS]["wandb"] == wandb_ids[-1]
    assert wandb_ids[0] != wandb_ids[1]


@pytest.fixture
def multirun_job_config(tmp_path):
    """``make(logger)``: the config of job 1 of a multirun in tmp_path/sweep, with Hydra's runtime as that job
    sees it (set back to no Hydra run afterwards, not to leave a multirun behind for other tests)."""

    def make(logger: str):
        overrides = [f"logger={logger}", f"paths.log_dir={tmp_path / 'outputs'}"]
        cfg = compose_config("train", overrides, tmp_path / "sweep" / "1")
        hydra_cfg = HydraConfig.get()
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.mode = RunMode.MULTIRUN
            hydra_cfg.sweep.dir = str(tmp_path / "sweep")
        return cfg

    yield make
    HydraConfig.instance().cfg = None


def test_a_wandb_run_is_offline_named_and_grouped_by_default(tmp_path, offline_env, multirun_job_config):
    cfg = multirun_job_config("wandb")
    (logger,) = loggers.instantiate_loggers(cfg, None)  # the W&B run itself starts only when first logged to
    assert logger._offline and logger._wandb_init["group"] == "sweep" and logger._wandb_init["name"] == "sweep/1"
    assert logger._wandb_init["project"] == "train" and logger.save_dir == str(tmp_path / "sweep/1")


def test_mlflow_params_are_cut_to_its_limit_and_a_logged_one_is_kept(tmp_path, multirun_job_config):
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    cfg = multirun_job_config("mlflow")
    with open_dict(cfg):
        cfg.logger.mlflow.tracking_uri = f"sqlite:///{os.path.relpath(tmp_path / 'mlflow.db')}"  # relative
    (logger,) = loggers.instantiate_loggers(cfg, None)
    assert logger._tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger.log_hyperparams({"model": {"net": {"widths": [16, 32]}}, "note": "x" * (MAX_PARAM_VAL_LENGTH + 10)})
    # logged again with a changed value (a run resumed with other overrides): MLflow would refuse the whole batch
    logger.log_hyperparams({"model": {"net": {"widths": [8, 8]}}, "seed": 3})
    params = logger.experiment.get_run(logger.run_id).data.params
    assert params["model.net.widths"] == "[16, 32]" and params["seed"] == "3"
    assert len(params["note"]) == MAX_PARAM_VAL_LENGTH and params["note"].endswith("...")
    assert logger.experiment.get_run(logger.run_id).data.tags["sweep"] == str(tmp_path / "sweep")


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_a_missing_tracker_package_gets_one_sentence(tmp_path, monkeypatch, package):
    cfg = compose_config("train", [f"logger={package}", f"paths.log_dir={tmp_path}"], tmp_path / "run")
    monkeypatch.setitem(sys.modules, package, None)  # what `import mlflow` meets when it is not installed
    with pytest.raises(Exception) as raised:
        loggers.instantiate_loggers(cfg, None)
    error = user_error_of(raised.value)
    assert error is not None and f'pip install "visiontrain[{package}]"' in str(error)
