"""model.class_weights: null, a list, or balanced (inverse training frequencies from the datamodule's class_counts),
in the loss as a buffer that is saved in checkpoints and logged."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning import Trainer
from torch.nn import functional as F

from tests import formats
from visiontrain.cli.train import train
from visiontrain.data.mask_folder import MaskFolderDataModule
from visiontrain.data.segmentation import read_index_mask
from visiontrain.errors import UserError
from visiontrain.models.simple_cnn import SimpleCNN
from visiontrain.tasks.base import balanced_class_weights
from visiontrain.tasks.classification import ClassificationModule
from visiontrain.tasks.segmentation import SegmentationModule

SGD = partial(torch.optim.SGD, lr=0.1)


def imbalanced_folder(root: Path, kept: tuple[int, ...] = (12, 6, 3)) -> Path:
    """An image folder whose train/ holds ``kept`` images of class_0, class_1, class_2."""
    formats.write_imagefolder(root, num_classes=3, per_class=12, size=32)
    for k, count in enumerate(kept):
        for path in sorted((root / "train" / f"class_{k}").iterdir())[count:]:
            path.unlink()
    return root


def test_balanced_weights_are_inverse_frequencies_in_the_loss_and_the_checkpoint(make_config, tmp_path, caplog):
    root = imbalanced_folder(tmp_path / "folder")
    cfg = make_config("train", ["data=imagefolder", f"data.root={root}", "data.image_size=28", "data.num_workers=0",
                                "data.batch_size=8", "model.class_weights=balanced", "model.net.width=4",
                                "trainer.max_epochs=1", "test=false"])  # fmt: skip
    with caplog.at_level(logging.INFO, logger="visiontrain"):
        train(cfg)
    # 12, 6 and 3 images: inverse frequencies 1/12, 1/6, 1/3, scaled to a mean of 1
    expected = torch.tensor([1 / 12, 1 / 6, 1 / 3])
    expected = expected / expected.mean()
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("class weights"))
    assert "class_0: 0.5714, 0.429; class_1: 0.2857, 0.857; class_2: 0.1429, 1.714" in line

    # a buffer of the loss: in the checkpoint, which still loads with weights_only=True
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert torch.allclose(checkpoint["state_dict"]["criterion.weight"], expected)
    assert checkpoint["hyper_parameters"]["class_weights"] == "balanced"

    module = instantiate(checkpoint["visiontrain_config"]["model_resolved"])
    module.load_state_dict(checkpoint["state_dict"])
    logits, labels = torch.randn(7, 3), torch.tensor([0, 1, 2, 2, 1, 0, 2])
    nll = -logits.log_softmax(dim=1)[torch.arange(7), labels]
    manual = (expected[labels] * nll).sum() / expected[labels].sum()  # PyTorch's weighted mean
    assert module.criterion(logits, labels).item() == pytest.approx(manual.item(), rel=1e-5)
    assert module.criterion(logits, labels).item() != pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-3)


def test_a_list_is_the_weight_and_bad_options_are_one_sentence():
    net = SimpleCNN(in_channels=1, num_classes=3, image_size=28, width=4, hidden=8)
    module = ClassificationModule(net, SGD, 3, class_weights=[1, 2, 0.5])
    assert module.criterion.weight.tolist() == [1.0, 2.0, 0.5] and module.hparams.class_weights == [1.0, 2.0, 0.5]
    with pytest.raises(UserError, match=r"^model.class_weights has 2 entries for 3 classes; give one weight per class"):
        ClassificationModule(net, SGD, 3, class_weights=[1, 2])
    with pytest.raises(UserError, match=r"^model.class_weights has 4 entries for 3 classes"):
        SegmentationModule(torch.nn.Identity(), SGD, 3, class_weights=[1, 2, 3, 4])
    with pytest.raises(UserError, match=r"^model.class_weights='inverse': give null, balanced, or a list of 3"):
        ClassificationModule(net, SGD, 3, class_weights="inverse")
    with pytest.raises(UserError, match=r"weights must be numbers >= 0, not all 0"):
        ClassificationModule(net, SGD, 3, class_weights=[1, -1, 2])
    with pytest.raises(UserError, match=r"class 'b' does not occur in the training split of x"):
        balanced_class_weights(torch.tensor([5.0, 0.0, 1.0]), ["a", "b", "c"], "x")


def with_trainer(module):
    """``module`` attached to a trainer (its logging asks which process it runs in); nothing is trained."""
    module.trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    return module


def test_segmentation_balanced_weights_from_pixel_counts_remembered(tmp_path, caplog, monkeypatch):
    root = formats.write_mask_folder(tmp_path / "masks", n=10, size=(24, 32))
    dm = MaskFolderDataModule(root=str(root), num_classes=3, class_names=["background", "red", "green"],
                              image_size=32, num_workers=0, download=False)  # fmt: skip
    dm.setup("fit")
    manual = np.zeros(3, dtype=np.int64)
    for _, mask in dm.train_set.pairs:
        manual += np.bincount(read_index_mask(mask).ravel(), minlength=3)[:3]
    with caplog.at_level(logging.INFO, logger="visiontrain"):
        assert dm.class_counts() == manual.tolist()
    assert f"pixels per class counted in {len(dm.train_set.pairs)} masks" in caplog.text

    module = with_trainer(SegmentationModule(torch.nn.Identity(), SGD, 3, class_weights="balanced"))
    # a second count reads no mask: each mask's counts are remembered by file size and modification time
    monkeypatch.setattr("visiontrain.data.segmentation.read_index_mask", lambda path: pytest.fail(f"read {path}"))
    module.fit_class_weights(dm)  # what setup("fit") calls with the trainer's datamodule
    inverse = 1 / torch.tensor(manual, dtype=torch.float64)
    assert torch.allclose(module.cross_entropy.weight, (inverse / inverse.mean()).float())

    class NoCounts:
        spec = SimpleNamespace(name="the stub data")

    with pytest.raises(UserError, match=r"^model.class_weights=balanced needs the class counts of the training split"):
        with_trainer(SegmentationModule(torch.nn.Identity(), SGD, 3, class_weights="balanced")).fit_class_weights(
            NoCounts()
        )
