"""The Optuna sweeper (hparams_search=...): trials as Hydra jobs, study in SQLite, failures, pruning, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from tests.conftest import run_cli
from tests.test_cli import run_dirs

SWEEP = [
    "-m",
    "hparams_search=mnist_optuna",
    "hydra.sweeper.n_trials=3",
    "extras.print_config=false",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "data.val_size=100",
    "data.batch_size=64",  # a fixed value on the command line takes the key out of the search space
    "trainer.max_epochs=2",
    "logger=csv",
]


def study_of(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name="mnist_simple_cnn", storage=f"sqlite:///{sweep / 'optuna.db'}")


def summary_rows(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def test_failed_trials_are_recorded_and_pruned_trials_stop_early(tmp_path, datasets):
    args = [
        *SWEEP,
        "model.net.dropout=choice(0.1,2.0)",  # dropout 2.0 cannot be built: those trials fail
        # a pruner that stops every trial after its first epoch (val/acc < 1.1)
        "hydra/sweeper/pruner=none",
        "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
        "+hydra.sweeper.pruner.lower=1.1",
    ]
    result = run_cli("train.py", args, cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = run_dirs(tmp_path, "multiruns")
    trials = study_of(sweep).trials
    assert [t.number for t in trials] == [0, 1, 2]
    for trial in trials:
        job = sweep / str(trial.number)
        assert (
            f"model.net.dropout={trial.params['model.net.dropout']}" in (job / ".hydra" / "overrides.yaml").read_text()
        )
        if trial.params["model.net.dropout"] == 2.0:
            assert trial.state == TrialState.FAIL and not (job / "metrics.json").exists()
        else:
            assert trial.state == TrialState.PRUNED and trial.user_attrs["pruned_at_epoch"] == 0
            assert list(trial.intermediate_values) == [0]
            last = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)
            assert last["epoch"] == 0  # stopped after one of two epochs
    statuses = {row["job"]: row["status"] for row in summary_rows(sweep)}
    assert statuses == {str(t.number): "failed" if t.state == TrialState.FAIL else "done" for t in trials}


def test_killed_sweep_resumes_without_repeating_finished_trials(tmp_path, datasets):
    # trial 1 is killed in its second epoch (7 steps per epoch), with the whole sweep process
    kill = ["+callbacks.kill._target_=tests.interrupt.KillAtStep", "+callbacks.kill.step=10", "+callbacks.kill.job=1"]
    result = run_cli("train.py", SWEEP + kill, cwd=tmp_path, data_dir=datasets)
    assert result.returncode == -9
    (sweep,) = run_dirs(tmp_path, "multiruns")
    assert [t.state for t in study_of(sweep).trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    first = (sweep / "0" / "metrics.json").stat().st_mtime_ns

    result = run_cli("train.py", [*SWEEP, f"resume={sweep}"], cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    assert run_dirs(tmp_path, "multiruns") == [sweep]
    trials = study_of(sweep).trials
    assert [(t.number, t.state) for t in trials] == [(n, TrialState.COMPLETE) for n in range(3)]
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == first  # not run again
    # the interrupted trial continued from its last checkpoint, in its own folder, with its own parameters
    assert "continuing interrupted trials [1]" in result.stderr + result.stdout
    assert torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 14
    assert trials[2].params != trials[0].params
    # each trial's value is what its job returned: the run's optimized_metric
    for trial in trials:
        metrics = json.loads((sweep / str(trial.number) / "metrics.json").read_text())
        assert trial.value == metrics["val/acc_best"]
    assert [row["status"] for row in summary_rows(sweep)] == ["done"] * 3


def test_hparams_search_configs_compose_into_search_spaces():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from hydra_plugins.visiontrain_optuna.optuna_sweeper import search_space
    from visiontrain.runs.config import CONFIG_DIR

    for option, pruner in (
        ("mnist_optuna", optuna.pruners.MedianPruner),
        ("cifar10_optuna", optuna.pruners.HyperbandPruner),
    ):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[f"hparams_search={option}"], return_hydra_config=True)
        sweeper = cfg.hydra.sweeper
        assert sweeper._target_.endswith("visiontrain_optuna.optuna_sweeper.OptunaSweeper")
        assert sweeper.direction == "max" and cfg.optimized_metric == "val/acc_best"
        assert isinstance(instantiate(sweeper.sampler), optuna.samplers.TPESampler)
        assert isinstance(instantiate(sweeper.pruner), pruner)
        assert cfg.callbacks.optuna_pruning.monitor == "val/acc"
        space, fixed = search_space(dict(sweeper.params), ["data.batch_size=64", "seed=1,2"])
        assert space["model.optimizer.lr"].log and isinstance(space["model.optimizer.lr"], FloatDistribution)
        assert "data.batch_size" not in space and fixed == ["data.batch_size=64"]
        assert space["seed"] == CategoricalDistribution([1, 2])
