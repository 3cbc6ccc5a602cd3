"""`softprep build` on the real Cityscapes samples (skipped when ../shared/fixtures is absent)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softprep import open_store
from softprep.build import build
from softprep.datasets import get_dataset
from tests.conftest import require_real_cityscapes


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    root = require_real_cityscapes()
    out = tmp_path_factory.mktemp("real") / "real.zarr"
    build(get_dataset("cityscapes", root), out, [0.125, 0.25], kernel="area", jobs=2)
    return out


def test_real_build_is_complete_and_conserves_priors(real_store):
    store = open_store(real_store)
    assert store.complete
    assert [len(store.samples(s, 0.125)) for s in store.splits] == [6, 2]
    for split in store.splits:
        counts = store.counts(split)
        assert (counts.sum(axis=0) > 0).sum() >= 10
        for scale, denominator in ((0.125, 64), (0.25, 16)):
            view = store.samples(split, scale)
            assert (view.denominators == denominator).all()
            assert view.sizes.tolist() == [[int(1024 * scale), int(2048 * scale)]] * len(view)
            np.testing.assert_array_equal(view.mass_numerator(), counts)  # area at 1/s integer: one numerator per source pixel


def test_real_soft_label_matches_torch_area(real_store):
    root = require_real_cityscapes()
    dataset = get_dataset("cityscapes", root)
    sample = dataset.samples("val")[0]
    _, label = dataset.read_pair(sample)
    one_hot = torch.from_numpy(label).long()
    valid = one_hot != 255
    volume = F.one_hot(torch.where(valid, one_hot, 19), 20).permute(2, 0, 1)[None].float()
    reference = F.interpolate(volume, size=(128, 256), mode="area")[0, :19].numpy()
    ours = open_store(real_store).samples("val", 0.125)[0].soft()
    np.testing.assert_allclose(ours, reference, atol=1e-6)


def test_thin_classes_keep_their_prior_under_area_but_not_under_nn(real_store):
    from fractions import Fraction

    store = open_store(real_store)
    view, counts = store.samples("train", 0.125), store.counts("train")
    pole = 5
    full = Fraction(int(counts[:, pole].sum()), int(counts.sum()))
    soft = Fraction(int(view.mass_numerator()[:, pole].sum()), int(view.mass_numerator().sum()))
    nn = Fraction(int(view.nn_floor_counts()[:, pole].sum()), int(view.nn_floor_counts().sum()))
    assert soft == full  # D = 0 exactly
    assert abs(float(nn - full)) > 1e-5  # NN moves the pole prior
