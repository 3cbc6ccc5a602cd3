"""`softprep-train fit` against a bare PyTorch loop of the same model, measured in one run.

The experiment's set-up (unet_small, CamVid at 1/8, batch 8, `--cache`, `--workers 0`, one thread):
`fit`'s images per second after warm-up (from its log) and its data-wait share, against a bare
loop (the same model, optimiser and KL loss on batches already in memory: the ceiling a training
loop can reach on this CPU). Also the cost of one full-resolution evaluation of the val split (the
experiment scores 23 per run) as a share of a run. Goal: fit / bare >= 0.9, data wait < 10%,
evaluation < 10% of a run.

    python benchmarks/bench_fit.py [--root ../shared/datasets/camvid] [--iters 120] [--smoke] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from blocks import Report

REPORT = Report()

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "datasets" / "camvid"
#: Learning-curve points plus the final score, per 90-epoch run (the experiment's default).
EVALUATIONS_PER_RUN = 23


def data_root(tmp: Path, root: str, smoke: bool) -> tuple[str, Path]:
    if not smoke and Path(root).is_dir():
        return "camvid", Path(root)
    from softprep.demo import make_demo

    return "cityscapes", make_demo(tmp / "demo", train=16, val=4, size=(128, 256) if smoke else (360, 480))


def bare_loop(dataset, iters: int, warmup: int) -> float:
    """Images per second of the model alone on ready batches (the same model, optimiser and loss)."""
    from softprep_train.data import collate, normalise
    from softprep_train.losses import kl_loss
    from softprep_train.models import build_model

    torch.manual_seed(0)
    batches = [collate([dataset[(i * 8 + k) % len(dataset)] for k in range(8)]) for i in range(4)]
    model = build_model("unet_small", dataset.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for i in range(warmup + iters):
        if i == warmup:
            start = time.perf_counter()
        batch = batches[i % len(batches)]
        loss = kl_loss(model(normalise(batch["image"])), batch["soft"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return iters * 8 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(CAMVID))
    parser.add_argument("--iters", type=int, default=120)
    parser.add_argument("--smoke", action="store_true", help="a tiny demo store, a few iterations: proves the script runs")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--readme", type=Path, help="Write the figures into this file's bench-fit block.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    iters = 8 if args.smoke else args.iters

    from softprep import open_store
    from softprep.build import build
    from softprep.datasets import get_dataset
    from softprep_train.data import Augment, StoreDataset
    from softprep_train.evaluate import image_confusions, load_checkpoint
    from softprep_train.train import TrainConfig, fit

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        dataset_name, root = data_root(tmp, args.root, args.smoke)
        store = tmp / "s.zarr"
        build(get_dataset(dataset_name, root), store, [0.125, 0.25, 1.0], jobs=2)
        # warm-up: three epochs, so the cache holds every stored sample and every tap table is built
        # (a 90-epoch run spends all but its first epochs so)
        train_images = len(open_store(store).spec.splits["train"].ids)
        warmup = 2 if args.smoke else 3 * max(1, train_images // 8)
        config = TrainConfig(store=str(store), scale="0.125", out=str(tmp / "run"), model="unet_small", loss="kl",
                             batch_size=8, iters=warmup + iters, optimizer="adamw", lr=2e-3, workers=0, cache=True,
                             log_every=warmup if args.smoke else 10, seed=0, device="cpu")
        summary = fit(config, progress=False)
        records = [json.loads(line) for line in (tmp / "run" / "log.jsonl").read_text().splitlines()]
        steady = [r for r in records if r["iter"] > warmup]
        fit_rate = float(np.mean([r["images_per_s"] for r in steady]))
        wait = float(np.mean([r["data_wait_share"] for r in steady]))
        crop = tuple(int(v) for v in open_store(store).samples("train", "0.125").sizes.min(axis=0))
        dataset = StoreDataset(str(store), "train", "0.125", Augment(crop))
        bare = bare_loop(dataset, iters, min(warmup, 10))
        model, _ = load_checkpoint(tmp / "run" / "last.pt", torch.device("cpu"))
        view, full = open_store(store).samples("val", "0.125"), open_store(store).samples("val", "1.0")
        pairs = [(np.ascontiguousarray(view[i].image), full[i].nn()) for i in range(len(view))]
        start = time.perf_counter()
        image_confusions(model, pairs, dataset.num_classes)
        evaluation = time.perf_counter() - start
    per_image_train = 1 / fit_rate
    epoch_images = len(dataset)
    run_train_s = 90 * epoch_images * per_image_train
    eval_share = EVALUATIONS_PER_RUN * evaluation / (run_train_s + EVALUATIONS_PER_RUN * evaluation)
    result = {"data": dataset_name, "fit_images_per_s": fit_rate, "bare_images_per_s": bare, "ratio": fit_rate / bare,
              "data_wait_share": wait, "evaluation_s": evaluation, "eval_images": len(pairs),
              "eval_share_of_a_90_epoch_run": eval_share, "iterations": summary["iterations"]}
    REPORT.say(f"fit {fit_rate:.1f} img/s against a bare loop's {bare:.1f} (x{fit_rate / bare:.2f}; goal >= 0.9); data wait "
          f"{100 * wait:.0f}% (goal < 10%); one evaluation of {len(pairs)} {dataset_name} val images {evaluation:.1f} s: "
          f"{EVALUATIONS_PER_RUN} per 90-epoch run are {100 * eval_share:.0f}% of it (goal < 10%)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    REPORT.write(args.readme, "bench-fit", "python benchmarks/bench_fit.py", f"{dataset_name}, {iters} iterations after warm-up")


if __name__ == "__main__":
    sys.exit(main())
