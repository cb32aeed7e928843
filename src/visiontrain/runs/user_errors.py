"""Errors a user can fix, reported as one sentence and exit status 1; a run that never started leaves no folder."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError

from visiontrain.errors import TrainingDiverged, UserError
from visiontrain.runs.resume import is_multirun

log = logging.getLogger("visiontrain")


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
            if isinstance(cause, TrainingDiverged) and is_multirun():
                # this trial failed, not the sweep: Hydra records the job as failed and the sweeper goes on
                print(f"error: {sentence}", file=sys.stderr)
                raise cause from None
            remove_unstarted_run_dir(cfg)
            raise SystemExit(f"error: {sentence}") from None

    return wrapper


def remove_unstarted_run_dir(cfg: DictConfig) -> None:
    """Delete the folder Hydra made for a single run that failed before producing anything."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return
    from lightning.pytorch.utilities import rank_zero_only

    # (a run folder given to resume= or predict.py's output= holds more than these if anything was written there)
    if hydra_cfg.mode != RunMode.RUN or rank_zero_only.rank != 0:
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
