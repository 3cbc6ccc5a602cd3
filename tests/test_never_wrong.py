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


def build_and_verify(root: Path, store: Path, *options) -> None:
    """`softprep build --dataset folder ... --scales 0.5`, then `softprep verify`: both pass."""
    built = softprep("build", "--dataset", "folder", "--root", root, "--out", store, "--scales", "0.5", "--jobs", "1",
                     *options)
    assert built.returncode == 0, built.stderr
    checked = softprep("verify", store)
    assert checked.returncode == 0, checked.stdout + checked.stderr


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

    view = open_store(store).samples("train", 0.25)  # a reader whose target is gone after the next rebuild
    assert softprep("build", "--root", first, "--out", store, "--scales", "0.5", "--jobs", "1", "--overwrite").returncode == 0
    for read in (lambda: view[1].packed(), lambda: view.mass()):
        with pytest.raises(SoftprepError) as error:  # was: "mixed_classes cannot be read (KeyError); run softprep verify"
            read()
        assert "was rebuilt or removed since this reader opened it (it is not damaged)" in str(error.value)
        assert "verify" not in str(error.value)


def test_all_black_images_and_all_ignored_labels_are_written_and_read(tmp_path):
    """Each image alone in its shard: a black image and an all-ignored mask still get their chunk
    files; verify passes and a DataLoader with persistent workers reads them as stored."""
    root = write_folder_dataset(tmp_path / "data", [(40, 60), (40, 60), (48, 64)], split_folders=False)
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(root / "images" / "img0.jpg")
    Image.fromarray(np.full((40, 60), 255, np.uint8)).save(root / "masks" / "img1.png")
    store = tmp_path / "s.zarr"
    build_and_verify(root, store, "--shard-size", "1")
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
    build_and_verify(root, store, "--kernel", "bicubic")
    assert (store / "train" / "0.5" / "denominator" / "c" / "0").is_file()


@pytest.mark.parametrize("bad", [11, 12, 200])
def test_a_mask_value_equal_to_the_class_count_is_refused_not_ignored(bad):
    from torchvision import tv_tensors

    from softprep_train.transforms import ToSoftLabel

    mask = torch.zeros((1, 16, 16), dtype=torch.uint8)
    mask[0, 3, 3] = bad
    with pytest.raises(ValueError, match=f"label value {bad} is neither a class id \\(< 11\\) nor ignore \\(255\\)"):
        ToSoftLabel(11, 0.5)(tv_tensors.Mask(mask))
    mask[0, 3, 3] = 255
    assert ToSoftLabel(11, 0.5)(tv_tensors.Mask(mask)).shape == (11, 8, 8)


