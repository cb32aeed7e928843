"""Hydra callbacks: after a multirun, one table of every job's overrides and final metrics (``summary.csv``), the
jobs grouped over seeds and folds (``summary_groups.csv``), and both for reading (``summary.md``)."""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from visiontrain.errors import UserError
from visiontrain.runs import config as run_config
from visiontrain.sweeps import groups as run_groups
from visiontrain.sweeps import label_issues
from visiontrain.sweeps import storage as study_storage

log = logging.getLogger("visiontrain")


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder: its number, overrides, and metrics.json (absent if the job failed)."""
    rows = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        overrides = OmegaConf.load(overrides_file)
        metrics_file = job_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        rows.append(
            {
                "job": job_dir.name,
                "overrides": " ".join(overrides),
                "status": "done" if metrics else "failed",
                "dir": str(job_dir),
                **{k: v for k, v in metrics.items() if k != "best_model_path"},
            }
        )
    return rows


def rank_jobs(rows: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Best first by ``metric``; jobs without it (failed) last."""
    sign = -1 if mode == "max" else 1

    def key(row: dict[str, Any]) -> float:
        value = row.get(metric)
        return sign * value if isinstance(value, (int, float)) and math.isfinite(value) else math.inf

    return sorted(rows, key=key)


def write_summary(sweep_dir: Path, metric: str, mode: str) -> Path:
    rows = rank_jobs(collect_jobs(sweep_dir), metric, mode)
    write_job_table(sweep_dir, rows, metric)
    groups = run_groups.group_jobs(rows, metric, mode)
    header, cells = run_groups.group_table(groups, metric)
    with (sweep_dir / "summary_groups.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *cells])
    (sweep_dir / "summary.md").write_text(run_groups.markdown(groups, rows, metric, mode))
    print_summary(rows, metric, sweep_dir / "summary.csv")
    if any(len(g.jobs) > 1 for g in groups):
        print_groups(groups, metric)
    return sweep_dir / "summary.csv"


def write_job_table(sweep_dir: Path, rows: list[dict[str, Any]], metric: str) -> None:
    metric_names = sorted({k for row in rows for k in row} - {"job", "overrides", "status", "dir"})
    if metric in metric_names:  # the ranking metric first
        metric_names.remove(metric)
        metric_names.insert(0, metric)
    columns = ["job", "status", "overrides", *metric_names, "dir"]
    path = sweep_dir / "summary.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def print_summary(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    # show what the jobs differ in; the CSV keeps every override
    shared = set.intersection(*(set(row["overrides"].split()) for row in rows)) if rows else set()
    table = Table(title=f"multirun summary, best {metric} first")
    for column in ("job", "status", "overrides", metric):
        table.add_column(column)
    for row in rows:
        value = row.get(metric)
        varying = " ".join(o for o in row["overrides"].split() if o not in shared)
        table.add_row(row["job"], row["status"], varying, f"{value:.4f}" if isinstance(value, float) else "-")
    # a pipe or log file gets the table at its natural width, not wrapped at 80 columns
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def print_groups(groups: list[run_groups.Group], metric: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"settings over seeds / folds, best mean {metric} first")
    for column in ("rank", "setting", f"{metric}: mean ± std [95 % interval]", "n"):
        table.add_column(column)
    settings = run_groups.varying_part([g.setting for g in groups])
    for rank, (group, setting) in enumerate(zip(groups, settings), start=1):
        stat = group.stats.get(metric) or run_groups.Statistic.of([])
        table.add_row(str(rank), setting, stat.text(), str(stat.n))
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    for sentence in run_groups.overlap_sentences(groups, metric):
        console.print(sentence)


class SweepSummary(Callback):
    """Writes ``<sweep dir>/summary.csv`` when a multirun ends, whatever the launcher."""

    def __init__(self, metric: str | None = None, mode: str | None = None) -> None:
        self.metric = metric
        self.mode = mode

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # several objectives: ranked by the first, in its direction
        optimized = run_config.optimized_metrics(config)
        metric = self.metric or (optimized[0] if optimized else None) or config.get("monitor")
        direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
        first = str(direction[0]) if OmegaConf.is_list(direction) and len(direction) else None
        mode = self.mode or ({"maximize": "max", "minimize": "min"}.get(first, first) if first else None)
        mode = mode or config.get("monitor_mode") or "max"
        path = write_summary(Path(config.hydra.sweep.dir), metric, mode)
        log.info("sweep summary written to %s", path)
        if list(Path(config.hydra.sweep.dir).glob(f"*/{label_issues.PREDICTIONS}")):  # a k-fold sweep of a classifier
            try:
                log.info(label_issues.write(Path(config.hydra.sweep.dir)))
            except UserError as err:
                log.warning("no label issues: %s", err)


class PasswordsMasked(Callback):
    """A job's ``.hydra/hydra.yaml`` (written by Hydra as the job starts) keeps the study storage's URL without its
    password; the sweep's own multirun.yaml is written masked by the sweeper."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
        if not isinstance(storage, str) or study_storage.printable(storage) == storage:
            return
        record = Path(config.hydra.runtime.output_dir) / str(config.hydra.output_subdir) / "hydra.yaml"
        if record.is_file():
            OmegaConf.save(study_storage.without_passwords(OmegaConf.load(record)), record)
