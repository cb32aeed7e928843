"""Result figures: drawn by matplotlib without a display, written as PNGs to ``<run dir>/plots/`` and to every
logger that takes figures (TensorBoard). Learning curves, confusion matrices, per-class bars, PR curves."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: figures are rendered into files and TensorBoard only
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from lightning import Trainer  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

log = logging.getLogger("visiontrain")

PLOTS_FOLDER = "plots"


def plots_dir(trainer: Trainer) -> Path:
    """``<run dir>/plots``: the Trainer's ``default_root_dir`` is the run folder for train.py and eval.py alike."""
    return Path(trainer.default_root_dir) / PLOTS_FOLDER


def publish_figure(trainer: Trainer, name: str, fig: plt.Figure, tag: str | None = None) -> Path | None:
    """Write ``fig`` to ``<run dir>/plots/<name>.png`` and, under ``tag``, to each logger that takes figures;
    then close it. Global rank zero only (the metrics behind every figure are already synchronised)."""
    if not trainer.is_global_zero:
        plt.close(fig)
        return None
    path = plots_dir(trainer) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    if tag is not None:
        for logger in trainer.loggers:
            if hasattr(logger.experiment, "add_figure"):
                logger.experiment.add_figure(tag, fig, global_step=trainer.global_step, close=False)
    plt.close(fig)
    log.info("plot written to %s", path, extra={"console": False})  # train.log only: not worth a console line
    return path


def confusion_matrix_figure(
    confusion: torch.Tensor, class_names: Sequence[str], title: str = "confusion matrix", cells: str = "count"
) -> plt.Figure:
    """Row-normalised confusion matrix (rows: true class), colour = fraction of the row; with up to 20 classes
    each cell also shows its ``count`` (or its ``rate``, for pixel counts too large to read)."""
    n = len(class_names)
    confusion = confusion.detach().cpu()
    rates = confusion.double() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    size = min(4 + 0.5 * n, 20)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(n), class_names, rotation=90 if n > 10 else 45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                text = f"{int(confusion[i, j])}" if cells == "count" else f"{float(rates[i, j]):.2f}"
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    return fig


def per_class_figure(values: Sequence[float], class_names: Sequence[str], metric: str, title: str) -> plt.Figure:
    """Horizontal bars, one per class, in the data's class order (NaN: the class is absent, drawn as no bar)."""
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(7, min(2 + 0.3 * n, 30)))
    values = [float(v) for v in values]
    bars = ax.barh(range(n), [0.0 if v != v else v for v in values], color="tab:blue")
    for bar, value in zip(bars, values):
        label = "absent" if value != value else f"{value:.3f}"
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, label, va="center", fontsize=8)
    ax.set_yticks(range(n), class_names)
    ax.invert_yaxis()  # first class on top
    ax.set_xlim(0, 1.12)
    ax.set_xlabel(metric)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def learning_curves_figure(history: Sequence[dict[str, float]], monitor: str) -> plt.Figure:
    """Per epoch: training and validation loss (left), the monitored metric and its training twin (right)."""
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 4))
    metric = monitor.split("/", 1)[-1]
    panels = ((loss_ax, ("train/loss", "val/loss"), "loss"), (metric_ax, (f"train/{metric}", f"val/{metric}"), metric))
    for ax, names, ylabel in panels:
        for name, style in zip(names, ("o-", "s-")):
            points = [(row["epoch"], row[name]) for row in history if name in row]
            if points:
                ax.plot(*zip(*points), style, label=name, markersize=3)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    metric_ax.set_title(f"monitored: {monitor}")
    loss_ax.set_title("loss")
    fig.tight_layout()
    return fig


def pr_curves_figure(
    recall: Sequence[float], curves: dict[str, tuple[Sequence[float], Sequence[float]]], title: str
) -> plt.Figure:
    """Precision-recall curves per class at IoU 0.5 (left) and averaged over IoU 0.5:0.95 (right); ``curves``
    maps a class name to its (IoU 0.5, mean) precision at each ``recall`` point. The legend gives each curve's
    area, which is COCO's AP."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for index, (ax, label) in enumerate(zip(axes, ("IoU 0.5", "IoU 0.5:0.95 (mean)"))):
        for name, pair in curves.items():
            precision = list(pair[index])
            ax.plot(recall, precision, label=f"{name} (AP {sum(precision) / len(precision):.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_title(f"{title}, {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("precision")
    fig.tight_layout()
    return fig


def scaled_for_display(image: torch.Tensor) -> torch.Tensor:
    """An image tensor (C, H, W, any range: a network input is normalised) min-max scaled to [0, 1] to be drawn."""
    image = image.detach().float().cpu()
    lo, hi = image.min(), image.max()
    return (image - lo) / (hi - lo).clamp(min=1e-6)


def prediction_grid_figure(
    images: torch.Tensor,
    preds: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    notes: Sequence[str] | None = None,
    title: str | None = None,
) -> plt.Figure:
    """Images (each min-max scaled) titled ``predicted / true``, see ``labelled_grid_figure``."""
    pictures = [scaled_for_display(image).permute(1, 2, 0).squeeze(-1).numpy() for image in images]
    return labelled_grid_figure(pictures, preds, labels, class_names, notes, title)


def labelled_grid_figure(
    pictures: Sequence[Any],
    preds: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    notes: Sequence[str] | None = None,
    title: str | None = None,
) -> plt.Figure:
    """Pictures (H x W grey or H x W x 3 arrays), eight a row, titled ``predicted / true``: green when right, red
    when wrong; ``notes``: a second line under each (e.g. its loss)."""
    n = len(pictures)
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows + (0.4 if title else 0)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, picture, pred, label) in enumerate(zip(axes.flat, pictures, preds, labels)):
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
        right = bool(pred == label)
        text = f"{class_names[pred]} / {class_names[label]}" + (f"\n{notes[i]}" if notes else "")
        ax.set_title(text, fontsize=7, color="green" if right else "red")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def reliability_figure(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int, title: str) -> plt.Figure:
    """The reliability diagram: per confidence bin (the top class's probability), the share of right predictions
    against the bin's mean confidence, with the bin's share of the images; a calibrated model lies on the
    diagonal. ``correct``: 1 where the top class was the true one."""
    edges = torch.linspace(0, 1, n_bins + 1)
    which = torch.bucketize(confidences.float().clamp(0, 1), edges[1:-1])
    counts = torch.bincount(which, minlength=n_bins).float()
    right = torch.bincount(which, weights=correct.float(), minlength=n_bins)
    mean_confidence = torch.bincount(which, weights=confidences.float(), minlength=n_bins)
    filled = counts > 0
    centres = (edges[:-1] + edges[1:]) / 2
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    top.bar(centres[filled], (right[filled] / counts[filled]), width=1 / n_bins, edgecolor="black", alpha=0.7,
            label="accuracy in the bin")  # fmt: skip
    top.plot(mean_confidence[filled] / counts[filled], right[filled] / counts[filled], "o", color="crimson",
             markersize=3, label="at the bin's mean confidence")  # fmt: skip
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.legend(fontsize=7, loc="upper left")
    top.set_title(title, fontsize=9)
    bottom.bar(centres, counts / counts.sum().clamp(min=1), width=1 / n_bins, color="steelblue")
    bottom.set_xlabel("confidence (probability of the predicted class)")
    bottom.set_ylabel("share")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    return fig
