"""What every entry point does around the Trainer: seeding, instantiation, error reporting, run records."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning import Trainer
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError

from visiontrain import console
from visiontrain.errors import TrainingDiverged, UserError

log = logging.getLogger("visiontrain")

# conf/ at the project root, reached through the package's conf symlink; a wheel holds a copy (pyproject.toml)
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


def resume_or(resume: str | None, default: str) -> str:
    """``${visiontrain.resume_or:${resume},<new dir>}`` (conf/hydra): the folder being resumed, else a new one."""
    return str(resume) if resume not in (None, "") else default


def new_run_dir(
    parent: str,
    time: str,
    job: str,
    data: str | None = None,
    model: str | None = None,
    resume: str | None = None,
    mode: Any = None,
) -> str:
    """``<parent>/<time>_<data>_<model>`` for training runs (``<parent>/<time>`` for the other entry points),
    with ``_2``, ``_3``... when a run of the same second already holds that name.

    The folder is created here, exclusively: of two runs started in the same second (even at the same moment),
    each gets a folder of its own. ``resume``: the folder being resumed, returned as it is; OmegaConf resolves
    every argument of ``resume_or``, so this is also called for a resumed run, which must not get a new folder.
    ``mode``: Hydra's run mode; a multirun also resolves ``hydra.run.dir``, which must not make a folder then."""
    if resume not in (None, ""):
        return str(resume)
    name = f"{time}_{data}_{model}" if job == "train" and data and model else time
    if str(mode).endswith("MULTIRUN"):  # a sweep's jobs write under hydra.sweep.dir: this folder is never used
        return str(Path(parent) / name)
    Path(parent).mkdir(parents=True, exist_ok=True)
    candidate, n = Path(parent) / name, 1
    while True:
        try:
            candidate.mkdir()
            return str(candidate)
        except FileExistsError:
            n += 1
            candidate = Path(parent) / f"{name}_{n}"


