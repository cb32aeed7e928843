"""Training throughput, detection: visiontrain vs a plain PyTorch loop written as torchvision's detection tutorial
writes it (a Dataset reading the PNG and its mask, a DataLoader collating lists, ``model(images, targets)``, the sum
of the losses, a step).

Faster R-CNN ``mobilenet_v3_large_320_fpn`` from scratch (no weights can be downloaded here) on Penn-Fudan
($DATA_DIR/PennFudanPed), the recipe ``experiment=pennfudan_fasterrcnn_scratch`` at batch 2 (``data.batch_size=2``):
320-480 px inputs, 500 RPN proposals and 128 sampled RoIs per image in training, SGD (lr 0.02, momentum 0.9, Nesterov,
weight decay 1e-4, none on biases and norm weights), gradient norm clipped at 10, cosine schedule with a 5 % linear
warm-up; the same 100 training images (the seeded split of conf/data/pennfudan.yaml), the same training augmentation
(photometric distortion, horizontal flip, scale jitter 0.75-1.25 with the boxes clamped and the degenerate ones
dropped), the same memory format of the weights (the one the framework's config gives the network, set explicitly on
both sides; ``--[no-]channels-last`` for another), 2 DataLoader workers, batches of one orientation (landscape or
portrait, as torchvision's reference scripts' GroupedBatchSampler makes them). The plain side shares only the files and
torchvision's network with the framework; the values above are written out here (tests/test_bench.py checks them against
the composed config).

    DATA_DIR=/work/shared/datasets python bench/throughput_detection.py [--rounds 5] [--steps 12]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pairing  # noqa: E402

FAMILY = "detection"
DESCRIPTION = "Faster R-CNN mobilenet_v3_large_320_fpn from scratch, PennFudan, batch 2, SGD + cosine"
DEFAULT_STEPS = 12
RECIPE = ["experiment=pennfudan_fasterrcnn_scratch", "data.batch_size=2"]
# conf/experiment/pennfudan_fasterrcnn_scratch.yaml, conf/model/_base/detector.yaml, conf/model/optimizer/sgd.yaml,
# conf/model/scheduler/cosine.yaml, conf/data/pennfudan.yaml
BATCH_SIZE, NUM_WORKERS = 2, 2
NETWORK = dict(
    min_size=320,
    max_size=480,
    box_batch_size_per_image=128,
    rpn_pre_nms_top_n_train=500,
    rpn_post_nms_top_n_train=500,
    box_score_thresh=0.05,
    box_detections_per_img=100,
)
LR, MOMENTUM, WEIGHT_DECAY, CLIP_NORM, WARMUP_FRACTION = 0.02, 0.9, 1e-4, 10.0, 0.05
# one kernel over all parameters, as conf/model/optimizer/ sets (fused: true)
FUSED = True
VAL_SIZE, TEST_SIZE, SPLIT_SEED = 20, 50, 12345
SCALE_JITTER = (0.75, 1.25)


def data_dir() -> Path:
    return pairing.data_dir("PennFudanPed/PNGImages")


def framework_channels_last(root: Path) -> bool | None:
    """The memory format the framework gives the network (``model.channels_last``, ``auto`` resolved)."""
    return pairing.framework_channels_last([f"paths.data_dir={root}", *RECIPE])


def framework_rate(root: Path, steps: int, warmup: int = 1, channels_last: bool | None = None) -> float:
    """The recipe with the benches' quiet settings; ``channels_last`` None: the config's own memory format."""
    return pairing.framework_rate([f"paths.data_dir={root}", *RECIPE], steps, warmup, channels_last)


# --- the plain side -------------------------------------------------------------------------------------------------
class PennFudanDataset(Dataset):
    """The tutorial's dataset: image and instance mask read with torchvision.io, a box per instance id. No masks in
    the target: Faster R-CNN does not use them (the framework leaves them out too)."""

    def __init__(self, root: Path, names: list[str], transforms) -> None:
        self.root, self.names, self.transforms = root, names, transforms

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, idx: int):
        name = self.names[idx]
        img = decode_image(str(self.root / "PNGImages" / f"{name}.png"), mode=ImageReadMode.RGB)
        mask = decode_image(str(self.root / "PedMasks" / f"{name}_mask.png"), mode=ImageReadMode.GRAY)
        obj_ids = torch.unique(mask)
        obj_ids = obj_ids[obj_ids != 0]
        masks = (mask == obj_ids[:, None, None]).to(dtype=torch.uint8)
        boxes = masks_to_boxes(masks)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=F.get_size(img)),
            "labels": torch.ones((len(obj_ids),), dtype=torch.int64),
            "image_id": idx,
        }
        return self.transforms(tv_tensors.Image(img), target)


def train_transform() -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomPhotometricDistort(p=0.5),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomAffine(degrees=0.0, scale=SCALE_JITTER),
            v2.ClampBoundingBoxes(),
            v2.SanitizeBoundingBoxes(min_size=1.0),
            v2.ToDtype(torch.float, scale=True),
            v2.ToPureTensor(),
        ]
    )


def collate_fn(batch):
    return tuple(zip(*batch))


class GroupedBatches:
    """Each epoch a shuffle, cut into batches whose images are all landscape or all portrait (the leftovers of each
    orientation last): less padding in a batch, as torchvision's reference scripts batch."""

    def __init__(self, landscape: list[bool], batch_size: int) -> None:
        self.landscape, self.batch_size = landscape, batch_size

    def __iter__(self):
        waiting: dict[bool, list[int]] = {True: [], False: []}
        for i in torch.randperm(len(self.landscape)).tolist():
            group = waiting[self.landscape[i]]
            group.append(i)
            if len(group) == self.batch_size:
                yield list(group)
                group.clear()
        yield from (group for group in waiting.values() if group)

    def __len__(self) -> int:
        return sum(math.ceil(self.landscape.count(v) / self.batch_size) for v in (True, False))


