"""softprep_train: train segmentation models on softprep stores with the soft-label KL loss.

Drop the pieces into your own loop::

    from softprep_train import StoreDataset, Augment, collate, to_device, normalise, kl_loss, build_model

Names are imported on first use, so ``softprep-train`` can say in one line that torch is missing.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Augment": "data", "StoreDataset": "data", "TrainSampler": "data", "collate": "data", "densify": "data",
    "finish_sample": "data", "to_device": "data",
    "evaluate": "evaluate", "iou_from_confusion": "comparison",
    "ce_nn_loss": "losses", "kl_loss": "losses",
    "MODELS": "models", "build_model": "models",
    "TrainConfig": "train", "fit": "train", "normalise": "data",
    "ToSoftLabel": "transforms", "SoftMask": "transforms", "albumentations_soft_label": "transforms",
    "ToAlignedMask": "transforms", "AlignedMask": "transforms", "albumentations_hard_label": "transforms",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'softprep_train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"softprep_train.{_EXPORTS[name]}"), name)
