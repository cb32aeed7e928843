"""Matplotlib figures for TensorBoard: the confusion matrix and a labelled grid of predictions."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display: figures are only rendered into TensorBoard
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def confusion_matrix_figure(confusion: torch.Tensor, class_names: list[str]) -> plt.Figure:
    """Row-normalised confusion matrix (rows: true class) with counts written in each cell when small."""
    n = len(class_names)
    rates = confusion.float() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    size = min(4 + 0.5 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=90 if n > 10 else 45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    int(confusion[i, j]),
                    ha="center",
                    va="center",
                    color="white" if rates[i, j] > 0.5 else "black",
                    fontsize=8,
                )
    fig.tight_layout()
    return fig


def prediction_grid_figure(
    images: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor, class_names: list[str]
) -> plt.Figure:
    """Images titled ``predicted / true``: green when right, red when wrong (each image min-max scaled)."""
    n = len(images)
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, pred, label in zip(axes.flat, images, preds, labels):
        lo, hi = image.min(), image.max()
        shown = ((image - lo) / (hi - lo).clamp(min=1e-6)).permute(1, 2, 0).squeeze(-1).numpy()
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None)
        right = bool(pred == label)
        ax.set_title(f"{class_names[pred]} / {class_names[label]}", fontsize=7, color="green" if right else "red")
    fig.tight_layout()
    return fig
