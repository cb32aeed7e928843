"""The two contracts: what a datamodule says about its data (DataSpec), and what a trained artifact carries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests import detection_formats, formats
from visiontrain import artifact
from visiontrain.data.coco_detection import CocoDetectionDataModule
from visiontrain.data.imagefolder import ImageFolderDataModule
from visiontrain.data.mask_folder import MaskFolderDataModule
from visiontrain.data.mnist import MNISTDataModule
from visiontrain.errors import UserError
from visiontrain.runs.config import instantiate_data


def test_every_family_states_its_data_in_its_spec(datasets, tmp_path):
    mnist = MNISTDataModule(str(datasets), num_classes=10, num_channels=1, image_size=28, download=False).spec
    assert (mnist.task, mnist.num_classes, mnist.input_shape, mnist.has_test_split) == (
        "classification", 10, (1, 28, 28), True,
    )  # fmt: skip
    assert mnist.preprocessing["mode"] == "exact" and mnist.category_ids is None

    folders = ImageFolderDataModule(root=str(datasets / "folders"), image_size=32).spec  # no num_classes given
    assert folders.class_names == ("class_0", "class_1", "class_2") and folders.input_shape == (3, 32, 32)

    shapes = detection_formats.write_coco_splits(tmp_path / "shapes")
    splits = {
        split: {"images": str(shapes / split), "annotations": str(shapes / "annotations" / f"instances_{split}.json")}
        for split in ("train", "val")
    }
    coco = CocoDetectionDataModule(**splits, masks=True).spec
    assert (coco.task, coco.class_names, coco.category_ids) == ("detection", ("rectangle", "ellipse", "triangle"),
                                                                 (3, 17, 90))  # fmt: skip
    assert coco.input_shape is None and coco.with_masks and not coco.has_test_split

    masks = formats.write_mask_folder(tmp_path / "masks", n=6)
    (masks / "classes.txt").write_text("background\nred\ngreen\n")
    spec = MaskFolderDataModule(root=str(masks)).spec
    assert (spec.task, spec.class_names) == ("segmentation", ("background", "red", "green"))
    with pytest.raises(UserError, match=r"data.num_classes=2 but .*classes.txt lists 3 classes"):
        MaskFolderDataModule(root=str(masks), num_classes=2)


def test_num_classes_left_to_the_data_reaches_the_model(make_config, datasets):
    cfg = make_config("train", ["data=imagefolder", "data.root=${paths.data_dir}/folders", "data.image_size=32"])
    assert cfg.data.num_classes is None
    instantiate_data(cfg)
    assert cfg.data.num_classes == 3
    assert instantiate(cfg.model).hparams.num_classes == 3


def test_a_model_of_another_task_is_one_sentence(make_config, datasets):
    cfg = make_config("train", ["data=pennfudan_seg"])  # simple_cnn on segmentation data
    spec = instantiate_data(cfg).spec
    with pytest.raises(UserError, match="a classification model cannot train on PennFudanPed, which is segmentation"):
        instantiate(cfg.model).check_data(spec)


def test_artifacts_of_another_format_version_are_one_sentence(tmp_path):
    newer = tmp_path / "newer.ckpt"
    torch.save({"state_dict": {}, artifact.VERSION_KEY: 2, artifact.CONFIG_KEY: {"task": "classification"}}, newer)
    with pytest.raises(
        UserError, match=r"newer.ckpt is a visiontrain artifact of format 2, and this visiontrain reads"
    ):
        artifact.load_checkpoint(newer)
    metadata = {"format_version": 2, "task": "classification", "class_names": ["a"], "preprocessing": {}}
    with pytest.raises(UserError, match=r"model.onnx is a visiontrain artifact of format 2"):
        artifact.from_metadata(json.dumps(metadata), "model.onnx")
    unversioned = {key: value for key, value in metadata.items() if key != "format_version"}  # written before it
    assert artifact.from_metadata(json.dumps(unversioned), "old.onnx").class_names == ("a",)


def test_checkpoint_configs_name_the_modules_of_today(tmp_path):
    scheduler = {"_target_": "visiontrain.optim.one_cycle", "_partial_": True}
    old = {"state_dict": {}, artifact.CONFIG_KEY: {"model": {"scheduler": scheduler}, "task": "classification"}}
    torch.save(old, Path(tmp_path / "old.ckpt"))
    info = artifact.load_checkpoint(tmp_path / "old.ckpt").info
    assert info.configs["model"]["scheduler"]["_target_"] == "visiontrain.tasks.schedules.one_cycle"

    # data modules renamed by source and kind: what 6c110cd's checkpoints name is read with today's module
    for before, now in (
        ("visiontrain.data.pennfudan.PennFudanDataModule", "visiontrain.data.pennfudan_detection.PennFudanDataModule"),
        ("visiontrain.data.oxford_pet.OxfordPetDataModule", "visiontrain.data.oxford_pet_seg.OxfordPetDataModule"),
        (
            "visiontrain.data.pennfudan_seg.PennFudanSegDataModule",
            "visiontrain.data.pennfudan_seg.PennFudanSegDataModule",
        ),
    ):
        old[artifact.CONFIG_KEY]["data"] = {"_target_": before}
        torch.save(old, Path(tmp_path / "old.ckpt"))
        assert artifact.load_checkpoint(tmp_path / "old.ckpt").info.configs["data"]["_target_"] == now
