"""Split manifests: every file of every split with its size and hash, in the run folder and (summarised) in the
checkpoint; exact duplicates counted and named; hashes remembered between starts; eval.py and predict.py saying
what they look at compared with the checkpoint's splits."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests import detection_formats, formats
from visiontrain import artifact
from visiontrain.cli.eval import evaluate
from visiontrain.cli.predict import predict
from visiontrain.cli.train import train
from visiontrain.data import manifest
from visiontrain.data.cifar10 import CIFAR10DataModule
from visiontrain.data.imagefolder import ImageFolderDataModule
from visiontrain.data.mask_folder import MaskFolderDataModule
from visiontrain.data.mnist import MNISTDataModule
from visiontrain.data.pennfudan_detection import PennFudanDataModule
from visiontrain.errors import UserError


def blake2b(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def on_disk(root: Path, folders: tuple[str, ...] = ("",)) -> dict[str, tuple[int, str]]:
    """Every file under ``root/<folder>`` by its path relative to ``root``: its size and hash, read here."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, blake2b(path.read_bytes()))
        for folder in folders
        for path in (root / folder).rglob("*")
        if path.is_file()
    }


def listed(built: dict, root: Path) -> dict[str, tuple[int, str]]:
    """Every file the manifest lists (samples and label files), by its path relative to ``root``."""
    base = Path(built["root"])
    return {
        str((base / entry["path"]).relative_to(root)): (entry["size"], entry["hash"])
        for split in built["splits"].values()
        for entry in (*split["samples"], *split["label_files"])
    }


def folder_copy(datasets: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(datasets / "folders", tmp_path / "folders"))


def image_folder(root: Path, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(str(root), image_size=32, num_workers=0, **kwargs)


# --- what is listed -------------------------------------------------------------------------------
def test_every_file_of_every_split_is_listed_with_its_size_and_hash(datasets, tmp_path):
    # classification folders: every image of train/, val/ and test/, with its class
    dm = image_folder(datasets / "folders")
    dm.setup("fit")
    built = manifest.build(dm.split_contents(), dm.name)
    assert listed(built, datasets / "folders") == on_disk(datasets / "folders")
    assert {s: e["count"] for s, e in built["splits"].items()} == {"train": 36, "val": 12, "test": 12}
    first = built["splits"]["train"]["samples"][0]
    assert first["label"] == Path(first["path"]).parent.name  # train/<class>/<image>

    # CIFAR-10's PNG export, decoded into memory: still listed file by file
    png = datasets / "cifar10_png"
    dm = CIFAR10DataModule(str(tmp_path / "no-archive"), 10, 3, 32, val_size=50, download=False, png_dir=str(png))
    dm.setup("fit")
    built = manifest.build(dm.split_contents(), dm.name)
    assert listed(built, png) == on_disk(png)
    assert [built["splits"][s]["count"] for s in ("train", "val", "test")] == [450, 50, 100]

    # segmentation: the images as samples, the masks as label files
    masks = formats.write_mask_folder(tmp_path / "masks", n=10)
    dm = MaskFolderDataModule(str(masks), class_names=["background", "red", "green"], num_workers=0)
    dm.setup("fit")
    built = manifest.build(dm.split_contents(), dm.name)
    assert listed(built, masks) == on_disk(masks)
    assert all(e["path"].startswith("masks/") for s in built["splits"].values() for e in s["label_files"])

    # detection: PennFudanPed's images and instance masks (its Annotation/ text files are not read)
    pennfudan = detection_formats.write_pennfudan(tmp_path / "det", n_images=12)
    dm = PennFudanDataModule(str(pennfudan), val_size=2, test_size=3, num_workers=0)
    dm.setup("fit")
    built = manifest.build(dm.split_contents(), dm.name)
    assert listed(built, pennfudan) == on_disk(pennfudan, ("PNGImages", "PedMasks"))
    assert [built["splits"][s]["count"] for s in ("train", "val", "test")] == [7, 2, 3]


def test_in_memory_arrays_are_listed_image_by_image_with_their_files_fingerprinted(datasets):
    dm = MNISTDataModule(str(datasets), num_classes=10, num_channels=1, image_size=28, download=False, val_size=100)
    dm.setup("fit")
    built = manifest.build(dm.split_contents(), dm.name)
    images, labels = formats.class_images(600, 28, 1, seed=1)  # the training file's images, as written
    for split in ("train", "val"):
        for sample in built["splits"][split]["samples"]:
            index = int(sample["name"].removeprefix("train#"))
            assert sample["hash"] == blake2b(images[index].tobytes()) and sample["size"] == 784
            assert sample["label"] == str(labels[index])
    names = {s["name"] for split in ("train", "val") for s in built["splits"][split]["samples"]}
    assert names == {f"train#{i}" for i in range(600)}  # train and val: the official training split, once
    test_sources = {s["path"]: (s["size"], s["hash"]) for s in built["splits"]["test"]["sources"]}
    raw = datasets / "MNIST" / "raw"
    assert test_sources == {
        name: (os.path.getsize(raw / name), blake2b((raw / name).read_bytes()))
        for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    }


# --- duplicates and the cache ---------------------------------------------------------------------
def test_exact_duplicates_within_and_across_splits_are_counted_and_named(datasets, tmp_path, caplog):
    root = folder_copy(datasets, tmp_path)
    train_image = sorted((root / "train" / "class_0").iterdir())[0]
    shutil.copy(train_image, root / "test" / "class_1" / "planted.jpg")  # a training image among the test images
    shutil.copy(train_image, root / "train" / "class_2" / "again.jpg")  # and twice more in train
    dm = image_folder(root)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING, logger="visiontrain.data.manifest"):
        summary = manifest.record(dm, tmp_path / "run")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"the image folder {root} holds exact duplicate images: 1 extra copy within train, ")
    named = f"train/class_0/{train_image.name} = train/class_2/again.jpg = test/class_1/planted.jpg"
    assert f"1 image in both train and test (e.g. {named}): an image in the training split" in warning
    assert warning.endswith("makes those figures optimistic.")
    written = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert written["duplicates"]["within"] == {"train": 1}
    assert written["duplicates"]["across"] == {"train+test": 1}
    assert summary["test"]["count"] == 13


