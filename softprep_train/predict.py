"""``softprep-train predict``: colourised masks for a folder of images.

Each image is resampled to the checkpoint's training target with the store's colour kernel (the same
tap tables softprep built the store with), segmented, and its logits upsampled (bilinear) back to
the original size; masks are written as colour, train-id and (Cityscapes) label-id PNGs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from softprep.datasets.base import read_array
from softprep.errors import SoftprepError
from softprep.plan import resampling_plan
from softprep.resample import resize_image
from softprep.show import colourise
from softprep_train.evaluate import load_checkpoint, predict_logits
from softprep_train.data import normalise

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@torch.no_grad()
def predict_image(model: torch.nn.Module, state: dict, image: np.ndarray, mode: str = "whole") -> np.ndarray:
    """``(H, W, 3) uint8`` image -> ``(H, W) uint8`` predicted train ids at full resolution."""
    h, w = image.shape[:2]
    plan = resampling_plan(colour_kernel(state), state["antialias"], (h, w), state["config"]["scale"])
    small = resize_image(image, plan.rows, plan.cols)
    device = next(model.parameters()).device
    tensor = torch.from_numpy(small).permute(2, 0, 1)[None].float().to(device)
    logits = predict_logits(model, normalise(tensor), mode, tuple(state["crop"]))
    full = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
    return full[0].argmax(0).to(torch.uint8).cpu().numpy()


def colour_kernel(state: dict) -> str:
    """The kernel the checkpoint's colour images were resampled with: the store's colour kernel
    (``--image-kernel`` stores differ from their label kernel); older checkpoints: the label kernel."""
    return state.get("store_spec", {}).get("image_kernel") or state["kernel"]


def label_id_table(dataset: str | None) -> np.ndarray | None:
    """The dataset adapter's train id -> official label id table (Cityscapes), or None."""
    from softprep.datasets import DATASETS

    adapter = DATASETS.get(dataset or "")
    return None if adapter is None else adapter.train_id_to_label_id


def predict_folder(checkpoint: str | Path, images: str | Path, out: str | Path, mode: str = "whole",
                   device: str = "auto", progress: bool = True, verify: bool = True) -> list[Path]:
    """For every image under ``images``, write into ``out`` at the same relative folder:
    ``<name>_pred.png`` (colourised), ``<name>_trainIds.png`` (train ids, 8-bit) and, for Cityscapes,
    ``<name>_labelIds.png`` (official label ids, as cityscapesScripts' evaluator reads them).
    Returns the colourised paths."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    model, state = load_checkpoint(checkpoint, device, verify)
    images = Path(images)
    paths = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SoftprepError(f"{images}: no .png/.jpg images found")
    out = Path(out)
    palette = np.asarray(state["palette"], dtype=np.uint8)
    label_ids = label_id_table(state.get("dataset"))
    written = []
    for path in tqdm(paths, desc="predict", unit="img", disable=None if progress else True):
        mask = predict_image(model, state, read_array(path, "RGB"), mode)
        folder = out / path.parent.relative_to(images)
        folder.mkdir(parents=True, exist_ok=True)
        stem = path.stem.removesuffix("_leftImg8bit")
        Image.fromarray(colourise(mask, palette)).save(folder / f"{stem}_pred.png")
        Image.fromarray(mask).save(folder / f"{stem}_trainIds.png")
        if label_ids is not None:
            Image.fromarray(label_ids[mask]).save(folder / f"{stem}_labelIds.png")
        written.append(folder / f"{stem}_pred.png")
    return written
