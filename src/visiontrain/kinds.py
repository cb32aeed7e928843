"""Task kinds: what differs between classification, segmentation and detection, declared once per kind.

A kind is one row of :data:`KINDS`: its serving, test-time augmentation, label statistics, the drawings of
``debug=browse`` and the samplers its data offers. Everywhere else the code asks the row of the data's kind
(``of(spec.task)``) instead of testing the kind's name, and a kind not in the table is one sentence.

Each part is named as ``"module:attribute"`` and imported when first asked for: this module imports nothing of
visiontrain beyond its errors, so every layer may read it (data its samplers and label statistics, tasks their
test-time augmentation, serving and runs the rest) without an import running back up.

A new kind is a LightningModule (a ``VisionTask`` with ``task = "<kind>"``), a ``conf/task/<kind>.yaml``, a
datamodule whose ``spec.task`` is the kind, and one ``register(TaskKind(...))`` naming its parts; code outside the
package registers the same way (tests/test_task_kinds.py does).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from visiontrain.errors import UserError


@dataclass(frozen=True)
class TaskKind:
    name: str
    # a visiontrain.serving.base.TaskServing subclass: how a trained model runs, is exported and writes predictions
    serving: str
    # label statistics of one split: (dataset, datamodule, max_masks) -> dict (visiontrain.data.label_stats)
    label_statistics: str
    # debug=browse: (images, targets, datamodule, title) -> figure of training samples as the network gets them
    sample_grid: str
    # debug=browse: (data name, class names, {split: statistics}) -> [(name, figure)]
    statistics_figures: str
    # test-time augmentation: (mode, forward, inputs) -> outputs, for each mode of ``tta_modes`` (none aside)
    tta: str | None = None
    tta_modes: tuple[str, ...] = ()
    # data.sampler options this kind's data offers (visiontrain.data.samplers); null (shuffle) always
    samplers: tuple[str, ...] = ()

    def part(self, name: str) -> Any:
        """The attribute a field names, imported now."""
        where = getattr(self, name)
        if where is None:
            raise UserError(f"{self.name} models have no {name.replace('_', ' ')}.")
        module, _, attribute = where.partition(":")
        return getattr(importlib.import_module(module), attribute)


KINDS: dict[str, TaskKind] = {}


def register(kind: TaskKind) -> TaskKind:
    KINDS[kind.name] = kind
    return kind


def of(name: str) -> TaskKind:
    """The row of kind ``name``; a kind not in the table is one sentence."""
    if name not in KINDS:
        raise UserError(
            f"{name or 'an unnamed task'!r} is not a task kind visiontrain knows ({', '.join(KINDS)}); "
            "a new kind is registered with visiontrain.kinds.register."
        )
    return KINDS[name]


register(
    TaskKind(
        name="classification",
        serving="visiontrain.serving.classification:ClassificationServing",
        label_statistics="visiontrain.data.label_stats:classification_statistics",
        sample_grid="visiontrain.plots.data:classification_samples",
        statistics_figures="visiontrain.plots.data:classification_figures",
        tta="visiontrain.tasks.tta:classification_tta",
        tta_modes=("flip", "flip_translate"),
        samplers=("balanced",),
    )
)
register(
    TaskKind(
        name="segmentation",
        serving="visiontrain.serving.segmentation:SegmentationServing",
        label_statistics="visiontrain.data.label_stats:segmentation_statistics",
        sample_grid="visiontrain.plots.data:segmentation_samples",
        statistics_figures="visiontrain.plots.data:segmentation_figures",
        tta="visiontrain.tasks.tta:segmentation_tta",
        tta_modes=("flip", "flip_scale"),
    )
)
register(
    TaskKind(
        name="detection",
        serving="visiontrain.serving.detection:DetectionServing",
        label_statistics="visiontrain.data.label_stats:detection_statistics",
        sample_grid="visiontrain.plots.data:detection_samples",
        statistics_figures="visiontrain.plots.data:detection_figures",
        tta="visiontrain.tasks.tta:detection_tta",
        tta_modes=("flip",),
        samplers=("repeat_factor",),
    )
)
