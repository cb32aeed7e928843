"""Trained models put to use: predict.py on image files, export.py to ONNX / TorchScript, verified."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests import formats
from tests.conftest import run_cli
from visiontrain.cli.export import export
from visiontrain.cli.predict import predict
from visiontrain.cli.train import train
from visiontrain.data.mnist import MNISTDataModule
from visiontrain.errors import UserError
from visiontrain.serving.inference import load_checkpoint

QUIET_TRAIN = ["trainer.max_epochs=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, datasets) -> tuple[Path, Path]:
    """A simple_cnn checkpoint trained on the synthetic digits, and PNG files of the official test images."""
    from visiontrain.runs.config import compose_config

    root = tmp_path_factory.mktemp("clf")
    overrides = [f"paths.data_dir={datasets}", "data.val_size=100", "extras.print_config=false", "test=false",
                 "callbacks.progress_bar=null", "callbacks.model_summary=null", "trainer.accelerator=cpu",
                 "trainer.max_epochs=2"]  # fmt: skip
    cfg = compose_config("train", overrides, root / "run")
    train(cfg)
    dm = MNISTDataModule(str(datasets), num_classes=10, num_channels=1, image_size=28, download=False, val_size=100)
    dm.setup("test")
    images = root / "images"
    images.mkdir()
    for i in range(12):
        Image.fromarray(dm.test_set.images[i, 0].numpy()).save(images / f"digit_{i:02d}.png")
    (images / "zz_corrupt.png").write_bytes(b"\x89PNG broken")
    return root / "run" / "checkpoints" / "last.ckpt", images


def predict_config(make_config, output: Path, **keys):
    overrides = [f"output={output}", *(f"{k}={v}" for k, v in keys.items())]
    return make_config("predict", overrides)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_classification_predictions_csv_and_eval_agreement(make_config, classifier, tmp_path, caplog, datasets):
    ckpt, images = classifier
    with caplog.at_level(logging.INFO, logger="visiontrain"):
        summary = predict(
            predict_config(make_config, tmp_path / "p", ckpt_path=ckpt, input=images, **{"predict.topk": 3})
        )
    assert summary["images"] == 12 and summary["skipped"] == 1
    # the file and what is wrong with it, not the decoder's text (torchvision's names its build's source files)
    assert f"cannot decode image {images / 'zz_corrupt.png'}: not a valid PNG image; skipped it" in caplog.text
    assert ".cpp" not in caplog.text and "12 images read, 1 skipped" in caplog.text

    rows = read_csv(tmp_path / "p" / "predictions.csv")
    assert list(rows[0]) == ["file", "class_1", "probability_1", "class_2", "probability_2", "class_3", "probability_3"]
    assert len(rows) == 12
    for row in rows:
        probabilities = [float(row[f"probability_{k}"]) for k in (1, 2, 3)]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6

    # the same labels as the model on the datamodule's own test tensors (what eval.py scores)
    loaded = load_checkpoint(ckpt)
    dm = MNISTDataModule(str(datasets), num_classes=10, num_channels=1, image_size=28, download=False, val_size=100)
    dm.setup("test")
    expected = loaded.run(dm.augment(dm.test_set.images[:12], train=False)).argmax(dim=1)
    assert [row["class_1"] for row in rows] == [str(int(c)) for c in expected]


def test_onnx_export_matches_pytorch_and_predicts_the_same(make_config, classifier, tmp_path):
    ckpt, images = classifier
    onnx_path = tmp_path / "model.onnx"
    cfg = make_config("export", [f"ckpt_path={ckpt}", "format=onnx", f"output={onnx_path}", "export.dynamic_batch=true",
                                 f"input={images}", "export.check_batch_size=4"])  # fmt: skip
    assert export(cfg)["max_abs_difference"] < 1e-4

    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    info = json.loads(meta["visiontrain"])
    assert info["task"] == "classification" and info["class_names"] == [str(d) for d in range(10)]
    assert info["preprocessing"]["channels"] == 1 and info["opset"] >= 17

    predict(predict_config(make_config, tmp_path / "ckpt", ckpt_path=ckpt, input=images))
    predict(
        predict_config(make_config, tmp_path / "onnx", model_path=onnx_path, input=images, **{"predict.batch_size": 5})
    )
    via_ckpt = read_csv(tmp_path / "ckpt" / "predictions.csv")
    via_onnx = read_csv(tmp_path / "onnx" / "predictions.csv")
    assert [r["class_1"] for r in via_onnx] == [r["class_1"] for r in via_ckpt]
    for a, b in zip(via_ckpt, via_onnx):
        assert float(a["probability_1"]) == pytest.approx(float(b["probability_1"]), abs=1e-4)


@pytest.fixture
def unconfigured_exporter_logs():
    """The exporter's loggers as in a fresh process (nothing has quietened them yet), restored afterwards."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.NOTSET)
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


def test_export_writes_into_its_own_run_folder_and_prints_only_our_lines(
    make_config, classifier, tmp_path, caplog, capsys, unconfigured_exporter_logs
):
    ckpt, _ = classifier
    caplog.set_level(logging.INFO)
    export(make_config("export", [f"ckpt_path={ckpt}", "format=onnx"]))
    exported = tmp_path / "run" / "last.onnx"  # the export's run folder (paths.output_dir), not the checkpoint's
    assert exported.is_file() and not ckpt.with_suffix(".onnx").exists()
    assert caplog.text.count(str(exported)) == 1
    # the exporter's step-by-step INFO lines and progress prints stay out; only visiontrain's lines remain
    assert {record.name for record in caplog.records} == {"visiontrain"}
    assert "[torch.onnx]" not in capsys.readouterr().out


