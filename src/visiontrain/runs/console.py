"""What a run shows on the console: a short header, one line per epoch that stays, errors once.

Everything goes through the ``visiontrain`` logger, so the same lines land in ``<run dir>/<entry point>.log``.
Lightning's own start-up chatter (accelerator lines, tips, "restoring states", the test table) is left
out; its warnings that say nothing actionable here are silenced in :func:`quiet_third_party`.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar

from visiontrain.compat import batch_hooks_only_where_used

log = logging.getLogger("visiontrain")

# Lightning warnings that describe choices we made on purpose (in-memory data needs no workers, short
# debug runs log less often than log_every_n_steps, resume writes into a folder that has checkpoints)
NOISE = (
    r".*does not have many workers.*",
    r".*is smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*Skipping setting a default `ModelSummary`.*",
    r".*callbacks used to create the checkpoint need to be provided.*",
    r".*Total length of .* across ranks is zero.*",  # data.val_size=0: no validation on purpose
)


# Lightning's information lines that do say something to our user (a cluster job's requeueing)
KEPT_INFO = ("SLURM", "Requeuing")


class LightningInfoFilter(logging.Filter):
    """Lets through Lightning's warnings and errors, and of its information lines only those in KEPT_INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or any(kept in record.getMessage() for kept in KEPT_INFO)


def quiet_third_party() -> None:
    """Lightning's INFO lines (GPU/TPU available, tips, 'restoring states') and ONNX exporters' progress
    messages stay out of the console and the log; their warnings and errors still show."""
    for name in ("lightning.pytorch", "lightning.fabric", "onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Lightning says most things through rank_zero_info / rank_zero_warn, its SLURM handling through its own
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.trainer.connectors.signal_connector",
    ):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        if not any(isinstance(f, LightningInfoFilter) for f in logger.filters):
            logger.addFilter(LightningInfoFilter())
    for pattern in NOISE:
        warnings.filterwarnings("ignore", message=pattern)


class ConsoleHandler(logging.StreamHandler):
    """A stream handler that writes to ``sys.stdout`` as it is at each record.

    Rich's live progress bar redirects ``sys.stdout`` while it runs so that printed lines appear above
    it; a handler that kept the stream object of start-up would draw through the bar instead.
    Records logged with ``extra={"console": False}`` go to the log file only.
    """

    def __init__(self, stream: Any = None) -> None:  # noqa: ARG002 (Hydra's config passes one; we look it up)
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "console", True):
            self.stream = sys.stdout
            super().emit(record)