def test_the_manifest_is_stored_once_per_data_version_and_each_run_keeps_its_hash(datasets, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = folder_copy(datasets, tmp_path)
    dm = image_folder(root)
    dm.setup("fit")
    for run in ("run_a", "run_b"):  # two runs (or two trials) of the same data
        manifest.record(dm, tmp_path / run)
    (stored,) = (tmp_path / "cache" / "visiontrain" / "manifests").glob("*.json")
    full = json.loads(stored.read_text())
    assert listed(full, root) == on_disk(root)
    assert stored.stem == blake2b(stored.read_bytes())  # content-addressed
    for run in ("run_a", "run_b"):
        brief = json.loads((tmp_path / run / "splits.json").read_text())
        assert brief["manifest"] == {"hash": stored.stem, "path": str(stored)}
        assert brief["splits"]["test"] == {k: full["splits"]["test"][k] for k in ("count", "digest", "labels_digest")}
        assert "samples" not in json.dumps(brief) and manifest.load(tmp_path / run) == full
    # a changed data set is another version: a second file; the first runs still load theirs
    Image.fromarray(np.full((40, 40, 3), 5, dtype=np.uint8)).save(root / "test" / "class_0" / "new.png")
    dm = image_folder(root)
    dm.setup("fit")
    manifest.record(dm, tmp_path / "run_c")
    assert len(list(stored.parent.glob("*.json"))) == 2
    assert manifest.load(tmp_path / "run_c")["splits"]["test"]["count"] == 13
    assert manifest.load(tmp_path / "run_a") == full
    # an altered store is refused by name; a missing one is one sentence saying how to get it back
    stored.write_text(stored.read_text().replace('"count":12', '"count":11'))
    with pytest.raises(UserError, match=f"^{stored} does not hold the split manifest"):
        manifest.load(tmp_path / "run_a")
    stored.unlink()
    with pytest.raises(UserError, match="which cannot be read .*a run of the same data writes it again"):
        manifest.load(tmp_path / "run_a")


def test_a_cache_that_cannot_be_written_keeps_the_whole_manifest_in_the_run(datasets, tmp_path, caplog):
    root = folder_copy(datasets, tmp_path)
    dm = image_folder(root)
    dm.setup("fit")
    built = manifest.build(dm.split_contents(), dm.name)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    with caplog.at_level(logging.WARNING, logger="visiontrain.data.manifest"):
        manifest.write(built, tmp_path / "run", blocked)
    assert "cannot store the split manifest in" in caplog.text
    assert manifest.load(tmp_path / "run") == built


def test_a_second_start_hashes_only_new_or_changed_files(datasets, tmp_path, monkeypatch):
    root = folder_copy(datasets, tmp_path)
    hashed: list[str] = []
    real = manifest.file_hash
    monkeypatch.setattr(manifest, "file_hash", lambda path: hashed.append(path) or real(path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def start() -> dict:
        dm = image_folder(root)
        dm.setup("fit")
        return manifest.build(dm.split_contents(), dm.name)

    first = start()
    assert len(hashed) == 60 and list((tmp_path / "cache" / "visiontrain" / "hashes").glob("*.json"))
    hashed.clear()
    assert start() == first and hashed == []  # nothing read: sizes and modification times match
    # one file rewritten with other pixels: it alone is read again, and the manifest says so
    changed = root / "test" / "class_0" / sorted(os.listdir(root / "test" / "class_0"))[0]
    Image.fromarray(np.full((40, 40, 3), 9, dtype=np.uint8)).save(changed, format="JPEG")
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = start()
    assert hashed == [str(changed)]
    assert third["splits"]["test"]["digest"] != first["splits"]["test"]["digest"]
    assert third["splits"]["train"] == first["splits"]["train"]


# --- a run, its checkpoint, eval and predict ------------------------------------------------------
RUN = ["data=imagefolder", "data.num_classes=3", "data.image_size=32", "data.num_workers=0", "data.batch_size=8",
       "model=simple_cnn", "model.net.width=8", "trainer.max_epochs=1", "test=false"]  # fmt: skip


def test_run_records_its_splits_and_eval_and_predict_compare_with_them(make_config, datasets, tmp_path, caplog):
    root = folder_copy(datasets, tmp_path)
    cfg = make_config("train", [*RUN, f"data.root={root}"])
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    written = manifest.load(run_dir)
    assert listed(written, root) == on_disk(root)
    # the checkpoint keeps the summary: counts, digests and the short hash of every image
    stored = artifact.load_checkpoint(run_dir / "checkpoints" / "last.ckpt").info.splits
    expected = manifest.summary(written)
    assert stored.keys() == expected.keys() == {"train", "val", "test"}
    for split, entry in expected.items():
        assert {k: v for k, v in stored[split].items() if k != "hashes"} == {
            k: v for k, v in entry.items() if k != "hashes"
        }
        assert torch.equal(stored[split]["hashes"], entry["hashes"]) and len(entry["hashes"]) == entry["count"]
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    def evaluated(data_root: Path) -> list[logging.LogRecord]:
        caplog.clear()
        eval_cfg = make_config("eval", [*RUN[:4], f"ckpt_path={ckpt}", f"data.root={data_root}"])
        eval_cfg.paths.output_dir = str(tmp_path / f"eval_{data_root.name}")
        with caplog.at_level(logging.INFO, logger="visiontrain.callbacks.checkpoint_state"):
            evaluate(eval_cfg)
        return [r for r in caplog.records if r.name == "visiontrain.callbacks.checkpoint_state"]

    # the same test split, wherever it is: said in a line of the log
    (same,) = evaluated(Path(shutil.copytree(root, tmp_path / "moved")))
    assert same.levelno == logging.INFO
    assert same.getMessage() == "The test split evaluated here is the checkpoint's test split (12 images)."

    # another test split: two of its images replaced, one by a training image
    other = Path(shutil.copytree(root, tmp_path / "other"))
    tests = sorted((other / "test" / "class_0").iterdir())
    shutil.copy(sorted((other / "train" / "class_0").iterdir())[0], tests[0])
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tests[1], format="JPEG")
    (differs,) = evaluated(other)
    assert differs.levelno == logging.WARNING
    assert differs.getMessage() == (
        "The test split evaluated here (12 images) differs from the checkpoint's test split (12 images): of these, "
        "10 were in its test split, 0 in its validation split and 1 in its training split; figures on images the "
        "model trained on are optimistic."
    )

    # predict.py names the inputs the model has seen
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(sorted((root / "train" / "class_1").iterdir())[0], inputs / "seen.jpg")
    shutil.copy(sorted((root / "test" / "class_2").iterdir())[0], inputs / "tested.jpg")
    Image.fromarray(np.full((40, 40, 3), 77, dtype=np.uint8)).save(inputs / "new.jpg")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="visiontrain"):
        predict(make_config("predict", [f"ckpt_path={ckpt}", f"input={inputs}", f"output={tmp_path / 'pred'}"]))
    assert (
        "Of the 3 input images, 1 was in the checkpoint's training split (seen.jpg); 1 in its test split "
        "(tested.jpg): predictions on images the model trained on say little about new images." in caplog.text
    )


def test_checkpoints_without_a_manifest_still_load(tmp_path):
    info = artifact.describe({"visiontrain_format": 1, "visiontrain_config": {"task": "classification"}}, "old.ckpt")
    assert info is not None and info.splits == {}
    assert manifest.input_overlap([tmp_path / "x.png"], {}) is None


@pytest.mark.parametrize("same_labels", [True, False])
def test_the_same_images_with_other_labels_are_told_apart(datasets, tmp_path, same_labels):
    root = folder_copy(datasets, tmp_path)
    dm = image_folder(root)
    dm.setup("fit")
    stored = manifest.summary(manifest.build(dm.split_contents(), dm.name))
    if not same_labels:  # one test image moved into another class folder
        moved = sorted((root / "test" / "class_0").iterdir())[0]
        moved.rename(root / "test" / "class_1" / moved.name)
    dm = image_folder(root)
    dm.setup("fit")
    evaluated = manifest.summary(manifest.build({"test": dm.split_contents()["test"]}, dm.name))["test"]
    differs, sentence = manifest.compare("test", evaluated, stored)
    assert differs is not same_labels
    if not same_labels:
        assert sentence == (
            "the test split evaluated here holds the 12 images of the checkpoint's test split, but their labels "
            "differ from those it was evaluated with."
        )
