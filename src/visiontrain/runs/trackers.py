"""Experiment trackers beside TensorBoard: ``logger=mlflow`` (a local SQLite store), ``logger=wandb`` (offline).

What they share (their logger classes are in visiontrain.runs.loggers): the run's name and multirun grouping
(``run_context``), the whole resolved config as their params (``config_params``), and a run continued in place
continuing the same tracker run: the tracker run ids go into every checkpoint (``TrackerRunsInCheckpoint``) and
come back out of the checkpoint a resumed run starts from, before its loggers are created (``instantiate_loggers``).
Neither tracker package is imported unless its logger is chosen (``import mlflow`` alone takes seconds).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from hydra.utils import get_object, instantiate
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger, MLFlowLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from visiontrain.errors import UserError

log = logging.getLogger("visiontrain")

SQLITE = "sqlite:///"
# the key of each tracker's run id in a checkpoint (the first logger of each kind, should there be two)
KINDS = {"mlflow": MLFlowLogger, "wandb": WandbLogger}


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
    return isinstance(logger, tuple(KINDS.values()))


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
            for kind, logger_class in KINDS.items():
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
        if issubclass(made, MLFlowLogger) and "mlflow" in runs:
            continued = {"run_id": runs.pop("mlflow")}
        elif issubclass(made, WandbLogger) and "wandb" in runs:
            continued = {"id": runs.pop("wandb"), "resume": "allow"}
        if continued:
            log.info("%s continues the tracker run %s", made.__name__, next(iter(continued.values())))
        loggers.append(instantiate(entry, **continued))
    return loggers
