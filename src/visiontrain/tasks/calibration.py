"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017): one scalar T > 0 dividing the
logits, fitted on held-out images to minimise their cross-entropy. Written here because it is one parameter and a
few lines: the libraries that offer it (netcal, torchcal) bring their own model wrappers and dependencies for it."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature minimising the cross-entropy of ``logits / T`` against ``labels`` (L-BFGS over log T, so
    T stays positive). Dividing by T > 0 keeps each image's top class."""
    logits, labels = logits.detach().float(), labels.detach().long()
    log_t = torch.zeros((), device=logits.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():  # called from validation hooks, where Lightning turns gradients off
        optimizer.step(closure)
    return float(log_t.detach().exp())
