"""Class colours shared by every drawing of masks (training figures, data figures, predictions)."""

from __future__ import annotations


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """A fixed, distinguishable colour per class (the Pascal VOC palette)."""
    colors = []
    for cls in range(num_classes):
        r = g = b = 0
        c = cls
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append((r, g, b))
    return colors
