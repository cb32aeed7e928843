"""What a datamodule tells the rest of visiontrain about its data: the one thing tasks, the entry points,
callbacks and the trained artifact read of it (``datamodule.spec``, built by ``SplitDataModule.spec``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DataSpec:
    """The data's side of the contract with a task and with serving. Class names are the data's own (class
    folders, a category list, the Pet split files, a mask folder's ``classes.txt``) where the data states them,
    else the config's; reading ``spec`` may read those files, never the images."""

    name: str  # for messages: "MNIST", "the image folder /data/pets"
    task: str  # a kind of visiontrain.kinds: what the labels are (an image's class, a class per pixel, objects)
    class_names: tuple[str, ...]  # class k (detection: the object class of label k + 1)
    input_shape: tuple[int, int, int] | None  # channels x H x W the network gets; None: each image its own size
    preprocessing: dict[str, Any]  # the test-time input pipeline as plain data (visiontrain.data.preprocessing)
    has_test_split: bool
    category_ids: tuple[int, ...] | None = None  # detection: the dataset's id of label 1..K (COCO's are sparse)
    with_masks: bool = False  # detection: instance masks are read

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
