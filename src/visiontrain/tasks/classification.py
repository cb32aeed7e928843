"""Image classification: one LightningModule whose network, optimizer and scheduler come from the config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning import LightningModule
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from visiontrain.errors import UserError
from visiontrain.tasks.figures import confusion_matrix_figure, prediction_grid_figure

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def accuracy_metrics(num_classes: int, training: bool = False) -> MetricCollection:
    """Top-1 (and top-5 when there are enough classes) accuracy over all samples.

    While training: top-1 only and no per-update input validation (labels were checked when the
    data was read), because these updates run on every step and cost throughput.
    """
    metrics = {"acc": MulticlassAccuracy(num_classes, top_k=1, average="micro", validate_args=not training)}
    if not training and num_classes > 5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics)


class ClassificationModule(LightningModule):
    """Cross-entropy training of ``net``; accuracy (top-1/top-5), per-class accuracy and confusion matrix at test.

    Only plain values are saved as hyperparameters (the network and the optimizer partials are
    excluded), so checkpoints load with ``torch.load(weights_only=True)``.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        num_classes: int,
        scheduler: SchedulerFactory | None = None,
        label_smoothing: float = 0.0,
        decay_norm_and_bias: bool = False,
        compile: bool = False,
        test_images_logged: int = 32,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.class_names: list[str] = [str(i) for i in range(num_classes)]

        # a NaN training loss should show as NaN, not be checked for on every step
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.train_metrics = accuracy_metrics(num_classes, training=True).clone(prefix="train/")
        self.val_metrics = accuracy_metrics(num_classes).clone(prefix="val/")
        self.test_metrics = accuracy_metrics(num_classes).clone(prefix="test/")
        # in the checkpoint, so a resumed run keeps the best value of the epochs before the interruption
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)
        self.test_class_acc = MulticlassAccuracy(num_classes, average=None)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self._test_samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # --- set-up ---------------------------------------------------------------------------------
    def check_data_compatibility(self, input_shape: tuple[int, ...], num_classes: int, data_name: str) -> None:
        """Fail before training, in one sentence, when the network cannot take the data."""
        net_name = type(self.net).__name__
        if num_classes != self.hparams.num_classes:
            raise UserError(
                f"the model is configured for {self.hparams.num_classes} classes but {data_name} has "
                f"{num_classes}; leave model.num_classes at ${{data.num_classes}}."
            )
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                out = self.net(torch.zeros(1, *input_shape, device=self.device))
        except RuntimeError as err:
            raise UserError(
                f"{net_name} cannot take {data_name}'s {'x'.join(map(str, input_shape))} (channels x H x W) "
                f"images: {str(err).splitlines()[0]}"
            ) from err
        finally:
            self.net.train(was_training)
        if out.ndim != 2 or out.shape[1] != num_classes:
            raise UserError(
                f"{net_name} outputs {tuple(out.shape[1:])} scores per image but {data_name} has {num_classes} "
                "classes; set the network's num_classes to ${data.num_classes}."
            )

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        names = getattr(datamodule, "class_names", None)
        if names and len(names) == self.hparams.num_classes:
            self.class_names = list(names)
        if self.hparams.compile and not getattr(self.net, "_compiled_call_impl", None):
            # compiles forward in place: parameter names (and so checkpoints) are unchanged
            self.net.compile()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    # --- steps ----------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.criterion(logits, labels)
        self.train_loss.update(loss.detach())
        self.train_metrics.update(logits.detach(), labels)
        # only on the steps the loggers write (trainer.log_every_n_steps): self.log costs ~0.5 ms per call
        if self.trainer._logger_connector.should_update_logs:
            self.log("train/loss_step", loss.detach(), prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss, sync_dist=True)
        self.log_dict(self.train_metrics)

    def on_train_start(self) -> None:
        scheduler = self.lr_schedulers()
        planned, needed = getattr(scheduler, "total_steps", None), int(self.trainer.estimated_stepping_batches)
        if planned is not None and planned != needed:  # a resumed OneCycle keeps the length it was built with
            raise UserError(
                f"the checkpoint's learning-rate schedule of {planned} steps cannot continue into a run that now "
                f"needs {needed}; resume with the original trainer.max_epochs, or start a new run from these weights."
            )

    def _evaluate(self, batch, loss_metric: MeanMetric, metrics: MetricCollection) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss_metric.update(self.criterion(logits, labels), weight=len(labels))
        metrics.update(logits, labels)
        return logits

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_loss, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss, prog_bar=True)
        acc = self.val_metrics["acc"].compute()
        self.log_dict(self.val_metrics, prog_bar=True)
        if self.trainer.sanity_checking:  # a few batches before training: not an epoch's result
            return
        self.val_acc_best.update(acc)
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        logits = self._evaluate(batch, self.test_loss, self.test_metrics)
        preds = logits.argmax(dim=1)
        labels = batch[1]
        self.test_class_acc.update(preds, labels)
        self.test_confusion.update(preds, labels)
        kept = sum(len(s[0]) for s in self._test_samples)
        if kept < self.hparams.test_images_logged:
            n = self.hparams.test_images_logged - kept
            self._test_samples.append((batch[0][:n].float().cpu(), preds[:n].cpu(), labels[:n].cpu()))

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss)
        self.log_dict(self.test_metrics)
        per_class = self.test_class_acc.compute()
        # already synchronised by torchmetrics; sync_dist only keeps Lightning from warning under DDP
        self.log_dict({f"test/acc_class/{name}": acc for name, acc in zip(self.class_names, per_class)}, sync_dist=True)
        confusion = self.test_confusion.compute()
        experiment = getattr(self.logger, "experiment", None)
        if self.trainer.is_global_zero and hasattr(experiment, "add_figure"):
            experiment.add_figure(
                "test/confusion_matrix",
                confusion_matrix_figure(confusion.cpu(), self.class_names),
                global_step=self.global_step,
            )
            if self._test_samples:
                images, preds, labels = (torch.cat(t) for t in zip(*self._test_samples))
                experiment.add_figure(
                    "test/predictions",
                    prediction_grid_figure(images, preds, labels, self.class_names),
                    global_step=self.global_step,
                )
        self._test_samples.clear()
        self.test_class_acc.reset()
        self.test_confusion.reset()

    # --- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        if self.hparams.decay_norm_and_bias:
            params = self.parameters()
        else:  # the usual recipe: no weight decay on norm scales and biases
            decay = [p for p in self.net.parameters() if p.requires_grad and p.ndim > 1]
            no_decay = [p for p in self.net.parameters() if p.requires_grad and p.ndim <= 1]
            params = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(
            optimizer=optimizer, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- checkpoint -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["class_names"] = list(self.class_names)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.class_names = list(checkpoint.get("class_names", self.class_names))
