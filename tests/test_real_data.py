"""Short runs on the real datasets, when DATA_DIR holds them (CI points it at the shared copies)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import compose_config
from visiontrain.train import train

DATA_DIR = Path(os.environ.get("DATA_DIR", "/nonexistent"))
HAS_MNIST = all(
    (DATA_DIR / "MNIST" / "raw" / f"{name}.gz").is_file() or (DATA_DIR / "MNIST" / "raw" / name).is_file()
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
)

pytestmark = pytest.mark.real_data


@pytest.mark.skipif(not HAS_MNIST, reason="DATA_DIR does not hold MNIST/raw")
def test_mnist_one_epoch_reaches_97_percent_on_the_official_test_set(tmp_path):
    cfg = compose_config(
        "train",
        [
            f"paths.data_dir={DATA_DIR}",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "extras.print_config=false",
            "callbacks.progress_bar=null",
            "callbacks.model_summary=null",
            "data.download=false",
        ],
        tmp_path / "run",
    )
    metrics = train(cfg)
    assert metrics["test/acc"] >= 0.97
    assert metrics["val/acc"] > 0.95
