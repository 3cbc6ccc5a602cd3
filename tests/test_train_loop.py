"""The training loop on the demo store: losses fall, resume is bit-identical, eval's mIoU equals an
independent confusion-matrix computation, DDP keeps ranks identical, predict writes masks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from softprep import open_store
from softprep.build import build
from softprep.datasets import get_dataset
from tests.conftest import write_folder_dataset
from softprep_train.checkpoint import load_checkpoint_state
from softprep_train.evaluate import evaluate
from softprep_train.predict import predict_folder
from softprep_train.models import build_model
from softprep_train.train import IMAGENET_MEAN, IMAGENET_STD, TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(model="hrnetv2_w18_small", scale=0.5, batch_size=4, lr=0.05, workers=0, log_every=1, seed=3)


@pytest.fixture(scope="module")
def store(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("train-loop") / "store.zarr"
    build(get_dataset("cityscapes", demo_root), out, [0.25, 0.5], kernel="bilinear", shard_size=4, jobs=1)
    return str(out)


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss", ["kl", "ce-nn"])
def test_loss_falls(store, tmp_path, loss):
    summary = fit(TrainConfig(store=store, out=str(tmp_path / loss), loss=loss, iters=30, **TINY), progress=False)
    curve = losses(tmp_path / loss)
    assert len(curve) == 30 and summary["iterations"] == 30
    assert np.mean(curve[-5:]) < 0.7 * np.mean(curve[:5]), curve


def test_resume_is_bit_identical(store, tmp_path):
    straight = fit(TrainConfig(store=store, out=str(tmp_path / "a"), iters=6, **TINY), progress=False)
    fit(TrainConfig(store=store, out=str(tmp_path / "b"), iters=6, stop_at=3, **TINY), progress=False)
    assert len(losses(tmp_path / "b")) == 3
    resumed = fit(TrainConfig(store=store, out=str(tmp_path / "b"), iters=6, resume=True, **TINY), progress=False)
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    assert resumed["weights_sha256"] == straight["weights_sha256"]


def test_nan_guard_stops_with_a_clear_message(store, tmp_path):
    from softprep import SoftprepError

    with pytest.raises(SoftprepError, match=r"loss is nan at iteration \d+ .*lower --lr"):
        fit(TrainConfig(store=store, out=str(tmp_path / "nan"), iters=5, **{**TINY, "lr": 1e30}), progress=False)


def test_eval_miou_equals_independent_confusion(store, demo_root, tmp_path):
    fit(TrainConfig(store=store, out=str(tmp_path / "run"), iters=10, **TINY), progress=False)
    report = evaluate(tmp_path / "run" / "last.pt", store, "val", root=demo_root, device="cpu", progress=False)

    state = load_checkpoint_state(tmp_path / "run" / "last.pt")
    model = build_model("hrnetv2_w18_small", 19)
    model.load_state_dict(state["model"])
    model.eval()
    dataset = get_dataset("cityscapes", demo_root)
    confusion = np.zeros((19, 19), np.int64)
    view = open_store(store).samples("val", 0.5)
    for sample, pair in zip(view, dataset.samples("val")):
        label = dataset.read_label(pair)
        x = (torch.tensor(sample.image, dtype=torch.float32).permute(2, 0, 1)[None] - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) \
            / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            full = F.interpolate(model(x), size=label.shape, mode="bilinear", align_corners=False)
        prediction = full[0].argmax(0).numpy()
        keep = label != 255
        np.add.at(confusion, (label[keep], prediction[keep]), 1)
    tp = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    np.testing.assert_array_equal(report.confusion, confusion)
    assert report.miou == pytest.approx(iou.mean(), abs=1e-12)
    table = report.table().splitlines()
    assert table[0].startswith("| model | target | road | sidewalk |") and table[0].endswith("| mIoU |")
    assert table[2].endswith(f"| {100 * iou.mean():.1f} |")


def test_cli_fit_eval_predict(store, demo_root, tmp_path):
    run = tmp_path / "cli"
    cli = [sys.executable, "-m", "softprep_train.cli"]
    result = subprocess.run(cli + ["fit", "--store", store, "--scale", "0.25", "--model", "deeplabv3plus_r18",
                                   "--loss", "ce-nn", "--iters", "4", "--batch-size", "2", "--workers", "1",
                                   "--out", str(run)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("fit: deeplabv3plus_r18 (random init) on cpu, iterations 0 -> 4, batch 2 per process x 1")
    assert re.match(r"iter 4/4  loss \d+\.\d{4}  lr \S+  \d+\.\d img/s  eta 0m00s  data-wait \d+%", lines[1]), lines
    assert lines[-1].startswith("trained 4 iterations in ")
    result = subprocess.run(cli + ["eval", "--checkpoint", str(run / "last.pt"), "--store", store, "--mode", "slide"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "softprep-train: error:" in result.stderr and "pass --root DATA" in result.stderr
    result = subprocess.run(cli + ["eval", "--checkpoint", str(run / "last.pt"), "--store", store, "--root", str(demo_root),
                                   "--mode", "slide"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads((run / "eval-val.json").read_text())
    assert f"mIoU {100 * report['miou']:.1f} on val" in result.stdout
    images = demo_root / "leftImg8bit" / "val"
    result = subprocess.run(cli + ["predict", "--checkpoint", str(run / "last.pt"), "--images", str(images),
                                   "--out", str(tmp_path / "masks")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    masks = sorted((tmp_path / "masks").rglob("*_pred.png"))
    sources = sorted(images.rglob("*.png"))
    assert [m.relative_to(tmp_path / "masks").parent for m in masks] == [s.relative_to(images).parent for s in sources]
    assert len(masks) == 3
    with Image.open(masks[0]) as mask:
        assert mask.size == (128, 64) and mask.mode == "RGB"
    train_ids = np.asarray(Image.open(str(masks[0]).replace("_pred.png", "_trainIds.png")))
    label_ids = np.asarray(Image.open(str(masks[0]).replace("_pred.png", "_labelIds.png")))
    from cityscapesscripts.helpers.labels import trainId2label

    np.testing.assert_array_equal(label_ids, np.vectorize(lambda t: trainId2label[t].id)(train_ids))


def test_ddp_two_cpu_processes_keep_identical_weights(store, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
         "-m", "softprep_train.cli", "fit", "--store", store, "--scale", "0.25", "--model", "hrnetv2_w18_small",
         "--iters", "3", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--out", str(run)],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = json.loads((run / "summary.json").read_text())
    rank1 = json.loads((run / "summary.rank1.json").read_text())
    assert rank0["world_size"] == rank1["world_size"] == 2 and rank0["iterations"] == rank1["iterations"] == 3
    assert rank0["weights_sha256"] == rank1["weights_sha256"]
    single = fit(TrainConfig(store=store, out=str(tmp_path / "single"), scale=0.25, model="hrnetv2_w18_small",
                             iters=3, batch_size=2, workers=0), progress=False)
    assert single["weights_sha256"] != rank0["weights_sha256"]  # the ranks really trained on different shards


def test_epochs_set_the_iteration_count(store, tmp_path):
    # 6 train images, batch 4: one batch per epoch (the remainder is dropped)
    summary = fit(TrainConfig(store=store, out=str(tmp_path / "epochs"), epochs=2, **{**TINY, "batch_size": 4}), progress=False)
    assert summary["iterations"] == 2


def test_full_resolution_labels_from_a_stored_scale_one(demo_root, tmp_path):
    from softprep_train.evaluate import full_resolution_labels

    out = tmp_path / "full.zarr"
    build(get_dataset("cityscapes", demo_root), out, [1.0], splits=["val"], jobs=1)
    labels = full_resolution_labels(open_store(out), "val", root=None)
    dataset = get_dataset("cityscapes", demo_root)
    for i, pair in enumerate(dataset.samples("val")):
        np.testing.assert_array_equal(labels(i), dataset.read_label(pair))


def test_resume_with_other_settings_is_refused(store, tmp_path):
    from softprep import SoftprepError

    fit(TrainConfig(store=store, out=str(tmp_path / "r"), iters=4, stop_at=1, **TINY), progress=False)
    with pytest.raises(SoftprepError, match=r"cannot resume with other settings \(lr: checkpoint has 0.05, asked 0.1\)"):
        fit(TrainConfig(store=store, out=str(tmp_path / "r"), iters=4, resume=True, **{**TINY, "lr": 0.1}), progress=False)


def test_fit_eval_predict_on_a_mixed_size_dataset(tmp_path):
    root = write_folder_dataset(tmp_path / "mine", [(40, 64), (33, 50), (64, 64), (48, 36), (30, 70), (52, 40)],
                                split_folders=True)
    out = tmp_path / "mixed.zarr"
    build(get_dataset("folder", root), out, ["short16", "short32"], kernel="area", jobs=1)
    run = tmp_path / "run"
    summary = fit(TrainConfig(store=str(out), out=str(run), iters=3, **{**TINY, "scale": "short16", "batch_size": 2}),
                  progress=False)
    assert summary["iterations"] == 3
    state = load_checkpoint_state(run / "last.pt")
    sizes = open_store(out).samples("train", "short16").sizes
    assert state["crop"] == sizes.min(axis=0).tolist() and state["num_classes"] == 3
    report = evaluate(run / "last.pt", out, "val", root=root, progress=False)
    dataset = get_dataset("folder", root)
    labelled = sum(int((dataset.read_label(s) != 255).sum()) for s in dataset.samples("val"))
    assert report.confusion.shape == (3, 3) and report.confusion.sum() == labelled  # each image at its own size
    written = predict_folder(run / "last.pt", root / "images" / "val", tmp_path / "pred", progress=False)
    for path, sample in zip(written, dataset.samples("val")):
        assert Image.open(path).size == Image.open(sample.image).size


def test_readme_ten_line_loop_runs_and_augments_each_epoch(store, tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    loop = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "for epoch in range" in block)
    assert len([line for line in loop.strip().splitlines() if line.strip()]) <= 14
    monkeypatch.chdir(tmp_path)
    code = loop.replace('"demo-store.zarr"', repr(store)).replace("crop=(128, 256)", "crop=(16, 32)")
    code = code.replace("num_workers=2", "num_workers=1").replace("range(3)", "range(2)")
    namespace: dict = {}
    torch.manual_seed(0)
    exec(code, namespace)
    printed = capsys.readouterr().out.strip().splitlines()
    # what the README says it prints: one "epoch N: loss X.XXXX" line per epoch, the last loss the one left
    assert [re.sub(r"[0-9.]+$", "X", line) for line in printed] == ["epoch 0: loss X", "epoch 1: loss X"], printed
    assert printed[-1] == f"epoch 1: loss {namespace['loss'].item():.4f}" and np.isfinite(namespace["loss"].item())
    dataset = namespace["dataset"]
    first, second = dataset[0], dataset[0]  # a plain index draws a new augmentation each time
    assert first["image"].shape == (3, 16, 32) and not torch.equal(first["image"], second["image"])


def test_segformer_b2_trains_a_few_iterations_on_cpu(store, tmp_path):
    pytest.importorskip("transformers", reason="needs the segformer extra: pip install -e '.[segformer]'")
    model = build_model("segformer_b2", 19)
    assert 27e6 < sum(p.numel() for p in model.parameters()) < 28e6  # MiT-B2 + all-MLP decoder (768)
    config = TrainConfig(store=store, out=str(tmp_path / "seg"), iters=3, **{**TINY, "model": "segformer_b2", "batch_size": 2})
    summary = fit(config, progress=False)
    curve = losses(tmp_path / "seg")
    assert summary["iterations"] == 3 and len(curve) == 3 and all(np.isfinite(curve))
    # encoder weights from a local state dict file: the MiT tensors are matched by name
    weights = tmp_path / "mit_b2.pt"
    torch.save({f"segformer.{k}": v for k, v in model.backbone.state_dict().items()}, weights)
    loaded = build_model("segformer_b2", 19, pretrained=weights)
    assert loaded.backbone.pretrained_tensors[0] == loaded.backbone.pretrained_tensors[1]
    first = next(iter(model.backbone.state_dict()))
    torch.testing.assert_close(loaded.backbone.state_dict()[first], model.backbone.state_dict()[first])


def test_predict_resamples_colour_with_the_colour_kernel_it_trained_on(demo_root, tmp_path):
    """A store built with --image-kernel (labels area, colour bicubic): training saw bicubic colour,
    so predict must resize with bicubic too; the checkpoint carries the store spec that says so."""
    from softprep.datasets.base import read_array
    from softprep.plan import resampling_plan
    from softprep.resample import resize_image
    from softprep_train.evaluate import load_checkpoint, predict_logits
    from softprep_train.predict import predict_image
    from softprep_train.train import normalise

    out = tmp_path / "store.zarr"
    build(get_dataset("cityscapes", demo_root), out, [0.5], kernel="area", image_kernel="bicubic", jobs=1)
    fit(TrainConfig(store=str(out), out=str(tmp_path / "run"), iters=2, **{**TINY, "model": "unet_small"}),
        progress=False)
    model, state = load_checkpoint(tmp_path / "run" / "last.pt", torch.device("cpu"))
    assert (state["store_spec"]["kernel"], state["store_spec"]["image_kernel"]) == ("area", "bicubic")
    image = read_array(next((Path(demo_root) / "leftImg8bit" / "val").rglob("*.png")), "RGB")
    plan = resampling_plan("bicubic", False, image.shape[:2], 0.5)
    small = torch.from_numpy(resize_image(image, plan.rows, plan.cols)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        logits = predict_logits(model, normalise(small), "whole", tuple(state["crop"]))
        expected = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)[0].argmax(0)
    np.testing.assert_array_equal(predict_image(model, state, image), expected.numpy())
