"""`softprep audit`'s cost: N CamVid images x 2 scales x every installed rule, against reading them.

The baseline, measured in the same run, is decoding the same images (what any audit must do);
the report gives the audit's wall time, its ratio to that baseline, and the peak memory of the
audit of N/5 and of N images (bounded per image, not per dataset: the two are close).

    python benchmarks/bench_audit.py [--root ../shared/datasets/camvid] [--images 100] [--jobs 2] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from blocks import Report
from measure import peak_rss_mib

REPORT = Report()

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "datasets" / "camvid"


def audit_peak_rss_mib(images: int, root: str) -> float:
    """Peak resident memory (MiB) of an in-process audit of ``images`` images, in a fresh process."""
    return peak_rss_mib(f"from softprep.audit import audit; from softprep.datasets import get_dataset\n"
                        f"audit(get_dataset('camvid', {root!r}), ['0.125', '0.25'], limit={images}, jobs=1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(CAMVID))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="4 images, no memory runs: proves the script runs")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument("--readme", type=Path, help="Write the figures into this file's bench-audit block.")
    args = parser.parse_args()
    if not Path(args.root).is_dir():
        sys.exit(f"{args.root}: CamVid not found (it lives in ../shared/datasets beside the repo)")
    images = 4 if args.smoke else args.images

    from softprep.audit import audit
    from softprep.datasets import get_dataset

    dataset = get_dataset("camvid", args.root)
    samples = dataset.samples("train")[:images]
    start = time.perf_counter()
    for sample in samples:
        dataset.read_pair(sample)
    decode = time.perf_counter() - start
    start = time.perf_counter()
    report = audit(dataset, ["0.125", "0.25"], limit=images, jobs=args.jobs)
    seconds = time.perf_counter() - start
    rules = sorted({row.rule for row in report.rows})
    result = {"images": images, "scales": 2, "rules": rules, "skipped": report.skipped, "jobs": args.jobs,
              "audit_s": seconds, "decode_s": decode, "audit_over_decode": seconds / decode}
    REPORT.say(f"audit of {images} CamVid images x 2 scales x {len(rules)} rules (jobs {args.jobs}): {seconds:.1f} s; "
          f"decoding them alone {decode:.2f} s (x{seconds / decode:.0f}); target: 100 images in at most 60 s")
    if not args.smoke:
        small, large = audit_peak_rss_mib(images // 5, args.root), audit_peak_rss_mib(images, args.root)
        result.update(peak_rss_mib={str(images // 5): small, str(images): large})
        REPORT.say(f"peak memory, one process: {small:.0f} MiB for {images // 5} images, {large:.0f} MiB for {images} "
              f"(x{large / small:.2f}: bounded per image)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    REPORT.write(args.readme, "bench-audit", f"python benchmarks/bench_audit.py --images {images} --jobs {args.jobs}")


if __name__ == "__main__":
    main()
