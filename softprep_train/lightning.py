"""Soft labels in PyTorch Lightning (the ``lightning`` extra): a ``LightningDataModule`` over a store
and a minimal ``LightningModule`` recipe with the KL loss.

::

    from lightning.pytorch import Trainer
    from softprep_train.lightning import SoftLabelDataModule, SoftLabelModule

    data = SoftLabelDataModule("STORE.zarr", scale=0.25, batch_size=8)
    model = SoftLabelModule("smp:DeepLabV3Plus/resnet50", num_classes=data.num_classes)
    Trainer(max_epochs=100).fit(model, data)

The training order is :class:`~softprep_train.data.TrainSampler`'s (shuffled per epoch from the
seed; each sample's augmentation a function of seed, epoch and position), so a run is
reproducible whatever the worker count. On a GPU, workers ship sparse soft labels and the batch
is densified on the device (``transfer_batch_to_device``).
"""

from __future__ import annotations

from types import SimpleNamespace

from softprep.errors import SoftprepError, install_hint
from softprep.store import open_store

try:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader
except ImportError:  # the message names the extra (which brings torch too); nothing else in softprep needs Lightning
    raise SoftprepError(f"softprep_train.lightning needs the lightning extra: {install_hint('lightning')}") from None

from softprep_train.config import default
from softprep_train.data import Augment, StoreDataset, TrainSampler, collate, to_device
from softprep_train.losses import LOSSES, kl_loss
from softprep_train.models import build_model
from softprep_train.data import normalise


class SoftLabelDataModule(pl.LightningDataModule):
    """Train batches (augmented, resumable order) and validation batches (stored samples) of a store.

    Args:
        store: the store's path or URL; ``scale``: a stored target (``0.25``, ``"short512"``).
        crop: ``(h, w)``; default the smallest stored size at ``scale``.
        densify: ``"auto"`` (on the device when the trainer runs on a GPU, else in the workers),
            ``"worker"`` or ``"device"``.
        cache: keep decoded samples in memory (small datasets).
        nn_sampling: how the ``nn`` labels of a ``ce-nn`` baseline are sampled (``centre``: aligned with the
            image, the default | ``floor``: torch ``nearest``).
    """

    def __init__(self, store: str, scale, batch_size: int = 8, crop: tuple[int, int] | None = None, workers: int = 2,
                 seed: int = 0, train_split: str = "train", val_split: str | None = "val", densify: str = "auto",
                 cache: bool = False, nn_sampling: str = default("nn_sampling")):
        super().__init__()
        self.store, self.scale, self.batch_size, self.workers, self.seed = str(store), scale, batch_size, workers, seed
        self.train_split, self.val_split, self.densify, self.cache, self.nn_sampling = (
            train_split, val_split, densify, cache, nn_sampling)
        opened = open_store(self.store)
        self.num_classes = opened.spec.num_classes
        sizes = opened.samples(train_split, scale).sizes
        self.crop = tuple(crop) if crop else tuple(int(v) for v in sizes.min(axis=0))
        self._mode = "worker"
        self._resume: tuple[int, int] | None = None  # (epoch, batches trained) of a checkpoint resumed from

    def setup(self, stage: str | None = None) -> None:
        on_gpu = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        self._mode = self.densify if self.densify != "auto" else ("device" if on_gpu else "worker")
        self.train_set = StoreDataset(self.store, self.train_split, self.scale, Augment(self.crop), self._mode,
                                      cache=self.cache, nn_sampling=self.nn_sampling)
        self.val_set = (StoreDataset(self.store, self.val_split, self.scale, None, self._mode, cache=self.cache,
                                     nn_sampling=self.nn_sampling) if self.val_split else None)

    def train_dataloader(self) -> DataLoader:
        sampler = TrainSampler(self.train_set, self.batch_size, self.seed, epochs=1)  # Lightning sets the epoch
        if self._resume is not None:
            sampler.resume(*self._resume)
        return ResumableLoader(self, self.train_set, batch_size=self.batch_size, sampler=sampler, num_workers=self.workers,
                               collate_fn=collate, persistent_workers=self.workers > 0)

    def state_dict(self) -> dict:
        """The data's place in training, saved in every checkpoint: the epoch and how many of its
        batches were trained on (from the trainer: Lightning fetches one batch ahead)."""
        if self.trainer is None:
            return {}
        return {"epoch": self.trainer.current_epoch,
                "batches": self.trainer.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        """Resume there: the next training loader continues that epoch at its next batch. (Lightning
        restores a data module before it builds the loaders; its own loader-state restore can come
        after the loader was built, when ``configure_optimizers`` asks for the stepping batches.)"""
        if state:
            self._resume = (int(state["epoch"]), int(state["batches"]))

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=1, num_workers=self.workers, collate_fn=collate)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        return to_device(batch, device, self.num_classes)


class ResumableLoader(DataLoader):
    """The training loader in Lightning's resumable-dataloader protocol (``state_dict`` and
    ``load_state_dict``, the data module's place in training): a run resumed mid-epoch continues
    that epoch at the next batch, the one an uninterrupted run would have seen (its augmentation
    too: each sample's is a function of seed, epoch and position), and Lightning does not warn
    that the loader cannot resume."""

    def __init__(self, data: "SoftLabelDataModule", *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._data = data

    def state_dict(self) -> dict:
        return self._data.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.sampler.resume(int(state["epoch"]), int(state["batches"]))


class SoftLabelModule(pl.LightningModule):
    """Any registered model (``build_model`` names, ``smp:ARCH/ENCODER`` included) trained with the
    paper's KL loss (``loss="kl"``) or the NN cross-entropy baseline (``"ce-nn"``); AdamW with poly
    decay over ``trainer.estimated_stepping_batches``. Logs ``train_loss`` and ``val_loss`` (KL)."""

    def __init__(self, model: str, num_classes: int, loss: str = "kl", mc: bool = True, lr: float = 2e-3,
                 weight_decay: float = 1e-4, poly_power: float = 0.9, pretrained: str | None = None):
        super().__init__()
        if loss not in LOSSES:
            raise SoftprepError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        self.save_hyperparameters()
        self.model = build_model(model, num_classes, pretrained)
        self._loss_config = SimpleNamespace(mc=mc)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, h, w)`` float in [0, 255] -> logits ``(B, C, h, w)``."""
        return self.model(normalise(image))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = LOSSES[self.hparams.loss](self(batch["image"]), batch, self._loss_config, None)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val_loss", kl_loss(self(batch["image"]), batch["soft"]), batch_size=batch["image"].shape[0])

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (1 - min(step, total) / total) ** self.hparams.poly_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


__all__ = ["SoftLabelDataModule", "SoftLabelModule"]