def training_names(root: Path) -> list[str]:
    """The 100 training images of the seeded split: the first 50 of the permutation test, the next 20 validate."""
    names = sorted(p.stem for p in (root / "PNGImages").glob("*.png"))
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    return [names[i] for i in order[TEST_SIZE + VAL_SIZE :]]


def build_model() -> torch.nn.Module:
    """torchvision's detector, from scratch: 1 class + background."""
    return fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=2, **NETWORK)


def plain_rate(root: Path, steps: int, warmup: int = 1, channels_last: bool = False) -> float:
    folder = root / "PennFudanPed"
    torch.manual_seed(42)
    names = training_names(folder)
    landscape = []
    for name in names:
        with Image.open(folder / "PNGImages" / f"{name}.png") as image:  # the header: width and height
            landscape.append(image.width >= image.height)
    dataset = PennFudanDataset(folder, names, train_transform())
    loader = DataLoader(
        dataset,
        batch_sampler=GroupedBatches(landscape, BATCH_SIZE),
        num_workers=NUM_WORKERS,
        collate_fn=collate_fn,
        persistent_workers=NUM_WORKERS > 0,
    )
    model = build_model()
    if channels_last:  # the weights: the detector batches (and lays out) its images itself
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        [
            {"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0},
        ],
        lr=LR,
        momentum=MOMENTUM,
        nesterov=True,
        weight_decay=WEIGHT_DECAY,
        fused=FUSED,
    )
    total = warmup + steps
    warm = max(1, round(WARMUP_FRACTION * total))

    def linear_warmup_then_cosine(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_then_cosine)
    model.train()
    clock = pairing.StepClock(warmup)
    loss_sums: dict[str, float] = {}
    batches = iter(loader)
    for _ in range(total):
        try:
            images, targets = next(batches)
        except StopIteration:  # the next epoch
            batches = iter(loader)
            images, targets = next(batches)
        loss_dict = model(list(images), list(targets))
        losses = sum(loss for loss in loss_dict.values())
        loss_value = losses.item()
        if not math.isfinite(loss_value):
            raise RuntimeError(f"the loss is {loss_value}")
        optimizer.zero_grad()
        losses.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        optimizer.step()
        lr_scheduler.step()
        for name, value in loss_dict.items():  # what the tutorial's MetricLogger keeps
            loss_sums[name] = loss_sums.get(name, 0.0) + value.item()
        clock.tick()
    del batches, loader  # stops the workers
    return clock.rate()


if __name__ == "__main__":
    pairing.family_main(sys.modules[__name__], default_rounds=5)
