"""The classic small classifier: two conv -> BN -> ReLU -> max-pool stages, then two fully-connected layers."""

from __future__ import annotations

from torch import nn

from visiontrain.errors import UserError


class SimpleCNN(nn.Sequential):
    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        width: int = 16,
        hidden: int = 128,
        dropout: float = 0.25,
    ) -> None:
        if image_size % 4:
            raise UserError(f"SimpleCNN needs an image size divisible by 4, got {image_size}.")
        super().__init__(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (image_size // 4) ** 2, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
