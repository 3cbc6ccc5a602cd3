"""The doors into trainers people already run, each with the real library on CPU: Lightning
(fast_dev_run, a loss that falls, a checkpoint that resumes)."""

from __future__ import annotations

import pytest
import torch

from softprep.build import build
from softprep.datasets import get_dataset


@pytest.fixture(scope="module")
def store(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("integrations") / "s.zarr"
    build(get_dataset("cityscapes", demo_root), out, [0.25, 0.5], jobs=1)
    return str(out)


class _Losses:
    """A Lightning callback collecting every training step's loss."""

    def __new__(cls):
        import lightning.pytorch as pl

        class Collect(pl.Callback):
            def __init__(self):
                self.losses = []

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                self.losses.append(float(outputs["loss"]))

        return Collect()


def test_lightning_fast_dev_run_a_falling_loss_and_a_resumed_checkpoint(store, tmp_path):
    pl = pytest.importorskip("lightning.pytorch", reason="needs the lightning extra: pip install 'softprep[lightning]'")
    from softprep_train.lightning import SoftLabelDataModule, SoftLabelModule

    torch.manual_seed(0)
    data = SoftLabelDataModule(store, scale=0.5, batch_size=2, workers=0, seed=1)  # 6 images: 3 batches an epoch
    assert data.num_classes == 19 and data.crop == (32, 64)
    module = SoftLabelModule("unet_small", data.num_classes, lr=1e-2)
    quick = pl.Trainer(fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False)
    quick.fit(module, data)
    assert quick.global_step == 2

    collect = _Losses()
    trainer = pl.Trainer(max_steps=40, accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[collect],
                         default_root_dir=tmp_path, num_sanity_val_steps=0, limit_val_batches=2)
    trainer.fit(module, data)
    losses = collect.losses
    assert len(losses) == 40 and sum(losses[-5:]) < 0.7 * sum(losses[:5]), losses
    checkpoint = tmp_path / "step40.ckpt"
    trainer.save_checkpoint(checkpoint)

    resumed = pl.Trainer(max_steps=44, accelerator="cpu", logger=False, enable_progress_bar=False,
                         default_root_dir=tmp_path, num_sanity_val_steps=0, limit_val_batches=0)
    fresh = SoftLabelModule("unet_small", data.num_classes, lr=1e-2)
    resumed.fit(fresh, data, ckpt_path=checkpoint)
    assert resumed.global_step == 44  # continued from step 40, not from 0
