"""What an Optuna sweep leaves in its folder for reading: plots of the search and the best trial as a config.

- ``<sweep dir>/optuna/``: ``history.png`` (the metric per trial and the best so far), ``importances.png``
  (fANOVA parameter importances), ``parallel_coordinate.png``, ``slice.png`` (the metric against each parameter);
  a plot that cannot say anything yet (too few completed trials, no parameter that varies) is skipped with a
  log line.
- A study of several objectives (``direction: [maximize, minimize]``) draws ``pareto_front.png`` and each plot above
  once per objective (``history_<metric>.png``, ...), and writes each trial of its Pareto front as
  ``<sweep dir>/pareto/trial_<number>.yaml`` in place of best.yaml.
- ``<sweep dir>/best.yaml``: the best trial's command line as a primary config (``defaults: [train, override
  <group>: <option>, ...]`` then the values), so that
  ``python train.py --config-dir <sweep dir> --config-name best`` trains that trial again, and more overrides can
  follow. It is a primary config rather than ``experiment=best``: an experiment cannot override the groups
  after it in train.yaml's defaults (``hparams_search``, ``debug``), nor another experiment, which
  ``hparams_search=cifar10_optuna`` selects.

The Optuna sweeper calls :func:`write_study_report` when a sweep (or a resumed one) ends. It needs only the
study: each trial holds the overrides its job was launched with (user attribute ``overrides``) and the study the
metric's name, so a study loaded from its storage can be reported again.
"""

from __future__ import annotations

import argparse
import csv
import logging
import shlex
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from visiontrain.sweeps.storage import open_storage, printable, storage_address

log = logging.getLogger("visiontrain")

# trial user attribute: the overrides of the trial's job, as the sweeper launched it
OVERRIDES = "overrides"
# trial user attributes: the trial's job folder and the machine it ran on (a study may span many workers)
JOB_DIR, HOST = "job_dir", "host"
# study user attribute: the sweep's config folders beyond visiontrain's (--config-dir), as search path URLs
SEARCH_PATH = "searchpath"
PLOTS_FOLDER = "optuna"
# every trial of the study, whichever worker ran it: number, state, value, where it ran, parameters
TRIALS_TABLE = "trials.csv"
BEST_CONFIG = "best.yaml"
# several objectives: one config per trial of the Pareto front, in this folder of the sweep
PARETO_FOLDER = "pareto"
# launch mechanics rather than the trial's configuration: resume=<sweep dir> continues the sweep's folders
NOT_REPRODUCED = {"resume"}
# a rerun of the best trial is one training run, not part of the study: its pruning callback (from the
# hparams_search configs) has no trial to report to
NO_PRUNING = "++callbacks.optuna_pruning=null"


@dataclass
class StudyReport:
    plots: list[Path] = field(default_factory=list)
    best_config: Path | None = None
    # several objectives: the Pareto front's trials as configs, in trial order
    pareto_configs: list[Path] = field(default_factory=list)
    # the best trial's (or the front's first trial's) overrides, and the arguments that run its config, after
    # ``python train.py``
    overrides: list[str] = field(default_factory=list)
    config_command: list[str] = field(default_factory=list)


def hydra_text(value: Any) -> str:
    """A choice() value as Hydra's override grammar writes it: ``null``, ``true``, ``0.5``, ``[32,64,64]``."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return repr(value)
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def is_list_text(value: Any) -> bool:
    """Whether a sampled value is a list or dict choice, which the study holds as its Hydra text (Optuna's
    categorical values are numbers, strings, booleans or null)."""
    if not isinstance(value, str) or not value.startswith(("[", "{")):
        return False
    try:
        return isinstance(OverridesParser.create().parse_override(f"x={value}").value(), (list, dict))
    except Exception:
        return False


def trial_overrides(params: dict[str, Any]) -> list[str]:
    """``key=value`` overrides of a trial's sampled parameters, as Hydra reads them back."""
    parser = OverridesParser.create()
    overrides = []
    for key, value in params.items():
        text = value if isinstance(value, str) else hydra_text(value)
        if isinstance(value, str) and not is_list_text(value):
            try:  # a string Hydra would read differently is quoted
                if parser.parse_override(f"{key}={text}").value() != value:
                    text = repr(value)
            except Exception:
                text = repr(value)
        overrides.append(f"{key}={text}")
    return overrides


