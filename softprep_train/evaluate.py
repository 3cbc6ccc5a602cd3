"""``softprep-train eval``: full-resolution mIoU, as the paper's Table I reports it.

The model sees each image at its training target (from the store); its logits are upsampled
(bilinear) to that image's own original label size and compared with the original
full-resolution labels: the store's ``nn`` map at target ``1.0`` (identical to the label file)
when the store has it, else the label files under ``root``. The confusion matrix is accumulated on the device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from softprep.datasets.base import stored_sample
from softprep.datasets import get_dataset
from softprep.errors import SoftprepError
from softprep.plan import target_name
from softprep.store import Store, open_store
from softprep.verify import check_source
from softprep_train.comparison import iou_from_confusion  # noqa: F401 - re-exported
from softprep.softlabel import IGNORE_INDEX
from softprep_train.checkpoint import load_checkpoint_state
from softprep_train.models import build_model
from softprep_train.data import normalise

FULL = "1.0"


@dataclass
class Report:
    """Per-class IoU (NaN for a class absent from both labels and predictions) and their mean."""

    classes: list[str]
    confusion: np.ndarray  # (C, C) int64, rows = ground truth, columns = prediction
    model: str
    target: str
    per_image: np.ndarray | None = None  # (N, C, C) int64: each image's confusion (bootstraps over images)

    @property
    def iou(self) -> np.ndarray:
        return iou_from_confusion(self.confusion)

    @property
    def miou(self) -> float:
        return float(np.nanmean(self.iou))

    def table(self) -> str:
        """Table I layout: model, resolution, one column per class (IoU %, one decimal), mIoU."""
        header = ["model", "target", *self.classes, "mIoU"]
        values = [self.model, self.target, *("-" if np.isnan(v) else f"{100 * v:.1f}" for v in self.iou), f"{100 * self.miou:.1f}"]
        return "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n| " + " | ".join(values) + " |\n"

    def to_json(self) -> dict:
        return {"model": self.model, "target": self.target, "classes": self.classes,
                "iou": [None if np.isnan(v) else float(v) for v in self.iou], "miou": self.miou,
                "confusion": self.confusion.tolist(),
                **({"per_image_confusion": self.per_image.tolist()} if self.per_image is not None else {})}


def accumulate(confusion: torch.Tensor, prediction: torch.Tensor, label: torch.Tensor) -> None:
    """Add ``(H, W)`` prediction/label pairs to a ``(C, C)`` device confusion matrix (ignore skipped)."""
    c = confusion.shape[0]
    valid = label != IGNORE_INDEX
    confusion += torch.bincount(label[valid].long() * c + prediction[valid].long(), minlength=c * c).view(c, c)


def predict_logits(model: torch.nn.Module, image: torch.Tensor, mode: str, window: tuple[int, int]) -> torch.Tensor:
    """Logits ``(1, C, h, w)`` for a normalised ``(1, 3, h, w)`` image, whole or by sliding window."""
    if mode == "whole":
        return model(image)
    if mode != "slide":
        raise SoftprepError(f"unknown inference mode {mode!r}; use whole or slide")
    _, _, h, w = image.shape
    wh, ww = min(window[0], h), min(window[1], w)
    stride_h, stride_w = max(1, wh * 2 // 3), max(1, ww * 2 // 3)
    ys = sorted({*range(0, h - wh + 1, stride_h), h - wh})
    xs = sorted({*range(0, w - ww + 1, stride_w), w - ww})
    logits, count = None, torch.zeros((1, 1, h, w), device=image.device)
    for y in ys:
        for x in xs:
            part = model(image[:, :, y:y + wh, x:x + ww])
            if logits is None:
                logits = torch.zeros((1, part.shape[1], h, w), device=image.device)
            logits[:, :, y:y + wh, x:x + ww] += part.float()
            count[:, :, y:y + wh, x:x + ww] += 1
    return logits / count


def load_checkpoint(path: str | Path, device: torch.device, verify: bool = True) -> tuple[torch.nn.Module, dict]:
    """The model of a checkpoint (eval mode, on ``device``) and the checkpoint dict (``verify``: its checksum)."""
    state = load_checkpoint_state(path, device, verify)
    model = build_model(state["config"]["model"], state["num_classes"], in_channels=state.get("in_channels", 3))
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as error:  # another model's or class count's weights
        first = str(error).strip().splitlines()
        detail = next((line.strip() for line in first if "size mismatch" in line or "Missing key" in line), first[0] if first else "")
        raise SoftprepError(f"{path}: its weights do not fit {state['config']['model']} with {state['num_classes']} "
                            f"classes ({detail[:160]}); the file is damaged or edited") from None
    return model.to(device).eval(), state


def full_resolution_labels(store: Store, split: str, root: str | Path | None):
    """A function ``index -> (H, W) uint8`` original train ids: from the store's target 1.0, or from ``root``.

    A ``root`` is first checked to be the dataset the store was built from (ids, sizes, label-file
    digests), and each label read from it must have the class counts the store recorded.

    Raises:
        SoftprepError: no source of labels, or a ``root`` whose labels are not the store's (one line).
    """
    dataset = get_dataset(store.spec.dataset, root) if root is not None else None
    if dataset is not None:
        check_source(store, split, dataset)
    if FULL in store.targets:
        view = store.samples(split, FULL)
        return lambda i: view[i].nn()
    if dataset is None:
        raise SoftprepError(f"{store.path}: has no target 1.0 to read full-resolution labels from; pass --root DATA "
                            "(the dataset folder) or build the store with --scales ... 1.0")
    spec, counts = store.spec.splits[split], store.counts(split)

    def read(i: int) -> np.ndarray:
        label = dataset.read_label(stored_sample(dataset, spec, i))
        if not np.array_equal(np.bincount(label.ravel(), minlength=256)[:len(counts[i])], counts[i]):
            raise SoftprepError(f"{dataset.root / spec.labels[i]}: its class counts differ from those {store.path} "
                                "recorded; pass the --root the store was built from")
        return label

    return read


@torch.no_grad()
def image_confusions(model: torch.nn.Module, pairs: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int,
                     mode: str = "whole", window: tuple[int, int] | None = None, device: torch.device | str = "cpu",
                     batch_size: int = 8) -> np.ndarray:
    """``(N, C, C) int64`` confusion matrix of each image (rows = ground truth): the model sees the
    ``(h, w, 3) uint8`` image, its logits are upsampled (bilinear) to the ``(H, W) uint8`` label's size.

    Consecutive images of one size go through the model together (``batch_size``, whole mode only).
    """
    model.eval()
    out = []
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def flush():
        images = torch.stack([torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im, _ in pending])
        images = normalise(images.float().to(device))
        logits = model(images) if mode == "whole" else torch.cat([predict_logits(model, im[None], mode, window)
                                                                  for im in images])
        for (_, label), one in zip(pending, logits):
            label_t = torch.from_numpy(np.ascontiguousarray(label)).to(device)
            full = F.interpolate(one[None].float(), size=label_t.shape, mode="bilinear", align_corners=False)
            confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)
            accumulate(confusion, full[0].argmax(0), label_t)
            out.append(confusion.cpu().numpy())
        pending.clear()

    for image, label in pairs:
        if pending and (image.shape != pending[0][0].shape or len(pending) >= batch_size or mode != "whole"):
            flush()
        pending.append((image, label))
    if pending:
        flush()
    return np.stack(out) if out else np.zeros((0, num_classes, num_classes), np.int64)


def evaluate(checkpoint: str | Path, store_path: str | Path, split: str = "val", root: str | Path | None = None,
             mode: str = "whole", device: str = "auto", progress: bool = True, verify: bool = True) -> Report:
    """Full-resolution confusion matrices (per image and summed) and IoU of a checkpoint on a split of a store."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    model, state = load_checkpoint(checkpoint, device, verify)
    target = target_name(state["config"]["scale"])
    store = open_store(store_path)
    if store.classes != state["classes"]:
        raise SoftprepError(f"{store_path}: classes differ from the checkpoint's; evaluate on a store of the same dataset")
    view = store.samples(split, target)
    if view.sizes.shape[1] != 2:
        raise SoftprepError(f"{store_path}: eval scores 2-D images at full resolution; split {split!r} holds volumes, which "
                            "it does not score yet (the MONAI adapter, softprep_train.monai, feeds MONAI's metrics)")
    labels = full_resolution_labels(store, split, root)
    pairs = ((view[i].image, labels(i)) for i in tqdm(range(len(view)), desc="eval", unit="img",
                                                       disable=None if progress else True))
    per_image = image_confusions(model, pairs, store.spec.num_classes, mode, tuple(state["crop"]), device, batch_size=1)
    return Report(store.classes, per_image.sum(0), state["config"]["model"], target, per_image)


def save_report(report: Report, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report.to_json(), indent=2))
    return path
