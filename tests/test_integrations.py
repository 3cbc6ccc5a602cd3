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
    pl = pytest.importorskip("lightning.pytorch", reason="needs the lightning extra: pip install -e '.[lightning]'")
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


class _Batches:
    """A Lightning callback hashing every training batch (colour, soft and hard labels)."""

    def __new__(cls):
        import hashlib

        import lightning.pytorch as pl

        class Collect(pl.Callback):
            def __init__(self):
                self.hashes = []

            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                digest = hashlib.sha256()
                for key in ("image", "soft", "nn"):
                    digest.update(batch[key].cpu().numpy().tobytes())
                self.hashes.append(digest.hexdigest())

        return Collect()


def test_a_lightning_run_resumed_mid_epoch_sees_the_uninterrupted_runs_batches(store, tmp_path):
    """Issue 27.2: interrupted after 2 of an epoch's 3 batches and resumed from that checkpoint
    (`ckpt_path=`), the run trains on exactly the batches, augmentation included, that an
    uninterrupted run trains on from its third step: compared by hash, not by global_step."""
    pl = pytest.importorskip("lightning.pytorch", reason="needs the lightning extra")
    from lightning.pytorch.callbacks import ModelCheckpoint

    from softprep_train.lightning import SoftLabelDataModule, SoftLabelModule

    def trainer(root, *callbacks, **limits):
        return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=root,
                          num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks), **limits)

    data = lambda: SoftLabelDataModule(store, scale=0.5, batch_size=2, workers=0, seed=1)  # 3 batches an epoch
    whole = _Batches()
    trainer(tmp_path / "whole", whole, max_epochs=3).fit(SoftLabelModule("unet_small", 19), data())
    assert len(whole.hashes) == 9 and len(set(whole.hashes)) == 9

    first = _Batches()
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1, filename="{step}")
    trainer(tmp_path / "cut", first, saver, max_steps=2).fit(SoftLabelModule("unet_small", 19), data())
    rest = _Batches()
    trainer(tmp_path / "cut", rest, max_epochs=3).fit(SoftLabelModule("unet_small", 19), data(),
                                                      ckpt_path=tmp_path / "ckpt" / "step=2.ckpt")
    assert first.hashes + rest.hashes == whole.hashes


def test_export_to_parquet_round_trips_through_hugging_face_datasets(store, tmp_path):
    """`softprep export STORE --to parquet OUT`, then datasets.load_dataset("parquet", ...): every
    image, soft label and NN map equal to the store's; the card carries the exact priors."""
    datasets = pytest.importorskip("datasets", reason="needs the hf extra: pip install -e '.[hf]'")
    import subprocess
    import sys

    import numpy as np

    from softprep import open_store
    from softprep.export import dense_soft_label

    out = tmp_path / "hf"
    result = subprocess.run([sys.executable, "-m", "softprep.cli", "export", store, "--to", "parquet", out],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ours = open_store(store)
    for target in ("0.25", "0.5"):
        loaded = datasets.load_dataset("parquet", data_dir=str(out / target))
        assert set(loaded) == {"train", "validation"}  # datasets' own name for files called val-*
        for split, name in (("train", "train"), ("val", "validation")):
            view = ours.samples(split, target)
            assert len(loaded[name]) == len(view)
            for row in loaded[name]:
                sample = view[row["id"]]
                np.testing.assert_array_equal(np.asarray(row["image"].convert("RGB")), sample.image)
                np.testing.assert_allclose(dense_soft_label(row, 19), sample.soft(), rtol=0, atol=1e-6)
                np.testing.assert_array_equal(np.asarray(row["nn"], np.uint8).reshape(sample.shape), sample.nn())
    by_config = datasets.load_dataset(str(out), "0.25")  # the card's configs keep the store's split names
    assert set(by_config) == {"train", "val"} and len(by_config["val"]) == len(ours.samples("val", 0.25))
    card = (out / "README.md").read_text()
    assert "| area | 1/4 | exact | 0 | 0 |" in card and "config_name: \"0.5\"" in card


def test_segformer_soft_labels_at_the_logits_size_are_the_stored_coarser_soft_labels(store, tmp_path):
    """HF SegFormer predicts at 1/4: the soft label area-resampled to the logits equals the soft
    label softprep stores at that coarser size (box filters compose), and a real
    SegformerForSemanticSegmentation trains on it (the loss falls)."""
    transformers = pytest.importorskip("transformers", reason="needs the hf extra: pip install -e '.[hf]'")
    from softprep import open_store
    from softprep_train import kl_loss, normalise
    from softprep_train.hf import soft_label_for_logits

    fine = torch.from_numpy(open_store(store).samples("train", 0.5)[0].soft())[None]  # (1, 19, 32, 64)
    coarse = torch.from_numpy(open_store(store).samples("train", 0.25)[0].soft())[None]  # (1, 19, 16, 32)
    torch.testing.assert_close(soft_label_for_logits(fine, coarse.shape[-2:]), coarse, rtol=0, atol=1e-6)

    from softprep_train.data import StoreDataset, collate

    batch = collate([StoreDataset(store, "train", 0.5)[i] for i in range(4)])
    config = transformers.SegformerConfig(num_labels=19, depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128],
                                          num_attention_heads=[1, 1, 2, 4], decoder_hidden_size=64)
    torch.manual_seed(0)
    model = transformers.SegformerForSemanticSegmentation(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        logits = model(pixel_values=normalise(batch["image"])).logits
        assert logits.shape[-2:] == (8, 16)  # 1/4 of the 32x64 input
        loss = kl_loss(logits, soft_label_for_logits(batch["soft"], logits.shape[-2:]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