def write_study_report(
    study: optuna.Study,
    sweep_dir: str | Path,
    fixed_overrides: Sequence[str] = (),
    is_group: Callable[[str], bool] | None = None,
    config_name: str = "train",
) -> StudyReport:
    """Draw the study's plots into ``<sweep dir>/optuna/`` and write the best trial to ``<sweep dir>/best.yaml``.

    ``fixed_overrides``: the sweep's non-swept overrides, for trials that do not hold their own (studies from
    before the sweeper recorded them). ``is_group``: tells a config group (``model/optimizer``) from a key, as
    the sweep's Hydra config loader sees them; by default visiontrain's configs and the study's search path.
    ``config_name``: the sweep's primary config, which best.yaml starts from.
    """
    sweep_dir = Path(sweep_dir).resolve()
    names = objective_names(study)
    report = StudyReport(plots=write_plots(study, sweep_dir / PLOTS_FOLDER, names))
    write_trials_table(study, sweep_dir / PLOTS_FOLDER / TRIALS_TABLE)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        log.info("no completed trial in study %r: no %s", study.study_name, BEST_CONFIG)
        return report
    # configs of the sweep's own folders are found again through the search path (in best.yaml: hydra.searchpath)
    search_path = list(study.user_attrs.get(SEARCH_PATH) or [])
    groups = is_group or project_groups(search_path)
    directions = ", ".join(d.name.lower() for d in study.directions)
    counted = f"{len(complete)} of {len(study.trials)} trials completed"

    def write(trial: FrozenTrial, path: Path, title: str) -> None:
        overrides = runnable_overrides(
            trial.user_attrs.get(OVERRIDES) or [*fixed_overrides, *trial_overrides(trial.params)]
        )
        if search_path:
            overrides.insert(0, "hydra.searchpath=[" + ",".join(f"'{url}'" for url in search_path) + "]")
        overrides.append(NO_PRUNING)
        config, left = primary_config(overrides, groups, config_name)
        command = ["--config-dir", str(path.parent), "--config-name", path.stem, *left]
        header = [title, command_line(command), "trains it again (further overrides may follow); the same run as "
                  "overrides:", command_line(overrides)]  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"# {line}\n" for line in header) + OmegaConf.to_yaml(config))
        if not report.overrides:  # the first written is the one the log shows
            report.overrides, report.config_command = overrides, command

    if len(study.directions) == 1:
        best = study.best_trial
        report.best_config = sweep_dir / BEST_CONFIG
        write(best, report.best_config, f"Best trial of the Optuna study {study.study_name}: #{best.number}, "
              f"{names[0]} = {best.value} ({directions}; {counted}).")  # fmt: skip
        return report
    front = sorted(study.best_trials, key=lambda t: t.number)
    for trial in front:
        path = sweep_dir / PARETO_FOLDER / f"trial_{trial.number}.yaml"
        values = ", ".join(f"{name} = {value}" for name, value in zip(names, trial.values))
        write(trial, path, f"Trial #{trial.number} of the Pareto front of the Optuna study {study.study_name} "
              f"({len(front)} trials): {values} ({directions}; {counted}).")  # fmt: skip
        report.pareto_configs.append(path)
    return report


def objective_names(study: optuna.Study) -> list[str]:
    """The study's metric names (``optimized_metric``), else ``value`` (``value 0``, ``value 1``, ...)."""
    if study.metric_names:
        return list(study.metric_names)
    return ["value"] if len(study.directions) == 1 else [f"value {n}" for n in range(len(study.directions))]


def write_trials_table(study: optuna.Study, path: Path) -> None:
    """Every trial of the study in trial order: a shared study's workers each see only their own job folders."""
    trials = study.get_trials(deepcopy=False)
    params = sorted({name for t in trials for name in t.params})
    names = objective_names(study)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "state", *names, "seconds", "retry_of", HOST, JOB_DIR, *params])
        for t in trials:
            seconds = round(t.duration.total_seconds(), 1) if t.duration else ""
            writer.writerow(
                [
                    t.number,
                    t.state.name.lower(),
                    *(t.values or [""] * len(names)),
                    seconds,
                    t.system_attrs.get("failed_trial", ""),
                    t.user_attrs.get(HOST, ""),
                    t.user_attrs.get(JOB_DIR, ""),
                    *(t.params.get(name, "") for name in params),
                ]
            )


def command_line(args: Sequence[str]) -> str:
    return " ".join(["python train.py", *(shlex.quote(a) for a in args)])


