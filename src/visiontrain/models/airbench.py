"""The airbench94 network (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds", 2024), for the fast CIFAR recipe.

A 2x2 whitening convolution (fixed weights computed from training patches: the patch covariance's
eigenvectors scaled by 1/sqrt(eigenvalue), each with its negative), then three groups of
conv3x3 -> max-pool -> BatchNorm -> GELU -> conv3x3 -> BatchNorm -> GELU, a 3x3 max-pool, a linear layer
without bias and a fixed 1/9 output scale. BatchNorm has a fixed scale of 1 and a learnable shift;
the 3x3 convolutions start as identity (Dirac) on their first channels.

The whitening weights depend on the data: ``init_from_batch(images)`` sets them from a batch of
normalised training images. The task calls it when training starts (see
``ClassificationModule.on_fit_start``); a buffer records that it happened, so a resumed run or a
network loaded from a checkpoint keeps its weights. The network never imports a datamodule or a task.
"""

from __future__ import annotations

import torch
from torch import nn


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm2d with the scale fixed at 1 (not trained) and a learnable shift; ``momentum`` in airbench's
    convention (the weight of the old running statistics), eps 1e-12."""

    def __init__(self, num_features: int, momentum: float = 0.6, eps: float = 1e-12) -> None:
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False


class Conv(nn.Conv2d):
    """3x3 'same' convolution without bias, initialised as identity on its first ``in_channels`` outputs."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        weight = self.weight.data
        nn.init.dirac_(weight[: weight.size(1)])


class ConvGroup(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float) -> None:
        super().__init__()
        self.conv1 = Conv(in_channels, out_channels)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(out_channels, bn_momentum)
        self.conv2 = Conv(out_channels, out_channels)
        self.norm2 = BatchNorm(out_channels, bn_momentum)
        self.activ = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


def patches(images: torch.Tensor, size: int) -> torch.Tensor:
    """Every ``size x size`` patch (stride 1) of ``images`` (N, C, H, W) as rows of (C, size, size)."""
    c = images.shape[1]
    return images.unfold(2, size, 1).unfold(3, size, 1).transpose(1, 3).reshape(-1, c, size, size).float()


def whitening_weights(images: torch.Tensor, size: int, eps: float = 5e-4) -> torch.Tensor:
    """The ``2 * C*size*size`` whitening filters of airbench: eigenvectors of the patch covariance, largest
    eigenvalue first, divided by sqrt(eigenvalue + eps), followed by their negatives."""
    flat = patches(images.float(), size)
    n, c, h, w = flat.shape
    flat = flat.reshape(n, -1)
    covariance = (flat.T @ flat / n).double()  # float32 products (as airbench), the eigenproblem in float64
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance, UPLO="U")
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)
    scaled = eigenvectors / torch.sqrt(eigenvalues + eps).view(-1, 1, 1, 1)
    return torch.cat((scaled, -scaled)).float()


class AirbenchNet(nn.Module):
    """airbench94's network; ``widths`` of the three groups (64, 256, 256 in airbench94)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int] | list[int] = (64, 256, 256),
        whiten_kernel_size: int = 2,
        bn_momentum: float = 0.6,
        scaling_factor: float = 1 / 9,
    ) -> None:
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"widths must list the 3 groups' channels, got {list(widths)}")
        whiten_width = 2 * in_channels * whiten_kernel_size**2
        self.whiten = nn.Conv2d(in_channels, whiten_width, whiten_kernel_size, padding=0, bias=True)
        self.whiten.weight.requires_grad = False  # set from the data, never trained
        self.activ = nn.GELU()
        self.layers = nn.Sequential(
            ConvGroup(whiten_width, widths[0], bn_momentum),
            ConvGroup(widths[0], widths[1], bn_momentum),
            ConvGroup(widths[1], widths[2], bn_momentum),
        )
        self.pool = nn.MaxPool2d(3)
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.scaling_factor = scaling_factor
        # 1 once the whitening filters come from data: saved with the weights, so it is not redone on resume
        self.register_buffer("whitened", torch.zeros((), dtype=torch.uint8))

    # how many training images init_from_batch wants (airbench: the first 5000)
    init_images = 5000

    @property
    def data_initialised(self) -> bool:
        return bool(self.whitened)

    @torch.no_grad()
    def init_from_batch(self, images: torch.Tensor) -> bool:
        """Set the whitening filters from normalised training images (N, C, H, W); a no-op once done.
        Returns whether it initialised."""
        if bool(self.whitened):
            return False
        weights = whitening_weights(images.to(self.whiten.weight.device), self.whiten.kernel_size[0])
        self.whiten.weight.copy_(weights)
        self.whitened.fill_(1)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.activ(self.whiten(x)))
        x = self.pool(x).flatten(1)
        return self.head(x) * self.scaling_factor
