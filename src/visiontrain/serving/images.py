"""The image files predict.py and export.py read: a file, a folder or a glob, decoded as RGB."""

from __future__ import annotations

import glob
from pathlib import Path

import torch

from visiontrain.data.base import read_rgb
from visiontrain.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def list_inputs(spec: str) -> list[Path]:
    """A file, every image in a folder (recursively), or a glob pattern."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not files:
        raise UserError(f"input={spec} matches no image files.")
    return files


def read_image(path: Path) -> torch.Tensor:
    """uint8 (3, H, W) RGB; a file that is no image ends in one sentence naming it (``read_rgb``)."""
    return read_rgb(path)
