"""Losses: the paper's KL divergence to soft labels (eq. 4) and the NN cross-entropy baseline.

A soft label ``y (B, C, h, w)`` sums per pixel to its valid fraction ``v`` in [0, 1] (0 on
ignore and crop padding). The KL loss compares the prediction with the normalised target
``y / v``, per pixel ``KL = sum_c (y_c / v) * (log(y_c / v) - log p_c)``, and averages over pixels
weighted by ``v``: ``loss = sum_i v_i KL_i / sum_i v_i``. Per pixel, ``KL = CE(y/v, p) - H(y/v)``.

``mc=False`` (the paper's Table III "no MC") keeps only single-class pixels: those whose dominant
class holds at least ``1 - SINGLE_CLASS_EPS`` of the pixel's valid weight. ``SINGLE_CLASS_EPS =
1e-3``: a mixed pixel holds at least one whole source pixel of a second class (1/64 of the window
for area at 1/8, more for bilinear), far above it, while float rounding in non-exact stores
(~1e-7) stays far below it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from softprep.softlabel import IGNORE_INDEX

SINGLE_CLASS_EPS = 1e-3


def kl_loss(logits: torch.Tensor, target: torch.Tensor, mc: bool = True,
            class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 4 KL divergence, mean over valid pixels weighted by their valid fraction.

    Args:
        logits: ``(B, C, h, w)`` float (volumes: ``(B, C, x, y, z)``).
        target: ``(B, C, h, w)`` soft label (per-pixel sums in [0, 1]), the logits' shape.
        mc: include multi-class pixels (``False``: single-class pixels only).
        class_weights: optional ``(C,)``; a pixel is weighted by ``sum_c (y_c / v) * w_c``.

    Returns:
        scalar tensor (0 when no pixel counts).
    """
    log_p = F.log_softmax(_at_least_float32(logits), dim=1)
    target = _at_least_float32(target)
    valid = target.sum(dim=1)  # (B, h, w)
    normalised = target / valid.clamp_min(1e-12).unsqueeze(1)
    log_target = torch.log(normalised.clamp_min(1e-30))
    per_pixel = (normalised * (log_target - log_p)).sum(dim=1)
    weight = valid
    if not mc:
        weight = weight * (normalised.amax(dim=1) >= 1 - SINGLE_CLASS_EPS)
    if class_weights is not None:
        weight = weight * (normalised * class_weights.to(normalised).view(1, -1, *[1] * (normalised.ndim - 2))).sum(dim=1)
    total = weight.sum()
    return (weight * per_pixel).sum() / total.clamp_min(1e-12)


def ce_nn_loss(logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy on hard NN labels ``(B, h, w) int64`` (255 = ignore): the usual baseline."""
    weight = class_weights.to(logits.device, torch.float32) if class_weights is not None else None
    if not (labels != IGNORE_INDEX).any():
        return logits.sum() * 0.0
    return F.cross_entropy(_at_least_float32(logits), labels, weight=weight, ignore_index=IGNORE_INDEX)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """AMP logits (bf16/fp16) are upcast for the loss; float64 stays float64 (gradient checks)."""
    return x if x.dtype == torch.float64 else x.float()


#: The loss registry: name -> ``f(logits, batch, config, class_weights)``; ``fit --loss`` chooses from it.
LOSSES = {
    "kl": lambda logits, batch, config, weights: kl_loss(logits, batch["soft"], config.mc, weights),
    "ce-nn": lambda logits, batch, config, weights: ce_nn_loss(logits, batch["nn"], weights),
}
