"""The training dataset: stored samples unchanged without augmentation, one geometry for colour and
soft label (against torch's F.interpolate), ignore padding, worker == device densifying,
reproducible batches whatever the worker count, DistributedSampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from softprep import open_store
from softprep.build import build
from softprep.datasets import get_dataset
from softprep.plan import plan_for_size
from softprep.softlabel import IGNORE_INDEX
from softprep_train.data import Augment, StoreDataset, TrainSampler, axis_taps, collate, densify, finish_sample, taps_to_matrix, to_device


@pytest.fixture(scope="module")
def store(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("train-data") / "store.zarr"
    build(get_dataset("cityscapes", demo_root), out, [0.25, 0.5, 1.0], kernel="bilinear", shard_size=4, jobs=1)
    return str(out)


def test_densify_equals_the_stored_dense_soft_label(store):
    sample = open_store(store).samples("train", 0.5)[1]
    soft = sample.soft_label()
    dense = densify(torch.from_numpy(soft.classes), torch.from_numpy(soft.scaled_weights().astype(np.float32)), 19)
    np.testing.assert_array_equal(dense.numpy(), sample.soft())


def test_without_augmentation_items_are_the_stored_sample(store):
    dataset = StoreDataset(store, "val", 0.5)
    item = dataset[2]
    sample = open_store(store).samples("val", 0.5)[2]
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), sample.image.astype(np.float32))
    np.testing.assert_array_equal(item["soft"].numpy(), sample.soft())
    np.testing.assert_array_equal(item["nn"].numpy(), sample.nn())


def test_geometry_equals_torch_interpolate_then_crop_and_flip():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((5, 20, 30)).astype(np.float32))
    out_h, out_w, crop = 13, 41, (8, 16)
    plan = plan_for_size("bilinear", False, (20, 30), (out_h, out_w))
    rows = taps_to_matrix(*map(torch.from_numpy, axis_taps(plan.rows, 3, crop[0], False)), 20)
    cols = taps_to_matrix(*map(torch.from_numpy, axis_taps(plan.cols, 20, crop[1], True)), 30)
    ours = torch.einsum("yh,chw,xw->cyx", rows, x, cols)
    reference = F.interpolate(x[None], size=(out_h, out_w), mode="bilinear", align_corners=False)[0]
    reference = reference[:, 3:3 + crop[0], 20:20 + crop[1]].flip(-1)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_augmented_sample_pairs_colour_and_labels_and_pads_with_ignore(store):
    dataset = StoreDataset(store, "train", 0.25, Augment(crop=(24, 40)))
    for seed in range(20):
        raw = dataset.raw(0, seed)
        item = finish_sample(raw, 19)
        assert item["image"].shape == (3, 24, 40) and item["soft"].shape == (19, 24, 40) and item["nn"].shape == (24, 40)
        sums = item["soft"].sum(0)
        assert float(sums.max()) <= 1 + 1e-5 and float(sums.min()) >= 0
        padded_rows = (raw["row_weight"].sum(1) == 0).numpy()
        padded_cols = (raw["col_weight"].sum(1) == 0).numpy()
        padding = padded_rows[:, None] | padded_cols[None, :]
        assert (sums.numpy()[padding] == 0).all() and (item["nn"].numpy()[padding] == IGNORE_INDEX).all()
        assert (item["image"].numpy()[:, padding] == 0).all()
        # the soft label and the colour went through the same matrices
        assert raw["classes"].shape[1:] == raw["image"].shape[:2]
    # stored sizes of image 0: 16x32 at 0.25, 32x64 at 0.5, 64x128 at 1.0. A resize to 8x16 reads from
    # 0.25; to 32x64 from 0.5; to 33x64 from 1.0; above every stored size: the largest
    assert dataset.sizes["0.25"][0].tolist() == [16, 32]
    assert [dataset.source_target(0, size) for size in ((8, 16), (32, 64), (33, 64), (100, 300))] == ["0.25", "0.5", "1.0", "1.0"]


def test_worker_and_device_densify_agree(store):
    on_worker = StoreDataset(store, "train", 0.25, Augment(crop=(16, 32)), densify="worker")
    on_device = StoreDataset(store, "train", 0.25, Augment(crop=(16, 32)), densify="device")
    keys = [(i, 100 + i) for i in range(4)]
    a = to_device(collate([on_worker[k] for k in keys]), torch.device("cpu"), 19)
    b = to_device(collate([on_device[k] for k in keys]), torch.device("cpu"), 19)
    for name in ("image", "soft", "nn"):
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_batches_do_not_depend_on_worker_count_and_resume_mid_epoch(store):
    dataset = StoreDataset(store, "train", 0.25, Augment(crop=(16, 32)))

    def batches(workers, start=0, count=5):
        sampler = TrainSampler(dataset, batch_size=2, seed=7, start_batch=start)
        loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers, collate_fn=collate)
        out = []
        for batch in loader:
            out.append(batch)
            if len(out) == count:
                return out

    in_process, two_workers, resumed = batches(0), batches(2), batches(0, start=3, count=2)
    for a, b in zip(in_process, two_workers):
        torch.testing.assert_close(a["soft"], b["soft"], rtol=0, atol=0)
        assert a["index"].tolist() == b["index"].tolist()
    for a, b in zip(in_process[3:], resumed):
        torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)
    # 6 images, batch 2: 3 batches per epoch cover every image once
    assert sorted(i for b in in_process[:3] for i in b["index"].tolist()) == list(range(6))


def test_works_with_distributed_sampler(store):
    dataset = StoreDataset(store, "train", 0.5)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        for batch in DataLoader(dataset, batch_size=3, sampler=sampler, collate_fn=collate, num_workers=1):
            assert batch["soft"].shape == (3, 19, 32, 64)
            seen += batch["index"].tolist()
    assert sorted(seen) == list(range(6))


def test_image_kernel_apart_from_label_kernel(demo_root, tmp_path):
    """Table IV stores: colour through one kernel, labels through another, in the store and in augmentation."""
    dataset = get_dataset("cityscapes", demo_root)
    stores = {}
    for name, kernel, image_kernel in (("mixed", "area", "bicubic"), ("area", "area", None), ("bicubic", "bicubic", None)):
        stores[name] = tmp_path / f"{name}.zarr"
        build(dataset, stores[name], [0.5], kernel=kernel, image_kernel=image_kernel, jobs=1, splits=["val"])
    mixed = open_store(stores["mixed"])
    assert (mixed.attrs["kernel"], mixed.attrs["image_kernel"]) == ("area", "bicubic")
    area, bicubic = open_store(stores["area"]).samples("val", 0.5), open_store(stores["bicubic"]).samples("val", 0.5)
    for i, sample in enumerate(mixed.samples("val", 0.5)):
        np.testing.assert_array_equal(sample.image, bicubic[i].image)
        np.testing.assert_array_equal(sample.soft(), area[i].soft())
    augment = Augment((24, 48))
    datasets = {name: StoreDataset(str(path), "val", 0.5, augment) for name, path in stores.items()}
    for key in ((0, 5), (1, 6)):
        torch.testing.assert_close(datasets["mixed"][key]["image"], datasets["bicubic"][key]["image"], rtol=0, atol=0)
        torch.testing.assert_close(datasets["mixed"][key]["soft"], datasets["area"][key]["soft"], rtol=0, atol=0)


def test_bicubic_geometry_keeps_soft_labels_distributions(demo_root, tmp_path):
    """Bicubic taps overshoot: augmented soft labels are clamped back to distributions (KL needs p >= 0)."""
    out = tmp_path / "cubic.zarr"
    build(get_dataset("cityscapes", demo_root), out, [0.5], kernel="bicubic", jobs=1, splits=["val"])
    dataset = StoreDataset(str(out), "val", 0.5, Augment((40, 80)))
    for key in ((0, 1), (1, 2), (0, 3)):
        soft = dataset[key]["soft"]
        assert soft.min() >= 0 and soft.sum(0).max() <= 1 + 1e-5


def _draw(dataset: StoreDataset, index: int, seed: int, crop: tuple[int, int]):
    """The augmentation the dataset draws for ``seed``, repeated: size, source target, crop start, flip."""
    base_h, base_w = dataset.sizes["0.25"][index]
    rng = np.random.default_rng(seed)
    ratio = rng.uniform(0.5, 2.0)
    out_h, out_w = max(1, round(base_h * ratio)), max(1, round(base_w * ratio))
    top, left = int(rng.integers(0, max(out_h - crop[0], 0) + 1)), int(rng.integers(0, max(out_w - crop[1], 0) + 1))
    return (out_h, out_w), dataset.source_target(index, (out_h, out_w)), (top, left), bool(rng.random() < 0.5)


def _torch_hard(source: torch.Tensor, size, start, crop, flip: bool, mode: str) -> torch.Tensor:
    """torch's ``mode`` resize of a hard map, then the crop (ignore padding) and flip."""
    resized = F.interpolate(source[None, None].float(), size=size, mode=mode)[0, 0].long()
    (top, left), (h, w) = start, crop
    padded = F.pad(resized, (0, max(0, left + w - size[1]), 0, max(0, top + h - size[0])), value=IGNORE_INDEX)
    out = padded[top:top + h, left:left + w]
    return out.flip(1) if flip else out


