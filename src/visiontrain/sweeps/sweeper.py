"""A Hydra sweeper driving an Optuna study (ask and tell), one Hydra job per trial.

- Search space in Hydra's sweep syntax, from ``hydra.sweeper.params`` and sweep overrides on the command line:
  ``choice(a, b)`` / ``a,b`` -> categorical, ``range(lo, hi[, step])`` -> integers (or stepped floats),
  ``interval(lo, hi)`` -> floats (``tag(int, ...)`` for integers), ``tag(log, ...)`` -> log scale.
- The study is stored in SQLite inside the sweep folder, or in ``hydra.sweeper.storage`` (a database URL or a
  journal file, :mod:`visiontrain.sweeps.storage`) shared by many workers running the same command: the study
  is created or joined by name, every worker asks it for the next trial, and the budget ``n_trials`` is the
  study's. A trial's job folder is named by its trial number, unique in the study.
- Workers on a database storage record a heartbeat for the trials they run. Before asking for a trial, a worker
  fails trials whose heartbeat stopped (their worker was killed) and Optuna queues them again with the same
  parameters; when the budget is spent, a worker waits for trials still running elsewhere to finish or go
  stale, so that a killed worker's trial is not left behind.
- A job that raises is told as a failed trial and the sweep goes on; a job its pruning callback stopped
  (``visiontrain.sweeps.pruning``) is told as pruned.
- ``direction: [maximize, minimize]`` makes a multi-objective study: each job returns one value per entry of
  ``optimized_metric`` (a list of the same length), and the study's result is its Pareto front.
- ``sampler: grid`` (Optuna's GridSampler, given as a partial the way the published plugin gives it): the grid is
  every combination of the ``choice()`` and ``range()`` values, and ``n_trials`` is cut to its size.
- ``resume=<sweep dir>``: the study is loaded from that folder (or the storage given); trials the interrupted
  sweep left running (those whose job folder is in this sweep folder) are run again under their number, in
  their folder (the job continues from its last checkpoint), then new trials until the budget is spent.
- At the end (of a resumed sweep too) the whole study is reported (``visiontrain.sweeps.report``): plots in
  ``<sweep dir>/optuna/``, the best trial as ``<sweep dir>/best.yaml``, and the commands that train it again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
import signal
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import InstantiationException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from visiontrain.runs import config
from visiontrain.sweeps.report import (
    HOST,
    JOB_DIR,
    OVERRIDES,
    SEARCH_PATH,
    command_line,
    hydra_text,
    objective_names,
    trial_overrides,
    write_study_report,
)
from visiontrain.sweeps.storage import (
    DEFAULT_STUDY_NAME,
    PRUNED_AT,
    StorageUnavailable,
    has_heartbeat,
    open_storage,
    printable,
    storage_address,
    without_passwords,
)

log = logging.getLogger(__name__)
DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}


class SearchSpaceError(ValueError):
    pass


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (``key=choice(...)``, ``range(...)``, ``interval(...)``)."""
    sweep = override.value()
    tags = getattr(sweep, "tags", set())
    log_scale = "log" in tags
    name = override.get_key_element()
    if isinstance(sweep, ChoiceSweep):
        # lists and dicts (model.net.widths=choice([32,64,64],[64,128,128])) are held as their Hydra text
        choices = [hydra_text(c) if isinstance(c, (list, dict)) else c for c in sweep.list]
        return CategoricalDistribution(choices)
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step or 1
        count = math.ceil((stop - start) / step)  # Python's range: stop excluded
        if count < 1:
            raise SearchSpaceError(f"{name}: range({start}, {stop}, {step}) is empty")
        last = start + (count - 1) * step
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(start, last, log=log_scale, step=1 if log_scale else step)
        return FloatDistribution(start, last, log=log_scale, step=None if log_scale else step)
    if isinstance(sweep, IntervalSweep):
        if "int" in tags:
            return IntDistribution(int(sweep.start), int(sweep.end), log=log_scale)
        return FloatDistribution(sweep.start, sweep.end, log=log_scale)
    raise SearchSpaceError(f"{name}: use choice(), range() or interval() to search over a value")