def runnable_overrides(overrides: Sequence[str]) -> list[str]:
    """A trial's overrides without those of Hydra itself (``hydra.*``, ``hydra/...``: sweeper, launcher, folders)
    and of the launch (``resume``): what a single run needs to train the same configuration."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [
        override.input_line or str(override)
        for override in parsed
        if not override.is_hydra_override() and override.key_or_group not in NOT_REPRODUCED
    ]


def primary_config(
    overrides: Sequence[str], is_group: Callable[[str], bool], config_name: str = "train"
) -> tuple[Any, list[str]]:
    """A primary config equivalent to ``<config_name> + overrides`` on the command line, read the way Hydra reads
    a command line: a config group's choice goes into the defaults list (``override <group>: <option>``,
    ``+<group>=<option>`` as ``<group>: <option>``, ``~<group>`` as ``override <group>: null``), a value into the
    config (after ``_self_``, so it wins over every config below, as on the command line). Also returned: the
    overrides a config cannot hold (``~key`` deletes a value), to be given on the command line after it."""
    added: list[Any] = []
    # Hydra wants a defaults list's overrides at its end, and the first of two for a group wins there (the last
    # on a command line): one per group, the last given
    chosen: dict[str, Any] = {}
    values = OmegaConf.create({})
    left = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        value = override.value()
        if is_group(key) and not isinstance(value, dict):  # as Hydra tells them apart (defaults_list.Overrides)
            group = f"{key}@{override.package}" if override.package else key
            if override.is_delete():
                chosen[group] = None
            elif override.is_add():
                added.append({group: value})
            else:
                chosen[group] = value
        elif override.is_delete():
            left.append(override.input_line)
        else:
            OmegaConf.update(values, key, value, merge=True, force_add=True)
    overridden = [{f"override {group}": option} for group, option in chosen.items()]
    return OmegaConf.merge({"defaults": [config_name, *added, *overridden, "_self_"]}, values), left


def project_groups(search_path: Sequence[str] = ()) -> Callable[[str], bool]:
    """Whether a name is a config group of visiontrain's configs, or of those in ``search_path`` (URLs such as
    ``file:///home/me/my_configs``, as ``--config-dir`` adds them)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    from visiontrain.runs.config import CONFIG_DIR

    searched = create_config_search_path(CONFIG_DIR)
    for url in search_path:  # where Hydra puts --config-dir: before the structured configs, which stay last
        searched.prepend("command-line", url, SearchPathQuery(provider="schema"))
    loader = ConfigLoaderImpl(config_search_path=searched)
    return lambda name: bool(loader.get_group_options(name))