@pytest.mark.parametrize("seed", [None, 0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("sampling, mode, stored", [("centre", "nearest-exact", "nn"), ("floor", "nearest", "nn_floor")])
def test_hard_labels_are_torch_nearest_of_the_source_targets_map(store, seed, sampling, mode, stored):
    """nn_sampling="centre" (the default): torch's ``nearest-exact`` of the source target's centred map
    to the augmented size, then the colour image's crop (ignore padding) and flip; no full-resolution
    target is read. ``floor``: torch ``nearest`` of the source target's ``nn_floor`` map."""
    crop = (20, 40)
    dataset = StoreDataset(store, "train", 0.25, Augment(crop) if seed is not None else None, nn_sampling=sampling)
    got = finish_sample(dataset.raw(3, seed))["nn"]
    if seed is None:
        size, source, start, flip = tuple(got.shape), "0.25", (0, 0), False
    else:
        size, source, start, flip = _draw(dataset, 3, seed, crop)
    stored_map = getattr(open_store(store).samples("train", source)[3], stored)()
    expected = _torch_hard(torch.from_numpy(stored_map), size, start, got.shape, flip, mode)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_centred_labels_need_no_full_resolution_target_but_a_format_3_store_does(demo_root, tmp_path):
    import zarr

    out = tmp_path / "no-full.zarr"
    build(get_dataset("cityscapes", demo_root), out, [0.25], shard_size=4, jobs=1)
    item = StoreDataset(str(out), "train", 0.25, Augment((16, 32)), nn_sampling="centre")[(0, 1)]
    assert item["nn"].shape == (16, 32)
    root = zarr.open_group(str(out), mode="r+")  # a format-3 store kept torch nearest maps only
    root.attrs["softprep"] = {**root.attrs["softprep"], "format_version": 3}
    with pytest.raises(Exception, match="keeps torch nearest maps only, so centred labels come from the full-resolution"):
        StoreDataset(str(out), "train", 0.25, nn_sampling="centre")


def test_the_memory_cache_gives_the_same_samples_and_reads_each_once(store, monkeypatch):
    plain = StoreDataset(store, "train", 0.25, Augment((16, 32)))
    cached = StoreDataset(store, "train", 0.25, Augment((16, 32)), cache=True)
    for key in [(0, 7), (1, 8), (0, 9), (2, 10), (0, 7)]:
        a, b = plain[key], cached[key]
        for name in ("image", "soft", "nn"):
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    reads = []
    from softprep.store import StoredSample

    original = StoredSample.soft_label
    monkeypatch.setattr(StoredSample, "soft_label", lambda self: reads.append(self.index) or original(self))
    for key in [(0, 7), (1, 8), (0, 9), (2, 10)]:  # every (source target, image) already read once
        cached[key]
    assert reads == []


def test_set_epoch_yields_the_same_pairs_as_the_iteration_loop(store):
    """Epoch-based trainers (Lightning) call set_epoch(e): they get epoch e of the very order and
    augmentation seeds the iteration-based loop uses."""
    dataset = StoreDataset(store, "train", 0.25)
    endless = TrainSampler(dataset, 2, seed=5)
    per_epoch = endless.batches_per_epoch() * 2
    everything = [pair for _, pair in zip(range(4 * per_epoch), endless)]
    sampler = TrainSampler(dataset, 2, seed=5, epochs=1)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        assert list(sampler) == everything[epoch * per_epoch:(epoch + 1) * per_epoch]
