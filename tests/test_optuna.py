"""The Optuna sweeper (hparams_search=...): trials as Hydra jobs, study in SQLite, failures, pruning, resume; the
study's report at the end (plots, best.yaml)."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from matplotlib.image import imread
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tests.conftest import run_cli, run_process
from tests.test_cli import run_dirs
from visiontrain.models.simple_cnn import SimpleCNN
from visiontrain.sweeps.report import (
    OVERRIDES,
    SEARCH_PATH,
    not_drawable,
    primary_config,
    project_groups,
    trial_overrides,
    write_study_report,
)

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


PLOTS = ("history", "importances", "parallel_coordinate", "slice")


def assert_png(path: Path) -> None:
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, path


def best_header(sweep: Path) -> str:
    return (sweep / "best.yaml").read_text().splitlines()[0]


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
    # no trial completed: nothing to plot, no best trial, but the table of trials; the sweep still ends well
    assert not (sweep / "best.yaml").exists() and not list((sweep / "optuna").glob("*.png"))
    with (sweep / "optuna" / "trials.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(row["trial"], row["state"]) for row in table] == [(str(t.number), t.state.name.lower()) for t in trials]
    assert [row["job_dir"] for row in table] == [str(sweep.resolve() / str(t.number)) for t in trials]
    assert "Optuna plots not drawn: no completed trial" in result.stdout + result.stderr


@pytest.mark.process
def test_killed_sweep_resumes_without_repeating_finished_trials(tmp_path, datasets):
    # trial 1 is killed in its second epoch (7 steps per epoch), with the whole sweep process
    kill = ["+callbacks.kill._target_=tests.interrupt.KillAtStep", "+callbacks.kill.step=10", "+callbacks.kill.job=1"]
    result = run_process("train.py", SWEEP + kill, cwd=tmp_path, data_dir=datasets)
    assert result.returncode == -9
    (sweep,) = run_dirs(tmp_path, "multiruns")
    assert [t.state for t in study_of(sweep).trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert not (sweep / "best.yaml").exists()  # killed before its end
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
    # the resumed sweep reports the whole study, the first run's trial included
    best = study_of(sweep).best_trial
    summary = f"#{best.number}, val/acc_best = {best.value} (maximize; 3 of 3 trials completed)."
    assert best_header(sweep).endswith(summary)
    check_report(sweep, result.stdout + result.stderr, tmp_path, datasets)


def check_report(sweep: Path, output: str, cwd: Path, data_dir: Path) -> None:
    """The plots a sweep of three completed trials leaves, and a best.yaml that composes its best trial's config."""
    sweep = sweep.resolve()
    study = study_of(sweep)
    best = study.best_trial
    for name in PLOTS:
        path = sweep / "optuna" / f"{name}.png"
        if name == "importances" and len({t.value for t in study.trials}) == 1:  # synthetic data: often all 1.0
            assert not path.exists() and "Optuna plot importances not drawn: every completed trial scored" in output
        else:
            assert_png(path)

    best_yaml = OmegaConf.load(sweep / "best.yaml")
    # group choices in the defaults list (told apart by the sweep's config loader), values in the config; not
    # the sweep's hydra.* overrides, nor resume=<sweep dir>
    assert list(best_yaml.defaults) == [
        "train",
        {"override hparams_search": "mnist_optuna"},
        {"override logger": "csv"},
        "_self_",
    ]
    assert {key: OmegaConf.select(best_yaml, key) for key in best.params} == best.params
    assert "hydra" not in best_yaml and "resume" not in best_yaml
    # both ways to train it again are printed at the end of the sweep
    assert f"python train.py --config-dir {sweep} --config-name best" in output
    assert "python train.py hparams_search=mnist_optuna " in output

    compose_only = ["--config-dir", str(sweep), "--config-name", "best", "--cfg", "job"]
    result = run_cli("train.py", compose_only, cwd=cwd, data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    composed = OmegaConf.create(result.stdout)
    assert {key: OmegaConf.select(composed, key) for key in best.params} == best.params
    # the best trial's job config, but for the pruning callback (a rerun is no trial of the study) and resume
    trial_config = OmegaConf.load(sweep / str(best.number) / ".hydra" / "config.yaml")
    assert trial_config.callbacks.optuna_pruning is not None and composed.callbacks.optuna_pruning is None
    trial_config.callbacks.optuna_pruning = None
    trial_config.resume = None
    assert OmegaConf.to_container(composed) == OmegaConf.to_container(trial_config)


def test_hparams_search_configs_compose_into_search_spaces():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from visiontrain.runs.config import CONFIG_DIR
    from visiontrain.sweeps.sweeper import search_space

    for option, pruner in (
        ("mnist_optuna", optuna.pruners.MedianPruner),
        ("cifar10_optuna", optuna.pruners.HyperbandPruner),
    ):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[f"hparams_search={option}"], return_hydra_config=True)
        sweeper = cfg.hydra.sweeper
        assert sweeper._target_ == "hydra_plugins.visiontrain_optuna.optuna_sweeper.OptunaSweeper"
        assert sweeper.direction == "max" and cfg.optimized_metric == "val/acc_best"
        assert isinstance(instantiate(sweeper.sampler), optuna.samplers.TPESampler)
        assert isinstance(instantiate(sweeper.pruner), pruner)
        assert cfg.callbacks.optuna_pruning.monitor == "val/acc"
        space, fixed = search_space(dict(sweeper.params), ["data.batch_size=64", "seed=1,2"])
        assert space["model.optimizer.lr"].log and isinstance(space["model.optimizer.lr"], FloatDistribution)
        assert "data.batch_size" not in space and fixed == ["data.batch_size=64"]
        assert space["seed"] == CategoricalDistribution([1, 2])

    # the budget search: lists are choices too (held as their Hydra text), and its trials have a time budget
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=cifar10_budget"], return_hydra_config=True)
    assert cfg.callbacks.optuna_pruning.time_budget == 120 and cfg.trainer.precision == "bf16-mixed"
    space, _ = search_space(dict(cfg.hydra.sweeper.params), [])
    widths = space["model.net.widths"]
    assert widths.choices == ("[32,64,64]", "[48,96,96]", "[64,128,128]", "[96,192,192]")
    assert space["trainer.max_epochs"].low == 2 and space["trainer.max_epochs"].high == 6
    (override,) = trial_overrides({"model.net.widths": widths.choices[2]})
    assert override == "model.net.widths=[64,128,128]"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        trial = compose("train", overrides=["experiment=cifar10_92", override])
    assert list(trial.model.net.widths) == [64, 128, 128]
    GlobalHydra.instance().clear()


