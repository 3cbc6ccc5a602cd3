"""``softprep-train predict``: colourised masks for a folder of images.

Each image is resampled to the checkpoint's training target with the store's kernel (the same
tap tables softprep built the store with), segmented, and its logits upsampled (bilinear) back to
the original size; the mask is written as a palette PNG-coloured RGB image.
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
from softprep_train.train import normalise

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@torch.no_grad()
def predict_image(model: torch.nn.Module, state: dict, image: np.ndarray, mode: str = "whole") -> np.ndarray:
    """``(H, W, 3) uint8`` image -> ``(H, W) uint8`` predicted train ids at full resolution."""
    h, w = image.shape[:2]
    plan = resampling_plan(state["kernel"], state["antialias"], (h, w), state["config"]["scale"])
    small = resize_image(image, plan.rows, plan.cols)
    device = next(model.parameters()).device
    tensor = torch.from_numpy(small).permute(2, 0, 1)[None].float().to(device)
    logits = predict_logits(model, normalise(tensor), mode, tuple(state["crop"]))
    full = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
    return full[0].argmax(0).to(torch.uint8).cpu().numpy()


def predict_folder(checkpoint: str | Path, images: str | Path, out: str | Path, mode: str = "whole",
                   device: str = "auto", progress: bool = True) -> list[Path]:
    """Write ``OUT/<name>_pred.png`` (colourised) for every image under ``images``; returns the paths."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    model, state = load_checkpoint(checkpoint, device)
    paths = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SoftprepError(f"{images}: no .png/.jpg images found")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    palette = np.asarray(state["palette"], dtype=np.uint8)
    written = []
    for path in tqdm(paths, desc="predict", unit="img", disable=None if progress else True):
        mask = predict_image(model, state, read_array(path, "RGB"), mode)
        target = out / f"{path.stem}_pred.png"
        Image.fromarray(colourise(mask, palette)).save(target)
        written.append(target)
    return written