def search_space(
    params: dict[str, str] | None, arguments: Sequence[str]
) -> tuple[dict[str, BaseDistribution], list[str]]:
    """Distributions of the swept keys (config ``params``, then the command line), and the fixed overrides."""
    parser = OverridesParser.create()
    config_overrides = parser.parse_overrides([f"{key}={value}" for key, value in (params or {}).items()])
    space: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for override in [*config_overrides, *parser.parse_overrides(list(arguments))]:
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            key = override.get_key_element()
            space.pop(key, None)  # a value fixed on the command line wins over the config's search range
            fixed.append(f"{key}={override.get_value_element_as_str()}")
    return space, fixed


def grid_values(name: str, dist: BaseDistribution) -> list[Any]:
    """The values a grid takes for one swept key: a choice's values, a range's steps."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    step = getattr(dist, "step", None)
    if step is None or getattr(dist, "log", False):
        raise SearchSpaceError(
            f"{name}: the grid sampler needs values to try: give choice(...) or range(...), not interval(...)"
        )
    count = int(round((dist.high - dist.low) / step)) + 1
    values = [dist.low + n * step for n in range(count)]
    return [int(v) for v in values] if isinstance(dist, IntDistribution) else [round(v, 12) for v in values]


def directions_of(direction: Any) -> list[str]:
    """``maximize`` / ``[maximize, minimize]`` (and ``max`` / ``min``) as Optuna's direction names."""
    given = list(direction) if isinstance(direction, (list, tuple, ListConfig)) else [direction]
    wrong = [str(d) for d in given if str(d) not in DIRECTIONS]
    if not given or wrong:
        raise SystemExit(
            f"error: hydra.sweeper.direction={direction}: give maximize or minimize, or a list of them "
            "(one per optimized_metric)."
        )
    return [DIRECTIONS[str(d)] for d in given]


def built(node: Any, key: str) -> Any:
    """The sampler or pruner ``hydra.sweeper.<key>`` describes; an argument it does not take (often one an
    hparams_search config set for the sampler it chose, after another was picked on the command line) is one
    sentence."""
    if not isinstance(node, (DictConfig, dict)):
        return node
    try:
        return instantiate(node)
    except InstantiationException as err:
        wrong = re.search(r"unexpected keyword argument '(\w+)'", str(err.__cause__ or err))
        if not wrong:
            raise
        target = str(node.get("_target_", "")).rsplit(".", 1)[-1]
        raise SystemExit(
            f"error: hydra.sweeper.{key}: {target} takes no argument {wrong[1]} (set for another {key} by the "
            f"config?); drop it with ~hydra.sweeper.{key}.{wrong[1]}"
        ) from None


