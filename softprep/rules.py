"""How other libraries downsample a label map: one registry of *rules*, each calling the real library.

A rule is ``apply(image, mask, size) -> (image, mask)``: a ``(H, W, 3) uint8`` colour image and a
``(H, W) uint8`` train-id mask (255 = ignore) brought to ``size = (h, w)`` the way that library's
default (or named) mask path does it. ``softprep audit`` measures what each rule does to the labels
against the exact area soft label of the same size (:mod:`softprep.audit`). A rule whose library
is not installed is listed with the command that installs it; nothing here is reimplemented from
reading the library, every rule calls it.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable

import numpy as np

from softprep.errors import SoftprepError

Size = tuple[int, int]
Apply = Callable[[np.ndarray, np.ndarray, Size], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Rule:
    """One library's way of downsampling a mask.

    Attributes:
        name: registry name (``--rule``).
        what: the call it makes, in the library's own terms.
        requires: import names the rule needs.
        install: the command that installs them.
        apply: ``(image, mask, (h, w)) -> (image, mask)``.
    """

    name: str
    what: str
    requires: tuple[str, ...]
    install: str
    apply: Apply

    def missing(self) -> list[str]:
        """The required modules that cannot be imported here."""
        return [module for module in self.requires if importlib.util.find_spec(module) is None]


# ----------------------------------------------------------------------------- the libraries' calls


def _torch(mode: str) -> Apply:
    def apply(image, mask, size):
        import torch
        import torch.nn.functional as F

        labels = F.interpolate(torch.from_numpy(mask)[None, None], size=size, mode=mode)[0, 0]
        colour = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=size, mode="bilinear",
                               antialias=True)[0]
        return colour.round().clamp(0, 255).byte().permute(1, 2, 0).numpy(), labels.numpy()
    return apply


def _pil(image, mask, size):
    from PIL import Image

    h, w = size
    return (np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR)),
            np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST)))


def _cv2(flag: str) -> Apply:
    def apply(image, mask, size):
        import cv2

        h, w = size
        return (cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA),
                cv2.resize(mask, (w, h), interpolation=getattr(cv2, flag)))
    return apply


def _torchvision(image, mask, size):
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    colour, labels = v2.Resize(size)(tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
                                     tv_tensors.Mask(torch.from_numpy(mask)))
    return colour.permute(1, 2, 0).numpy(), labels.numpy()


def _albumentations(**options) -> Apply:
    def apply(image, mask, size):
        import albumentations

        out = albumentations.Resize(*size, **options)(image=image, mask=mask)
        return out["image"], out["mask"]
    return apply


def _kornia(image, mask, size):
    import kornia.augmentation as K
    import torch

    sequence = K.AugmentationSequential(K.Resize(size), data_keys=["input", "mask"])
    colour, labels = sequence(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
                              torch.from_numpy(mask)[None, None].float())
    colour = (colour[0] * 255).round().clamp(0, 255).byte().permute(1, 2, 0)
    return colour.numpy(), labels[0, 0].round().clamp(0, 255).byte().numpy()


def _monai(image, mask, size):
    import torch
    from monai.transforms import Resize

    labels = Resize(size, mode="nearest")(torch.from_numpy(mask)[None].float())
    colour = Resize(size, mode="area")(torch.from_numpy(image).permute(2, 0, 1).float())
    return (np.asarray(colour).round().clip(0, 255).astype(np.uint8).transpose(1, 2, 0),
            np.asarray(labels)[0].round().clip(0, 255).astype(np.uint8))


RULES: dict[str, Rule] = {rule.name: rule for rule in (
    Rule("torch-nearest", "torch F.interpolate(mode='nearest')", ("torch",), "pip install torch", _torch("nearest")),
    Rule("torch-nearest-exact", "torch F.interpolate(mode='nearest-exact')", ("torch",), "pip install torch",
         _torch("nearest-exact")),
    Rule("pil-nearest", "PIL Image.resize(NEAREST)", ("PIL",), "pip install pillow", _pil),
    Rule("cv2-nearest", "cv2.resize(INTER_NEAREST)", ("cv2",), "pip install opencv-python-headless", _cv2("INTER_NEAREST")),
    Rule("cv2-nearest-exact", "cv2.resize(INTER_NEAREST_EXACT)", ("cv2",), "pip install opencv-python-headless",
         _cv2("INTER_NEAREST_EXACT")),
    Rule("torchvision-v2", "torchvision.transforms.v2.Resize on a tv_tensors.Mask (its default)", ("torch", "torchvision"),
         "pip install torchvision", _torchvision),
    Rule("albumentations", "albumentations.Resize (default mask_interpolation)", ("albumentations",),
         "pip install albumentations", _albumentations()),
    Rule("albumentations-area", "albumentations.Resize(area_for_downscale='image_mask')", ("albumentations",),
         "pip install albumentations", _albumentations(area_for_downscale="image_mask")),
    Rule("kornia", "kornia AugmentationSequential(Resize, data_keys=['input', 'mask'])", ("torch", "kornia"),
         "pip install kornia", _kornia),
    Rule("monai", "monai.transforms.Resize(mode='nearest')", ("torch", "monai"), "pip install monai", _monai),
)}


def user_rule(spec: str) -> Rule:
    """A rule from a user's ``module:callable`` taking ``(image, mask)`` and returning ``(image, mask)``
    at whatever size their pipeline makes (the module is imported from the working folder too).

    Raises:
        SoftprepError: the module or the callable cannot be found (one line).
    """
    import sys

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SoftprepError(f"--transform {spec!r}: expected module:callable, e.g. my_pipeline:resize_pair")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except Exception as error:  # noqa: BLE001 - an import error of any kind in the user's module: one line
        raise SoftprepError(f"--transform {spec}: cannot load it ({type(error).__name__}: {error}); check the module "
                            "is importable from this folder and defines the callable") from None
    if not callable(function):
        raise SoftprepError(f"--transform {spec}: {attribute} is not callable")
    return Rule(spec, f"{spec}(image, mask)", (), "", lambda image, mask, size: function(image, mask))


__all__ = ["RULES", "Rule", "user_rule"]
