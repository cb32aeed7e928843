"""Inference throughput, PyTorch eager vs onnxruntime, in one run: images/s at batch 1 and batch 32.

Models are built from their configs with random weights (throughput does not depend on the values;
for the detector it depends a little on how many boxes pass the score threshold), exported with the
same code as ``export.py`` and timed on the same inputs on this machine's CPU. The detector takes a
list of images in PyTorch (one padded batch) and one image per call in onnxruntime (32 calls).

    python bench/inference.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from visiontrain.data import preprocessing
from visiontrain.models.detection import build_detector
from visiontrain.models.resnet import build_resnet
from visiontrain.models.simple_cnn import SimpleCNN
from visiontrain.serving.base import Logits
from visiontrain.serving.detection import Detections
from visiontrain.serving.inference import LoadedModel, load_onnx

MODELS = {
    "simple_cnn (MNIST, 1x28x28)": (lambda: SimpleCNN(in_channels=1, num_classes=10), (1, 28, 28)),
    "resnet18 (CIFAR stem, 3x32x32)": (lambda: build_resnet(18, num_classes=10), (3, 32, 32)),
    "resnet18 (ImageNet stem, 3x224x224)": (
        lambda: build_resnet(18, num_classes=1000, cifar_stem=False),
        (3, 224, 224),
    ),
}


DETECTOR = "fasterrcnn mobilenet_v3_large_320_fpn (3x240x320)"
DETECTOR_SHAPE = (3, 240, 320)  # resized inside the model to 320x427 (shorter side 320)


def images_per_second(run, batch: torch.Tensor, seconds: float) -> float:
    run(batch)  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(batch)
        count += len(batch)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per measurement")
    args = parser.parse_args()
    from visiontrain.serving.base import export_onnx
    from visiontrain.serving.detection import export_detector_onnx

    print(f"threads: {torch.get_num_threads()}  (images/s; higher is better)")
    print(f"{'model':52s} {'batch':>5s} {'eager':>9s} {'onnxruntime':>12s} {'ratio':>6s}")
    for name, (build, shape) in MODELS.items():
        module = Logits(build()).eval()
        spec = {"channels": shape[0], "mode": "exact", "size": shape[1], "mean": [0.5], "std": [0.5]}
        loaded = LoadedModel("classification", [], spec, module, "bench", module)
        path = Path(tempfile.mkdtemp()) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(loaded, torch.randn(2, *shape), path, dynamic_batch=True)
        session = load_onnx(path)
        for batch_size in (1, 32):
            batch = torch.randn(batch_size, *shape)
            with torch.inference_mode():
                eager = images_per_second(module, batch, args.seconds)
            ort = images_per_second(session.run, batch, args.seconds)
            print(f"{name:52s} {batch_size:5d} {eager:9.1f} {ort:12.1f} {ort / eager:6.2f}")

    # a detector: COCO's 90 classes, the default Faster R-CNN variant and its default input size
    module = Detections(build_detector("fasterrcnn", "mobilenet_v3_large_320_fpn", num_classes=90)).eval()
    loaded = LoadedModel("detection", [str(c) for c in range(1, 91)], preprocessing.as_is(), module, "bench", module)
    path = Path(tempfile.mkdtemp()) / "detector.onnx"
    export_detector_onnx(loaded, torch.rand(DETECTOR_SHAPE), path)
    session = load_onnx(path)
    for batch_size in (1, 32):
        images = list(torch.rand(batch_size, *DETECTOR_SHAPE))
        with torch.inference_mode():
            eager = images_per_second(module.net, images, args.seconds)
        ort = images_per_second(session.run, images, args.seconds)
        print(f"{DETECTOR:52s} {batch_size:5d} {eager:9.1f} {ort:12.1f} {ort / eager:6.2f}")


if __name__ == "__main__":
    main()
