"""The ``hydra/sweeper=visiontrain_optuna`` config and its sampler and pruner options, registered when Hydra scans
its plugins. Named apart from the published hydra-optuna-sweeper (``hydra/sweeper=optuna``), so that both can be
installed; it takes that plugin's keys (``study_name: null``, ``max_failure_rate``, samplers given by ``_target_``),
so a config written for it (lightning-hydra-template's ``hparams_search``) runs with the sweeper's name changed.

No ``from __future__ import annotations``: Hydra loads plugin modules outside sys.modules, where dataclasses
cannot resolve string annotations.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.visiontrain_optuna.optuna_sweeper.OptunaSweeper"
    # the sampler and pruner are built by the sweeper, which names a wrong argument in one sentence
    _recursive_: bool = False
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    # maximize | minimize (max | min, as monitor_mode says, are accepted); a list for a multi-objective study, one
    # direction per entry of optimized_metric (e.g. [maximize, minimize] for [val/acc_best, model/parameters]):
    # the report then holds the Pareto front
    direction: Any = "maximize"
    # null: "sweep"
    study_name: str | None = None
    # null: sqlite:///<sweep dir>/optuna.db, so the study lives (and resumes) with the sweep's folders;
    # a database URL (postgresql://user@host/db, mysql+pymysql://..., sqlite:///file.db) or journal:<file> is shared
    # by every worker started with the same study_name: each asks the study for its next trial
    storage: str | None = None
    # database storages: each worker records a heartbeat for its running trials this often (seconds; null: off).
    # A trial silent for grace_period (null: twice the interval) is failed and queued again with the same
    # parameters, at most max_retry times (null: always), by the next worker that asks for a trial
    heartbeat_interval: int | None = 60
    grace_period: int | None = None
    max_retry: int | None = 2
    # the study ends with this many trials (complete, pruned or failed; a failed trial queued again counts once),
    # whichever workers ran them
    n_trials: int = 20
    # trials asked and launched together; they run in parallel under a parallel launcher (joblib, submitit)
    n_jobs: int = 1
    # the share of finished trials that may fail before the sweep stops (1.0: it never stops for failures); the
    # published plugin's key, with its meaning
    max_failure_rate: float = 1.0
    # search space in Hydra's sweep syntax, e.g. model.optimizer.lr: tag(log, interval(1e-4, 1e-1))
    params: dict[str, str] = field(default_factory=dict)
    # the published plugin's other ways to give a search space: refused in one sentence (give params)
    search_space: Any | None = None
    custom_search_space: str | None = None
    # filled by the defaults above (MISSING so that the chosen option is not overwritten by this node)
    sampler: Any = MISSING
    pruner: Any = MISSING


SAMPLERS = {
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": None, "n_startup_trials": 10, "multivariate": False},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
    "qmc": {"_target_": "optuna.samplers.QMCSampler", "seed": None, "qmc_type": "sobol", "scramble": True},
    # evolutionary and Gaussian-process samplers; CMA-ES needs the cmaes package (pip install cmaes)
    "nsgaii": {"_target_": "optuna.samplers.NSGAIISampler", "seed": None, "population_size": 50},
    "nsgaiii": {"_target_": "optuna.samplers.NSGAIIISampler", "seed": None, "population_size": 50},
    "cmaes": {"_target_": "optuna.samplers.CmaEsSampler", "seed": None, "n_startup_trials": 1},
    "gp": {"_target_": "optuna.samplers.GPSampler", "seed": None, "n_startup_trials": 10},
    # every combination once: the grid is made from params (choice() and range() values); n_trials is cut to its size
    "grid": {"_target_": "optuna.samplers.GridSampler", "_partial_": True, "seed": None},
}
PRUNERS = {
    # stop a trial whose monitored value is worse than the median of earlier trials at the same epoch
    "median": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5, "n_warmup_steps": 1},
    # successive halving over brackets of epoch budgets
    "hyperband": {"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 1, "max_resource": "auto"},
    "none": {"_target_": "optuna.pruners.NopPruner"},
}

store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="visiontrain_optuna", node=OptunaSweeperConf, provider="visiontrain")
for name, node in SAMPLERS.items():
    store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="visiontrain")
for name, node in PRUNERS.items():
    store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="visiontrain")
