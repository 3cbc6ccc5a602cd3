"""MONAI integration: a volume store as MONAI dict samples, soft labels included (the ``monai`` extra).

Each item is ``{"image": (C_in, X, Y, Z), "label": (C, X, Y, Z) float32 soft label, "nn": (1, X, Y,
Z) hard labels, "id": ...}``: ``image`` and ``label`` are MONAI ``MetaTensor`` s carrying the output
grid's affine, so MONAI's dictionary transforms (``RandSpatialCropd``, ``RandFlipd``,
``RandRotate90d``, ...) move intensities and soft labels together, and its losses take the soft
label as the target::

    from monai.data import DataLoader
    from monai.losses import DiceCELoss
    from monai.transforms import RandFlipd, RandSpatialCropd
    from softprep_train.monai import store_dataset

    keys = ["image", "label", "nn"]
    data = store_dataset("V.zarr", "train", "2mm", [RandSpatialCropd(keys, (64, 64, 64), random_size=False),
                                                    RandFlipd(keys, prob=0.5, spatial_axis=0)])
    loss = DiceCELoss(softmax=True)  # CE against class probabilities; or DiceLoss(softmax=True, soft_label=True)

The label is the stored sparse soft label densified at load (MONAI's transforms work on dense
channels); per voxel it sums to the labelled share of the voxel (0 where nothing is labelled).
Intensities are standardised per volume and channel, as ``fit`` trains on them.
"""

from __future__ import annotations

import torch

from softprep.errors import SoftprepError, install_hint
from softprep_train.volumes import VolumeDataset

try:
    from monai.data import Dataset, MetaTensor
    from monai.transforms import MapTransform
except ImportError as error:  # pragma: no cover - exercised without the extra
    raise SoftprepError(f"the MONAI adapter needs MONAI: {install_hint('monai')}") from error


class LoadSoftLabeld(MapTransform):
    """Read volume ``data["index"]`` of a store's split at a target into ``image``, ``label`` (the soft
    label) and ``nn`` (the ``nearest-exact`` hard labels, ``(1, X, Y, Z) int64``, 255 = unlabelled)."""

    def __init__(self, store_path: str, split: str, target, image_key: str = "image", label_key: str = "label",
                 nn_key: str = "nn"):
        super().__init__([image_key, label_key, nn_key])
        self.volumes = VolumeDataset(store_path, split, target)
        self.image_key, self.label_key, self.nn_key = image_key, label_key, nn_key

    def __call__(self, data: dict) -> dict:
        index = int(data["index"])
        sample = self.volumes.finish(self.volumes.raw(index, None), self.volumes.num_classes)
        affine = torch.as_tensor(self.volumes.view().affines()[index])
        return {**data,
                self.image_key: MetaTensor(sample["image"], affine=affine),
                self.label_key: MetaTensor(sample["soft"], affine=affine),
                self.nn_key: MetaTensor(sample["nn"][None], affine=affine)}


def store_dataset(store_path: str, split: str, target, transforms: list | None = None) -> Dataset:
    """A MONAI ``Dataset`` of a volume store's split at ``target``: :class:`LoadSoftLabeld`, then ``transforms``."""
    volumes = VolumeDataset(store_path, split, target)  # a clear error now for a 2-D store or a missing target
    records = [{"index": i, "id": volumes.ids[i]} for i in range(len(volumes))]
    return Dataset(records, [LoadSoftLabeld(store_path, split, target), *(transforms or [])])


__all__ = ["LoadSoftLabeld", "store_dataset"]
