"""3-D medical volumes in the Medical Segmentation Decathlon / nnU-Net raw layout (NIfTI, through nibabel).

Layout under ``--root``::

    dataset.json          the labels (MSD: ``{"0": "background", "1": "tumour"}``; nnU-Net v2:
                          ``{"background": 0, "tumour": 1}``, a label named ``ignore`` is unlabelled)
                          and the image channels (``modality`` or ``channel_names``)
    imagesTr/CASE.nii.gz  a 3-D volume, or 4-D with its channels last (MSD), or
    imagesTr/CASE_0000.nii.gz, CASE_0001.nii.gz, ...   one file per channel (nnU-Net)
    labelsTr/CASE.nii.gz  3-D integer labels on the image's grid

Every labelled case is in the split ``train``. Images are read as ``(X, Y, Z, C) float32``, labels
as ``(X, Y, Z) uint8`` train ids, both in the orientation stored in the file (nothing is
reoriented); the voxel size and the voxel-to-world affine come from the header. An image and its
labels must share the grid (shape and affine), else the pair is refused in one line naming both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from softprep.datasets.base import IGNORE_INDEX, Dataset, Sample, lookup_table
from softprep.errors import SoftprepError, install_hint, printable
from softprep.softlabel import MAX_CLASSES

DATASET_JSON = "dataset.json"
SUFFIX = ".nii.gz"
#: Largest difference between an image's and its labels' affines still called one grid (mm).
AFFINE_TOLERANCE = 1e-3


def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise SoftprepError(f"NIfTI volumes need nibabel: {install_hint('volumes')}") from None
    return nibabel


def load_label_table(path: Path) -> tuple[tuple[str, ...], dict[int, int], int]:
    """Class names (index = train id), the raw value -> train id table (``ignore`` -> 255) and the
    number of image channels of a ``dataset.json`` (MSD or nnU-Net v2)."""
    if not path.is_file():
        raise SoftprepError(f"{path}: not found; a NIfTI dataset root holds dataset.json, imagesTr/ and labelsTr/")
    try:
        table = json.loads(path.read_text())
        labels = table["labels"]
        if all(str(k).lstrip("-").isdigit() for k in labels):  # MSD: value -> name
            values = {int(k): str(v) for k, v in labels.items()}
        else:  # nnU-Net v2: name -> value
            values = {int(v): str(k) for k, v in labels.items() if not isinstance(v, (list, tuple))}
        channels = len(table.get("channel_names") or table.get("modality") or {"0": "image"})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise SoftprepError(f"{path}: bad dataset.json ({type(error).__name__}: {error})") from None
    ignore = [v for v, name in values.items() if name.lower() == "ignore"]
    names = [values[v] for v in sorted(values) if v not in ignore]
    if not names or len(names) > MAX_CLASSES or any(not 0 <= v <= 255 for v in values):
        raise SoftprepError(f"{path}: needs 1 to {MAX_CLASSES} labels with values 0..255, found {sorted(values)}")
    mapping = {v: i for i, v in enumerate(sorted(v for v in values if v not in ignore))}
    mapping.update({v: IGNORE_INDEX for v in ignore})
    return tuple(names), mapping, channels


def _palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """``n`` distinct colours (background black)."""
    colours = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]
    rng = np.random.default_rng(0)
    while len(colours) < n:
        colours.append(tuple(int(v) for v in rng.integers(40, 256, 3)))
    return tuple(colours[:n])


class NIfTI(Dataset):
    name = "nifti"
    default_splits = ("train",)
    image_dtype = "float32"

    def __init__(self, root: str | Path):
        super().__init__(root)
        self.classes, mapping, self.image_channels = load_label_table(self.root / DATASET_JSON)
        self.palette = _palette(len(self.classes))
        self._lut = lookup_table(mapping)

    def has_split(self, split: str) -> bool:
        return split == "train" and (self.root / "labelsTr").is_dir() and (self.root / "imagesTr").is_dir()

    def samples(self, split: str) -> list[Sample]:
        if not self.has_split(split):
            raise SoftprepError(f"{self.root}: no labelled split {split!r}; a NIfTI root holds imagesTr/ and labelsTr/ "
                                "(split train)")
        images = self.root / "imagesTr"
        out = []
        for label in sorted((self.root / "labelsTr").glob(f"*{SUFFIX}")):
            case = label.name[: -len(SUFFIX)]
            image = next((p for p in (images / f"{case}{SUFFIX}", images / f"{case}_0000{SUFFIX}") if p.is_file()), None)
            if image is None:
                raise SoftprepError(f"{label}: no image {images / (case + SUFFIX)} (or {case}_0000{SUFFIX}); restore the "
                                    "image or remove the labels")
            out.append(Sample(case, image, label))
        return out

    def _channels(self, sample: Sample) -> list[Path]:
        """The files holding the image's channels: one (3-D or 4-D), or ``CASE_0000`` ... one per channel."""
        if not sample.image.name.endswith(f"_0000{SUFFIX}"):
            return [sample.image]
        stem = sample.image.name[: -len(f"_0000{SUFFIX}")]
        return [sample.image.with_name(f"{stem}_{c:04d}{SUFFIX}") for c in range(self.image_channels)]

    def _load(self, path: Path):
        nibabel = _nibabel()
        try:
            return nibabel.load(str(path))
        except FileNotFoundError:
            raise SoftprepError(f"{path}: file not found") from None
        except Exception as error:  # noqa: BLE001 - nibabel's errors of every kind: one line
            raise SoftprepError(f"{path}: cannot read this NIfTI file ({type(error).__name__}: "
                                f"{printable(str(error).splitlines()[0] if str(error) else '')[:120]}); re-extract it") from None

    def size(self, sample: Sample) -> tuple[int, ...]:
        """``(X, Y, Z)`` from the headers; the image (every channel file) and the labels must share the grid."""
        label = self._load(sample.label)
        if len(label.shape) != 3:
            raise SoftprepError(f"{sample.label}: labels of shape {label.shape}; a label volume is 3-D (X, Y, Z)")
        for path in self._channels(sample):
            image = self._load(path)
            if tuple(image.shape[:3]) != tuple(label.shape) or not np.allclose(image.affine, label.affine,
                                                                              atol=AFFINE_TOLERANCE):
                raise SoftprepError(f"{sample.label}: not on its image's grid ({path.name}: shape {image.shape[:3]}, "
                                    f"affine {_affine_text(image.affine)}; labels: shape {label.shape}, affine "
                                    f"{_affine_text(label.affine)}); resample one onto the other first")
        return tuple(int(v) for v in label.shape)

    def geometry(self, sample: Sample) -> tuple[tuple[float, ...], np.ndarray]:
        label = self._load(sample.label)
        return tuple(float(v) for v in label.header.get_zooms()[:3]), np.asarray(label.affine, dtype=np.float64)

    def read_image(self, sample: Sample) -> np.ndarray:
        """``(X, Y, Z, C) float32`` intensities."""
        planes = []
        for path in self._channels(sample):
            try:
                data = np.asarray(self._load(path).get_fdata(dtype=np.float32))
            except SoftprepError:
                raise
            except Exception as error:  # noqa: BLE001 - a truncated gzip, a damaged file
                raise SoftprepError(f"{path}: cannot decode ({type(error).__name__}: {printable(str(error))[:120]}); "
                                    "the file is truncated or damaged: re-extract it") from None
            planes.append(data if data.ndim == 4 else data[..., None])
        image = np.concatenate(planes, axis=3)
        if image.shape[3] != self.image_channels:
            raise SoftprepError(f"{sample.image}: {image.shape[3]} channel(s), dataset.json names {self.image_channels}")
        return image

    def read_label(self, sample: Sample) -> np.ndarray:
        """``(X, Y, Z) uint8`` train ids (values outside dataset.json refused, naming the file)."""
        try:
            raw = np.asarray(self._load(sample.label).dataobj)
        except SoftprepError:
            raise
        except Exception as error:  # noqa: BLE001 - a truncated gzip, a damaged file
            raise SoftprepError(f"{sample.label}: cannot decode ({type(error).__name__}: {printable(str(error))[:120]}); "
                                "the file is truncated or damaged: re-extract it") from None
        if raw.ndim != 3:
            raise SoftprepError(f"{sample.label}: labels of shape {raw.shape}; a label volume is 3-D (X, Y, Z)")
        if raw.dtype.kind == "f":
            if not np.array_equal(raw, np.round(raw)):
                raise SoftprepError(f"{sample.label}: label values are not whole numbers; labels are class values")
        if raw.min() < 0 or raw.max() > 255:
            raise SoftprepError(f"{sample.label}: label values {int(raw.min())}..{int(raw.max())} are outside dataset.json's "
                                f"labels {sorted(self._values())}")
        return self._map_volume(raw.astype(np.uint8), sample.label)

    def _values(self) -> list[int]:
        return [v for v in range(256) if self._lut[v] >= 0]

    def _map_volume(self, raw: np.ndarray, path: Path) -> np.ndarray:
        mapped = self._lut[raw]
        if (mapped < 0).any():
            bad = np.unique(raw[mapped < 0])
            raise SoftprepError(f"{path}: label values {bad.tolist()} are not in dataset.json's labels "
                                f"{self._values()}; fix the labels or dataset.json")
        return mapped.astype(np.uint8)

    def read_pair(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.read_image(sample), self.read_label(sample)
        if image.shape[:3] != label.shape:
            raise SoftprepError(f"{sample.label}: labels {label.shape} but its image {image.shape[:3]}; fix the pair")
        return image, label


def _affine_text(affine: np.ndarray) -> str:
    return "[" + "; ".join(" ".join(f"{v:g}" for v in row) for row in np.asarray(affine)[:3]) + "]"


__all__ = ["NIfTI", "load_label_table"]
