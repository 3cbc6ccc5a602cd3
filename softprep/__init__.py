"""softprep: paired colour/soft-label downsampling for semantic segmentation, stored in Zarr v3.

Pipeline: ``datasets`` (pairs, ids -> train ids) -> ``kernels`` (1-D weights) -> ``resample``
(pixels) -> ``softlabel`` (sparse value) -> ``store`` (Zarr) -> reports.
"""

__version__ = "0.4.0"

from softprep.errors import SoftprepError  # noqa: E402
from softprep.store import open_store  # noqa: E402

__all__ = ["SoftprepError", "open_store", "__version__"]
