"""Pruning of Optuna trials from inside a training run (``callbacks.optuna_pruning``, see conf/hparams_search/)."""

from __future__ import annotations

import logging
import time

import torch
from lightning import Callback, LightningModule, Trainer

from visiontrain.sweeps.storage import DEFAULT_STUDY_NAME, PRUNED_AT, open_storage, storage_address

log = logging.getLogger("visiontrain")

# user attribute of a trial this callback stopped; the sweeper then tells the trial as pruned


class OptunaPruning(Callback):
    """Report ``monitor`` to the running Optuna trial after every validation and stop training when the pruner says so.

    Written here rather than taken from optuna-integration: its PyTorchLightningPruningCallback needs the
    sweeper's Trial object (our trials run as Hydra jobs, possibly in other processes) and raises TrialPruned
    out of ``trainer.fit``, which would skip testing and the run's records. This one finds its trial from the
    Hydra job (study storage from ``hydra.sweeper``, trial number = job number), stops like EarlyStopping
    (rank 0 decides, every DDP rank stops), and marks the trial so that the sweeper tells it as pruned.
    Outside an Optuna sweep it does nothing.

    ``time_budget`` (seconds, or null): a trial whose training, projected from its epochs so far (validation
    included) to ``trainer.max_epochs``, would take longer is pruned too: the search is for the best accuracy
    within a wall-time budget (hparams_search=cifar10_budget), and a trial over it is no answer however accurate.
    """

    def __init__(self, monitor: str, time_budget: float | None = None) -> None:
        self.monitor = monitor
        self.time_budget = time_budget
        self._trial = None
        self._looked_up = False
        self._fit_start = 0.0

    def _find_trial(self):
        import optuna
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        from hydra.utils import instantiate

        if not HydraConfig.initialized():
            return None
        hydra = HydraConfig.get()
        if hydra.mode != RunMode.MULTIRUN:  # a single run (e.g. a sweep's best.yaml again) is no trial of a study
            return None
        target = str(hydra.sweeper.get("_target_", ""))
        if not target.endswith("visiontrain_optuna.optuna_sweeper.OptunaSweeper"):
            return None
        storage = open_storage(storage_address(hydra.sweeper.get("storage"), hydra.sweep.dir, hydra.runtime.cwd))
        # the pruner is not stored with the study: build the sweep's own from its config
        pruner = instantiate(hydra.sweeper.pruner) if hydra.sweeper.get("pruner") else None
        name = hydra.sweeper.study_name or DEFAULT_STUDY_NAME
        study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
        if len(study.directions) > 1:
            log.info("Optuna prunes studies of one objective only: this trial of %d objectives runs to its end",
                     len(study.directions))  # fmt: skip
            return None
        (frozen,) = [t for t in study.get_trials(deepcopy=False) if t.number == hydra.job.num]
        return optuna.trial.Trial(study, frozen._trial_id)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def projected_seconds(self, trainer: Trainer) -> float:
        """The whole training's wall time at the pace of the epochs done so far."""
        return (time.perf_counter() - self._fit_start) / (trainer.current_epoch + 1) * trainer.max_epochs

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        should_prune = False
        if trainer.is_global_zero:
            if not self._looked_up:
                self._trial, self._looked_up = self._find_trial(), True
            value = trainer.callback_metrics.get(self.monitor)
            if self._trial is not None and value is not None:
                epoch = trainer.current_epoch
                self._trial.report(float(value), step=epoch)
                should_prune = self._trial.should_prune()
                projected = self.projected_seconds(trainer)
                if not should_prune and self.time_budget is not None and projected > self.time_budget:
                    should_prune = True
                    log.info("Optuna trial #%d over its time budget: %.0f s projected for %d epochs, budget %.0f s",
                             self._trial.number, projected, trainer.max_epochs, self.time_budget)  # fmt: skip
                if should_prune:
                    self._trial.set_user_attr(PRUNED_AT, epoch)
                    log.info(
                        "Optuna trial #%d pruned after epoch %d (%s=%.4f)",
                        self._trial.number,
                        epoch,
                        self.monitor,
                        float(value),
                    )
        # every process stops together
        should_prune = trainer.strategy.broadcast(torch.tensor(should_prune)).item()
        trainer.should_stop = trainer.should_stop or bool(should_prune)
