"""Soft labels on the fly, without a store: a torchvision ``transforms.v2`` transform, and an
albumentations-style callable.

``ToSoftLabel`` turns an ``(image, mask)`` pair into ``(image, SoftMask)``: the image resampled
to the target with the kernel, and the ``(C, h, w)`` float soft label of the mask with the *same*
kernel, computed by the very code that builds stores (identical to a stored sample). A
:class:`SoftMask` then travels through ``v2.Compose`` like a ``tv_tensors.Mask`` does, with
kernels registered for flips, crops, pads and resizes (resizing a soft label is resampling its
planes with the same tap tables: linear, so it equals the soft label of the resized one-hot
map). Photometric transforms pass it through unchanged; geometric transforms without a kernel
here (rotations, affine, perspective, elastic) refuse it rather than desynchronise image and
label. Adopting the method is one line::

    transform = v2.Compose([ToSoftLabel(19, target=0.25), v2.RandomHorizontalFlip(), v2.RandomCrop((128, 256))])
    image, soft = transform(tv_tensors.Image(image), tv_tensors.Mask(train_ids))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import Transform
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional._geometry import _compute_resized_output_size

from softprep.errors import SoftprepError
from softprep.kernels import DEFAULT_KERNEL, axis_weights
from softprep.plan import parse_target, plan_for_size, resampling_plan
from softprep.resample import IGNORE_INDEX, resize_image, soft_label
from softprep_train.data import taps_to_matrix

#: torchvision interpolation -> softprep kernel (same semantics, tested against F.interpolate).
KERNEL_OF = {InterpolationMode.BILINEAR: "bilinear", InterpolationMode.BICUBIC: "bicubic",
             InterpolationMode.NEAREST: "nearest", InterpolationMode.NEAREST_EXACT: "nearest",
             InterpolationMode.BOX: "area"}


class SoftMask(tv_tensors.TVTensor):
    """A ``(C, H, W)`` float soft label: per pixel, class weights summing to its valid fraction."""

    @classmethod
    def _wrap(cls, tensor: torch.Tensor) -> "SoftMask":
        return tensor.as_subclass(cls)

    def __new__(cls, data: Any, *, dtype=None, device=None, requires_grad: bool | None = None) -> "SoftMask":
        tensor = cls._to_tensor(data, dtype=dtype, device=device, requires_grad=requires_grad)
        if tensor.ndim != 3:
            raise ValueError(f"a SoftMask is (C, H, W), got shape {tuple(tensor.shape)}")
        return cls._wrap(tensor)


def soft_label_pair(image: np.ndarray, mask: np.ndarray, num_classes: int, target=None, kernel: str = DEFAULT_KERNEL,
                    antialias: bool = False, ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W, 3) uint8`` image and ``(H, W)`` train-id mask -> ``(h, w, 3) uint8`` image and
    ``(C, h, w) float32`` soft label at ``target`` (``None``: full resolution, one-hot)."""
    height, width = mask.shape
    plan = resampling_plan(kernel, antialias, (height, width), target if target is not None else 1.0)
    soft = soft_label(np.asarray(mask, dtype=np.uint8), plan.rows, plan.cols, num_classes, ignore_index)
    return resize_image(image, plan.rows, plan.cols), soft.dense()


class _ToTarget(Transform):
    """Bring an image to ``target`` with ``kernel`` (``tv_tensors.Image``, a plain tensor or a PIL
    image); subclasses say what becomes of a ``tv_tensors.Mask``."""

    def __init__(self, target=None, kernel: str = DEFAULT_KERNEL, antialias: bool = False):
        super().__init__()
        self.kernel, self.antialias = kernel, antialias
        self.target = parse_target(target) if target is not None else None

    def _plan(self, size: tuple[int, int]):
        return resampling_plan(self.kernel, self.antialias, size, self.target if self.target is not None else 1.0)

    def _mask(self, mask: torch.Tensor) -> Any:
        raise NotImplementedError

    def transform(self, inpt: Any, params: dict) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return self._mask(inpt.as_subclass(torch.Tensor).squeeze(0) if inpt.ndim == 3 else inpt.as_subclass(torch.Tensor))
        if isinstance(inpt, tv_tensors.Image) or F._utils.is_pure_tensor(inpt):
            image = inpt.as_subclass(torch.Tensor)
            plan = self._plan(tuple(image.shape[-2:]))
            small = resize_image(image.permute(1, 2, 0).numpy(), plan.rows, plan.cols)
            out = torch.from_numpy(small).permute(2, 0, 1).contiguous()
            return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.Image) else out
        if hasattr(inpt, "size") and hasattr(inpt, "convert"):  # a PIL image
            from PIL import Image

            array = np.asarray(inpt.convert("RGB"))
            plan = self._plan(array.shape[:2])
            return Image.fromarray(resize_image(array, plan.rows, plan.cols))
        return inpt


