"""Dataset adapters, one per dataset, in one registry: ``get_dataset(name, root)``."""

from __future__ import annotations

from pathlib import Path

from softprep.datasets.ade20k import ADE20K
from softprep.datasets.base import Dataset, Sample
from softprep.datasets.camvid import CamVid
from softprep.datasets.cityscapes import Cityscapes
from softprep.datasets.folder import Folder
from softprep.datasets.mapillary import MapillaryVistas, MapillaryVistasV2
from softprep.datasets.nifti import NIfTI
from softprep.errors import SoftprepError

DATASETS: dict[str, type[Dataset]] = {
    cls.name: cls for cls in (Cityscapes, ADE20K, MapillaryVistas, MapillaryVistasV2, CamVid, Folder, NIfTI)
}


def get_dataset(name: str, root: str | Path) -> Dataset:
    """The adapter registered as ``name``, over the folder ``root``."""
    if name not in DATASETS:
        raise SoftprepError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name](root)


__all__ = ["DATASETS", "Dataset", "Sample", "get_dataset"]