class StudySweeper(Sweeper):
    def __init__(
        self,
        direction: str,
        study_name: str,
        storage: str | None,
        heartbeat_interval: int | None,
        grace_period: int | None,
        max_retry: int | None,
        n_trials: int,
        n_jobs: int,
        params: dict[str, str] | None,
        sampler: Any,
        pruner: Any,
        max_failure_rate: float = 1.0,
        search_space: Any = None,
        custom_search_space: str | None = None,
    ) -> None:
        # checked in sweep(), where a refusal can take back the sweep folder Hydra's config has already made
        self.settings = {"search_space": search_space, "custom_search_space": custom_search_space,
                         "max_failure_rate": max_failure_rate, "direction": direction, "n_trials": n_trials,
                         "n_jobs": n_jobs}  # fmt: skip
        self.study_name = study_name or DEFAULT_STUDY_NAME
        self.storage = storage
        self.heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "max_retry": max_retry,
        }
        self.params = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else params
        self.sampler_config, self.pruner_config = sampler, pruner

    def _check_settings(self) -> None:
        given = self.settings
        for key in ("search_space", "custom_search_space"):
            if given[key]:
                raise SystemExit(
                    f"error: hydra.sweeper.{key} is not read by this sweeper; give the search space as "
                    "hydra.sweeper.params (Hydra's sweep syntax: choice(...), interval(...), range(...))."
                )
        rate = given["max_failure_rate"]
        if not 0.0 <= float(rate) <= 1.0:
            raise SystemExit(f"error: hydra.sweeper.max_failure_rate={rate}: give a share from 0 to 1.")
        self.max_failure_rate = float(rate)
        self.directions = directions_of(given["direction"])
        self.direction = ", ".join(self.directions)
        for key in ("n_trials", "n_jobs"):
            value = given[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SystemExit(f"error: hydra.sweeper.{key}={value}: give a whole number, 1 or more.")
        self.n_trials, self.n_jobs = given["n_trials"], given["n_jobs"]

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(config.hydra.sweep.dir).resolve()

    def sweep(self, arguments: list[str]) -> None:
        # a sweeper's error would reach the user as Hydra's traceback: each refusal exits with its sentence, and
        # the sweep folder is taken back while nothing is in it
        try:
            self._check_settings()
            self._sweep(arguments)
        except SearchSpaceError as err:
            self._remove_empty_sweep_dir()
            raise SystemExit(f"error: the search space: {err}.") from None
        except SystemExit:
            self._remove_empty_sweep_dir()
            raise

    def _remove_empty_sweep_dir(self) -> None:
        with contextlib.suppress(OSError):  # not empty (trials ran) or already gone: kept as it is
            self.sweep_dir.rmdir()

    def _sweep(self, arguments: list[str]) -> None:
        space, fixed = search_space(self.params, arguments)
        if not space:
            raise SearchSpaceError("nothing to search: set hydra.sweeper.params or give a sweep override")
        # what can be refused is refused before anything is written
        sampler = built(self.sampler_config, "sampler")
        if isinstance(sampler, functools.partial) and sampler.func is optuna.samplers.GridSampler:
            grid = {name: grid_values(name, dist) for name, dist in space.items()}
            size = math.prod(len(values) for values in grid.values())
            if size < self.n_trials:
                log.info("grid sampler: %d combinations, so %d trials rather than %d", size, size, self.n_trials)
                self.n_trials = size
            sampler = sampler(grid)
        pruner = built(self.pruner_config, "pruner")
        metrics = config.optimized_metrics(self.config)
        if metrics and len(metrics) != len(self.directions):
            raise SystemExit(
                f"error: optimized_metric names {len(metrics)} metric(s) ({', '.join(metrics)}) but "
                f"hydra.sweeper.direction gives {len(self.directions)} direction(s): give one direction per metric."
            )
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(without_passwords(self.config), self.sweep_dir / "multirun.yaml")
        address = storage_address(self.storage, self.sweep_dir, self.config.hydra.runtime.cwd)
        # opened once: the heartbeats of each batch of trials go through it
        try:
            self.study_storage = storage = open_storage(address, **self.heartbeat)
        except StorageUnavailable as err:
            raise SystemExit(f"error: {err}") from None
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            directions=self.directions,
            load_if_exists=True,
        )
        if len(study.directions) != len(self.directions):
            raise SystemExit(
                f"error: the study {self.study_name!r} in {printable(address)} has {len(study.directions)} "
                f"objective(s); hydra.sweeper.direction gives {len(self.directions)}: name another study_name."
            )
        if study.get_trials(deepcopy=False):
            # a resumed or shared study: a seeded sampler would propose the trials it proposed before again
            study.sampler.reseed_rng()
        if metrics:  # named in the study's plots and reports, also when read from its storage alone
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(metrics)
        # config folders given to this sweep (--config-dir, hydra.searchpath=...): best.yaml searches them too
        sources = self.config.hydra.runtime.config_sources
        study.set_user_attr(SEARCH_PATH, [f"{s.schema}://{s.path}" for s in sources if "command-line" in s.provider])
        log.info(
            "Optuna study %r in %s: %d trials, %d at a time",
            self.study_name,
            printable(address),
            self.n_trials,
            self.n_jobs,
        )
        for name, dist in space.items():
            log.info("\t%s: %s", name, dist)

        try:
            self._run_trials(study, space, fixed)
        except SystemExit as stop:
            # a job stopped by SIGTERM or SIGINT (status 128 + signal, visiontrain.callbacks.signals): its trial stays
            # RUNNING with its checkpoint, so resume=<sweep dir> continues it; what finished is summarised first
            if not isinstance(stop.code, int) or stop.code < 128:
                raise
            log.error(
                "the sweep stopped by %s; summary.csv holds the trials that finished; continue it with the same "
                "command and resume=%s",
                signal.Signals(stop.code - 128).name,
                self.sweep_dir,
            )
            self.hydra_context.callbacks.on_multirun_end(config=self.config)
            raise
        self._finish(study, fixed)

    def _run_trials(self, study: optuna.Study, space: dict[str, BaseDistribution], fixed: list[str]) -> None:
        storage = self.study_storage
        # trials a killed sweep left running in this folder: run again under their number and folder (each
        # continues from its last checkpoint when resume=<sweep dir> is given), before any new trial
        interrupted = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if self._ours(t)]
        if interrupted:
            log.info("continuing interrupted trials %s", [t.number for t in interrupted])
        for frozen in interrupted:
            trial = optuna.trial.Trial(study, frozen._trial_id)
            self._run_batch(study, [trial], fixed)

        said_waiting = False
        while True:
            if has_heartbeat(storage):  # trials of killed workers: failed, and queued again by Optuna's callback
                optuna.storages.fail_stale_trials(study)
            started = budget_spent(study)
            if started < self.n_trials:
                trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - started))]
                self._run_batch(study, trials, fixed)
                said_waiting = False
                self._check_failures(study)
                continue
            elsewhere = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
            if not elsewhere or not has_heartbeat(storage):
                break
            if not said_waiting:
                said_waiting = True
                log.info("budget spent; waiting for trials %s running in other workers to end", elsewhere)
            time.sleep(storage.get_heartbeat_interval())

    def _check_failures(self, study: optuna.Study) -> None:
        """Stop the sweep (its summary and report written) once more than ``max_failure_rate`` of its finished
        trials failed."""
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
        failed = sum(t.state == TrialState.FAIL for t in finished)
        if finished and failed / len(finished) > self.max_failure_rate:
            self.hydra_context.callbacks.on_multirun_end(config=self.config)
            raise SystemExit(
                f"error: {failed} of {len(finished)} finished trials failed, more than hydra.sweeper.max_failure_rate="
                f"{self.max_failure_rate}; their job folders' logs say why (summary.csv lists them)."
            )

    def _finish(self, study: optuna.Study, fixed: list[str]) -> None:
        """The best trial (or, for several objectives, the Pareto front) logged and written to
        optimization_results.yaml under the published plugin's keys; then the report."""
        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            names = objective_names(study)
            if len(self.directions) == 1:
                best = study.best_trial
                log.info("best trial #%d: %s = %s (%s), %s", best.number, names[0], best.value, self.direction,
                         best.params)  # fmt: skip
                results = {"name": "optuna", "best_trial": best.number, "best_params": best.params,
                           "best_value": best.value}  # fmt: skip
            else:
                front = sorted(study.best_trials, key=lambda t: t.number)
                log.info("Pareto front of %s (%s): %d trials", ", ".join(names), self.direction, len(front))
                for t in front:
                    shown = ", ".join(f"{name} = {value:.6g}" for name, value in zip(names, t.values))
                    log.info("\ttrial #%d: %s, %s", t.number, shown, t.params)
                results = {
                    "name": "optuna",
                    "solutions": [{"trial": t.number, "params": t.params, "values": t.values} for t in front],
                }
            OmegaConf.save(OmegaConf.create(results), self.sweep_dir / "optimization_results.yaml")
        try:
            self._report(study, fixed)
        except Exception as err:  # the plots and best.yaml are extras: the study and the jobs' records stand
            log.warning("the study's report (plots, best.yaml) was not written: %s", err)

    def _report(self, study: optuna.Study, fixed: list[str]) -> None:
        """Plots and best.yaml for the whole study (a resumed sweep's earlier trials included)."""
        loader = self.hydra_context.config_loader
        report = write_study_report(
            study,
            self.sweep_dir,
            fixed,
            # a config group has options in this sweep's search path (--config-dir included)
            is_group=lambda name: bool(loader.get_group_options(name)),
            config_name=str(self.config.hydra.job.config_name),
        )
        if report.best_config:
            log.info("the best trial as a config: %s; train it again with", report.best_config)
            log.info("\t%s", command_line(report.config_command))
            log.info("or\t%s", command_line(report.overrides))
        if report.pareto_configs:
            folder = report.pareto_configs[0].parent
            log.info("the Pareto front's trials as configs in %s; train one again with", folder)
            log.info("\t%s", command_line(report.config_command))

    def _ours(self, trial: optuna.trial.FrozenTrial) -> bool:
        """A trial this sweep folder ran (studies from before job folders were recorded: any, in their own SQLite)."""
        job_dir = trial.user_attrs.get(JOB_DIR)
        return Path(job_dir).parent == self.sweep_dir if job_dir else self.storage is None

    def _run_batch(self, study: optuna.Study, trials: list[optuna.trial.Trial], fixed: list[str]) -> None:
        # the launcher numbers jobs from initial_job_idx: consecutive trial numbers go together, so that each
        # job's folder (hydra.job.num) is its trial's number
        groups: list[list[optuna.trial.Trial]] = []
        for trial in sorted(trials, key=lambda t: t.number):
            if groups and groups[-1][-1].number + 1 == trial.number:
                groups[-1].append(trial)
            else:
                groups.append([trial])
        for group in groups:
            overrides = [tuple(fixed + trial_overrides(trial.params)) for trial in group]
            self.validate_batch_is_legal(overrides)
            for trial, launched in zip(group, overrides):
                # kept with the trial, so that its run can be reported (best.yaml) and found from the study alone
                trial.set_user_attr(OVERRIDES, list(launched))
                trial.set_user_attr(JOB_DIR, str(self.sweep_dir / str(trial.number)))
                trial.set_user_attr(HOST, socket.gethostname())
                retried = self.study_storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
                if retried is not None:
                    log.info("trial #%d runs trial #%d again: its worker stopped", trial.number, retried)
            with heartbeats(self.study_storage, group):
                returns = self.launcher.launch(overrides, initial_job_idx=group[0].number)
            for trial, ret in zip(group, returns):
                self._tell(study, trial, ret)

    def _tell(self, study: optuna.Study, trial: optuna.trial.Trial, ret: JobReturn) -> None:
        (stored,) = [t for t in study.get_trials(deepcopy=False) if t.number == trial.number]
        if stored.state != TrialState.RUNNING:  # another worker took it for stale (heartbeats lost for too long)
            log.warning(
                "trial #%d was already told %s by another worker; its result is not recorded",
                trial.number,
                stored.state.name,
            )
            return
        if ret.status != JobStatus.COMPLETED:
            log.warning("trial #%d failed: %s", trial.number, ret._return_value)
            told(study, trial, state=TrialState.FAIL)
            return
        value = ret.return_value
        # written by the job's pruning callback into the storage (the Trial object here holds a cached copy)
        if PRUNED_AT in stored.user_attrs:
            told(study, trial, state=TrialState.PRUNED)
            return
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(values) != len(self.directions) or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in values
        ):
            wanted = "a number" if len(self.directions) == 1 else f"{len(self.directions)} numbers"
            log.warning("trial #%d returned %r, not %s: told as failed", trial.number, value, wanted)
            told(study, trial, state=TrialState.FAIL)
            return
        told(study, trial, [float(v) for v in values] if len(values) > 1 else float(values[0]))


