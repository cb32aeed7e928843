"""Where a run writes: its folder (new, exclusive, or the one being resumed) and the best checkpoint of an
earlier run, as the OmegaConf resolvers conf/hydra and the experiment configs use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from visiontrain.errors import UserError


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