def test_a_trial_projected_over_its_time_budget_is_pruned():
    import time
    from types import SimpleNamespace

    from visiontrain.sweeps.pruning import OptunaPruning
    from visiontrain.sweeps.storage import PRUNED_AT

    def validated(budget: float | None, epoch: int, seconds: float):
        study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
        callback = OptunaPruning("val/acc", time_budget=budget)
        callback._trial, callback._looked_up = study.ask(), True
        callback._fit_start = time.perf_counter() - seconds
        trainer = SimpleNamespace(
            sanity_checking=False, is_global_zero=True, callback_metrics={"val/acc": torch.tensor(0.5)},
            current_epoch=epoch, max_epochs=10, should_stop=False, strategy=SimpleNamespace(broadcast=lambda t: t),
        )  # fmt: skip
        callback.on_validation_end(trainer, None)
        return trainer.should_stop, callback._trial.user_attrs.get(PRUNED_AT)

    # 2 epochs in 10 s: 50 s projected for 10
    assert validated(None, 1, 10.0) == (False, None)
    assert validated(60.0, 1, 10.0) == (False, None)
    assert validated(40.0, 1, 10.0) == (True, 1)


def study_with(values: list[float | None]) -> optuna.Study:
    """An in-memory study of trials over two parameters, as the sweeper records them (None: a failed trial)."""
    study = optuna.create_study(direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val/acc_best"])
    distributions = {
        "model.optimizer.lr": FloatDistribution(1e-3, 0.1, log=True),
        "model.net.width": CategoricalDistribution([8, 16, 32]),
    }
    for number, value in enumerate(values):
        params = {"model.optimizer.lr": 0.002 * (number + 1), "model.net.width": [8, 16, 32][number % 3]}
        launched = ["trainer.max_epochs=2", "hydra.sweeper.n_trials=9", *trial_overrides(params)]
        state = TrialState.FAIL if value is None else TrialState.COMPLETE
        trial = create_trial(
            params=params, distributions=distributions, value=value, state=state, user_attrs={OVERRIDES: launched}
        )
        study.add_trial(trial)
    return study


def test_study_report_draws_what_the_trials_allow(tmp_path):
    study = study_with([0.5, 0.7, 0.6, None])
    study.set_user_attr(SEARCH_PATH, ["file:///my/configs"])  # the sweep's --config-dir
    # is_group: no config group among these overrides, so no config is read
    report = write_study_report(study, tmp_path / "full", is_group=lambda name: False)
    assert [p.name for p in report.plots] == [f"{name}.png" for name in PLOTS]
    for path in report.plots:
        assert_png(path)
    assert report.best_config == tmp_path / "full" / "best.yaml"
    assert best_header(tmp_path / "full").endswith("#1, val/acc_best = 0.7 (maximize; 3 of 4 trials completed).")
    best_yaml = OmegaConf.load(report.best_config)
    assert best_yaml.model.optimizer.lr == 0.004 and best_yaml.trainer.max_epochs == 2
    assert best_yaml.hydra == {"searchpath": ["file:///my/configs"]}
    assert report.overrides == [
        "hydra.searchpath=['file:///my/configs']",
        "trainer.max_epochs=2",
        "model.optimizer.lr=0.004",
        "model.net.width=16",
        "++callbacks.optuna_pruning=null",
    ]

    report = write_study_report(study_with([None]), tmp_path / "none", is_group=lambda name: False)
    assert report.plots == [] and report.best_config is None
    assert [p.name for p in (tmp_path / "none").rglob("*")] == ["optuna", "trials.csv"]  # the table only
    # what is not drawn, and why (logged)
    one = study_with([0.5, None]).get_trials(states=(TrialState.COMPLETE,))
    assert not_drawable("history", one) is None
    assert not_drawable("slice", one) == "1 completed trial, the plot needs 2"
    flat = study_with([0.5, 0.5]).get_trials()
    assert not_drawable("importances", flat) == "every completed trial scored 0.5"
    assert not_drawable("parallel_coordinate", flat) is None
    same = [
        create_trial(params={"seed": 1}, distributions={"seed": CategoricalDistribution([1, 2])}, value=v)
        for v in (1, 2)
    ]
    assert not_drawable("importances", same) == "no parameter varies between the completed trials"


@pytest.mark.parametrize(
    "overrides",
    [
        # hparams_search=cifar10_optuna selects an experiment itself: why best.yaml is a primary config
        ["hparams_search=cifar10_optuna", "model/optimizer=adamw", "model.optimizer.lr=0.5", "trainer.max_epochs=2"],
        # +key, ~key (given on the command line after the config), a group chosen twice, a list value
        [
            "experiment=mnist_simple_cnn",
            "+callbacks.kill.step=10",
            "~callbacks.lr_monitor",
            "logger=csv",
            "logger=none",
        ],
        ["hparams_search=mnist_optuna", "debug=fdr", "tags=[a,b]", "model.net.dropout=0.25"],
        # a group of the user's own configs (--config-dir, as the sweep's search path gives it back)
        ["hydra.searchpath=['file://MINE']", "+extra=foo", "model.net.width=8"],
    ],
)
def test_primary_config_composes_as_its_command_line(tmp_path, overrides):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.types import RunMode
    from omegaconf import open_dict

    from visiontrain.runs.config import CONFIG_DIR

    mine = tmp_path / "mine"
    (mine / "extra").mkdir(parents=True)
    (mine / "extra" / "foo.yaml").write_text("# @package _global_\nfoo: 1\n")
    overrides = [o.replace("MINE", str(mine)) for o in overrides]
    config, left = primary_config(overrides, project_groups([f"file://{mine}"]))
    (tmp_path / "best.yaml").write_text(OmegaConf.to_yaml(config))
    search_path = create_config_search_path(CONFIG_DIR)
    search_path.prepend("command-line", f"file://{tmp_path}", SearchPathQuery(provider="schema"))
    loader = ConfigLoaderImpl(config_search_path=search_path)

    def composed(config_name: str, overrides: list[str]) -> tuple[dict, dict]:
        cfg = loader.load_configuration(config_name, overrides=overrides, run_mode=RunMode.RUN)
        choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra/")}
        with open_dict(cfg):
            del cfg["hydra"]
        return OmegaConf.to_container(cfg), choices

    assert composed("best", left) == composed("train", overrides)


# lightning-hydra-template's configs/hparams_search/mnist_optuna.yaml as it is written, with the sweeper's name (its
# defaults entry and _target_) changed to ours and the search space over our simple_cnn's keys; two trials
LHT_STYLE = """\
# @package _global_

defaults:
  - override /hydra/sweeper: visiontrain_optuna

optimized_metric: "val/acc_best"

hydra:
  mode: "MULTIRUN"

  sweeper:
    _target_: hydra_plugins.visiontrain_optuna.optuna_sweeper.OptunaSweeper
    storage: null
    study_name: null
    n_jobs: 1
    direction: maximize
    n_trials: 2
    sampler:
      _target_: optuna.samplers.TPESampler
      seed: 1234
      n_startup_trials: 10
    params:
      model.optimizer.lr: interval(0.0001, 0.1)
      data.batch_size: choice(32, 64)
      model.net.width: choice(4, 8)
"""


def test_a_lightning_hydra_template_search_runs_with_only_the_sweepers_name_changed(tmp_path, datasets):
    (tmp_path / "my_configs" / "hparams_search").mkdir(parents=True)
    (tmp_path / "my_configs" / "hparams_search" / "lht_style.yaml").write_text(LHT_STYLE)
    args = ["--config-dir=my_configs", "hparams_search=lht_style", "trainer.max_epochs=1", "data.val_size=100",
            "logger=csv", "extras.print_config=false", "callbacks.progress_bar=null"]  # fmt: skip
    result = run_cli("train.py", args, cwd=tmp_path, data_dir=datasets)  # no -m: the config says MULTIRUN
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = run_dirs(tmp_path, "multiruns")
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    assert {t.params["model.net.width"] for t in study.trials} <= {4, 8}
    assert (sweep / "best.yaml").is_file() and len(summary_rows(sweep)) == 2


def test_the_sweep_stops_once_more_trials_fail_than_max_failure_rate_allows(tmp_path, datasets):
    args = [*SWEEP, "model.net.dropout=2.0", "hydra.sweeper.max_failure_rate=0.5"]  # every trial fails
    result = run_cli("train.py", args, cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 1
    assert "error: 1 of 1 finished trials failed, more than hydra.sweeper.max_failure_rate=0.5" in result.stderr
    (sweep,) = run_dirs(tmp_path, "multiruns")
    assert [t.state for t in study_of(sweep).trials] == [TrialState.FAIL]  # no trial asked after it
    assert (sweep / "summary.csv").is_file()


def test_a_study_of_two_objectives_on_a_grid_reports_its_pareto_front(tmp_path, datasets):
    args = ["-m", "hparams_search=mnist_pareto", "hydra/sweeper/sampler=grid", "model.net.width=choice(4,8)",
            "model.net.hidden=32", "model.optimizer.lr=0.05", "trainer.max_epochs=1", "data.val_size=100",
            "logger=csv", "extras.print_config=false", "callbacks.progress_bar=null",
            "callbacks.model_summary=null"]  # fmt: skip
    result = run_cli("train.py", args, cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "grid sampler: 2 combinations, so 2 trials rather than 20" in result.stdout + result.stderr
    (sweep,) = run_dirs(tmp_path, "multiruns")
    study = optuna.load_study(study_name="mnist_pareto", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val/acc_best", "model/parameters"]
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.params["model.net.width"] for t in trials) == [4, 8]  # the grid, each point once
    for t in trials:  # each trial told what its run measured: the accuracy, and its network's size
        run = json.loads((sweep / str(t.number) / "metrics.json").read_text())
        net = SimpleCNN(in_channels=1, num_classes=10, image_size=28, width=t.params["model.net.width"], hidden=32)
        assert t.values == [run["val/acc_best"], float(sum(p.numel() for p in net.parameters()))]
    # the front: the trials no other trial beats on both objectives
    front = {
        t.number
        for t in trials
        if not any(o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values for o in trials)
    }
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert {s.trial for s in results.solutions} == front and "best_value" not in results
    assert {p.stem for p in (sweep / "pareto").glob("*.yaml")} == {f"trial_{n}" for n in front}
    assert not (sweep / "best.yaml").exists()
    for name in ("pareto_front", "history_val-acc_best", "history_model-parameters", "slice_model-parameters"):
        assert_png(sweep / "optuna" / f"{name}.png")
    with (sweep / "optuna" / "trials.csv").open() as f:
        assert next(csv.reader(f))[2:4] == ["val/acc_best", "model/parameters"]
    rows = summary_rows(sweep)  # ranked by the first objective
    assert [float(r["val/acc_best"]) for r in rows] == sorted((t.values[0] for t in trials), reverse=True)


@pytest.mark.parametrize(
    ("override", "sentence"),
    [
        ("hydra.sweeper.direction=[maximize,minimize]",
         "error: optimized_metric names 1 metric(s) (val/acc_best) but hydra.sweeper.direction gives 2 direction(s)"),
        ("hydra.sweeper.direction=upward", "error: hydra.sweeper.direction=upward: give maximize or minimize"),
        ("hydra/sweeper/sampler=grid",
         "error: the search space: model.optimizer.lr: the grid sampler needs values to try: give choice(...)"),
        # mnist_optuna sets TPE's n_startup_trials; another sampler picked on the command line does not take it
        ("hydra/sweeper/sampler=random",
         "error: hydra.sweeper.sampler: RandomSampler takes no argument n_startup_trials (set for another sampler by "
         "the config?); drop it with ~hydra.sweeper.sampler.n_startup_trials"),
    ],
)  # fmt: skip
def test_a_study_that_cannot_be_set_up_is_one_sentence(tmp_path, datasets, override, sentence):
    result = run_cli("train.py", [*SWEEP, override], cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 1 and sentence in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    sweeps = tmp_path / "outputs" / "train" / "multiruns"
    assert sweeps.is_dir() and not list(sweeps.iterdir())  # the sweep folder was made (Hydra's config) and taken back
