"""Training throughput, semantic segmentation: visiontrain vs a plain PyTorch loop, measured in one run.

UNet (segmentation_models_pytorch, ResNet-18 encoder from scratch, four encoder stages, decoder 128/64/32/16) on the
Penn-Fudan person masks ($DATA_DIR/PennFudanPed), the recipe ``experiment=pennfudan_unet`` (``data=pennfudan_seg
model=unet``): 96 px random resized crops (scale 0.3-1), horizontal flip, colour jitter 0.2, ImageNet normalisation,
batch 8 (last partial batch dropped), 2 DataLoader workers, the same memory format (the one the framework's config gives
the network, set explicitly on both sides; ``--[no-]channels-last`` for another); loss cross-entropy + Dice, both
ignoring 255; AdamW (lr 3e-3, weight decay 1e-4, none on biases and norm weights) with a one-cycle schedule; the same
110 training images (the seeded split of conf/data/pennfudan_seg.yaml). The plain side shares only the files and the
network (smp, with smp's Dice loss) with the framework; the values above are written out here (tests/test_bench.py
checks them against the composed config). The recipe's epoch is 13 steps, so a run of more crosses epoch ends, on both
sides: what happens there (a new pass over the DataLoader; in the framework, the epoch's metrics, its console line and
the redrawn learning curves) is timed too.

    DATA_DIR=/work/shared/datasets python bench/throughput_segmentation.py [--rounds 5] [--steps 20]
"""

from __future__ import annotations

import sys
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.losses import DiceLoss
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pairing  # noqa: E402

FAMILY = "segmentation"
DESCRIPTION = "UNet (smp, resnet18 encoder) from scratch, PennFudan masks 96 px, batch 8, AdamW + one-cycle"
DEFAULT_STEPS = 20
RECIPE = ["experiment=pennfudan_unet"]
# conf/experiment/pennfudan_unet.yaml, conf/model/_base/smp.yaml, conf/model/optimizer/adamw.yaml,
# conf/model/scheduler/onecycle.yaml, conf/data/pennfudan_seg.yaml
IMAGE_SIZE, BATCH_SIZE, NUM_WORKERS = 96, 8, 2
SCALE, COLOR_JITTER = (0.3, 1.0), 0.2
IGNORE_INDEX, DICE_WEIGHT = 255, 1.0
ENCODER_DEPTH, DECODER_CHANNELS = 4, (128, 64, 32, 16)
LR, WEIGHT_DECAY, BETAS, PCT_START, DIV_FACTOR, FINAL_DIV_FACTOR = 3e-3, 1e-4, (0.9, 0.999), 0.25, 25.0, 1e4
# one kernel over all parameters, as conf/model/optimizer/ sets (fused: true)
FUSED = True
TEST_FRACTION, VAL_FRACTION, SPLIT_SEED = 0.2, 0.15, 12345
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def data_dir() -> Path:
    return pairing.data_dir("PennFudanPed/PNGImages")


def framework_channels_last(root: Path) -> bool | None:
    """The memory format the framework gives the network (``model.channels_last``, ``auto`` resolved)."""
    return pairing.framework_channels_last([f"paths.data_dir={root}", *RECIPE])


def framework_rate(root: Path, steps: int, warmup: int = 1, channels_last: bool | None = None) -> float:
    """The recipe with the benches' quiet settings; ``channels_last`` None: the config's own memory format."""
    return pairing.framework_rate([f"paths.data_dir={root}", *RECIPE], steps, warmup, channels_last)


# --- the plain side -------------------------------------------------------------------------------------------------
class PersonMasks(Dataset):
    """Image and mask read with torchvision.io; every pedestrian instance id is class 1 (person), 0 background."""

    def __init__(self, root: Path, names: list[str], transforms) -> None:
        self.root, self.names, self.transforms = root, names, transforms

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, idx: int):
        name = self.names[idx]
        image = decode_image(str(self.root / "PNGImages" / f"{name}.png"), mode=ImageReadMode.RGB)
        mask = decode_image(str(self.root / "PedMasks" / f"{name}_mask.png"), mode=ImageReadMode.GRAY)[0]
        return self.transforms(tv_tensors.Image(image), tv_tensors.Mask((mask != 0).long()))


