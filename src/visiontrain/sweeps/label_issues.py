"""Label issues of a k-fold sweep: ``visiontrain label-issues <sweep dir>`` (also at the end of such a sweep).

Each fold's run wrote the predicted probabilities of its validation fold, images it never trained on
(``val_predictions.npz``, visiontrain.callbacks.out_of_fold); together they are out-of-fold predictions for the
whole training pool. cleanlab's confident learning (``find_label_issues``, ranked by self-confidence) flags the
images whose given label the predictions contradict, and ``get_label_quality_scores`` scores every image.

Written into the sweep folder: ``label_issues.csv`` (rank, image, given label, suggested label = the most
probable class, label quality score in [0, 1], lower = more likely wrong, the fold that predicted it),
``label_issues.png`` (the top suspects with both labels; also in ``<sweep dir>/tensorboard``) and one summary line.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visiontrain.errors import UserError

log = logging.getLogger("visiontrain")
CSV_NAME, GRID_NAME = "label_issues.csv", "label_issues.png"
PREDICTIONS = "val_predictions.npz"  # what each fold writes (visiontrain.callbacks.out_of_fold.FILE_NAME)
SHOWN = 24  # suspects drawn in the grid


@dataclass
class OutOfFold:
    probabilities: np.ndarray  # (N, C)
    labels: np.ndarray  # (N,)
    ids: list[str]
    folds: list[str]  # the job folder that predicted each image
    class_names: list[str]
    job_dirs: list[Path]


def collect(sweep_dir: Path) -> OutOfFold:
    """Every fold's predictions of the sweep, checked to be one k-fold split of one pool."""
    files = sorted(Path(sweep_dir).glob(f"*/{PREDICTIONS}"))
    if not files:
        raise UserError(
            f"{sweep_dir} holds no out-of-fold predictions ({PREDICTIONS} in its job folders): label issues are found "
            "from a k-fold sweep of a classifier, e.g. python train.py -m data.folds=5 data.fold=0,1,2,3,4"
        )
    parts = []
    for path in files:
        try:
            with np.load(path, allow_pickle=False) as stored:  # data only: no objects unpickled
                parts.append({key: stored[key] for key in stored.files})
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read {path} ({err}).") from err
    names = [list(p["class_names"]) for p in parts]
    if any(n != names[0] for n in names):
        raise UserError(f"the folds in {sweep_dir} name different classes: they are not one sweep's folds.")
    folds = {int(p["folds"]) for p in parts}
    given = sorted(int(p["fold"]) for p in parts)
    if len(folds) != 1 or len(set(given)) != len(given):
        raise UserError(f"{sweep_dir} holds folds {given} of {sorted(folds)}-fold splits: not one k-fold sweep.")
    ids = [str(i) for p in parts for i in p["ids"]]
    if len(set(ids)) != len(ids):
        raise UserError(f"the folds in {sweep_dir} share images: they are not one k-fold split of one pool.")
    missing = sorted(set(range(folds.pop())) - set(given))
    if missing:
        log.warning("folds %s of the sweep have no predictions: their images are not reviewed", missing)
    return OutOfFold(
        probabilities=np.concatenate([p["probabilities"] for p in parts]).astype(np.float64),
        labels=np.concatenate([p["labels"] for p in parts]).astype(np.int64),
        ids=ids,
        folds=[path.parent.name for path, p in zip(files, parts) for _ in p["ids"]],
        class_names=[str(n) for n in names[0]],
        job_dirs=[path.parent for path in files],
    )


def rank(oof: OutOfFold) -> tuple[np.ndarray, np.ndarray]:
    """The flagged images' indices, most likely wrong first, and every image's label quality score."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    flagged = find_label_issues(oof.labels, oof.probabilities, return_indices_ranked_by="self_confidence", n_jobs=1)
    return np.asarray(flagged), get_label_quality_scores(oof.labels, oof.probabilities)


def images_of(job_dir: Path, ids: list[str]):
    """The images named ``ids`` (uint8 CHW tensors), read through the data config of one of the sweep's runs."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from visiontrain import artifact
    from visiontrain.serving.images import read_image

    config = OmegaConf.load(job_dir / "config.yaml")
    data = OmegaConf.to_container(config.data, resolve=True)
    artifact.check_targets(data, f"{job_dir / 'config.yaml'}", "data")  # a config from a file: the allow-list
    datamodule = instantiate(data)
    datamodule.setup("fit")
    by_name: dict[str, torch.Tensor] = {}
    wanted = set(ids)
    contents = datamodule.split_contents()
    for split in ("train", "val"):
        content = contents.get(split)
        if content is None or content.images is None:
            continue
        for name, image in zip(content.names, content.images):
            if name in wanted:
                by_name[name] = image
    return [by_name[i] if i in by_name else read_image(Path(i)) for i in ids]


def write(sweep_dir: Path) -> str:
    """Find the label issues of a sweep, write label_issues.csv and label_issues.png; returns the summary line."""
    sweep_dir = Path(sweep_dir)
    oof = collect(sweep_dir)
    flagged, scores = rank(oof)
    suggested = oof.probabilities.argmax(axis=1)
    with (sweep_dir / CSV_NAME).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "image", "given_label", "suggested_label", "label_quality", "fold_job"])
        for position, i in enumerate(flagged, start=1):
            writer.writerow([position, oof.ids[i], oof.class_names[oof.labels[i]], oof.class_names[suggested[i]],
                             f"{scores[i]:.6f}", oof.folds[i]])  # fmt: skip
    shown = list(flagged[:SHOWN])
    if shown:
        draw(sweep_dir, oof, shown, suggested, scores)
    total = len(oof.ids)
    return (
        f"label issues: {len(flagged)} of {total} training images ({len(flagged) / max(total, 1):.2%}) flagged by "
        f"their out-of-fold predictions ({len(oof.job_dirs)} folds); {sweep_dir / CSV_NAME}"
        + (f", the top {len(shown)} in {sweep_dir / GRID_NAME}" if shown else "")
    )


def draw(sweep_dir: Path, oof: OutOfFold, shown: list[int], suggested: np.ndarray, scores: np.ndarray) -> None:
    import torch

    from visiontrain.plots.figures import prediction_grid_figure

    images = torch.stack([image.float() for image in images_of(oof.job_dirs[0], [oof.ids[i] for i in shown])])
    figure = prediction_grid_figure(
        images,
        torch.as_tensor(suggested[shown]),
        torch.as_tensor(oof.labels[shown]),
        oof.class_names,
        [f"quality {scores[i]:.2g}" for i in shown],
        "likely label errors, most likely first (suggested / given label)",
    )
    figure.savefig(sweep_dir / GRID_NAME, dpi=100)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(sweep_dir / "tensorboard")) as writer:
        writer.add_figure("label_issues", figure, close=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visiontrain label-issues", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="the k-fold sweep's folder (outputs/train/multiruns/<time>)")
    args = parser.parse_args(argv)
    try:
        print(write(args.sweep_dir))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
