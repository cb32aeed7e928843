"""Continue a run in place: ``python train.py resume=<run dir>``.

The run directory stays the same (``hydra.run.dir`` / ``hydra.sweep.dir`` follow ``resume``, see
conf/hydra/default.yaml), the original command line is taken back from ``<run dir>/.hydra/overrides.yaml``
(overrides typed now win), and training restarts from ``<run dir>/checkpoints/last.ckpt`` (or a newer complete
checkpoint, see ``resumable_checkpoint``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from visiontrain import artifact
from visiontrain.errors import UserError
from visiontrain.runs import command_line

log = logging.getLogger("visiontrain")

LAST_NAME = "last.ckpt"
LAST_CHECKPOINT = Path("checkpoints") / LAST_NAME
# overrides a resumed run never takes back from the original command line
NOT_INHERITED = {"resume", "ckpt_path"}


def _override_keys(overrides: list[str]) -> list[tuple[str, str | None]]:
    return [(o.key_or_group, o.package) for o in OverridesParser.create().parse_overrides(overrides)]


def resume_command_line(args: list[str]) -> list[str]:
    """The command-line arguments of a resumed single run: the original run's overrides, then ``args``.

    Checks, before Hydra creates or touches anything, that the folder is a run directory with a
    last checkpoint. Multiruns are left as typed (their jobs resume one by one, see ``checkpoint_to_resume``).
    """
    resume = [a.split("=", 1)[1] for a in args if a.startswith("resume=")]
    read = command_line.read(args)
    if not resume or resume[-1] in ("", "null") or read.multirun:
        return args
    value = resume[-1]
    run_dir = Path(value)
    if not run_dir.is_dir():
        raise UserError(f"resume={value}: there is no run directory {run_dir.resolve()}.")
    # every refusal comes before anything is written into the run folder (records below, Hydra's .hydra/)
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    resumable_checkpoint(run_dir, f"resume={value}")
    if not overrides_file.is_file():
        raise UserError(f"resume={value}: {overrides_file.resolve()} is missing, so this is not a run of train.py.")
    typed = read.overrides
    typed_keys = {key for key, _ in _override_keys(typed)}
    if "ckpt_path" in typed_keys and not any(a in ("ckpt_path=", "ckpt_path=null") for a in args):
        raise UserError(BOTH_GIVEN)
    for other in [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]:
        if Path(other).resolve() != run_dir.resolve():
            raise UserError(f"resume={value} continues in {run_dir}; leave hydra.run.dir out, it follows resume.")

    original = [str(o) for o in OmegaConf.load(overrides_file)]
    check_unchanged_training(value, original, typed)
    replaced = set(_override_keys(typed)) | {(key, None) for key in NOT_INHERITED}
    kept = [o for o, key in zip(original, _override_keys(original)) if key not in replaced]

    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # every process of a DDP run reads the command line; one keeps the records
        return kept + args
    # Hydra rewrites .hydra/ in the run directory: keep the records of the previous attempt
    previous = run_dir / ".hydra" / "before_resume"
    attempt = previous / str(len(list(previous.glob("*"))) + 1 if previous.is_dir() else 1)
    attempt.mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        if (run_dir / ".hydra" / name).is_file():
            shutil.copy2(run_dir / ".hydra" / name, attempt / name)
    return kept + args


# what a run was trained with: a resumed run continues it as it was, so these may not change on resume (the
# checkpoint's weights, optimizer and schedule would go on regardless while config.yaml said otherwise)
FIXED_ON_RESUME = ("model", "data", "experiment", "seed", "trainer.precision", "finetune", "init_from")


def check_unchanged_training(value: str, original: list[str], typed: list[str]) -> None:
    """Refuse, in one sentence naming them, overrides typed with ``resume=`` that change what was trained; the same
    value as the original command line, and anything else (epochs, callbacks, loggers, test) is taken."""
    changed = [
        override
        for override, (key, _) in zip(typed, _override_keys(typed))
        if any(key.lstrip("+~") == fixed or key.lstrip("+~").startswith(fixed + ".") for fixed in FIXED_ON_RESUME)
        and override not in original
    ]
    if changed:
        raise UserError(
            f"resume={value} continues the run as it was trained, and {' '.join(changed)} would change what it "
            f"trains while its checkpoint goes on as before; start a new run from its checkpoint instead: "
            f"python train.py ckpt_path={Path(value) / LAST_CHECKPOINT} {' '.join(changed)} (with its other "
            "overrides)."
        )


BOTH_GIVEN = (
    "set either resume=<run dir> (continue that run in place) or ckpt_path=<checkpoint> "
    "(start a new run from it), not both."
)


def resumable_checkpoint(run_dir: Path, option: str, required: bool = True, also: Iterable[Path] = ()) -> Path | None:
    """The checkpoint a run continues from: the newest complete one in ``<run dir>/checkpoints`` (and ``also``),
    whatever its name.

    Normally ``last.ckpt``; after a kill between two checkpoint writes (``epoch_003.ckpt`` in place, ``last.ckpt``
    still the one of epoch 2) the newer epoch file; a file that does not load (cut short, not a checkpoint) is
    passed over. Newest by the training step stored inside, ``last.ckpt`` first among equals. With nothing to
    continue from: a UserError if ``required``, else None.
    """
    folder = run_dir / "checkpoints"
    found: list[tuple[tuple[int, int, bool], Path]] = []
    refused: list[str] = []
    for path in [*(sorted(folder.glob("*.ckpt")) if folder.is_dir() else []), *also]:
        try:
            checkpoint = artifact.load_checkpoint(path, option)
        except UserError as err:
            refused.append(str(err))
            continue
        step, epoch = checkpoint.content.get("global_step", -1), checkpoint.content.get("epoch", -1)
        key = (int(step), int(epoch), path.name == LAST_NAME)
        found.append((key, path))
    if found:
        newest = max(found)[1]
        if newest.name != LAST_NAME:
            log.warning("%s: continuing from %s, the newest complete checkpoint", option, newest.name)
        return newest
    if not required:
        return None
    if refused:
        raise UserError(
            f"{refused[-1].rstrip('.')}; no other checkpoint of this run loads, so there is nothing to continue."
        )
    raise UserError(
        f"{option}: {run_dir.resolve() / LAST_CHECKPOINT} does not exist, so there is nothing to continue "
        "(the run stopped before its first checkpoint); start a new run instead."
    )


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def requeued_slurm_job() -> bool:
    """SLURM sets SLURM_RESTART_COUNT when it starts a job again (preempted, or timed out and requeued)."""
    return bool(os.environ.get("SLURM_JOB_ID")) and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def checkpoint_of_requeued_job(output_dir: Path) -> str | None:
    """A requeued job runs again in its own folder (submitit re-runs the same job config) and continues by
    itself from the newest complete checkpoint by training step: Lightning's ``hpc_ckpt_<n>.ckpt``, saved (mid-epoch)
    when SLURM sent the requeue signal before the time limit (conf/hydra/launcher/slurm.yaml), or ``last.ckpt``
    when that is newer (an attempt after the one that saved the hpc checkpoint ended without the signal); with
    neither it starts afresh."""
    saved_at_signal = sorted(output_dir.glob("hpc_ckpt_*.ckpt"))
    checkpoint = resumable_checkpoint(output_dir, "requeued job", required=False, also=saved_at_signal)
    return str(checkpoint) if checkpoint else None


def checkpoint_to_resume(cfg: DictConfig) -> str | None:
    """The checkpoint ``trainer.fit`` continues from: ``last.ckpt`` of this run's folder when resuming.

    In a multirun (``-m ... resume=<sweep dir>``) each job continues from its own folder's last checkpoint,
    and a job that had not saved one yet starts afresh.
    """
    resume = cfg.get("resume")
    if not resume and not cfg.get("ckpt_path") and requeued_slurm_job():
        return checkpoint_of_requeued_job(Path(cfg.paths.output_dir))
    if not resume:
        if cfg.get("ckpt_path"):
            artifact.load_checkpoint(cfg.ckpt_path, f"ckpt_path={cfg.ckpt_path}")
        return cfg.get("ckpt_path")
    if cfg.get("ckpt_path"):
        raise UserError(BOTH_GIVEN)
    output_dir = Path(cfg.paths.output_dir)
    if is_multirun():
        checkpoint = resumable_checkpoint(output_dir, f"resume={resume}", required=False)
        return str(checkpoint) if checkpoint else None
    if output_dir.resolve() != Path(resume).resolve():
        raise UserError(
            f"resume={resume} but this run writes into {output_dir}; leave hydra.run.dir at its default, "
            "which follows resume."
        )
    return str(resumable_checkpoint(output_dir, f"resume={resume}"))
