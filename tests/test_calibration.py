"""calibrate=temperature: the temperature fitted on the validation split, kept with the weights, and applied by the
test, eval.py, predict.py and exported files; the top-1 class never changes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from visiontrain import artifact
from visiontrain.cli.eval import evaluate
from visiontrain.cli.export import export
from visiontrain.cli.predict import predict
from visiontrain.cli.train import train
from visiontrain.runs.config import compose_config
from visiontrain.serving.inference import load_checkpoint
from visiontrain.tasks.calibration import fit_temperature


@pytest.mark.parametrize("true_temperature", [0.5, 3.0])
def test_the_fitted_temperature_undoes_a_known_over_or_under_confidence(true_temperature):
    generator = torch.Generator().manual_seed(0)
    calibrated = torch.randn(20_000, 5, generator=generator) * 2  # logits whose softmax is the truth
    labels = torch.multinomial(calibrated.softmax(dim=1), 1, generator=generator).squeeze(1)
    fitted = fit_temperature(calibrated * true_temperature, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory, datasets) -> Path:
    root = tmp_path_factory.mktemp("calibrated")
    overrides = [f"paths.data_dir={datasets}", "calibrate=temperature", "data.val_size=100", "data.batch_size=64",
                 "model.net.width=8", "trainer.max_epochs=2", "trainer.accelerator=cpu", "logger=csv",
                 "extras.print_config=false", "callbacks.progress_bar=null",
                 "callbacks.model_summary=null"]  # fmt: skip
    train(compose_config("train", overrides, root / "run"))
    return root / "run"


def test_the_checkpoints_keep_their_epochs_temperature_and_the_test_applies_it(calibrated_run):
    metrics = json.loads((calibrated_run / "metrics.json").read_text())
    last = artifact.load_checkpoint(calibrated_run / "checkpoints" / "last.ckpt").content
    # fitted after the last validation, saved by the checkpoint written after it
    assert float(last["state_dict"]["temperature"]) == pytest.approx(metrics["val/temperature"])
    assert metrics["val/temperature"] > 0 and metrics["val/temperature"] != 1.0
    assert 0 <= metrics["test/ece"] < 1 and metrics["test/ece"] != metrics["test/ece_uncalibrated"]
    assert (calibrated_run / "plots" / "reliability_diagram.png").is_file()


def test_eval_predict_and_onnx_give_the_calibrated_probabilities_and_the_same_classes(
    calibrated_run, make_config, datasets, tmp_path
):
    metrics = json.loads((calibrated_run / "metrics.json").read_text())
    best = metrics["best_model_path"]
    # eval.py: the training run's test figures again, calibrated
    evaluated = evaluate(make_config("eval", [f"ckpt_path={best}", "data.val_size=100"]))
    for key in ("test/acc", "test/ece", "test/ece_uncalibrated"):
        assert evaluated[key] == pytest.approx(metrics[key], abs=1e-6)

    model = load_checkpoint(best)
    temperature = model.temperature
    assert temperature == pytest.approx(float(artifact.load_checkpoint(best).content["state_dict"]["temperature"]))
    images = torch.rand(6, 1, 28, 28)
    raw = model.module.net(images).detach()
    assert torch.allclose(model.run(images), raw / temperature, atol=1e-6)  # the same top class, softer or sharper

    onnx_path = tmp_path / "model.onnx"
    export(make_config("export", [f"ckpt_path={best}", "format=onnx", f"output={onnx_path}"]))
    import onnx

    meta = json.loads({p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}["visiontrain"])
    assert meta["temperature"] == pytest.approx(temperature)
    from visiontrain.serving.inference import load_onnx

    onnx_model = load_onnx(onnx_path)
    assert onnx_model.temperature == pytest.approx(temperature)
    assert torch.allclose(onnx_model.run(images), raw / temperature, atol=1e-4)  # divided inside the graph

    # predict.py: probabilities are the calibrated softmax
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray((images[i, 0] * 255).byte().numpy()).save(inputs / f"{i}.png")
    predict(make_config("predict", [f"ckpt_path={best}", f"input={inputs}", f"output={tmp_path / 'pred'}"]))
    with (tmp_path / "pred" / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        image = model.serving.collate([preprocessed(model, inputs / Path(row["file"]).name)])
        expected = (model.module.net(image).detach() / temperature).softmax(dim=1)[0]
        assert float(row["probability_1"]) == pytest.approx(float(expected.max()), abs=1e-5)


def preprocessed(model, path: Path) -> torch.Tensor:
    from visiontrain.data import preprocessing
    from visiontrain.serving.images import read_image

    return preprocessing.transform(model.preprocessing)(read_image(path))


def test_calibration_of_a_model_that_is_no_classifier_is_one_sentence(datasets, tmp_path):
    result = run_cli("train.py", ["data=pennfudan_seg", "model=unet", "calibrate=temperature"], tmp_path, datasets)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: calibrate=temperature calibrates classifiers' probabilities; this is a segmentation model." in (
        result.stderr
    )
