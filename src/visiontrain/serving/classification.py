"""Classification put to use: logits per image; ``predict.py`` writes ``predictions.csv`` with the top-k classes."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from omegaconf import DictConfig

from visiontrain.serving.base import LoadedModel, TaskServing


class ClassificationServing(TaskServing):
    task = "classification"

    def writer(self, output: Path, model: LoadedModel, options: DictConfig) -> ClassificationWriter:
        return ClassificationWriter(output, model.class_names, options.topk)


class ClassificationWriter:
    """``predictions.csv``: per image the ``topk`` most probable classes with their probabilities."""

    def __init__(self, output: Path, class_names: list[str], topk: int) -> None:
        self.topk = min(topk, len(class_names))
        self.names = class_names
        self.file = (output / "predictions.csv").open("w", newline="")
        self.csv = csv.writer(self.file)
        header = ["file"]
        for k in range(1, self.topk + 1):
            header += [f"class_{k}", f"probability_{k}"]
        self.csv.writerow(header)

    def add(self, path: Path, image: torch.Tensor, logits: torch.Tensor) -> None:
        probabilities, classes = logits.softmax(dim=-1).topk(self.topk)
        row: list = [str(path)]
        for p, c in zip(probabilities.tolist(), classes.tolist()):
            row += [self.names[c], f"{p:.6f}"]
        self.csv.writerow(row)

    def close(self) -> None:
        self.file.close()