def train_transform() -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomResizedCrop(IMAGE_SIZE, scale=SCALE, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(COLOR_JITTER, COLOR_JITTER, COLOR_JITTER),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )


def training_names(root: Path) -> list[str]:
    """The training images of the seeded split: the first 20 % of the permutation test, the next 15 % validate."""
    names = sorted(p.stem for p in (root / "PNGImages").glob("*.png"))
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    held_out = round(TEST_FRACTION * len(names)) + round(VAL_FRACTION * len(names))
    return [names[i] for i in order[held_out:]]


def build_model() -> torch.nn.Module:
    return smp.Unet(
        encoder_name="resnet18",
        encoder_weights=None,
        encoder_depth=ENCODER_DEPTH,
        decoder_channels=DECODER_CHANNELS,
        in_channels=3,
        classes=2,
    )


def mean_iou(confusion: torch.Tensor) -> float:
    """mIoU of the two classes from the 4 counts of (true class, predicted class)."""
    cm = confusion.view(2, 2).double()
    return float((cm.diag() / (cm.sum(0) + cm.sum(1) - cm.diag())).nanmean())


def plain_rate(root: Path, steps: int, warmup: int = 1, channels_last: bool = False) -> float:
    folder = root / "PennFudanPed"
    torch.manual_seed(42)
    dataset = PersonMasks(folder, training_names(folder), train_transform())
    loader = DataLoader(
        dataset,
        batch_size=BATCH_SIZE,
        shuffle=True,
        drop_last=len(dataset) > BATCH_SIZE,
        num_workers=NUM_WORKERS,
        persistent_workers=NUM_WORKERS > 0,
    )
    model = build_model()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in model.parameters() if p.ndim > 1]},
            {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=LR,
        betas=BETAS,
        weight_decay=WEIGHT_DECAY,
        fused=FUSED,
    )
    total = warmup + steps
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=LR,
        total_steps=total,
        # both phases at least one step long, as the config's schedule keeps them (runs of a few steps)
        pct_start=min(max(PCT_START, 2 / total), (total - 1) / total) if total >= 3 else PCT_START,
        anneal_strategy="cos",
        div_factor=DIV_FACTOR,
        final_div_factor=FINAL_DIV_FACTOR,
    )
    cross_entropy = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    dice = DiceLoss(mode="multiclass", ignore_index=IGNORE_INDEX)
    model.train()
    clock = pairing.StepClock(warmup)
    history: list[tuple[float, float]] = []  # each epoch's mean loss and mIoU, what one prints
    loss_sum, count, confusion = torch.zeros(()), 0, torch.zeros(4, dtype=torch.long)
    batches = iter(loader)
    for _ in range(total):
        try:
            images, masks = next(batches)
        except StopIteration:  # an epoch's end: its loss and mIoU, then the next pass
            history.append((float(loss_sum) / count, mean_iou(confusion)))
            loss_sum, count, confusion = torch.zeros(()), 0, torch.zeros(4, dtype=torch.long)
            batches = iter(loader)
            images, masks = next(batches)
        logits = model(images.contiguous(memory_format=memory_format))
        loss = cross_entropy(logits, masks) + DICE_WEIGHT * dice(logits, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach()
        count += 1
        valid = masks != IGNORE_INDEX
        confusion += torch.bincount(masks[valid] * 2 + logits.detach().argmax(1)[valid], minlength=4)
        clock.tick()
    del batches, loader  # stops the workers
    return clock.rate()


if __name__ == "__main__":
    pairing.family_main(sys.modules[__name__], default_rounds=5)
