"""Staged fine-tuning: the backbone frozen for the first epochs, then trained at a lower learning rate.

Our own callback rather than Lightning's ``BackboneFinetuning``: that one adds the backbone as a new
optimizer parameter group when it unfreezes it, which the schedulers built at the start cannot follow
(torch 2.14: the next OneCycleLR step raises KeyError 'initial_lr', LambdaLR's a zip-length ValueError) and
which a resumed run's optimizer state does not have. Here every parameter is in its group (``backbone``/``head``,
see VisionTask.parameter_groups) from the first step, the backbone's at ``backbone_lr_scale`` x the lr;
freezing only takes gradients away. The stage follows from ``trainer.current_epoch``, so a resumed run
is in the stage its epoch belongs to.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from visiontrain.compat import batch_hooks_only_where_used
from visiontrain.errors import UserError
from visiontrain.models.backbone import in_backbone

log = logging.getLogger("visiontrain")


@rank_zero_only
def say(message: str) -> None:
    """The stage changes on the console and in the run's log (once, from rank zero)."""
    log.info(message)


@batch_hooks_only_where_used
class StagedFinetuning(Callback):
    """Freeze the backbone until epoch ``unfreeze_at_epoch`` (0: never frozen), its BatchNorm layers in eval
    mode while frozen when ``freeze_bn`` (their running statistics kept as loaded); the backbone's learning
    rate is ``backbone_lr_scale`` x the head's throughout. Logs ``finetune/trainable_params`` every epoch."""

    def __init__(self, unfreeze_at_epoch: int = 3, backbone_lr_scale: float = 0.1, freeze_bn: bool = True) -> None:
        if unfreeze_at_epoch < 0 or backbone_lr_scale < 0:
            raise UserError("finetune.unfreeze_at_epoch and finetune.backbone_lr_scale must not be negative.")
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.backbone_lr_scale = backbone_lr_scale
        self.freeze_bn = freeze_bn
        self._backbone: list[Any] = []  # the backbone parameters the model config leaves trainable
        self._backbone_norms: list[nn.Module] = []
        self._frozen: bool | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        ddp_options = getattr(trainer.strategy, "_ddp_kwargs", None)
        if self.unfreeze_at_epoch > 0 and ddp_options is not None and not ddp_options.get("find_unused_parameters"):
            # DDP waits for a gradient of every parameter that required one when it wrapped the model
            raise UserError(
                "finetune=staged under DDP needs trainer.strategy=ddp_find_unused_parameters_true: "
                "the frozen backbone gets no gradients."
            )
        net = pl_module.net
        is_backbone = in_backbone(net)
        # parameters a model keeps frozen by its own design (a detector's first stages) stay frozen
        backbone = [p for name, p in net.named_parameters() if is_backbone(name) and p.requires_grad]
        # when the weights came through visiontrain's loader, it marked what it loaded: backbone tensors left
        # freshly initialised (a CIFAR stem, another number of input channels) train from the start
        if any(getattr(p, "loaded_weights", False) for p in net.parameters()):
            fresh = [p for p in backbone if not getattr(p, "loaded_weights", False)]
            if fresh:
                say(f"finetune: {len(fresh)} backbone tensors were not loaded from weights and train from the start")
            backbone = [p for p in backbone if getattr(p, "loaded_weights", False)]
        self._backbone = backbone
        self._backbone_norms = [
            m
            for name, m in net.named_modules()
            if name and is_backbone(name) and isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        pl_module.backbone_lr_scale = self.backbone_lr_scale  # read when the optimizer is built

    def frozen(self, epoch: int) -> bool:
        return epoch < self.unfreeze_at_epoch

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        frozen = self.frozen(trainer.current_epoch)
        for parameter in self._backbone:
            parameter.requires_grad_(not frozen)
        self._set_norm_mode(frozen)
        trainable = sum(p.numel() for p in pl_module.net.parameters() if p.requires_grad)
        if frozen != self._frozen:
            lrs = ", ".join(
                f"{group.get('name', i)}={group['lr']:.3g}"
                for i, group in enumerate(trainer.optimizers[0].param_groups)
            )
            say(
                f"epoch {trainer.current_epoch + 1}: backbone {'frozen' if frozen else 'trainable'}, "
                f"{trainable} trainable parameters; learning rates {lrs}"
            )
            self._frozen = frozen
        pl_module.log("finetune/trainable_params", float(trainable), on_step=False, on_epoch=True)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        # Lightning restores the modes modules had before validation: set the backbone's norms every batch
        self._set_norm_mode(self._frozen)

    def _set_norm_mode(self, frozen: bool | None) -> None:
        training = not (frozen and self.freeze_bn)
        for module in self._backbone_norms:
            if module.training != training:
                module.train(training)