def told(study: optuna.Study, trial: optuna.trial.Trial, *args: Any, **kwargs: Any) -> None:
    """``study.tell``. Optuna's GridSampler calls ``study.stop()`` once its grid is covered, which Optuna allows only
    inside ``optimize()``; the trial is stored before that (``tell`` stores it in a ``finally``) and n_trials is
    already the grid's size, so that one error is let pass."""
    try:
        study.tell(trial, *args, **kwargs)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


def budget_spent(study: optuna.Study) -> int:
    """Trials started or ended, a failed trial queued again counted once (its retry takes its place)."""
    trials = study.get_trials(deepcopy=False)
    retried = {number for t in trials for number in t.system_attrs.get("retry_history", [])}
    return sum(t.state != TrialState.WAITING and t.number not in retried for t in trials)


@contextmanager
def heartbeats(storage: BaseStorage, trials: list[optuna.trial.Trial]) -> Iterator[None]:
    """Record the trials' heartbeats while their jobs run (Optuna's optimize() does this; ask-and-tell must)."""
    if not has_heartbeat(storage):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            for trial in trials:
                try:
                    storage.record_heartbeat(trial._trial_id)
                except Exception as err:  # the database is unreachable for a moment: try again next time
                    log.warning("heartbeat of trial #%d not recorded: %s", trial.number, err)
            if stop.wait(storage.get_heartbeat_interval()):
                return

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
