"""The report of an Optuna study rebuilt from its storage alone: a study shared by many workers has no single sweep
folder that saw every job.

    python -m visiontrain.sweep_report postgresql://user@host/db mnist_lr [--out outputs/sweep_reports/mnist_lr]
    python -m visiontrain.sweep_report journal:/shared/nfs/mnist.log mnist_lr

Writes into ``--out`` what a sweep writes at its end: ``optuna/trials.csv`` (every trial, with the worker and job
folder it ran in), ``optuna/*.png`` (the study's plots) and ``best.yaml`` (the best trial as a config), and prints
the commands that train the best trial again.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import optuna

from visiontrain.runs.study_report import PLOTS_FOLDER, TRIALS_TABLE, command_line, write_study_report
from visiontrain.runs.study_storage import open_storage, printable, storage_spec

log = logging.getLogger("visiontrain")


def report(storage: str, study_name: str, out: Path, config_name: str = "train") -> int:
    spec = storage_spec(storage, out)
    try:
        opened = open_storage(spec)
    except Exception as err:  # a wrong URL, a server that does not answer, a missing driver
        print(f"error: cannot open the study storage {printable(spec)}: {err}", file=sys.stderr)
        return 1
    names = optuna.get_all_study_names(opened)
    if study_name not in names:
        listed = ", ".join(sorted(names)) or "none"
        print(f"error: no study {study_name!r} in {printable(spec)} (studies there: {listed})", file=sys.stderr)
        return 1
    study = optuna.load_study(study_name=study_name, storage=opened)
    result = write_study_report(study, out, config_name=config_name)
    print(f"study {study_name!r}: {len(study.trials)} trials; every trial in {out / PLOTS_FOLDER / TRIALS_TABLE}")
    for plot in result.plots:
        print(f"plot: {plot}")
    if result.best_config:
        print(f"best trial as a config: {result.best_config}; train it again with")
        print(f"\t{command_line(result.config_command)}")
        print(f"or\t{command_line(result.overrides)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visiontrain.sweep_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("storage", help="the sweep's hydra.sweeper.storage: a database URL or journal:<file>")
    parser.add_argument("study", help="the sweep's hydra.sweeper.study_name")
    parser.add_argument("--out", type=Path, help="report folder (default: outputs/sweep_reports/<study>)")
    parser.add_argument("--config-name", default="train", help="the sweep's primary config (default: train)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = (args.out or Path("outputs") / "sweep_reports" / args.study).resolve()
    return report(args.storage, args.study, out, args.config_name)


if __name__ == "__main__":
    sys.exit(main())