class ToSoftLabel(_ToTarget):
    """``(image, Mask)`` -> ``(image, SoftMask)`` at ``target`` (a factor, ``"short512"``, ``"fit512x1024"``
    or None for full resolution), both resampled with ``kernel``. Images are ``tv_tensors.Image``
    (``(3, H, W) uint8``) or PIL images; masks ``tv_tensors.Mask`` of train ids (``ignore_index`` unlabelled)."""

    def __init__(self, num_classes: int, target=None, kernel: str = DEFAULT_KERNEL, antialias: bool = False,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__(target, kernel, antialias)
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def _mask(self, mask: torch.Tensor) -> "SoftMask":
        plan = self._plan(tuple(mask.shape))
        soft = soft_label(mask.numpy().astype(np.uint8), plan.rows, plan.cols, self.num_classes, self.ignore_index)
        return SoftMask(torch.from_numpy(soft.dense()))


class AlignedMask(tv_tensors.Mask):
    """A hard label map (train ids) that ``v2`` resizes at pixel centres (``nearest-exact``), so it
    stays aligned with a smoothly resized image; crops, flips and pads are ``tv_tensors.Mask``'s own.
    (A plain ``Mask`` is resized by torch ``nearest``: its labels move ``(s - 1) / 2`` px up-left.)"""


class ToAlignedMask(_ToTarget):
    """``(image, Mask)`` -> ``(image, AlignedMask)`` at ``target``: the image resampled with ``kernel``,
    the mask sampled at pixel centres (hard labels for cross-entropy, aligned with the image)."""

    def _mask(self, mask: torch.Tensor) -> AlignedMask:
        return _aligned_resize(mask, self._plan(tuple(mask.shape)).size)


def _aligned_resize(mask: torch.Tensor, size: tuple[int, int]) -> AlignedMask:
    """``(..., H, W)`` hard labels sampled at the centres of ``size``'s pixels (``nearest-exact``)."""
    height, width = mask.shape[-2:]
    rows = torch.tensor(axis_weights("nearest-exact", height, size[0]).index[:, 0])
    cols = torch.tensor(axis_weights("nearest-exact", width, size[1]).index[:, 0])
    return AlignedMask(mask.as_subclass(torch.Tensor).index_select(-2, rows).index_select(-1, cols))


def _aligned_resize_kernel(mask, size, interpolation=None, max_size=None, antialias=None):
    out_size = _compute_resized_output_size(tuple(mask.shape[-2:]), size, max_size)
    return _aligned_resize(mask, tuple(out_size))


def _aligned_resized_crop_kernel(mask, top: int, left: int, height: int, width: int, size, interpolation=None,
                                 antialias=None):
    return _aligned_resize(F.crop(tv_tensors.Mask(mask.as_subclass(torch.Tensor)), top, left, height, width), tuple(size))


F.register_kernel(functional=F.resize, tv_tensor_cls=AlignedMask)(_aligned_resize_kernel)
F.register_kernel(functional=F.resized_crop, tv_tensor_cls=AlignedMask)(_aligned_resized_crop_kernel)


def albumentations_hard_label(target=None, kernel: str = DEFAULT_KERNEL, antialias: bool = False):
    """An albumentations-style callable: ``f(image=HxWx3 uint8, mask=HxW) -> {"image", "mask"}`` with
    ``mask`` the ``(h, w) uint8`` hard labels sampled at pixel centres (aligned with the image, which
    is resampled with ``kernel``): what ``A.Resize(mask_interpolation=cv2.INTER_NEAREST_EXACT)`` does."""

    def call(**data):
        mask = np.asarray(data["mask"])
        plan = resampling_plan(kernel, antialias, mask.shape[:2], target if target is not None else 1.0)
        image = resize_image(np.asarray(data["image"]), plan.rows, plan.cols)
        return {**data, "image": image, "mask": mask[np.ix_(plan.nearest_rows.index[:, 0], plan.nearest_cols.index[:, 0])]}

    return call


def albumentations_soft_label(num_classes: int, target=None, kernel: str = DEFAULT_KERNEL, antialias: bool = False):
    """An albumentations-style callable: ``f(image=HxWx3 uint8, mask=HxW) -> {"image", "mask"}`` with
    ``mask`` the ``(h, w, C) float32`` soft label (channels last, as albumentations keeps masks)."""

    def call(**data):
        image, soft = soft_label_pair(data["image"], data["mask"], num_classes, target, kernel, antialias)
        return {**data, "image": image, "mask": np.ascontiguousarray(soft.transpose(1, 2, 0))}

    return call


# ---------------------------------------------------------------- SoftMask kernels for v2 functionals


def _soft_kernel(functional):
    """Register a kernel of ``functional`` for :class:`SoftMask`; its output stays a SoftMask."""
    def register(kernel):
        def wrapped(soft, *args, **kwargs):
            return SoftMask(kernel(soft.as_subclass(torch.Tensor), *args, **kwargs))
        F.register_kernel(functional=functional, tv_tensor_cls=SoftMask)(wrapped)
        return kernel
    return register


@_soft_kernel(F.horizontal_flip)
def _horizontal_flip(soft: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return soft.flip(-1)


@_soft_kernel(F.vertical_flip)
def _vertical_flip(soft: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return soft.flip(-2)


@_soft_kernel(F.crop)
def _crop(soft: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """Crop; outside the label is weight 0 (ignore), as padding."""
    out = soft.new_zeros((soft.shape[0], height, width))
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, soft.shape[1]), min(left + width, soft.shape[2])
    if y1 > y0 and x1 > x0:
        out[:, y0 - top:y1 - top, x0 - left:x1 - left] = soft[:, y0:y1, x0:x1]
    return out


@_soft_kernel(F.center_crop)
def _center_crop(soft: torch.Tensor, output_size: list[int]) -> torch.Tensor:
    height, width = (output_size[0], output_size[0]) if len(output_size) == 1 else output_size
    return _crop(soft, round((soft.shape[1] - height) / 2), round((soft.shape[2] - width) / 2), height, width)


@_soft_kernel(F.pad)
def _pad(soft: torch.Tensor, padding: list[int], fill=None, padding_mode: str = "constant") -> torch.Tensor:
    """Constant padding with weight 0 (ignore): the only padding that invents no label."""
    if padding_mode != "constant" or fill not in (None, 0):
        raise SoftprepError(f"a SoftMask pads with weight 0 (ignore) only; got padding_mode={padding_mode!r}, fill={fill!r}")
    left, top, right, bottom = (list(padding) * 4)[:4] if len(padding) == 1 else (
        (padding[0], padding[1], padding[0], padding[1]) if len(padding) == 2 else padding)
    return torch.nn.functional.pad(soft, (left, right, top, bottom))


@_soft_kernel(F.resize)
def _resize(soft: torch.Tensor, size, interpolation=InterpolationMode.BILINEAR, max_size=None, antialias=True) -> torch.Tensor:
    """Resample every class plane with the tap tables of ``interpolation`` (softprep's kernels)."""
    height, width = soft.shape[-2:]
    out_h, out_w = _compute_resized_output_size((height, width), size, max_size)
    mode = InterpolationMode(interpolation) if not isinstance(interpolation, InterpolationMode) else interpolation
    kernel = KERNEL_OF.get(mode)
    if kernel is None:
        raise SoftprepError(f"no softprep kernel for interpolation {mode}; use bilinear, bicubic, nearest or box")
    plan = plan_for_size(kernel, bool(antialias) and kernel in ("bilinear", "bicubic"), (height, width), (out_h, out_w))
    rows = taps_to_matrix(torch.from_numpy(plan.rows.index), torch.from_numpy(plan.rows.weight).float(), height)
    cols = taps_to_matrix(torch.from_numpy(plan.cols.index), torch.from_numpy(plan.cols.weight).float(), width)
    out = torch.einsum("yh,chw,xw->cyx", rows.to(soft.device), soft.float(), cols.to(soft.device))
    if kernel == "bicubic":  # negative lobes: keep a distribution (clamp, rescale to the clipped valid fraction)
        valid = out.sum(0, keepdim=True).clamp(0, 1)
        out = out.clamp_min(0)
        total = out.sum(0, keepdim=True)
        out = torch.where(total > 0, out * valid / total.clamp_min(1e-12), out)
    return out


@_soft_kernel(F.resized_crop)
def _resized_crop(soft: torch.Tensor, top: int, left: int, height: int, width: int, size,
                  interpolation=InterpolationMode.BILINEAR, antialias=True) -> torch.Tensor:
    return _resize(_crop(soft, top, left, height, width), size, interpolation, antialias=antialias)


def _refuse(name: str):
    def kernel(soft, *args, **kwargs):
        raise SoftprepError(f"{name} has no SoftMask kernel in softprep (it would move the image but not the soft "
                            "label); use flips, crops, pads and resizes")
    return kernel


for _functional in (F.rotate, F.affine, F.perspective, F.elastic):
    F.register_kernel(functional=_functional, tv_tensor_cls=SoftMask)(_refuse(_functional.__name__))


__all__ = ["AlignedMask", "SoftMask", "ToAlignedMask", "ToSoftLabel", "albumentations_hard_label",
           "albumentations_soft_label", "soft_label_pair"]
