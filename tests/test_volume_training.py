"""Training from volume stores: 3-D patches and flips drawn apart from applying them, sparse soft labels
densified late, a 3-D U-Net through `fit` (KL, bit-identical resume), and MONAI's own transforms and
losses on the soft labels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from softprep import SoftprepError, open_store
from softprep_train.data import to_device
from softprep_train.evaluate import load_checkpoint
from softprep_train.volumes import PatchParams, VolumeDataset, cut_patch, draw_patch, standardise

pytest.importorskip("nibabel", reason="volumes need the volumes extra")
from tests.test_volumes import write_msd  # noqa: E402

TARGET = "2mm"


@pytest.fixture(scope="module")
def volume_store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("volumes")
    root = write_msd(folder / "data", cases=3)
    out = folder / "v.zarr"
    result = subprocess.run([sys.executable, "-m", "softprep.cli", "build", "--dataset", "nifti", "--root", root, "--out", out,
                             "--spacing", "2", "--jobs", "1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


def test_a_patch_is_cut_padded_and_flipped_the_same_way_for_every_array():
    volume = np.arange(4 * 5 * 3).reshape(4, 5, 3)
    params = PatchParams(start=(1, 3, 0), flips=(False, True, False))
    patch = cut_patch(volume, params, (2, 4, 3), fill=-1)
    expected = np.full((2, 4, 3), -1)
    expected[:, :2, :] = volume[1:3, 3:5, :]  # the volume ends after 2 of the patch's 4 rows in y
    np.testing.assert_array_equal(patch, expected[:, ::-1, :])
    stacked = cut_patch(np.stack([volume, 10 * volume]), params, (2, 4, 3), fill=-1)  # leading channels follow
    np.testing.assert_array_equal(stacked[1][patch >= 0], 10 * patch[patch >= 0])
    a, b = (draw_patch(np.random.default_rng(7), (30, 20, 10), (16, 16, 16)) for _ in range(2))
    assert a == b and a.start[2] == 0 and 0 <= a.start[0] <= 14 and 0 <= a.start[1] <= 4
    assert draw_patch(np.random.default_rng(7), (30, 20, 10), (16, 16, 16), flip=False).flips == (False, False, False)


def test_volume_patches_densify_late_to_the_stored_soft_label(volume_store):
    """A drawn patch of the sparse soft label, densified, is the stored dense soft label cut by the same
    parameters; intensities and hard labels go through the same cut; padding carries no weight."""
    store = open_store(volume_store)
    view = store.samples("train", TARGET)
    dataset = VolumeDataset(str(volume_store), "train", TARGET, patch=(16, 24, 24))  # y and z exceed the volume
    for index, seed in ((0, 1), (1, 2), (2, 3)):
        params = dataset.params(index, seed)
        item = dataset[(index, seed)]
        sample = view[index]
        np.testing.assert_allclose(item["soft"].numpy(), cut_patch(sample.soft(), params, (16, 24, 24), 0.0), atol=1e-7)
        np.testing.assert_array_equal(item["nn"].numpy(), cut_patch(sample.nn(), params, (16, 24, 24), 255))
        np.testing.assert_allclose(item["image"].numpy(), cut_patch(standardise(sample.image), params, (16, 24, 24), 0.0))
        outside = item["nn"].numpy() == 255
        assert outside.any() and float(item["soft"].sum(0)[torch.from_numpy(outside)].abs().max()) == 0
    raw = VolumeDataset(str(volume_store), "train", TARGET, patch=(16, 16, 16), densify="device")[(0, 5)]
    assert raw["classes"].dtype == torch.uint8 and raw["classes"].shape[0] < store.spec.num_classes + 1
    batch = to_device([raw], "cpu", store.spec.num_classes, VolumeDataset.finish)
    np.testing.assert_allclose(batch["soft"][0], dataset.finish(raw)["soft"])


def test_fit_trains_a_3d_unet_on_a_volume_store_and_resumes_bit_identically(volume_store, tmp_path):
    def fit(out, *extra):
        return subprocess.run([sys.executable, "-m", "softprep_train.cli", "fit", "--store", volume_store, "--scale", TARGET,
                               "--model", "unet3d", "--out", out, "--iters", "8", "--batch-size", "2", "--crop", "16x16x16",
                               "--workers", "0", "--log-every", "1", "--lr", "0.05", *map(str, extra)],
                              capture_output=True, text=True)

    whole = fit(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == list(range(1, 9)) and all(np.isfinite(r["loss"]) for r in log)
    assert np.mean([r["loss"] for r in log[-3:]]) < np.mean([r["loss"] for r in log[:3]])  # it learns
    assert fit(tmp_path / "split", "--stop-at", "4").returncode == 0
    resumed = fit(tmp_path / "split", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["weights_sha256"] == summary["weights_sha256"]
    model, state = load_checkpoint(tmp_path / "whole" / "last.pt", torch.device("cpu"))
    assert state["in_channels"] == 2 and model(torch.zeros(1, 2, 12, 10, 8)).shape == (1, 3, 12, 10, 8)
    wrong = fit(tmp_path / "wrong", "--model", "unet_small")
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1 and "--model unet3d" in wrong.stderr


def test_monai_transforms_and_losses_train_on_soft_labels(volume_store):
    """MONAI's dictionary transforms crop and flip intensities and soft labels together, its DiceLoss
    (soft_label=True) scores the stored soft label against itself as 0, and DiceCELoss trains a 3-D U-Net."""
    monai = pytest.importorskip("monai")
    from monai.data import DataLoader
    from monai.losses import DiceCELoss, DiceLoss
    from monai.transforms import RandFlipd, RandSpatialCropd

    from softprep_train.models import build_model
    from softprep_train.monai import store_dataset

    store = open_store(volume_store)
    whole = store_dataset(str(volume_store), "train", TARGET)[0]
    np.testing.assert_allclose(whole["label"].numpy(), store.samples("train", TARGET)[0].soft(), atol=1e-7)
    np.testing.assert_allclose(whole["label"].affine.numpy(), store.samples("train", TARGET).affines()[0])
    labelled = whole["label"].sum(0, keepdim=True) > 0.999
    perfect = torch.log(whole["label"].clamp_min(1e-6))[None] * labelled
    soft_dice = DiceLoss(softmax=True, soft_label=True, smooth_nr=0, smooth_dr=1e-6)
    assert float(soft_dice(perfect, whole["label"][None] * labelled)) < 0.01
    assert float(soft_dice(torch.zeros_like(perfect), whole["label"][None] * labelled)) > 0.3

    keys = ["image", "label", "nn"]
    monai.utils.set_determinism(0)
    data = store_dataset(str(volume_store), "train", TARGET, [RandSpatialCropd(keys, (16, 16, 16), random_size=False),
                                                              RandFlipd(keys, prob=0.5, spatial_axis=0)])
    crop = data[1]
    hard = crop["nn"][0].numpy()
    dominant = crop["label"].argmax(0).numpy()
    pure = (crop["label"].amax(0) > 0.999).numpy() & (hard != 255)
    assert pure.sum() > 100 and (dominant[pure] == hard[pure]).mean() > 0.95  # label and nn moved together
    torch.manual_seed(0)
    model = build_model("unet3d", store.spec.num_classes, in_channels=store.spec.image_channels)
    optimiser = torch.optim.Adam(model.parameters(), 3e-3)
    loss_fn = DiceCELoss(softmax=True)
    losses = []
    for _ in range(4):
        for batch in DataLoader(data, batch_size=3, num_workers=0):
            loss = loss_fn(model(batch["image"].as_tensor()), batch["label"].as_tensor())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_a_volume_dataset_refuses_a_2d_store(tmp_path):
    from softprep.build import build
    from softprep.datasets import get_dataset
    from softprep.demo import make_demo

    data = make_demo(tmp_path / "data", train=2, val=1, size=(32, 64), seed=1)
    build(get_dataset("cityscapes", data), tmp_path / "s.zarr", [0.5], jobs=1)
    with pytest.raises(SoftprepError, match="holds 2-D images, not volumes"):
        VolumeDataset(str(tmp_path / "s.zarr"), "train", 0.5)
