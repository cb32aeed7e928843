"""Penn-Fudan pedestrians as binary semantic segmentation (person vs background) from ``PedMasks/``.

Official layout: ``root/PNGImages/<id>.png`` and ``root/PedMasks/<id>_mask.png`` (instance ids, 0 =
background). No official split exists: a fixed seeded train/val/test split of the 170 images (with ``folds``,
the images outside the same seeded test split are folded).
"""

from __future__ import annotations

from pathlib import Path

from visiontrain.data.base import download_attempt
from visiontrain.data.segmentation import MaskMapping, SegmentationDataModule, pair_by_stem
from visiontrain.errors import UserError

PENNFUDAN_URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"


class PennFudanSegDataModule(SegmentationDataModule):
    name = "PennFudanPed"
    # every pedestrian instance id is the class "person"
    mask_mapping = MaskMapping({0: 0}, others=1)

    def __init__(self, root: str, val_fraction: float = 0.15, test_fraction: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction

    def _present(self) -> bool:
        return (self.root / "PNGImages").is_dir() and (self.root / "PedMasks").is_dir()

    def ensure_files(self, download: bool) -> None:
        if self._present():
            return
        from torchvision.datasets.utils import download_and_extract_archive

        reason = download_attempt(
            download, lambda: download_and_extract_archive(PENNFUDAN_URL, download_root=str(self.root.parent))
        )
        if not self._present():
            raise UserError(
                f"PennFudanPed not found: {self.root} lacks PNGImages/ and PedMasks/ and {reason}; unzip "
                f"PennFudanPed.zip ({PENNFUDAN_URL}) there or set data.root."
            )

    def split_pairs(self) -> dict[str, list]:
        stems = sorted(p.stem for p in (self.root / "PNGImages").glob("*.png"))
        pairs = pair_by_stem(self.root / "PNGImages", self.root / "PedMasks", stems, mask_suffix="_mask.png")
        return self.seeded_splits(pairs, self.test_fraction, self.val_fraction, f"{self.root} outside the test split")
