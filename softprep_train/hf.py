"""Soft labels for Hugging Face ``transformers`` segmentation models (the ``hf`` extra).

SegFormer (and most HF segmentation heads) predict logits at 1/4 of the input. The soft label is
brought to the logits' size with the **area** kernel, not the logits to the label's: area of an
area-resampled soft label is the soft label of the coarser size (exactly, at integer factors:
box filters compose), so the loss compares the prediction with the same class distributions
softprep would have stored at that resolution, and no mass is lost or invented.

::

    from transformers import SegformerForSemanticSegmentation
    from softprep_train import kl_loss, normalise
    from softprep_train.hf import soft_label_for_logits

    logits = model(pixel_values=normalise(batch["image"])).logits          # (B, C, h/4, w/4)
    loss = kl_loss(logits, soft_label_for_logits(batch["soft"], logits.shape[-2:]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_label_for_logits(soft: torch.Tensor, size) -> torch.Tensor:
    """``(B, C, h, w)`` soft label -> ``(B, C, h', w')`` at the logits' size, area-resampled (torch's
    ``mode="area"``: the exact box filter where ``h / h'`` and ``w / w'`` are integers). Each pixel
    still sums to its valid fraction."""
    if tuple(soft.shape[-2:]) == tuple(size):
        return soft
    return F.interpolate(soft, size=tuple(size), mode="area")


def hard_label_for_logits(labels: torch.Tensor, size) -> torch.Tensor:
    """``(B, h, w)`` hard labels (255 = ignore) -> ``(B, h', w')`` at the logits' size, sampled at pixel
    centres (torch's ``nearest-exact``), so a ``ce-nn`` baseline stays aligned with the image (torch's
    default ``nearest`` would move them ``(s - 1) / 2`` px up-left)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest-exact")[:, 0].to(labels.dtype)


__all__ = ["hard_label_for_logits", "soft_label_for_logits"]
