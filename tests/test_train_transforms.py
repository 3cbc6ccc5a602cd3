"""Soft labels on the fly (torchvision v2 and albumentations style) equal the stored path for the
same geometry, and travel through v2.Compose with flips, crops, pads and resizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from softprep import SoftprepError, open_store
from softprep.build import build
from softprep.datasets import get_dataset
from softprep_train.transforms import SoftMask, ToSoftLabel, albumentations_soft_label


@pytest.fixture(scope="module")
def stored(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("tv") / "store.zarr"
    dataset = get_dataset("cityscapes", demo_root)
    build(dataset, out, [0.25, 0.5], kernel="bilinear", jobs=1, splits=["val"])
    image, label = dataset.read_pair(dataset.samples("val")[0])
    return open_store(out), image, label


def test_to_soft_label_equals_the_stored_sample(stored):
    store, image, label = stored
    sample = store.samples("val", 0.25)[0]
    out_image, soft = ToSoftLabel(19, target=0.25, kernel="bilinear")(tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
                                                   tv_tensors.Mask(torch.from_numpy(label)))
    assert isinstance(soft, SoftMask) and isinstance(out_image, tv_tensors.Image)
    np.testing.assert_array_equal(out_image.permute(1, 2, 0).numpy(), sample.image)
    np.testing.assert_array_equal(soft.numpy(), sample.soft())
    albu = albumentations_soft_label(19, target=0.25, kernel="bilinear")(image=image, mask=label)
    np.testing.assert_array_equal(albu["mask"].transpose(2, 0, 1), sample.soft())
    np.testing.assert_array_equal(albu["image"], sample.image)


def test_compose_carries_the_soft_label_through_flip_crop_and_resize(stored):
    store, image, label = stored
    stored_half = store.samples("val", 0.5)[0]
    image_t, mask_t = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), tv_tensors.Mask(torch.from_numpy(label))
    flip_crop = v2.Compose([ToSoftLabel(19, target=0.5, kernel="bilinear"), v2.RandomHorizontalFlip(p=1.0), v2.RandomCrop((20, 40))])
    torch.manual_seed(3)
    out_image, soft = flip_crop(image_t, mask_t)
    dense = torch.from_numpy(stored_half.soft()).flip(-1)
    colour = torch.from_numpy(stored_half.image).permute(2, 0, 1).flip(-1)
    # locate the crop from the colour output, then the soft label must be the same window
    windows = [(y, x) for y in range(dense.shape[1] - 19) for x in range(dense.shape[2] - 39)
               if torch.equal(colour[:, y:y + 20, x:x + 40], out_image.as_subclass(torch.Tensor))]
    assert windows, "the image crop is not a window of the flipped stored image"
    y, x = windows[0]
    torch.testing.assert_close(soft.as_subclass(torch.Tensor), dense[:, y:y + 20, x:x + 40], rtol=0, atol=0)
    # resizing a SoftMask resamples each class plane with softprep's bilinear taps: torch's F.interpolate
    resized = v2.functional.resize(SoftMask(torch.from_numpy(stored_half.soft())), [16, 32], antialias=False)
    reference = torch.nn.functional.interpolate(torch.from_numpy(stored_half.soft())[None], size=(16, 32),
                                                mode="bilinear", align_corners=False)[0]
    assert isinstance(resized, SoftMask)
    torch.testing.assert_close(resized.as_subclass(torch.Tensor), reference, rtol=1e-5, atol=1e-6)
    assert float(resized.sum(0).max()) <= 1 + 1e-6


def test_padding_is_ignore_and_photometric_transforms_pass_through(stored):
    store, image, label = stored
    soft = SoftMask(torch.from_numpy(store.samples("val", 0.25)[0].soft()))
    padded = v2.functional.pad(soft, [2, 3])
    assert padded.shape == (19, 16 + 6, 32 + 4) and padded[:, :3].sum() == 0 and padded[:, :, :2].sum() == 0
    jittered = v2.ColorJitter(brightness=0.5)(soft)
    torch.testing.assert_close(jittered.as_subclass(torch.Tensor), soft.as_subclass(torch.Tensor))
    with pytest.raises(SoftprepError, match="rotate has no SoftMask kernel"):
        v2.functional.rotate(soft, 10.0)
