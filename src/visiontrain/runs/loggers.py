"""Loggers of our own (everything else comes from ``lightning.pytorch.loggers``): TensorBoard without the epoch
scalar, and the experiment trackers MLflow and W&B set up for visiontrain's runs (visiontrain.runs.trackers)."""

from __future__ import annotations

import logging
import os
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from visiontrain.runs import trackers

log = logging.getLogger("visiontrain")


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger without the ``epoch`` scalar Lightning adds to every logging call.

    TensorBoard plots against the step; the epoch staircase only pushed itself to the top of the scalars
    page, above the train/val/test curves (the epoch is in every checkpoint and in the per-epoch log lines).
    """

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        super().log_metrics({name: value for name, value in metrics.items() if name != "epoch"}, step)


class MLFlowLogger(LightningMLFlowLogger):
    """Lightning's MLflow logger for visiontrain's runs (conf/logger/mlflow.yaml).

    - A local store named by a relative path (``sqlite:///outputs/mlflow.db``) is opened by its absolute path,
      and it is created (and the experiment looked up or created) by one process at a time (trackers.store_lock).
    - The run is named after the run folder and tagged with it (``run_dir``); a multirun's jobs are tagged with
      the sweep folder (``sweep``).
    - Params are the flattened config, each value up to MLflow's limit (Lightning cuts at 250 characters). A param
      the run already has is not logged again: MLflow refuses to change one, which a run resumed with other
      overrides would do (config.yaml has the values the run continued with).
    - ``run_id``: continue that run (a run resumed in place); one the store does not hold starts a new run.
    - No ``epoch`` metric, as in TensorBoard: the metrics are those of TensorBoard, plotted against the step.
    """

    def __init__(
        self,
        experiment_name: str,
        tracking_uri: str,
        run_name: str | None = None,
        artifact_location: str | None = None,
        tags: Mapping[str, Any] | None = None,
        log_model: bool | str = False,
        run_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        trackers.require("mlflow")
        tracking_uri = trackers.absolute_sqlite_uri(tracking_uri)
        if artifact_location and "://" not in artifact_location:  # a folder: MLflow keeps it as given
            artifact_location = str(Path(artifact_location).resolve())
        context = trackers.run_context()
        tags = dict(tags or {})
        if context is not None:
            run_name = run_name or context.name
            tags.setdefault("run_dir", str(Path(context.folder).resolve()))
            if context.sweep:
                tags.setdefault("sweep", str(Path(context.sweep).resolve()))
        with trackers.store_lock(tracking_uri):  # Lightning opens the store here, creating it if new
            super().__init__(
                experiment_name=experiment_name,
                run_name=run_name,
                tracking_uri=tracking_uri,
                tags=tags,
                log_model=log_model,
                artifact_location=artifact_location,
                run_id=run_id,
                **kwargs,
            )

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._initialized:
            return self._mlflow_client
        with trackers.store_lock(self._tracking_uri):
            continued = self._run_id
            if continued is not None and not self._active_run(continued):
                log.warning("MLflow run %s is not in %s: this run starts a new one", continued, self._tracking_uri)
                self._run_id = continued = None
            client = super().experiment
        if continued is not None:  # finished or failed when it stopped (or still "running" if killed)
            client.update_run(continued, status="RUNNING")
        return client

    def _active_run(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self._mlflow_client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        params = dict(vars(params) if isinstance(params, Namespace) else params)
        values = trackers.flat_params(params, MAX_PARAM_VAL_LENGTH)
        logged = self.experiment.get_run(self.run_id).data.params
        changed = sorted(key for key, value in values.items() if logged.get(key, value) != value)
        if changed:
            changed_text = ", ".join(changed)
            log.warning("MLflow keeps a run's first params; changed since (see config.yaml): %s", changed_text)
        new = [Param(key, value) for key, value in values.items() if key not in logged]
        for start in range(0, len(new), 100):  # MLflow takes at most 100 params per call
            self.experiment.log_batch(run_id=self.run_id, params=new[start : start + 100], **self._log_batch_kwargs)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = {name: value for name, value in metrics.items() if name != "epoch"}
        if metrics:
            super().log_metrics(metrics, step)


class WandbLogger(LightningWandbLogger):
    """Lightning's Weights & Biases logger for visiontrain's runs (conf/logger/wandb.yaml).

    - Offline unless ``offline=False``: the run is written to ``<save_dir>/wandb/offline-run-*`` and reaches W&B
      only through ``wandb sync``; W&B's own error reports are off then too, unless WANDB_ERROR_REPORTING is set.
    - The run is named after the run folder; a multirun's jobs form a group named after the sweep folder.
    - ``id``: continue that W&B run (a run resumed in place; offline, W&B writes a second folder with that id).
    - A multirun's jobs in one process: a job's logger finishes the W&B run of the job before it, which W&B
      would otherwise keep logging to.
    """

    def __init__(
        self,
        project: str,
        save_dir: str,
        offline: bool = True,
        name: str | None = None,
        group: str | None = None,
        id: str | None = None,
        log_model: bool | str = False,
        **kwargs: Any,
    ) -> None:
        trackers.require("wandb")
        context = trackers.run_context()
        if context is not None:
            name = name or context.name
            group = group or (Path(context.sweep).name if context.sweep else None)
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(
            project=project,
            save_dir=save_dir,
            offline=offline,
            name=name,
            group=group,
            id=id,
            log_model=log_model,
            **kwargs,
        )
        if self._wandb_init.get("anonymous") is None:  # Lightning passes None, which W&B warns about
            del self._wandb_init["anonymous"]

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            import wandb

            if self._offline:  # nothing leaves the machine without the user's word, W&B's error reports neither
                os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
            if wandb.run is not None:  # the previous multirun job's, never finished
                wandb.run.finish()
        return super().experiment