def best_checkpoint(task_name: str, *, _root_: DictConfig) -> str:
    """``${best_checkpoint:pennfudan_unet}``: the best checkpoint (``best_model_path`` in metrics.json) of the
    newest finished run under ``<paths.log_dir>/<task_name>/runs/``, e.g. for ``init_from``."""
    runs = Path(str(_root_.paths.log_dir)) / str(task_name) / "runs"
    records = sorted(runs.glob("*/metrics.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for record in records:
        try:
            path = json.loads(record.read_text()).get("best_model_path")
        except (OSError, ValueError):
            continue
        if path and Path(path).is_file():
            return str(path)
    raise UserError(
        f"no finished {task_name} run with a best checkpoint under {runs}; "
        f"run python train.py experiment={task_name} first."
    )


# registered on import, before Hydra resolves hydra.run.dir (also in launcher worker processes)
if not OmegaConf.has_resolver("visiontrain.resume_or"):
    OmegaConf.register_new_resolver("visiontrain.resume_or", resume_or)
if not OmegaConf.has_resolver("visiontrain.new_run_dir"):
    # cached: the folder's name must not change once Hydra has made it
    OmegaConf.register_new_resolver("visiontrain.new_run_dir", new_run_dir, use_cache=True)
if not OmegaConf.has_resolver("best_checkpoint"):
    OmegaConf.register_new_resolver("best_checkpoint", best_checkpoint)


def choice(cfg: DictConfig, group: str) -> str:
    """The option picked for a config group (``mnist`` for ``data``), else the name of its ``_target_``."""
    from hydra.core.hydra_config import HydraConfig

    try:
        picked = HydraConfig.get().runtime.choices.get(group)
    except ValueError:  # no Hydra run (a config built by hand)
        picked = None
    if picked:
        return str(picked)
    target = str(OmegaConf.select(cfg, f"{group}._target_", default="") or "")
    return target.rsplit(".", 1)[-1] or "-"


def compose_config(config_name: str, overrides: list[str], output_dir: str | Path) -> DictConfig:
    """Compose a config from Python (tests, benchmarks, notebooks) as the command line would.

    Hydra's runtime fields are filled in, so ``${hydra:...}`` interpolations resolve and the run
    writes into ``output_dir``.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(Path.cwd())
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def user_error_of(err: BaseException) -> UserError | None:
    """The UserError behind ``err``: itself, a Hydra instantiation's cause, or one re-raised by a DataLoader worker."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        # OmegaConf re-raises a resolver's error (e.g. best_checkpoint's) without chaining it as the cause
        err = err.__cause__ or (err.__context__ if isinstance(err, InterpolationResolutionError) else None)
    return None


def one_sentence(err: UserError) -> str:
    text = str(err)
    # a DataLoader worker re-raises with the worker's traceback inside the message; keep its last line
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


def report_user_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Turn a UserError (or a Hydra instantiation error caused by one) into one line and exit status 1.

    The sentence is printed once, without a traceback; the log file gets it too when the run folder stays.
    A single run stopped before it wrote anything of its own (no checkpoint, no metrics) leaves no folder.
    """

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except (UserError, InstantiationException, RuntimeError, InterpolationResolutionError) as err:
            cause = user_error_of(err)
            if cause is None:
                raise
            sentence = one_sentence(cause)
            log.error(sentence, extra={"console": False})
            if isinstance(cause, TrainingDiverged) and in_multirun():
                # this trial failed, not the sweep: Hydra records the job as failed and the sweeper goes on
                print(f"error: {sentence}", file=sys.stderr)
                raise cause from None
            remove_unstarted_run_dir(cfg)
            raise SystemExit(f"error: {sentence}") from None

    return wrapper


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def remove_unstarted_run_dir(cfg: DictConfig) -> None:
    """Delete the folder Hydra made for a single run that failed before producing anything."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return
    if hydra_cfg.mode != RunMode.RUN or cfg.get("resume") or rank_zero_only.rank != 0:
        return
    run_dir = Path(hydra_cfg.runtime.output_dir)
    # (a .lock is another run's: this run gives its own back before it gets here)
    own = {".hydra", f"{hydra_cfg.job.name}.log", "config.yaml"}
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= own and run_dir.resolve() != Path.cwd().resolve():
        import shutil

        logging.shutdown()  # close the log file before its folder goes
        shutil.rmtree(run_dir, ignore_errors=True)
        # and the outputs/<task>/runs/ folders above it, if this run made them (only empty ones go)
        log_dir = Path(str(cfg.paths.log_dir)).resolve()
        for parent in run_dir.resolve().parents:
            if not parent.is_relative_to(log_dir):
                break
            with contextlib.suppress(OSError):
                parent.rmdir()


def check_values(cfg: DictConfig) -> None:
    """Refuse, in one sentence, values that would otherwise fail deep inside the DataLoader or the Trainer."""
    for key in ("data.batch_size", "data.eval_batch_size"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{key}={value}: give a whole number of images per batch, 1 or more.")
    workers = OmegaConf.select(cfg, "data.num_workers", default=None)
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise UserError(f"data.num_workers={workers}: give 0 (load in the main process) or more worker processes.")
    epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    if epochs is not None and (not isinstance(epochs, int) or epochs < -1):
        raise UserError(f"trainer.max_epochs={epochs}: give a number of epochs, 1 or more (-1: no limit).")


def prepare_run(cfg: DictConfig) -> None:
    """Seed, silence known-noisy warnings if asked, save and print the composed config."""
    extras = cfg.get("extras") or {}
    console.quiet_third_party()
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if cfg.get("seed") is not None:
        from lightning import seed_everything

        seed_everything(cfg.seed, workers=True)
    if extras.get("matmul_precision"):
        torch.set_float32_matmul_precision(extras.matmul_precision)
    if rank_zero_only.rank == 0:
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        # the composed config with every interpolation resolved: what this run really used
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
        if extras.get("print_config"):
            print_config(cfg)


@rank_zero_only
def print_config(cfg: DictConfig) -> None:
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("config", guide_style="dim")
    for section in ("data", "model", "trainer", "callbacks", "logger", "paths"):
        if section in cfg:
            body = OmegaConf.to_yaml(cfg[section], resolve=True)
            tree.add(section).add(rich.syntax.Syntax(body, "yaml", theme="ansi_dark"))
    rest = {
        k: v
        for k, v in cfg.items()
        if k not in ("data", "model", "trainer", "callbacks", "logger", "paths", "extras", "hydra")
    }
    tree.add("run").add(rich.syntax.Syntax(OmegaConf.to_yaml(OmegaConf.create(rest)), "yaml", theme="ansi_dark"))
    rich.print(tree)


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a ``callbacks`` / ``logger`` group (entries set to null are skipped)."""
    if not cfg:
        return []
    return [instantiate(entry) for entry in cfg.values() if entry is not None and "_target_" in entry]


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The handful of choices that tell runs apart, for TensorBoard's HParams table (config.yaml has the rest)."""

    def pick(key: str) -> Any:
        value = OmegaConf.select(cfg, key, default=None)
        return value if isinstance(value, (bool, int, float, str)) else (None if value is None else str(value))

    scheduler = OmegaConf.select(cfg, "model.scheduler._target_", default=None)
    chosen = {
        "model": choice(cfg, "model"),
        "data": choice(cfg, "data"),
        "experiment": choice(cfg, "experiment"),
        "lr": pick("model.optimizer.lr"),
        "optimizer": str(OmegaConf.select(cfg, "model.optimizer._target_", default="")).rsplit(".", 1)[-1],
        "scheduler": str(scheduler).rsplit(".", 1)[-1] if scheduler else "constant",
        "batch_size": pick("data.batch_size"),
        "max_epochs": pick("trainer.max_epochs"),
        "precision": pick("trainer.precision"),
        "augment": pick("data.augment"),
        "seed": pick("seed"),
        "init_from": pick("init_from"),
    }
    return {key: value for key, value in chosen.items() if value not in (None, "", "-")}


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    values = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and math.isfinite(value):
            values[name] = float(value)
    return values


@rank_zero_only
def record_results(cfg: DictConfig, trainer: Trainer, metrics: dict[str, float], loggers: list[Logger]) -> None:
    """Write ``metrics.json`` and the TensorBoard HParams entry (hyperparameters with final metrics)."""
    checkpoint = trainer.checkpoint_callback
    record: dict[str, Any] = dict(sorted(metrics.items()))
    record["best_model_path"] = getattr(checkpoint, "best_model_path", "") or None
    path = Path(cfg.paths.output_dir) / "metrics.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    log.info("final metrics written to %s", path)
    if not metrics:
        return
    from torch.utils.tensorboard.summary import hparams

    for logger in loggers:
        if not isinstance(logger, TensorBoardLogger):
            continue
        # one HParams session per run, written at the end so it holds the final metrics; the metric
        # values themselves are read by TensorBoard from the scalar tags of the same name
        writer = logger.experiment._get_file_writer()
        headline = {name: value for name, value in metrics.items() if name.count("/") == 1}  # not per class
        for summary in hparams(hyperparameters(cfg), headline):
            writer.add_summary(summary)
        logger.experiment.flush()


def log_config_hyperparameters(cfg: DictConfig, loggers: list[Logger]) -> None:
    """Save the experiment-defining config with each logger (``hparams.yaml`` for TensorBoard/CSV)."""
    for logger in loggers:
        logger.log_hyperparams(hyperparameters(cfg))