class ConsoleFormatter(logging.Formatter):
    """Plain lines for information, ``warning: ...`` / ``error: ...`` for the rest."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {message}"


@batch_hooks_only_where_used
class ProgressBar(RichProgressBar):
    """Rich's progress bar with epochs counted from 1, drawn only on a terminal (a pipe or a log file gets
    the per-epoch lines instead of a bar re-drawn at every refresh), and updated every ``refresh_rate`` batches
    (and at an epoch's last one).

    Lightning's RichProgressBar takes ``refresh_rate`` only as on/off: it updates the bar, reads every progress-bar
    metric (``.item()``: a device synchronisation on a GPU) and re-renders after every batch: 0.5 % of a default
    simple_cnn step (batch 128, one CPU thread; twice that share on two) on a terminal.
    """

    @property
    def is_enabled(self) -> bool:
        return super().is_enabled and sys.stdout.isatty()

    def _skipped(self, batch_idx: int, total: int | float) -> bool:
        """Whether the batch ``batch_idx`` of ``total`` leaves the bar as it is: all but every ``refresh_rate``-th
        and the last."""
        done = batch_idx + 1
        return done % max(1, int(self.refresh_rate)) != 0 and done != total

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if not self._skipped(batch_idx, self.total_train_batches):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx=0) -> None:
        total = self.total_val_batches_current_dataloader if self.is_enabled else 0
        if not self._skipped(batch_idx, total):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx=0) -> None:
        total = self.total_test_batches_current_dataloader if self.is_enabled else 0
        if not self._skipped(batch_idx, total):
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx=0) -> None:
        total = self.total_predict_batches_current_dataloader if self.is_enabled else 0
        if not self._skipped(batch_idx, total):
            super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def _get_train_description(self, current_epoch: int) -> str:
        total = self.trainer.max_epochs
        return f"Epoch {current_epoch + 1}" + (f"/{total}" if total and total > 0 else "")


def count_flops(net: torch.nn.Module, input_shape: tuple[int, ...] | None) -> tuple[float | None, str]:
    """Forward FLOPs of one image (torch's FlopCounterMode) and the image size they are for.

    Detection data has no fixed size (input_shape None): the detector's own resize target stands in.
    """
    transform = getattr(net, "transform", None)
    if input_shape is None:
        size = getattr(transform, "min_size", None) or getattr(transform, "size", None)
        side = int(size[0] if isinstance(size, (tuple, list)) else size) if size else None
        if side is None:
            return None, ""
        example: Any = [torch.zeros(3, side, side)]
        shape = f"3x{side}x{side}"
    else:
        example = torch.zeros(1, *input_shape)
        shape = "x".join(map(str, input_shape))
    from torch.utils.flop_counter import FlopCounterMode

    device = next(net.parameters()).device
    example = [x.to(device) for x in example] if isinstance(example, list) else example.to(device)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(example)
        return float(counter.get_total_flops()), shape
    except Exception:  # a network the counter cannot trace still trains; the header just leaves FLOPs out
        return None, shape
    finally:
        net.train(was_training)


def human(number: float, unit: str = "") -> str:
    for threshold, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(number) >= threshold:
            return f"{number / threshold:.3g} {suffix}{unit}"
    return f"{number:.3g} {unit}".rstrip()


@batch_hooks_only_where_used
class RunHeader(Callback):
    """Three lines when fitting starts: task, data, model (size and cost), device, and where the run writes."""

    def __init__(self, data: str, model: str, run_dir: str) -> None:
        self.data, self.model, self.run_dir = data, model, run_dir

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        net = getattr(pl_module, "net", pl_module)
        params = sum(p.numel() for p in net.parameters())
        flops, shape = count_flops(net, trainer.datamodule.spec.input_shape)
        cost = f", {human(flops, 'FLOPs')} per {shape} image" if flops else ""
        devices = f"{trainer.num_devices}x " if trainer.num_devices * trainer.num_nodes > 1 else ""
        log.info(
            "%s: data=%s, model=%s (%s parameters%s)",
            getattr(pl_module, "task", type(pl_module).__name__),
            self.data,
            self.model,
            human(params),
            cost,
        )
        log.info(
            "on %s%s, precision %s, max_epochs=%s; run dir %s",
            devices,
            type(trainer.accelerator).__name__.replace("Accelerator", "").lower(),
            trainer.precision,
            trainer.max_epochs,
            self.run_dir,
        )


# COCO evaluation's value for "no objects of this kind to score" (map_small with no small objects): not a score
COCO_ABSENT = -1.0


def metric_line(metrics: Mapping[str, Any], prefixes: tuple[str, ...], headline: tuple[str, ...] | None = None) -> str:
    """``train/loss 0.1234  val/acc 0.9860`` from the headline scalars (not per-class ones, not step values);
    ``headline``: the task's names worth a console line (``VisionTask.headline``; None: every scalar). COCO's
    absent marker shows as n/a."""
    parts = []
    names = [n for n in metrics if n.count("/") == 1 and n.split("/")[0] in prefixes and not n.endswith("_step")]
    if headline is not None:
        names = [n for n in names if n.split("/")[1].removesuffix("_epoch") in headline]
    for name in sorted(names, key=lambda n: (prefixes.index(n.split("/")[0]), n)):
        value = metrics[name]
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if not isinstance(value, (int, float)):
            continue
        shown = f"{value:.4f}" if math.isfinite(value) and abs(value) < 1000 else f"{value:.4g}"
        if value == COCO_ABSENT and "/ma" in f"/{name.split('/')[1].removeprefix('segm_')}":
            shown = "n/a"
        parts.append(f"{name.removesuffix('_epoch')} {shown}")
    return "  ".join(parts)


@batch_hooks_only_where_used
class EpochLine(Callback):
    """One line per epoch on the console and in the log: the epoch's train and val metrics, the best value of
    the monitored metric so far, the learning rate and the epoch's time (training and validation).

    Written when the next epoch starts (and when training ends): Lightning aggregates the epoch's training
    metrics after the ``on_train_epoch_end`` hooks have run.
    """

    def __init__(self) -> None:
        self._epoch: int | None = None
        self._started = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer)
        self._epoch, self._started = trainer.current_epoch, time.perf_counter()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer)

    def _write(self, trainer: Trainer) -> None:
        if self._epoch is None or not trainer.is_global_zero:
            return
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        headline = getattr(trainer.lightning_module, "headline", None)
        line = f"epoch {self._epoch + 1}/{total}  {metric_line(trainer.callback_metrics, ('train', 'val'), headline)}"
        if trainer.optimizers:
            line += f"  lr {max(group['lr'] for group in trainer.optimizers[0].param_groups):.3g}"
        log.info("%s  %.1f s", line, time.perf_counter() - self._started)
        self._epoch = None


def log_stop(sentence: str) -> None:
    """A run stopped by a signal: the line on stderr (where a scheduler's log keeps it) and in the run's log."""
    log.error(sentence, extra={"console": False})
    print(sentence, file=sys.stderr, flush=True)


def log_test_metrics(metrics: Mapping[str, Any], source: str) -> None:
    line = metric_line(metrics, ("test",))
    if line:
        log.info("test (%s): %s", source, line)
