"""Every logger a run writes through, in one place: loggers of our own (everything else comes from
``lightning.pytorch.loggers``) and what the experiment trackers share.

- ``TensorBoardLogger``: Lightning's, without the epoch scalar.
- Experiment trackers beside TensorBoard: ``logger=mlflow`` (a local SQLite store), ``logger=wandb`` (offline),
  set up for visiontrain's runs (``MLFlowLogger``, ``WandbLogger``). What they share: the run's name and multirun
  grouping (``run_context``), the whole resolved config as their params (``config_params``), and a run continued
  in place continuing the same tracker run: the tracker run ids go into every checkpoint
  (``TrackerRunsInCheckpoint``) and come back out of the checkpoint a resumed run starts from, before its loggers
  are created (``instantiate_loggers``). Neither tracker package is imported unless its logger is chosen
  (``import mlflow`` alone takes seconds).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from argparse import Namespace
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from hydra.utils import get_object, instantiate
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from visiontrain.errors import UserError

log = logging.getLogger("visiontrain")


SQLITE = "sqlite:///"
# the key of each tracker's run id in a checkpoint (the first logger of each kind, should there be two)
TRACKERS = {"mlflow": LightningMLFlowLogger, "wandb": LightningWandbLogger}


def require(package: str) -> None:
    """Import ``package`` (``mlflow``, ``wandb``) or say in one sentence how to install it."""
    try:
        importlib.import_module(package)
    except ImportError as err:
        if isinstance(err, ModuleNotFoundError) and err.name == package:
            reason = "which is not installed"
        else:  # installed, but broken: the import error says why
            reason = f"which does not import ({err})"
        install = f'pip install "visiontrain[{package}]"'
        raise UserError(f"logger={package} needs the {package} package, {reason}: {install}") from None


class RunContext(NamedTuple):
    name: str  # the run folder's name; in a multirun ``<sweep folder name>/<job folder name>``
    folder: str
    sweep: str | None  # the sweep folder of a multirun's job


def run_context() -> RunContext | None:
    """Where this run stands, for naming its tracker run (a multirun job's folder is only its number, hence
    the sweep folder's name in front). None without a Hydra run (a config built by hand)."""
    from hydra.core.hydra_config import HydraConfig

    from visiontrain.runs.resume import is_multirun

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    if not is_multirun():
        return RunContext(folder.name, str(folder), None)
    sweep = str(hydra_cfg.sweep.dir)
    return RunContext(f"{Path(sweep).name}/{folder.name}", str(folder), sweep)


def absolute_sqlite_uri(uri: str) -> str:
    """``sqlite:///outputs/mlflow.db`` -> ``sqlite:////<cwd>/outputs/mlflow.db``: SQLAlchemy reads a relative
    path from the working directory of whoever opens the store, so the run records the absolute one."""
    if not uri.startswith(SQLITE) or uri[len(SQLITE) :].startswith(("/", ":memory:")) or uri == SQLITE:
        return uri
    return SQLITE + str(Path(uri[len(SQLITE) :]).resolve())


@contextlib.contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Hold ``<store>.lock`` while an SQLite store is created and an experiment is looked up or created.

    The jobs of a parallel multirun start together: several processes creating the same new store run its
    schema migrations over each other and all fail, and two creating the same experiment, one fails. Other
    stores (a tracking server) are left as they are.
    """
    if not tracking_uri.startswith(SQLITE) or os.name != "posix":
        yield
        return
    import fcntl

    database = Path(tracking_uri[len(SQLITE) :])
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file is closed
        yield


def is_tracker(logger: Logger) -> bool:
    return isinstance(logger, tuple(TRACKERS.values()))


def config_params(cfg: DictConfig, chosen: dict[str, Any]) -> dict[str, Any]:
    """What a tracker records as the run's params: the whole resolved config, and beside it the short names of
    ``chosen`` (lr, batch_size, ...) that are not a config section already. Left out: Hydra's own node, and
    ``resume``, which says how this attempt started, not what the run is (and would differ on every resume)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for key in ("hydra", "resume"):
        config.pop(key, None)
    return {**{key: value for key, value in chosen.items() if key not in config}, **config}


def flat_params(params: dict[str, Any], max_length: int) -> dict[str, str]:
    """Nested params -> ``{"model.optimizer.lr": "0.001"}`` (the keys as on the command line), for MLflow,
    whose params are flat strings. A list stays one value; values longer than ``max_length`` are cut, marked
    with ``...``; characters MLflow refuses in a key become ``_``."""
    flat: dict[str, str] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                add(f"{prefix}.{key}" if prefix else str(key), inner)
            return
        key = "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in prefix)
        text = str(value)
        flat[key] = text if len(text) <= max_length else text[: max_length - 3] + "..."

    add("", params)
    return flat


def tracker_run_id(logger: Logger) -> str | None:
    """The id of the tracker run ``logger`` writes to: MLflow's run id, W&B's run id (``version`` for both).
    None where there is none (the processes of a DDP run other than rank zero make no tracker run)."""
    return logger.version or None


class TrackerRunsInCheckpoint(Callback):
    """Keep the ids of the tracker runs (MLflow, W&B) in every checkpoint, so that a run resumed in place from
    it continues those tracker runs (``instantiate_loggers``) instead of starting new ones. Plain strings, so
    checkpoints still load with ``weights_only=True``."""

    def __init__(self) -> None:
        self._trainer: Trainer | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        runs: dict[str, str] = {}
        for logger in self._trainer.loggers if self._trainer is not None else []:
            for kind, logger_class in TRACKERS.items():
                if isinstance(logger, logger_class) and kind not in runs and tracker_run_id(logger):
                    runs[kind] = tracker_run_id(logger)
        return runs


def continued_runs(cfg: DictConfig, ckpt_path: str | None) -> dict[str, str]:
    """The tracker run ids kept in the checkpoint this run continues from in place: ``resume=`` (one run or a
    multirun's job), or a requeued SLURM job continuing in its own folder. A new run, also one started from a
    checkpoint (``ckpt_path=``), gets new tracker runs."""
    from visiontrain.artifact import load_checkpoint
    from visiontrain.runs import resume

    checkpoint = ckpt_path if cfg.get("resume") else None
    if not cfg.get("resume") and not cfg.get("ckpt_path") and resume.requeued_slurm_job():
        # checkpoint_to_resume leaves the choice of Lightning's requeue checkpoint to Lightning: the newest
        requeued = sorted(Path(cfg.paths.output_dir).glob("hpc_ckpt_*.ckpt"), key=lambda p: int(p.stem.split("_")[-1]))
        checkpoint = str(requeued[-1]) if requeued else ckpt_path
    if not checkpoint:
        return {}
    stored = load_checkpoint(checkpoint, f"resume={checkpoint}").content.get("callbacks", {})
    return dict(stored.get(TrackerRunsInCheckpoint.__qualname__) or {})


def instantiate_loggers(cfg: DictConfig, ckpt_path: str | None) -> list[Logger]:
    """The loggers of the ``logger`` group (as ``config.instantiate_group``), where a run continued in place
    gives its MLflow logger the MLflow run to continue (``run_id``) and its W&B logger the W&B run (``id``)."""
    runs = continued_runs(cfg, ckpt_path)
    loggers: list[Logger] = []
    for entry in (cfg.get("logger") or {}).values():
        if entry is None or "_target_" not in entry:
            continue
        target = get_object(entry._target_)
        made = target if isinstance(target, type) else type(None)  # a factory function: no run to continue
        continued: dict[str, Any] = {}
        # (pop: a second logger of the same kind starts a run of its own)
        if issubclass(made, LightningMLFlowLogger) and "mlflow" in runs:
            continued = {"run_id": runs.pop("mlflow")}
        elif issubclass(made, LightningWandbLogger) and "wandb" in runs:
            continued = {"id": runs.pop("wandb"), "resume": "allow"}
        if continued:
            log.info("%s continues the tracker run %s", made.__name__, next(iter(continued.values())))
        loggers.append(instantiate(entry, **continued))
    return loggers


# --- the loggers -----------------------------------------------------------------------------------------


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
      and it is created (and the experiment looked up or created) by one process at a time (store_lock).
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
        require("mlflow")
        tracking_uri = absolute_sqlite_uri(tracking_uri)
        if artifact_location and "://" not in artifact_location:  # a folder: MLflow keeps it as given
            artifact_location = str(Path(artifact_location).resolve())
        context = run_context()
        tags = dict(tags or {})
        if context is not None:
            run_name = run_name or context.name
            tags.setdefault("run_dir", str(Path(context.folder).resolve()))
            if context.sweep:
                tags.setdefault("sweep", str(Path(context.sweep).resolve()))
        with store_lock(tracking_uri):  # Lightning opens the store here, creating it if new
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
        with store_lock(self._tracking_uri):
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
        values = flat_params(params, MAX_PARAM_VAL_LENGTH)
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
        require("wandb")
        context = run_context()
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
