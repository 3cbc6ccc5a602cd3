"""Never a silently wrong sample (issue 19): a reader that outlives a rebuild refuses instead of
mixing two stores; images equal to the fill value (all black, all ignored) are written like any
other, so a complete store has every chunk; and the range check of class ids."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from softprep import SoftprepError, open_store
from softprep.demo import make_demo
from softprep_train.data import StoreDataset, collate
from tests.conftest import write_folder_dataset


def softprep(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softprep.cli", *map(str, args)], capture_output=True, text=True)


def test_a_live_reader_refuses_a_store_rebuilt_under_it(tmp_path):
    """Persistent DataLoader workers (as `fit` keeps them) hold a store open while it is rebuilt
    from another dataset with --overwrite: the next batch is refused, never mixed; a new reader
    reads the new store."""
    first = make_demo(tmp_path / "a", train=4, val=1, size=(64, 128), seed=1)
    second = make_demo(tmp_path / "b", train=4, val=1, size=(64, 128), seed=2)
    store = tmp_path / "s.zarr"
    assert softprep("build", "--root", first, "--out", store, "--scales", "0.25", "--jobs", "1").returncode == 0
    dataset = StoreDataset(str(store), "train", 0.25)
    loader = DataLoader(dataset, batch_size=2, num_workers=1, persistent_workers=True, collate_fn=collate)
    old = [batch["soft"] for batch in loader]
    rebuilt = softprep("build", "--root", second, "--out", store, "--scales", "0.25", "--jobs", "1", "--overwrite")
    assert rebuilt.returncode == 0, rebuilt.stderr
    with pytest.raises(Exception, match="the store was rebuilt or removed since this reader opened it"):
        list(loader)
    fresh = StoreDataset(str(store), "train", 0.25)
    new = torch.stack([fresh[i]["soft"] for i in range(4)])
    expected = torch.stack([torch.from_numpy(open_store(store).samples("train", 0.25)[i].soft()) for i in range(4)])
    torch.testing.assert_close(new, expected, rtol=0, atol=0)
    assert not torch.equal(new, torch.cat(old))  # it is another dataset


def test_all_black_images_and_all_ignored_labels_are_written_and_read(tmp_path):
    """Each image alone in its shard: a black image and an all-ignored mask still get their chunk
    files; verify passes and a DataLoader with persistent workers reads them as stored."""
    root = write_folder_dataset(tmp_path / "data", [(40, 60), (40, 60), (48, 64)], split_folders=False)
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(root / "images" / "img0.jpg")
    Image.fromarray(np.full((40, 60), 255, np.uint8)).save(root / "masks" / "img1.png")
    store = tmp_path / "s.zarr"
    built = softprep("build", "--dataset", "folder", "--root", root, "--out", store, "--scales", "0.5",
                     "--shard-size", "1", "--jobs", "1")
    assert built.returncode == 0, built.stderr
    checked = softprep("verify", store)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    loader = DataLoader(StoreDataset(str(store), "train", 0.5), batch_size=1, num_workers=1, persistent_workers=True,
                        collate_fn=collate)
    items = {int(batch["index"][0]): batch for batch in loader}
    assert items[0]["image"].abs().sum() == 0  # the black image, read back (not refused as missing)
    assert items[1]["soft"].sum() == 0 and (items[1]["nn"] == 255).all()  # all ignored
    assert items[2]["soft"].sum() > 0


def test_bicubic_stores_of_mixed_sizes_have_every_chunk(tmp_path):
    """Bicubic weights are not exact: the per-image denominators are all 0 (the fill value) and were
    never written; verify must pass on the fresh build."""
    root = write_folder_dataset(tmp_path / "data", [(40, 60), (48, 64), (36, 50)], split_folders=False)
    store = tmp_path / "s.zarr"
    built = softprep("build", "--dataset", "folder", "--root", root, "--out", store, "--scales", "0.5",
                     "--kernel", "bicubic", "--jobs", "1")
    assert built.returncode == 0, built.stderr
    checked = softprep("verify", store)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert (store / "train" / "0.5" / "denominator" / "c" / "0").is_file()