def test_a_store_with_no_finished_image_restarts_and_a_refusal_shows_the_values_in_full(tmp_path):
    """A bad mask stops the build before any image is done; after the user fixes classes.json the
    rerun just starts again. A store with finished images and other classes is refused, naming
    both class lists whole."""
    import json

    root = write_folder_dataset(tmp_path / "data", [(40, 60), (40, 60)], split_folders=False)
    table = json.loads((root / "classes.json").read_text())
    without_wire = {**table, "classes": [c for c in table["classes"] if c["name"] != "wire"]}
    (root / "classes.json").write_text(json.dumps(without_wire))
    store = tmp_path / "s.zarr"
    args = ["build", "--dataset", "folder", "--root", root, "--out", store, "--scales", "0.5", "--jobs", "1"]
    failed = softprep(*args)
    assert failed.returncode == 1 and "label ids [9] are not in the folder label table" in failed.stderr
    (root / "classes.json").write_text(json.dumps(table))
    fixed = softprep(*args)
    assert fixed.returncode == 0, fixed.stderr
    assert open_store(store).classes == ["ground", "wire", "sky"]

    renamed = {**table, "classes": [{**c, "name": "cable"} if c["name"] == "wire" else c for c in table["classes"]]}
    (root / "classes.json").write_text(json.dumps(renamed))
    refused = softprep(*args)
    assert refused.returncode == 1
    assert "classes: store has ['ground', 'wire', 'sky'], asked ['ground', 'cable', 'sky']" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_a_kill_during_overwrite_deletion_leaves_a_store_the_rerun_clears(tmp_path, monkeypatch):
    """The deletion moves the store aside in one step, then removes its files, softprep's marker
    (the root zarr.json) last: killed in the removal, the path holds nothing, the leftover is still
    marked, and the next build clears it. A store an older softprep left half-deleted (its root
    metadata gone first) carries no marker: --overwrite refuses it in one line and deletes nothing."""
    import shutil

    from softprep.build import build
    from softprep.datasets import get_dataset
    from softprep.store import deleting_path

    data = make_demo(tmp_path / "d", train=2, val=1, size=(64, 128), seed=3)
    store = tmp_path / "s.zarr"
    build(get_dataset("cityscapes", data), store, [0.5], jobs=1)
    real_rmtree = shutil.rmtree

    def killed(path, *args, **kwargs):
        if deleting_path(store) in Path(path).parents:
            raise KeyboardInterrupt  # the kill, half way through removing the old files
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        build(get_dataset("cityscapes", data), store, [0.25], jobs=1, overwrite=True)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert not store.exists() and (deleting_path(store) / "zarr.json").is_file()
    rerun = softprep("build", "--root", data, "--out", store, "--scales", "0.25", "--jobs", "1")
    assert rerun.returncode == 0, rerun.stderr
    assert not deleting_path(store).exists() and open_store(store).complete

    (store / "zarr.json").unlink()  # what an interrupted rmtree of an older softprep left
    before = sorted(p for p in store.rglob("*"))
    again = softprep("build", "--root", data, "--out", store, "--scales", "0.25", "--jobs", "1", "--overwrite")
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert "without softprep's store marker" in again.stderr and "will not delete it" in again.stderr
    assert sorted(p for p in store.rglob("*")) == before


