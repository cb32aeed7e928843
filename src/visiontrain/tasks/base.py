"""What every task shares: the network, optimizer and scheduler from the config, compile, class names from
the data (and from a checkpoint being loaded), the checks of a network against its data before training, the
test-time augmentation of evaluation (visiontrain.tasks.tta), and the class weights of a loss."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning import LightningModule
from torch import nn

from visiontrain import artifact, compat
from visiontrain.compat import HOOK_NAME_ATTRIBUTE
from visiontrain.data.spec import DataSpec
from visiontrain.errors import UserError
from visiontrain.models import memory_format
from visiontrain.models.backbone import backbone_and_head
from visiontrain.tasks import tta as test_time

log = logging.getLogger("visiontrain")

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]

# model.class_weights=balanced: inverse class frequencies of the training split, computed when fitting starts
BALANCED = "balanced"


def plain_class_weights(option: Any, num_classes: int) -> str | list[float] | None:
    """``model.class_weights`` checked, as plain values (hyperparameters must be, for ``weights_only`` loading):
    None, ``balanced``, or one finite, non-negative weight per class, not all 0."""
    if option is None or option == BALANCED:
        return option
    if isinstance(option, str) or not isinstance(option, Sequence):
        raise UserError(
            f"model.class_weights={option!r}: give null, balanced, or a list of {num_classes} weights (one per class)."
        )
    if len(option) != num_classes:
        raise UserError(
            f"model.class_weights has {len(option)} entries for {num_classes} classes; give one weight per class, "
            "or balanced."
        )
    try:
        weights = [float(w) for w in option]
    except (TypeError, ValueError):
        weights = []
    if len(weights) != num_classes or not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise UserError(f"model.class_weights={list(option)}: weights must be numbers >= 0, not all 0.")
    return weights


def class_weight_tensor(option: str | list[float] | None, num_classes: int) -> torch.Tensor | None:
    """The loss's ``weight`` for a checked ``model.class_weights``; for ``balanced``, ones until ``VisionTask.setup``
    fills in the training split's (a checkpoint loaded later brings the values it was trained with)."""
    if option is None:
        return None
    return torch.ones(num_classes) if option == BALANCED else torch.tensor(option, dtype=torch.float32)


def balanced_class_weights(counts: torch.Tensor, class_names: Sequence[str], data_name: str) -> torch.Tensor:
    """Inverse class frequencies, scaled so that their mean is 1; a class absent from training is one sentence."""
    if (counts <= 0).any():
        absent = class_names[int(torch.nonzero(counts <= 0)[0])]
        raise UserError(
            f"model.class_weights=balanced: class {absent!r} does not occur in the training split of {data_name}, so "
            "its inverse frequency is infinite; give model.class_weights as a list."
        )
    inverse = 1.0 / counts.double()
    return (inverse / inverse.mean()).float()


