"""Figures of the data itself, for ``debug=browse`` (visiontrain.runs.browse): training samples as the network gets
them (class names, masks, boxes and labels drawn) and the label statistics of visiontrain.data.label_stats.

Written like the result figures (visiontrain.plots.figures), but with no Trainer to ask: ``save_figure`` takes the
run folder and the TensorBoard writers itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: figures are rendered into files and TensorBoard only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from visiontrain.plots.colors import class_colors  # noqa: E402
from visiontrain.plots.figures import PLOTS_FOLDER  # noqa: E402

log = logging.getLogger("visiontrain")


def save_figure(run_dir: str | Path, writers: Sequence[Any], name: str, fig: plt.Figure, tag: str) -> Path:
    """Write ``fig`` to ``<run_dir>/plots/<name>.png`` and, under ``tag`` at step 0, to each writer (TensorBoard's
    ``SummaryWriter``: anything with ``add_image``); then close it."""
    path = Path(run_dir) / PLOTS_FOLDER / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    # rendered once for the file and every writer (savefig and add_figure would each render it again: seconds for
    # a grid of large images)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    Image.fromarray(pixels).save(path)
    for writer in writers:
        writer.add_image(tag, pixels, global_step=0, dataformats="HWC")
    plt.close(fig)
    return path


# --- training samples -----------------------------------------------------------------------------
def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A float ``(C, H, W)`` image in [0, 1] -> uint8 RGB (grey images repeated), what the drawing utilities take."""
    image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


TITLE_HEIGHT = 0.7  # inches above a grid of panels: the figure's title, then the first row's own titles