def _tree(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_deletes_only_a_store_softprep_made_never_a_folder_holding_one(tmp_path):
    """Issue 25.1, through the real CLI: `--out proj --overwrite` where proj/ holds a store beside
    a user's files, and a `folder` dataset holding a store with `--out` typed equal to `--root`: each
    refused in one line naming what was found, every file kept; the store itself is still rebuilt."""
    data = make_demo(tmp_path / "d", train=2, val=1, size=(64, 128), seed=3)
    project = tmp_path / "proj"
    assert softprep("build", "--root", data, "--out", project / "old.zarr", "--scales", "0.5", "--jobs", "1").returncode == 0
    (project / "notes.txt").write_text("notes")
    (project / "important").mkdir()
    (project / "important" / "thesis.tex").write_text("\\begin{document}")
    before = _tree(project)
    for extra in ([], ["--overwrite"]):
        result = softprep("build", "--root", data, "--out", project, "--scales", "0.5", "--jobs", "1", *extra)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert f"{project}: is a folder holding important/, notes.txt, old.zarr/" in result.stderr, result.stderr
        assert "softprep did not make it" in result.stderr and "--overwrite" not in result.stderr
        assert _tree(project) == before
    rebuilt = softprep("build", "--root", data, "--out", project / "old.zarr", "--scales", "0.25", "--jobs", "1",
                       "--overwrite")
    assert rebuilt.returncode == 0 and open_store(project / "old.zarr").targets == ["0.25"], rebuilt.stderr

    root = write_folder_dataset(tmp_path / "mine", [(40, 60), (40, 60)], split_folders=False)
    assert softprep("build", "--dataset", "folder", "--root", root, "--out", root / "images" / "s.zarr",
                    "--scales", "0.5", "--jobs", "1").returncode == 0
    dataset = _tree(root)
    for out in (root, root.parent):  # the root itself, and a folder holding it
        result = softprep("build", "--dataset", "folder", "--root", root, "--out", out, "--scales", "0.5", "--overwrite")
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "--out is the dataset root" in result.stderr
    assert _tree(root) == dataset


def test_leftovers_are_removed_only_when_they_carry_softprep_s_marker(tmp_path):
    """`OUT.creating` and `OUT.deleting` are softprep's names, but a user's folder may carry one:
    without the marker it is refused and kept; `--out` itself may not take such a name."""
    from softprep.store import creating_path

    data = make_demo(tmp_path / "d", train=2, val=1, size=(64, 128), seed=3)
    out = tmp_path / "s.zarr"
    creating_path(out).mkdir()
    (creating_path(out) / "mine.txt").write_text("mine")
    result = softprep("build", "--root", data, "--out", out, "--scales", "0.5", "--jobs", "1")
    assert result.returncode == 1 and "s.zarr.creating: is a folder holding mine.txt" in result.stderr, result.stderr
    assert (creating_path(out) / "mine.txt").read_text() == "mine"
    named = softprep("build", "--root", data, "--out", tmp_path / "x.creating", "--scales", "0.5")
    assert named.returncode == 1 and "softprep's temporary folders" in named.stderr


def test_a_rerun_from_another_root_is_refused_never_called_complete(tmp_path):
    """Issue 25.4: a store records each label file's digest; a rerun with another --root (same
    layout, ids and sizes) is refused naming the first differing image, also after a kill before
    --overwrite began deleting (the old store still whole); --overwrite rebuilds it from the new root."""
    first = make_demo(tmp_path / "a", train=3, val=1, size=(64, 128), seed=1)
    second = make_demo(tmp_path / "b", train=3, val=1, size=(64, 128), seed=2)
    store = tmp_path / "s.zarr"
    args = ["build", "--out", store, "--scales", "0.5", "--jobs", "1"]
    assert softprep(*args, "--root", first).returncode == 0
    again = softprep(*args, "--root", second)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert "store was built from other files (train image demotown_000000_000019: its label file" in again.stderr
    assert "pass --overwrite" in again.stderr
    assert softprep(*args, "--root", second, "--overwrite").returncode == 0
    counts = open_store(store).counts("train")
    assert not np.array_equal(counts, _counts_of(first)) and np.array_equal(counts, _counts_of(second))


def _counts_of(root: Path) -> np.ndarray:
    from softprep.datasets import get_dataset
    from softprep.resample import prepare_label

    dataset = get_dataset("cityscapes", root)
    return np.stack([prepare_label(dataset.read_label(s), 19).class_counts() for s in dataset.samples("train")])


def test_one_lock_per_store_whichever_link_names_it(tmp_path):
    from softprep.store import store_lock

    real = tmp_path / "x.zarr"
    real.mkdir()
    alias = tmp_path / "alias.zarr"
    alias.symlink_to(real)
    with store_lock(real):
        with pytest.raises(SoftprepError, match="another softprep build .* is writing this store"):
            with store_lock(alias):
                pass


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    from softprep.build import build
    from softprep.datasets import get_dataset

    folder = tmp_path_factory.mktemp("hostile")
    data = make_demo(folder / "d", train=2, val=1, size=(64, 128), seed=4)
    store = folder / "s.zarr"
    build(get_dataset("cityscapes", data), store, [0.5], jobs=1)
    return store


def _edit_metadata(path: Path, change) -> None:
    import json

    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, message", [
    ("zarr v2 done array", "Zarr v2 metadata; a softprep store is Zarr v3 alone"),
    ("five million ids", "images its done array declares; the store is damaged or crafted"),
    ("pickle codec", "codec 'numcodecs.pickle' is not one a softprep store uses"),
    ("huge bucket", "is beyond what a softprep store holds"),
    ("string done", "data type 'string' is not one a softprep store uses"),
    ("chunk to /dev/zero", "not a regular file inside the store"),
    ("chunk to a system file", "not a regular file inside the store"),
])
def test_a_hostile_store_is_refused_before_anything_is_allocated(small_store, tmp_path, damage, message):
    import shutil

    store = tmp_path / "s.zarr"
    shutil.copytree(small_store, store)
    bucket = next(p for p in (store / "train" / "0.5").iterdir() if p.is_dir())
    if damage == "zarr v2 done array":  # issue 25.5: a v2 copy whose done array claims 1e12 images
        (store / "train" / "done" / "zarr.json").unlink()
        (store / "train" / "done" / ".zarray").write_text('{"zarr_format": 2, "shape": [1000000000000], "chunks": '
                                                          '[1000000000000], "dtype": "|u1", "compressor": null, '
                                                          '"fill_value": 0, "order": "C", "filters": null}')
    elif damage == "five million ids":  # issue 25.6: the id list of the split's attributes, far beyond its images
        _edit_metadata(store / "train" / "zarr.json",
                       lambda m: m["attributes"].__setitem__("ids", [f"x{i}" for i in range(5_000_000)]))
    elif damage == "pickle codec":
        _edit_metadata(bucket / "nn" / "zarr.json",
                       lambda m: m["codecs"][0]["configuration"]["codecs"].append({"name": "numcodecs.pickle"}))
    elif damage == "huge bucket":
        _edit_metadata(bucket / "image" / "zarr.json", lambda m: m.__setitem__("shape", [2, 100000, 100000, 3]))
    elif damage == "string done":
        _edit_metadata(store / "train" / "done" / "zarr.json", lambda m: m.__setitem__("data_type", "string"))
    else:
        chunk = next(p for p in (bucket / "nn").rglob("*") if p.is_file() and p.name != "zarr.json")
        chunk.unlink()
        chunk.symlink_to("/dev/zero" if damage == "chunk to /dev/zero" else "/etc/hostname")
    with pytest.raises(SoftprepError, match=message):
        open_store(store)
    for command in ("info", "verify", "priors"):
        result = softprep(command, store)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, (command, result.stderr)