class VisionTask(LightningModule):
    """Base of the task modules. Subclasses call ``save_hyperparameters(ignore=["net", "optimizer",
    "scheduler"])`` so only plain values are saved and checkpoints load with ``weights_only=True``.

    ``**architecture``: the network's headline options (``weights``, ``name``, ``pretrained``,
    ``weights_file``), repeated at the model level so the command line stays short (``model.weights=...``);
    the network config reads them by interpolation (``weights: ${..weights}``). Plain values only.
    """

    # the backbone's learning rate relative to the head's; set by visiontrain.callbacks.finetune.StagedFinetuning
    # before the optimizer is built. None: one learning rate, no backbone/head parameter groups.
    backbone_lr_scale: float | None = None
    # the test-time augmentation of validation and test (visiontrain.tasks.tta); set_tta changes it
    tta: str = "none"
    # the metrics (names after train/, val/) on the console's epoch line; None: every scalar logged. The rest go to
    # metrics.json, the loggers and the plots
    headline: tuple[str, ...] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning names the running hook here before and after every hook call, ~45 times a training step.
        # nn.Module.__setattr__ first tests the value against Parameter, Buffer and Module (metaclass checks in
        # Python): 2.0 us a call here against 0.3 us. The attribute only ever holds a hook's name, never a
        # parameter, buffer or submodule, so it is set as any plain attribute is.
        if name == HOOK_NAME_ATTRIBUTE:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def logs_this_step(self) -> bool:
        """Whether the loggers write this training step (``trainer.log_every_n_steps``, and the last step): the
        cadence Lightning applies to ``self.log``, from the trainer's public state. Logging only then keeps
        ``self.log`` (~0.5 ms a call) off the other steps."""
        trainer = self.trainer
        every = trainer.log_every_n_steps
        return bool(every) and ((trainer.global_step + 1) % every == 0 or trainer.should_stop)

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None,
        num_classes: int,
        decay_norm_and_bias: bool = False,
        compile: bool = False,
        channels_last: bool | str = False,
        **architecture: Any,
    ) -> None:
        super().__init__()
        if "calibration" in architecture:
            raise UserError(
                f"calibrate=temperature calibrates classifiers' probabilities; this is a {self.task} model."
            )
        for key, value in architecture.items():
            if not isinstance(value, (str, int, float, bool, type(None))):
                raise UserError(
                    f"model.{key} must be a plain value (a name, a path, a number), not {type(value).__name__}."
                )
        self.architecture = architecture
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.decay_norm_and_bias = decay_norm_and_bias
        self.compile_net = compile
        # true | false | auto (on where it measured faster: visiontrain.models.memory_format); resolved here, once
        self.channels_last = memory_format.resolve(channels_last, net)
        if self.channels_last:  # NHWC weights (loading a state dict keeps the format); inputs: to_memory_format
            memory_format.apply(self.net, True)
        self.class_names: list[str] = []
        self.category_ids: list[int] | None = None  # detection: the dataset's id of each label 1..K
        self.name_classes(*self.numbered_classes(num_classes))

    def numbered_classes(self, num_classes: int) -> tuple[list[str], list[int] | None]:
        """Names (and ids) before the data's or a checkpoint's are known: the class indices."""
        return [str(i) for i in range(num_classes)], None

    def name_classes(self, names: Sequence[str], category_ids: Sequence[int] | None = None) -> None:
        """The one writer of the class names (and detection's category ids): numbered at construction, the data's
        at set-up, the checkpoint's when one is loaded."""
        self.class_names = list(names)
        if category_ids is not None:
            self.category_ids = list(category_ids)

    # --- set-up ---------------------------------------------------------------------------------
    def dry_run(self, input_shape: tuple[int, ...], data_name: str) -> Any:
        """The network's output for one blank image of ``input_shape``; a clear error if it cannot run."""
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                return self.net(torch.zeros(1, *input_shape, device=self.device))
        except RuntimeError as err:
            raise UserError(
                f"{type(self.net).__name__} cannot take {data_name}'s {'x'.join(map(str, input_shape))} "
                f"(channels x H x W) images: {str(err).splitlines()[0]}"
            ) from err
        finally:
            self.net.train(was_training)

    def to_memory_format(self, images: torch.Tensor) -> torch.Tensor:
        """Image batches in the network's memory format: NHWC under ``channels_last`` (oneDNN's and cuDNN's
        faster layout for many conv nets), else as they come."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def check_data(self, spec: DataSpec) -> None:
        """Fail before training, in one sentence, when the network cannot take the data; each task adds its checks."""
        if spec.task != self.task:
            raise UserError(
                f"a {self.task} model cannot train on {spec.name}, which is {spec.task} data; choose a {spec.task} "
                "model (python train.py --help lists them)."
            )

    def check_num_classes(self, spec: DataSpec, classes: str = "classes") -> None:
        if spec.num_classes != self.hparams.num_classes:
            raise UserError(
                f"the model is configured for {self.hparams.num_classes} {classes} but {spec.name} has "
                f"{spec.num_classes}; leave model.num_classes at ${{data.num_classes}}."
            )

    def set_tta(self, mode: str, option: str = "tta") -> None:
        """Evaluate with test-time augmentation ``mode``; one sentence naming ``option`` if the task lacks it."""
        self.tta = test_time.checked(self.task, mode, option)

    def class_weights(self) -> torch.Tensor | None:
        """The class-weight buffer of the task's loss (``model.class_weights``); None: the loss weighs classes alike."""
        return None

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        spec = datamodule.spec if datamodule is not None else None
        if spec is not None and spec.num_classes == len(self.class_names):
            ids = spec.category_ids if spec.category_ids and len(spec.category_ids) == len(self.class_names) else None
            self.name_classes(spec.class_names, ids)
        if stage == "fit" and self.class_weights() is not None:
            self.fit_class_weights(datamodule)
        if self.compile_net and not compat.is_compiled(self.net):
            self.net.compile()  # in place: parameter names, and so checkpoints, are unchanged

    def fit_class_weights(self, datamodule: Any) -> None:
        """For ``model.class_weights=balanced``, the training split's inverse class frequencies into the loss's
        buffer; either way one log line of each class's training frequency (when the data counts them) and weight.
        The counts come from the datamodule's ``class_counts()`` (images per class; pixels per class for
        segmentation), the one thing tasks ask a datamodule beyond its ``spec``."""
        weight = self.class_weights()
        option = self.hparams.get("class_weights")
        counts = getattr(datamodule, "class_counts", lambda: None)() if datamodule is not None else None
        name = datamodule.spec.name if datamodule is not None else "the data"
        if option == BALANCED:
            if counts is None:
                raise UserError(
                    f"model.class_weights=balanced needs the class counts of the training split, which {name} does "
                    "not give (its datamodule has no class_counts()); give model.class_weights as a list."
                )
            counts = torch.as_tensor(counts, dtype=torch.float64)
            weight.copy_(balanced_class_weights(counts, self.class_names, name))
        if not self.trainer.is_global_zero:
            return
        weights = [f"{float(w):.3f}" for w in weight]
        columns = "weight"
        if counts is not None:  # data that does not count its classes: the weights alone
            frequencies = torch.as_tensor(counts, dtype=torch.float64)
            weights = [f"{float(f):.4f}, {w}" for f, w in zip(frequencies / frequencies.sum(), weights)]
            columns = "training frequency, weight"
        described = "balanced: inverse training frequency, mean 1" if option == BALANCED else "as given"
        entries = "; ".join(f"{cls}: {w}" for cls, w in zip(self.class_names, weights))
        log.info("class weights (model.class_weights %s) - class: %s - %s", described, columns, entries)

    def on_train_start(self) -> None:
        scheduler = self.lr_schedulers()
        planned = getattr(scheduler, "total_steps", None)
        needed = int(self.trainer.estimated_stepping_batches) if planned is not None else None
        if planned is not None and planned != needed:  # a resumed OneCycle keeps the length it was built with
            raise UserError(
                f"the checkpoint's learning-rate schedule of {planned} steps cannot continue into a run that now "
                f"needs {needed}; resume with the original trainer.max_epochs, or start a new run from these weights."
            )
        # what the model costs beside what it scores (an objective of a study of several: accuracy against size),
        # in metrics.json and every logger; once per run (a resumed run logged it before its interruption)
        if self.trainer.global_step == 0:
            self.log("model/parameters", self.parameter_count(), on_epoch=True)

    def parameter_count(self) -> float:
        """How many numbers the model holds (``model/parameters``, what a study of several objectives may weigh
        against the score)."""
        return float(sum(p.numel() for p in self.parameters()))

    # --- optimisation ---------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]] | list[nn.Parameter]:
        """The optimizer's parameters. No weight decay on norm scales and biases unless ``decay_norm_and_bias``;
        with staged fine-tuning, named groups ``backbone``, ``backbone/no_decay``, ``head``, ``head/no_decay``
        (the names LearningRateMonitor logs under), the backbone's carrying ``lr_scale``. Parameters frozen
        for a stage stay in their group: without a gradient, the optimizer leaves them (and their weight decay
        and momentum) alone."""
        if self.backbone_lr_scale is None:
            trainable = [p for p in self.net.parameters() if p.requires_grad]
            if self.decay_norm_and_bias:
                return trainable
            return [
                {"params": [p for p in trainable if p.ndim > 1], "name": "weights"},
                {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0, "name": "no_decay"},
            ]
        groups = []
        for part, named, scale in zip(("backbone", "head"), backbone_and_head(self.net), (self.backbone_lr_scale, 1.0)):
            trainable = [p for _, p in named if p.requires_grad]
            splits = [(part, trainable, {})]
            if not self.decay_norm_and_bias:
                splits = [
                    (part, [p for p in trainable if p.ndim > 1], {}),
                    (f"{part}/no_decay", [p for p in trainable if p.ndim <= 1], {"weight_decay": 0.0}),
                ]
            groups += [{"params": ps, "name": name, "lr_scale": scale, **extra} for name, ps, extra in splits if ps]
        return groups

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.parameter_groups())
        for group in optimizer.param_groups:  # before the scheduler records each group's initial lr
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):  # max_epochs=-1 (no end) and no max_steps
            raise UserError(
                f"trainer.max_epochs={self.trainer.max_epochs} trains without end, but the learning-rate schedule "
                "needs the number of steps; give trainer.max_epochs (or trainer.max_steps), or set "
                "model.scheduler=null."
            )
        total_steps = int(total_steps)
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=total_steps)
        # logged by LearningRateMonitor as train/lr/<group name>, beside the training curves
        schedule = {"scheduler": scheduler, "interval": "step", "name": "train/lr"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    # --- checkpoint -----------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The names (and ids) the checkpoint was trained with; the artifact callback writes them."""
        info = artifact.describe(checkpoint, "the checkpoint")
        if info is not None:
            self.name_classes(info.class_names, info.category_ids)
