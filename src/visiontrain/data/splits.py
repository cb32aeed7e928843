"""k-fold cross-validation of a training pool (``data.folds`` / ``data.fold``), the one place every datamodule
that has a pool takes its folds from.

The pool is what a run otherwise splits into train and val (``val_size`` / ``val_fraction``); the official test
split, where there is one, is never part of it, so every fold is tested on the same images. The pool is cut into
``folds`` parts with ``split_seed``: part ``fold`` validates, the others train. Classification pools are stratified
by class (each part holds each class in about its share of the pool); segmentation pools (no class per image) are
shuffled and cut into parts of equal size. The same pool, ``folds`` and seed give the same parts on every machine.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np

from visiontrain.errors import UserError

log = logging.getLogger(__name__)


def whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # a yaml true is no count


def checked_folds(folds: int | None, fold: int) -> tuple[int | None, int]:
    """``(folds, fold)`` as the config gives them, checked before any data is read: one sentence naming the option
    when they cannot name a fold."""
    if folds is None:
        if fold != 0:  # else a sweep over data.fold without data.folds trains the same split again and again
            raise UserError(f"data.fold={fold} chooses a fold, but data.folds is null (no k-fold); set data.folds too.")
        return None, 0
    if not whole(folds) or folds < 2:
        raise UserError(
            f"data.folds={folds}: give a whole number of folds, 2 or more (null: no folds, the usual validation split)."
        )
    if not whole(fold) or not 0 <= fold < folds:
        raise UserError(f"data.fold={fold} is out of range for data.folds={folds} (0..{folds - 1}).")
    return folds, fold


def fold_split(
    pool: int | Sequence[int],
    folds: int,
    fold: int,
    seed: int,
    pool_name: str,
    class_names: Sequence[str] = (),
) -> tuple[list[int], list[int]]:
    """``(train indices, val indices)`` into the pool for fold ``fold`` of ``folds``, both ascending.

    ``pool``: its size (segmentation: plain k-fold) or the class of each of its images (classification: stratified
    k-fold). ``pool_name`` says what was folded, read after "images of" ("the MNIST training split", "<root> outside
    the test split"); it and ``class_names`` are for the log line and the errors.
    """
    from sklearn.model_selection import KFold, StratifiedKFold  # sklearn takes a second to import: only when used

    stratified = not isinstance(pool, int)
    labels = np.asarray(pool) if stratified else None
    size = len(labels) if stratified else pool
    if folds > size:
        raise UserError(
            f"data.folds={folds} is more than the {size} images of {pool_name}; set data.folds={size} or fewer."
        )
    if stratified:
        # sklearn only warns when a class is smaller than the number of folds: that class would then be missing from
        # some validation folds, which is not the stratified split the run promises
        label, count = min(Counter(labels.tolist()).items(), key=lambda item: item[1])
        if count < folds:
            name = class_names[label] if 0 <= label < len(class_names) else label
            raise UserError(
                f"data.folds={folds} is more than the {count} images of class {name!r} in {pool_name}: stratified "
                f"folds put each class in every fold; set data.folds={count} or fewer."
            )
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    train, val = list(splitter.split(np.zeros(size), labels))[fold]
    log.info(
        "fold %d of %d: %d train / %d val images of %s (%s, split_seed %d)",
        fold,
        folds,
        len(train),
        len(val),
        pool_name,
        "stratified by class" if stratified else "shuffled",
        seed,
    )
    return train.tolist(), val.tolist()


def folded_train_val(
    train: list[int], val: list[int], folds: int | None, fold: int, seed: int, pool_name: str
) -> tuple[list[int], list[int]]:
    """Data whose files name a train and a val split: with ``folds``, the two together are the pool that fold
    ``fold`` splits (plain k-fold); without, they stay as named. Indices are into the same source as ``train``."""
    if folds is None:
        return train, val
    pool = train + val
    train_idx, val_idx = fold_split(len(pool), folds, fold, seed, pool_name)
    return [pool[i] for i in train_idx], [pool[i] for i in val_idx]


def check_every_class_present(name: str, class_names: Sequence[str], counts: dict[str, Sequence[int]]) -> None:
    """The same rule for every classification source, at set-up, from each split's images per class: a class
    without training images is one sentence (the model could never learn it, and a test image of it could only be
    wrong); a class missing from the validation or test split is a warning, since training still means something
    (that class's score is left out)."""
    if "train" in counts:
        empty = [i for i, n in enumerate(counts["train"]) if n == 0]
        if empty:
            tested = [class_names[i] for i in empty if "test" in counts and counts["test"][i] > 0]
            also = f" ({', '.join(tested)} {'has' if len(tested) == 1 else 'have'} test images)" if tested else ""
            raise UserError(
                f"{name}: class{'es' if len(empty) > 1 else ''} {', '.join(class_names[i] for i in empty)} "
                f"{'have' if len(empty) > 1 else 'has'} no training images{also}; add images or leave the class out."
            )
    for split in ("val", "test"):
        if sum(counts.get(split) or ()):
            missing = [class_names[i] for i, n in enumerate(counts[split]) if n == 0]
            if missing:
                log.warning(
                    "%s: no %s images of %s; their %s scores are left out", name, split, ", ".join(missing), split
                )