def panels(count: int, columns: int, width: float, height: float) -> tuple[plt.Figure, np.ndarray]:
    """A grid of ``count`` empty panels (axes off), ``columns`` wide, each ``width`` x ``height`` inches."""
    columns = max(1, min(columns, count))
    rows = max(1, -(-count // columns))
    # at least 7 inches wide, so that the title fits over a few panels
    size = (max(width * columns, 7.0), height * rows + TITLE_HEIGHT)
    fig, axes = plt.subplots(rows, columns, figsize=size, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes.flat


def titled(fig: plt.Figure, title: str, legend_height: float = 0.0) -> plt.Figure:
    """``title`` above the panels in a strip of its own (``panels`` leaves room for it), ``legend_height`` inches
    kept free below them. Margins are set, not measured: tight_layout would render the whole grid once more."""
    width, height = fig.get_size_inches()
    fig.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top")
    rows, columns = fig.axes[0].get_subplotspec().get_gridspec().get_geometry()
    panel_height = (height - TITLE_HEIGHT - legend_height) / rows
    fig.subplots_adjust(
        left=0.1 / width,
        right=1 - 0.1 / width,
        bottom=(legend_height + 0.05) / height,
        top=1 - (TITLE_HEIGHT - 0.05) / height,
        wspace=0.15 / (width / columns),
        hspace=0.3 / panel_height,  # each panel's own title
    )
    return fig


def blend(picture: torch.Tensor, index: torch.Tensor, colors: torch.Tensor, alpha: float) -> torch.Tensor:
    """``picture`` (uint8 ``(3, H, W)``) with colour ``colors[index]`` mixed in at ``alpha`` where ``index`` (``(H,
    W)``) is 0 or more, as torchvision's draw_segmentation_masks mixes them; one lookup for the whole image instead
    of one pass per mask (seconds over a grid of large images)."""
    painted = index >= 0
    mixed = picture.float() * (1 - alpha) + colors[index.clamp(min=0)].permute(2, 0, 1).float() * alpha
    return torch.where(painted, mixed.round().to(torch.uint8), picture)


def show(ax: plt.Axes, image: torch.Tensor) -> None:
    shown = image.permute(1, 2, 0).numpy()
    # small images (MNIST, CIFAR) are enlarged: nearest neighbour shows their pixels as they are
    ax.imshow(shown, interpolation="nearest")


def classification_grid(images: Sequence[torch.Tensor], labels: Sequence[int], class_names: Sequence[str], title: str):
    """Each image titled with its class name."""
    fig, axes = panels(len(images), 8, 1.6, 1.8)
    for ax, image, label in zip(axes, images, labels):
        show(ax, to_uint8(image))
        ax.set_title(class_names[int(label)], fontsize=8)
    return titled(fig, title)


def segmentation_grid(
    images: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    class_names: Sequence[str],
    ignore_index: int,
    title: str,
) -> plt.Figure:
    """Each image beside its mask over it (one colour per class, as in training's overlays; ignored pixels white),
    titled with the classes its mask holds; the colours' legend below."""
    n = len(class_names)
    colors = class_colors(n)
    palette = torch.tensor([*colors, (255, 255, 255)], dtype=torch.uint8)  # the last one for ignored pixels
    fig, axes = panels(2 * len(images), 8, 1.9, 2.0)
    for image, mask in zip(images, masks):
        picture = to_uint8(image)
        mask = mask.cpu().long()
        classes = (mask >= 0) & (mask < n)
        overlay = blend(picture, torch.where(classes, mask, n), palette, alpha=0.5)
        present = [class_names[c] for c in torch.bincount(mask[classes], minlength=n).nonzero().flatten().tolist()]
        show(next(axes), picture)
        ax = next(axes)
        show(ax, overlay)
        ax.set_title(", ".join(present)[:40], fontsize=7)
    legend = [Patch(color=np.array(c) / 255, label=name) for c, name in zip(colors, class_names)]
    legend.append(Patch(facecolor="white", edgecolor="grey", label=f"ignored ({ignore_index})"))
    legend_height = 0.3 * -(-len(legend) // 8)  # inches: a row per 8 entries
    fig.set_figheight(fig.get_figheight() + legend_height)
    fig.legend(handles=legend, loc="lower center", ncol=min(8, len(legend)), fontsize=8, frameon=False)
    return titled(fig, title, legend_height)


def detection_colors(num_classes: int) -> list[tuple[float, float, float]]:
    """A bright colour per object class (label k -> entry k - 1)."""
    palette = plt.get_cmap("tab10" if num_classes <= 10 else "tab20").colors
    return [palette[k % len(palette)][:3] for k in range(num_classes)]


def detection_grid(
    images: Sequence[torch.Tensor],
    targets: Sequence[Mapping[str, torch.Tensor]],
    class_names: Sequence[str],
    title: str,
) -> plt.Figure:
    """Each image with its boxes and class names (a colour per class) and, when the data reads them, its instance
    masks; titled with its size and number of objects."""
    colors = detection_colors(len(class_names))
    fig, axes = panels(len(images), 4, 3.2, 2.8)
    for ax, image, target in zip(axes, images, targets):
        picture = to_uint8(image)
        labels = target["labels"].cpu().tolist()
        if "masks" in target and len(labels):
            owner = torch.full(picture.shape[-2:], -1)  # the instance whose colour each pixel takes (the last one)
            for instance, mask in enumerate(target["masks"].cpu().bool()):
                owner[mask] = instance
            rgb = torch.tensor([colors[label - 1] for label in labels]).mul(255).round().to(torch.uint8)
            picture = blend(picture, owner, rgb, alpha=0.45)
        show(ax, picture)
        for (x0, y0, x1, y1), label in zip(target["boxes"].cpu().tolist(), labels):
            color = colors[label - 1]
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.5))
            ax.text(
                x0,
                y0,
                class_names[label - 1],
                fontsize=6,
                color="white",
                va="bottom",
                bbox={"facecolor": color, "edgecolor": "none", "pad": 1},
            )
        height, width = picture.shape[-2:]
        ax.set_title(f"{width}x{height}, {len(labels)} object{'s' * (len(labels) != 1)}", fontsize=7)
    return titled(fig, title)


# --- label statistics -----------------------------------------------------------------------------
def compact(value: float) -> str:
    """12345678 -> '12.3M': counts of pixels are too long to print whole beside a bar."""
    if value >= 1e9:
        return f"{value / 1e9:.1f}G"
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    return f"{int(value)}"


def class_bars_figure(
    class_names: Sequence[str], bars: Mapping[str, tuple[Sequence[int], int]], xlabel: str, title: str
) -> plt.Figure:
    """One group of horizontal bars per class, one bar per split: ``bars`` maps a split's label to its counts per
    class and the total each count is a share of (the bar's length, in %); the count is printed beside the bar."""
    n, groups = len(class_names), max(1, len(bars))
    height = 0.8 / groups
    fig, ax = plt.subplots(figsize=(10, min(1.5 + n * (0.22 * groups + 0.12), 40)))
    widest = 0.0
    for g, (label, (counts, total)) in enumerate(bars.items()):
        shares = [100.0 * c / total if total else 0.0 for c in counts]
        widest = max(widest, *shares, 0.0)
        positions = np.arange(n) + (g - (groups - 1) / 2) * height
        drawn = ax.barh(positions, shares, height=height, label=label)
        for bar, count in zip(drawn, counts):
            y = bar.get_y() + bar.get_height() / 2
            ax.text(bar.get_width(), y, f" {compact(count)}", va="center", fontsize=7)
    ax.set_yticks(range(n), class_names, fontsize=8 if n <= 40 else 6)
    ax.invert_yaxis()  # first class on top
    ax.set_xlim(0, max(widest * 1.18, 1.0))
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # beside the bars, never on them
    fig.tight_layout()
    return fig


def histograms_figure(histograms: Sequence[Mapping[str, Any]], title: str) -> plt.Figure:
    """Side by side, one panel per histogram: ``edges``, ``counts``, ``xlabel``, optional ``median`` (a dashed line)
    and ``log`` (a logarithmic x axis for the octave bins of label_stats, whose empty end bins are left out)."""
    fig, axes = plt.subplots(1, len(histograms), figsize=(5.5 * len(histograms), 3.8), squeeze=False)
    for ax, hist in zip(axes.flat, histograms):
        edges, counts = np.asarray(hist["edges"], dtype=float), np.asarray(hist["counts"])
        filled = np.flatnonzero(counts)
        if hist.get("log") and len(filled):  # the octave bins span 1 to 8192 pixels: show the part with boxes
            first, last = filled[0], filled[-1] + 1
            edges, counts = edges[first : last + 1], counts[first:last]
        ax.stairs(counts, edges, fill=True, alpha=0.8)
        if hist.get("median") is not None:
            ax.axvline(hist["median"], color="black", linestyle="--", linewidth=1, label=f"median {hist['median']:.3g}")
            ax.legend(fontsize=8)
        if hist.get("log"):
            ax.set_xscale("log", base=2)
        ax.set_xlabel(hist["xlabel"])
        ax.set_ylabel("count")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# --- each kind's drawings for debug=browse (visiontrain.kinds) ------------------------------------------------
def classification_samples(images: list[torch.Tensor], targets: list[Any], datamodule: Any, title: str) -> plt.Figure:
    return classification_grid(images, targets, datamodule.spec.class_names, title)


def segmentation_samples(images: list[torch.Tensor], targets: list[Any], datamodule: Any, title: str) -> plt.Figure:
    return segmentation_grid(images, targets, datamodule.spec.class_names, datamodule.ignore_index, title)


def detection_samples(images: list[torch.Tensor], targets: list[Any], datamodule: Any, title: str) -> plt.Figure:
    return detection_grid(images, targets, datamodule.spec.class_names, title)


def classification_figures(data: str, names: list[str], splits: dict[str, Any]) -> list[tuple[str, Any]]:
    bars = {f"{s} ({v['images']} images)": (v["images_per_class"], v["images"]) for s, v in splits.items()}
    title = f"{data}: images per class (count beside each bar)"
    return [("images_per_class", class_bars_figure(names, bars, "share of the split's images (%)", title))]


def segmentation_figures(data: str, names: list[str], splits: dict[str, Any]) -> list[tuple[str, Any]]:
    def label(split: str, values: dict[str, Any]) -> str:
        read, total = values["masks_read"], values["images"]
        return f"{split} ({total} masks)" if read == total else f"{split} ({read} of {total} masks, evenly spaced)"

    pixels = {label(s, v): (v["pixels_per_class"], sum(v["pixels_per_class"])) for s, v in splits.items()}
    holding = {label(s, v): (v["images_with_class"], v["masks_read"]) for s, v in splits.items()}
    ignored = ", ".join(f"{s} {compact(v['ignored_pixels'])}" for s, v in splits.items())
    pixels_title = f"{data}: pixels per class, masks as stored (ignored pixels: {ignored})"
    holding_title = f"{data}: masks holding each class (count beside each bar)"
    return [
        ("pixels_per_class", class_bars_figure(names, pixels, "share of labelled pixels (%)", pixels_title)),
        ("images_per_class", class_bars_figure(names, holding, "share of masks (%)", holding_title)),
    ]


def detection_figures(data: str, names: list[str], splits: dict[str, Any]) -> list[tuple[str, Any]]:
    """Objects per class in every split; boxes per image, box sizes and aspect ratios of the training split."""
    bars = {
        f"{s} ({v['images']} images)": (v["instances_per_class"], sum(v["instances_per_class"]))
        for s, v in splits.items()
    }
    crowd = sum(v["crowd_instances"] for v in splits.values())
    title = f"{data}: objects per class" + (f" (crowd regions left out: {crowd})" if crowd else "")
    drawn = [("instances_per_class", class_bars_figure(names, bars, "share of the split's objects (%)", title))]
    train = splits.get("train")
    if train is None:
        return drawn
    about = f"{data}, training split: {train['images']} images, {sum(train['instances_per_class'])} boxes as annotated"
    per_image = {
        "edges": [n - 0.5 for n in range(len(train["boxes_per_image"]) + 1)],
        "counts": train["boxes_per_image"],
        "xlabel": "boxes per image",
    }
    area = train["box_area"]
    coco = f"by area: {area['small']} small (< 32²), {area['medium']} medium, {area['large']} large (≥ 96²)"
    sides = [
        {**train["box_width"], "xlabel": "box width (pixels)", "log": True},
        {**train["box_height"], "xlabel": "box height (pixels)", "log": True},
    ]
    aspect = {**train["box_aspect_ratio"], "xlabel": "box width / height", "log": True}
    return [
        *drawn,
        ("boxes_per_image", histograms_figure([per_image], about)),
        ("box_sizes", histograms_figure(sides, f"{about}\n{coco}")),
        ("box_aspect_ratios", histograms_figure([aspect], about)),
    ]