def test_a_checkpoint_written_before_the_format_key_and_the_module_move_still_serves(make_config, classifier, tmp_path):
    """Checkpoints without the format key (format 1) whose configs name visiontrain.optim (now tasks.schedules)."""
    from visiontrain.cli.eval import evaluate

    ckpt, images = classifier
    old = torch.load(ckpt, weights_only=True)
    del old["visiontrain_format"]
    for section in ("model", "model_resolved"):
        old["visiontrain_config"][section]["scheduler"]["_target_"] = "visiontrain.optim.one_cycle"
    torch.save(old, tmp_path / "old.ckpt")
    assert predict(predict_config(make_config, tmp_path / "p", ckpt_path=tmp_path / "old.ckpt", input=images))["images"]
    assert "test/acc" in evaluate(make_config("eval", [f"ckpt_path={tmp_path / 'old.ckpt'}"]))


def test_predict_output_folder_is_the_run_folder(classifier, tmp_path):
    ckpt, images = classifier
    output = tmp_path / "predictions"
    result = run_cli("predict.py", [f"ckpt_path={ckpt}", f"input={images}", f"output={output}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output / "predictions.csv").is_file() and (output / ".hydra" / "config.yaml").is_file()
    assert (output / "predict.log").is_file() and not (tmp_path / "outputs").exists()
    console = result.stdout + result.stderr
    assert f"cannot decode image {images / 'zz_corrupt.png'}: not a valid PNG image" in console
    assert ".cpp" not in console and "/__w/" not in console


def test_predict_without_output_writes_into_a_new_run_folder(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from visiontrain.runs.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("predict", ["input=x.png"], return_hydra_config=True)
    assert Path(cfg.hydra.run.dir).parent == Path(cfg.paths.log_dir) / "predict" / "runs"


def test_torchscript_export(make_config, classifier, tmp_path):
    ckpt, images = classifier
    cfg = make_config("export", [f"ckpt_path={ckpt}", "format=torchscript", f"output={tmp_path / 'model.pt'}"])
    assert export(cfg)["max_abs_difference"] < 1e-5
    predict(predict_config(make_config, tmp_path / "ts", model_path=tmp_path / "model.pt", input=images))
    assert len(read_csv(tmp_path / "ts" / "predictions.csv")) == 12


def test_segmentation_masks_overlays_and_onnx(make_config, tmp_path):
    data = formats.write_mask_folder(tmp_path / "masks", n=10, size=(40, 56))
    cfg = make_config("train", ["model=unet", "data=mask_folder", f"data.root={data}", "data.num_classes=3",
                                "data.class_names=[background,red,green]", "data.image_size=32", "data.num_workers=0",
                                "data.batch_size=4", *QUIET_TRAIN, "test=false",
                                "+model.net.decoder_channels=[32,16,8]", "+model.net.encoder_depth=3"])  # fmt: skip
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    predict(predict_config(make_config, tmp_path / "p", ckpt_path=ckpt, input=str(data / "images" / "scene_00*.png")))
    masks = sorted((tmp_path / "p").glob("*_mask.png"))
    assert len(masks) == 10 and len(list((tmp_path / "p").glob("*_overlay.png"))) == 10
    mask = Image.open(masks[0])
    assert mask.mode == "P" and mask.size == (56, 40)  # the input's own size
    assert set(np.unique(np.array(mask)).tolist()) <= {0, 1, 2}

    onnx_path = tmp_path / "unet.onnx"
    cfg = make_config("export", [f"ckpt_path={ckpt}", "format=onnx", f"output={onnx_path}"])
    assert export(cfg)["max_abs_difference"] < 1e-3
    predict(predict_config(make_config, tmp_path / "o", model_path=onnx_path, input=str(data / "images")))
    for name in ("scene_003_mask.png", "scene_007_mask.png"):
        a, b = np.array(Image.open(tmp_path / "p" / name)), np.array(Image.open(tmp_path / "o" / name))
        assert (a == b).mean() > 0.999


def test_bad_requests_are_one_sentence(make_config, classifier, tmp_path):
    ckpt, images = classifier
    with pytest.raises(UserError, match="give exactly one of ckpt_path"):
        predict(predict_config(make_config, tmp_path, ckpt_path=ckpt, model_path=ckpt, input=images))
    with pytest.raises(UserError, match="matches no image files"):
        predict(predict_config(make_config, tmp_path, ckpt_path=ckpt, input=str(tmp_path / "nothing*.png")))
    not_a_model = tmp_path / "x.onnx"
    not_a_model.write_bytes(b"junk")
    with pytest.raises(UserError, match=f"onnxruntime cannot load {not_a_model}"):
        predict(predict_config(make_config, tmp_path, model_path=not_a_model, input=images))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.ckpt")
    with pytest.raises(UserError, match="lacks the model config"):
        predict(predict_config(make_config, tmp_path, ckpt_path=tmp_path / "plain.ckpt", input=images))