def test_a_store_written_inside_the_dataset_folder_is_not_taken_for_a_split(tmp_path):
    root = write_folder_dataset(tmp_path / "data", [(40, 60), (40, 60)], split_folders=False)
    store = root / "images" / "store.zarr"
    args = ["build", "--dataset", "folder", "--root", root, "--out", store, "--scales", "0.5", "--jobs", "1"]
    assert softprep(*args).returncode == 0
    rerun = softprep(*args)
    assert rerun.returncode == 0 and "0 images built, 2 already done" in rerun.stdout, rerun.stderr
    overwrite = softprep(*args, "--overwrite")
    assert overwrite.returncode == 0, overwrite.stderr
    assert open_store(store).splits == ["train"]


def test_names_from_files_are_escaped_in_ids_tables_and_errors(tmp_path):
    """A file name with a newline or an escape sequence, and such a class name, print as one line."""
    import json

    root = write_folder_dataset(tmp_path / "data", [(40, 60), (40, 60)], split_folders=False)
    for folder, suffix in (("images", ".jpg"), ("masks", ".png")):
        (root / folder / f"img0{suffix}").rename(root / folder / f"evil\nname\x1b[31m{suffix}")
    table = json.loads((root / "classes.json").read_text())
    table["classes"][0]["name"] = "gro\nund"
    (root / "classes.json").write_text(json.dumps(table))
    store = tmp_path / "s.zarr"
    assert softprep("build", "--dataset", "folder", "--root", root, "--out", store, "--scales", "0.5").returncode == 0
    ids = softprep("info", store, "--ids")
    assert ids.returncode == 0 and "train evil\\nname\\x1b[31m" in ids.stdout.splitlines(), ids.stdout
    priors = softprep("priors", store)
    assert "gro\\nund" in priors.stdout and "\x1b" not in priors.stdout
    (root / "masks" / "evil\nname\x1b[31m.png").write_bytes(b"not a png")
    failed = softprep("build", "--dataset", "folder", "--root", root, "--out", tmp_path / "t.zarr", "--scales", "0.5")
    assert failed.returncode == 1 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert "evil\\nname\\x1b[31m.png" in failed.stderr and "\x1b" not in failed.stderr