def write_plots(study: optuna.Study, folder: Path, names: Sequence[str] = ("value",)) -> list[Path]:
    """The study's plots that can be drawn, as PNGs in ``folder``; each one that cannot is skipped with a reason.
    Several objectives: the Pareto front, then each plot once per objective (``history_<metric>.png``)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a sweep may end on a headless node
    import matplotlib.pyplot as plt
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as optuna_plots

    # choice(8, 16, 32) is drawn as categories, which matplotlib announces on every axis
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)

    def per_objective(index: int | None, name: str) -> dict[str, Callable[[], Any]]:
        # one objective: Optuna's own value; several: each objective's value picked out of trial.values
        target = None if index is None else (lambda trial: trial.values[index])
        return {
            "history": lambda: optuna_plots.plot_optimization_history(study, target=target, target_name=name),
            # fANOVA with a fixed seed: the same figure under Optuna 4 and 5 (whose default evaluators differ),
            # and quick (a small random forest: ~0.2 s for 20 trials)
            "importances": lambda: optuna_plots.plot_param_importances(
                study, evaluator=FanovaImportanceEvaluator(seed=0), target=target, target_name=name
            ),
            "parallel_coordinate": lambda: optuna_plots.plot_parallel_coordinate(
                study, target=target, target_name=name
            ),
            "slice": lambda: optuna_plots.plot_slice(study, target=target, target_name=name),
        }

    # file name -> (kind of plot, how to draw it, the objective it shows)
    plots: dict[str, tuple[str, Callable[[], Any], int]] = {}
    if len(study.directions) == 1:
        plots = {kind: (kind, draw, 0) for kind, draw in per_objective(None, names[0]).items()}
    else:
        pareto = lambda: optuna_plots.plot_pareto_front(study, target_names=list(names))  # noqa: E731
        plots["pareto_front"] = ("history", pareto, 0)  # drawable as soon as one trial completed
        for index, name in enumerate(names):
            slug = name.replace("/", "-").replace(" ", "_")
            for kind, draw in per_objective(index, name).items():
                plots[f"{kind}_{slug}"] = (kind, draw, index)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        log.info("Optuna plots not drawn: no completed trial")
        return []
    written = []
    for name, (kind, draw, index) in plots.items():
        reason = not_drawable(kind, complete, index)
        if reason:
            log.info("Optuna plot %s not drawn: %s", name, reason)
            continue
        open_before = set(plt.get_fignums())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # a parameter that kept one value gets a flat axis, which the plot shows well enough
                warnings.filterwarnings("ignore", message="Attempting to set identical")
                axes = draw()
            figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
        except Exception as err:  # a plot is an extra: the sweep's results stand without it
            log.warning("Optuna plot %s not drawn: %s", name, err)
            for number in set(plt.get_fignums()) - open_before:
                plt.close(number)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    if written:
        log.info("Optuna plots written to %s: %s", folder, ", ".join(p.name for p in written))
    return written


def not_drawable(plot: str, complete: Sequence[FrozenTrial], objective: int = 0) -> str | None:
    """Why ``plot`` would say nothing (or fail) for these completed trials (judged on objective number
    ``objective``); None if it can be drawn."""
    if not complete:
        return "no completed trial"
    if plot == "history":
        return None
    names = {name for trial in complete for name in trial.params}
    if not names:
        return "the trials have no parameters"
    if len(complete) < 2:  # one point per parameter says nothing about it
        return "1 completed trial, the plot needs 2"
    if plot == "importances":
        if not any(len({repr(trial.params.get(name)) for trial in complete}) > 1 for name in names):
            return "no parameter varies between the completed trials"
        values = {trial.values[objective] for trial in complete}
        if len(values) == 1:  # fANOVA finds no variance to attribute
            return f"every completed trial scored {values.pop()}"
    return None


# --- the report command -----------------------------------------------------------------------------
REPORT_FROM_STORAGE = """The report of an Optuna study rebuilt from its storage alone: a study shared by many workers
has no single sweep folder that saw every job.

    python -m visiontrain.sweeps.report postgresql://user@host/db mnist_lr [--out outputs/sweep_reports/mnist_lr]
    python -m visiontrain.sweeps.report journal:/shared/nfs/mnist.log mnist_lr

Writes into ``--out`` what a sweep writes at its end: ``optuna/trials.csv`` (every trial, with the worker and job
folder it ran in), ``optuna/*.png`` (the study's plots) and ``best.yaml`` (the best trial as a config), and prints
the commands that train the best trial again.
"""


def report_from_storage(storage: str, study_name: str, out: Path, config_name: str = "train") -> int:
    address = storage_address(storage, out)
    try:
        opened = open_storage(address)
    except Exception as err:  # a wrong URL, a server that does not answer, a missing driver
        print(f"error: cannot open the study storage {printable(address)}: {err}", file=sys.stderr)
        return 1
    names = optuna.get_all_study_names(opened)
    if study_name not in names:
        listed = ", ".join(sorted(names)) or "none"
        print(f"error: no study {study_name!r} in {printable(address)} (studies there: {listed})", file=sys.stderr)
        return 1
    study = optuna.load_study(study_name=study_name, storage=opened)
    result = write_study_report(study, out, config_name=config_name)
    print(f"study {study_name!r}: {len(study.trials)} trials; every trial in {out / PLOTS_FOLDER / TRIALS_TABLE}")
    for plot in result.plots:
        print(f"plot: {plot}")
    if result.pareto_configs:
        print(f"the Pareto front's {len(result.pareto_configs)} trials as configs in {result.pareto_configs[0].parent}")
    if result.best_config:
        print(f"best trial as a config: {result.best_config}; train it again with")
        print(f"\t{command_line(result.config_command)}")
        print(f"or\t{command_line(result.overrides)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m visiontrain.sweeps.report", description=REPORT_FROM_STORAGE.split("\n\n")[0]
    )
    parser.add_argument("storage", help="the sweep's hydra.sweeper.storage: a database URL or journal:<file>")
    parser.add_argument("study", help="the sweep's hydra.sweeper.study_name")
    parser.add_argument("--out", type=Path, help="report folder (default: outputs/sweep_reports/<study>)")
    parser.add_argument("--config-name", default="train", help="the sweep's primary config (default: train)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = (args.out or Path("outputs") / "sweep_reports" / args.study).resolve()
    return report_from_storage(args.storage, args.study, out, args.config_name)


if __name__ == "__main__":
    sys.exit(main())
