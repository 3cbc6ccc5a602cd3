"""softprep_train: train segmentation models on softprep stores with the soft-label KL loss.

Drop the pieces into your own loop::

    from softprep_train import StoreDataset, Augment, kl_loss, build_model
"""

from softprep_train.data import Augment, StoreDataset, TrainSampler, collate, densify, finish_sample, to_device
from softprep_train.evaluate import evaluate, iou_from_confusion
from softprep_train.losses import ce_nn_loss, kl_loss
from softprep_train.models import MODELS, build_model
from softprep_train.train import TrainConfig, fit

__all__ = [
    "Augment", "StoreDataset", "TrainSampler", "collate", "densify", "finish_sample", "to_device",
    "evaluate", "iou_from_confusion", "ce_nn_loss", "kl_loss", "MODELS", "build_model", "TrainConfig", "fit",
]
