"""Train (and then test) a model: ``python train.py model=resnet data=cifar10``.

Reads top to bottom: compose -> instantiate the data (its ``spec`` says what it holds), the model (checked
against the spec), callbacks, loggers, trainer -> fit -> test on the best checkpoint -> write metrics.json.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from visiontrain.cli import checks
from visiontrain.errors import UserError
from visiontrain.runs import config, ddp, resume, run_lock, user_errors
from visiontrain.runs.command_line import read as command_line_of

log = logging.getLogger("visiontrain")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and test) the run ``cfg`` describes and return its final metrics. The run folder is held for the
    whole run (visiontrain.runs.run_lock), and what interrupted writes left in it is cleared first."""
    if not run_lock.first_process():
        return _train(cfg)
    run_lock.acquire(cfg.paths.output_dir)
    try:
        run_lock.remove_leftovers(cfg.paths.output_dir)
        ddp.share_run_dir(cfg.paths.output_dir)  # torchrun's other processes wait for the folder held here
        return _train(cfg)
    finally:
        run_lock.release(cfg.paths.output_dir)


def _train(cfg: DictConfig) -> dict[str, float]:
    """One run: fit (fresh, from ``ckpt_path``, or resumed in place), then test the best checkpoint; returns the
    final metrics, which also go to metrics.json and TensorBoard."""
    # torch, Lightning and what is built on them load here, once the command line is known to be right: a mistake
    # in it is answered in about a second rather than after their imports
    from lightning.pytorch.callbacks import LearningRateMonitor

    from visiontrain.callbacks.checkpoint_state import (
        ArtifactInCheckpoint,
        MetricsInCheckpoint,
        RandomStateInCheckpoint,
    )
    from visiontrain.callbacks.signals import CheckpointOnSignal
    from visiontrain.callbacks.tensorboard import ContinuedTensorBoardRun
    from visiontrain.models import weights
    from visiontrain.runs import console, records
    from visiontrain.runs.loggers import TrackerRunsInCheckpoint, instantiate_loggers

    ckpt_path = resume.checkpoint_to_resume(cfg)
    config.check_values(cfg)
    config.prepare_run(cfg)

    datamodule = config.instantiate_data(cfg)
    if cfg.get("browse"):  # debug=browse: draw the data and its label statistics, then stop without training
        from visiontrain.runs import browse  # (matplotlib and the data figures load only for it)

        return browse.browse(cfg, datamodule)
    config.save_config(cfg)
    model = instantiate(cfg.model)
    if cfg.get("init_from") and ckpt_path:
        log.info("init_from=%s ignored: the run resumes from %s with its own weights", cfg.init_from, ckpt_path)
    elif cfg.get("init_from"):
        weights.load_file(model.net, cfg.init_from, strict=bool(cfg.get("init_strict")))
    spec = datamodule.spec
    model.check_data(spec)

    callbacks = config.instantiate_group(cfg.get("callbacks"))
    if cfg.get("finetune") and "_target_" in cfg.finetune:
        callbacks.append(instantiate(cfg.finetune))
    configs = {key: OmegaConf.to_container(cfg[key], resolve=False) for key in ("model", "data")}
    configs["model_resolved"] = OmegaConf.to_container(cfg.model, resolve=True)
    record = MetricsInCheckpoint()
    callbacks += [ArtifactInCheckpoint(configs), RandomStateInCheckpoint(), record, TrackerRunsInCheckpoint()]
    signals = CheckpointOnSignal(cfg.paths.output_dir)
    callbacks.append(signals)
    callbacks.append(console.RunHeader(config.choice(cfg, "data"), config.choice(cfg, "model"), cfg.paths.output_dir))
    if cfg.get("resume") and ckpt_path:
        callbacks.append(ContinuedTensorBoardRun())
    loggers = instantiate_loggers(cfg, ckpt_path)  # a run resumed in place continues its tracker runs
    ddp.reset_between_jobs()
    ddp.serve_store_on_loopback()  # before the Trainer: its processes meet at that store
    if not loggers:  # Lightning refuses a learning-rate monitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = config.instantiate_trainer(cfg, callbacks=callbacks, logger=loggers or False)
    ddp.prepare_multirun_job(trainer, cfg.paths.output_dir)
    config.record_precision(cfg, trainer)
    records.log_config_hyperparameters(cfg, trainer.loggers)

    try:
        metrics = fit_and_test(cfg, trainer, model, datamodule, ckpt_path, record)
    except SystemExit:  # how Lightning ends a fit or test stopped by SIGTERM or SIGINT
        if signals.stopped is None:
            raise
        console.log_stop(signals.stopped.sentence(cfg.paths.output_dir, resume.is_multirun()))
        raise SystemExit(signals.stopped.exit_status) from None
    records.record_results(cfg, trainer, metrics, trainer.loggers)
    return metrics


