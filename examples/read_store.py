"""Read a softprep store with the Python API: python examples/read_store.py demo-store.zarr"""

import sys

import numpy as np

import softprep

store = softprep.open_store(sys.argv[1] if len(sys.argv) > 1 else "demo-store.zarr")
sample = store.samples("train", store.targets[0])[0]
soft = sample.soft()  # (C, h, w) float32
multi_class = (soft > 0).sum(axis=0) > 1
print(f"{sample.id} at {store.targets[0]}: image {sample.image.shape}, soft label {soft.shape}")
print(f"multi-class pixels: {multi_class.mean():.1%}; pixels where NN != soft argmax: "
      f"{(sample.nn() != sample.hard()).mean():.1%}; classes kept: {np.flatnonzero(soft.sum((1, 2)) > 0).tolist()}")