def fit_and_test(cfg: DictConfig, trainer, model, datamodule, ckpt_path: str | None, record) -> dict[str, float]:
    """Fit (fresh, from ``ckpt_path``, or resumed in place), then test the best checkpoint: the final metrics."""
    from visiontrain.runs import console, records

    metrics: dict[str, float] = {}
    spec = datamodule.spec
    # what the model costs beside what it scores: an objective for a study of several (accuracy against size)
    metrics["model/parameters"] = model.parameter_count()  # also when fit logs nothing (train=false, a resumed run)
    if cfg.get("train"):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        # a run resumed after its last epoch logs nothing new: its record comes from the checkpoint it resumed
        metrics.update(record.restored)
        metrics.update(records.scalar_metrics(trainer.callback_metrics))

    if cfg.get("test") and spec.has_test_split:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if cfg.get("train") else ""
        if cfg.get("train") and not best:
            log.warning("no best checkpoint was saved: testing the weights as they are after training")
        tested = best or (None if cfg.get("train") else ckpt_path)
        trainer.test(model, datamodule=datamodule, ckpt_path=tested, verbose=False)
        metrics.update(records.scalar_metrics(trainer.callback_metrics))
        console.log_test_metrics(metrics, Path(tested).name if tested else "weights after training")
    return metrics


@hydra.main(version_base="1.3", config_path=config.CONFIG_DIR, config_name="train")
@user_errors.report_user_errors
def run(cfg: DictConfig) -> float | list[float | None] | None:
    metrics = train(cfg)
    # the value a Hydra sweeper (Optuna) optimises; a list of them for a study of several objectives
    optimized = config.optimized_metrics(cfg)
    if not optimized:
        return None
    if OmegaConf.is_list(cfg.optimized_metric):
        return [metrics.get(name) for name in optimized]
    return metrics.get(optimized[0])


def named_folder(args: list[str], prefix: str) -> str | None:
    values = [a.split("=", 1)[1].strip("'\"") for a in args if a.startswith(prefix)]
    return values[-1] if values and values[-1] not in ("", "null") else None


def command_line(args: list[str]) -> list[str]:
    """What Hydra runs for what was typed, every rewrite in order; a mistake is a UserError (one sentence) before
    Hydra creates or touches any folder."""
    # 1. an extra process of a DDP job (a multirun's, torchrun's, srun's) runs its job's command line
    args = ddp.job_command_line(args)
    # 2. a folder named by resume= is held before anything is written into it (a second run on it is refused)
    hold = not command_line_of(args).multirun and run_lock.first_process()
    resumed = named_folder(args, "resume=")
    if hold and resumed and Path(resumed).is_dir():
        run_lock.acquire(resumed)
    # 3. resume= takes back that run's own overrides, refusing changes to what was trained
    args = resume.resume_command_line(args)
    # 4. mistyped keys, group options and Trainer arguments are refused
    checks.check_overrides("train", args)
    # 5. a folder named by hydra.run.dir= is held too
    if hold and named_folder(args, "hydra.run.dir="):
        run_lock.acquire(named_folder(args, "hydra.run.dir="))
    return args


def main() -> None:
    """The command: the command line rewritten (``command_line``), then the Hydra app."""
    try:
        sys.argv[1:] = command_line(sys.argv[1:])
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    # torch and Lightning load now that the command line is right, before Hydra starts any job: loaded inside a
    # sweep's first trial, they would hold the interpreter for seconds while its heartbeat thread must beat
    import lightning.pytorch  # noqa: F401

    try:
        run()
    except KeyboardInterrupt:  # Ctrl+C outside a fit or test (those end in visiontrain.callbacks.signals)
        print("stopped by SIGINT", file=sys.stderr)
        raise SystemExit(128 + signal.SIGINT) from None


if __name__ == "__main__":
    main()
