"""The Zarr v3 store (format 4), by role: :mod:`~softprep.store.layout` (the typed spec, no zarr),
:mod:`~softprep.store.writer` (arrays, shard and record writes, completion),
:mod:`~softprep.store.lifecycle` (lock, atomic create, clean-up, delete) and
:mod:`~softprep.store.reader` (the one reader everything uses).

Layout (``docs/store-format.md`` is the full specification)::

    STORE.zarr/                       attrs["softprep"]: format, dataset, classes, palette, kernel, targets, ...
      {split}/                        attrs: ids, images, labels, sizes (full resolution), buckets
        counts   (N, C) int64         full-resolution pixels per class
        done     (N,)   uint8         1 once the image and its records are completely written
        {target}/                     attrs: target
          sizes          (N, 2) int32     output [h, w] of each image
          denominator    (N,)   int64     exact weight denominator of each image (0: float weights)
          planes         (N,)   uint8     soft-label slots used by each image
          mass           (N, C) float64   soft-label weight per class
          mass_numerator (N, C) int64     the same, exact numerators over ``denominator`` (0 where float)
          nn_counts      (N, C) int64     nn pixels per class
          nn_floor_counts (N, C) int64    nn_floor pixels per class
          nnunet_counts  (N, C) int64     volumes: voxels per class of nnU-Net's rule (order 1, then >= 0.5)
          affine         (N, 4, 4) float64 volumes: each output grid's voxel-to-world affine (mm)
          {bucket}/                   images whose full-resolution size falls in one size bucket
            image          (Nb, Hb, Wb, 3) uint8
            classes        (Nb, Hb, Wb) uint8    single-class pixels' class, 254 = mixed, 255 = nothing
            mixed_classes  (Nb, K, L) uint8      slot classes of the mixed pixels, in row-major order
            mixed_weights  (Nb, K, L) uint8|uint16|uint32|float32  their weights (row 0: ignored share)
            nn             (Nb, Hb, Wb) uint8    hard labels at pixel centres, nearest-exact (255 = ignore)
            nn_floor       (Nb, Hb, Wb) uint8    hard labels by torch nearest (absent where equal to nn)

Images are grouped into *size buckets* by their full-resolution size (each side rounded up to a
grid of four steps per octave): a bucket's arrays are as large as its largest member, so reading
image ``n`` decodes at most ~1.4x its own pixels, whatever the split's largest image. Buckets are
sharded ``S_b`` images to a shard file; one process writes one shard. Per-image records are
written by the build's parent process only, ``done`` last.
"""

from softprep.store.layout import (  # noqa: F401
    BUCKET_STEPS_PER_OCTAVE, DEFAULT_SHARD_SIZE, FORMAT, FORMAT_VERSION, NN_RULE, READABLE_FORMATS, IMAGE_ZSTD_LEVEL, LIST_CHUNK_MIN,
    LIST_CHUNK_SHARE, RECORD_CHUNK, SHARD_PIXEL_BUDGET, SOFT_LABEL_ARRAYS, ZSTD_LEVEL, BucketLayout, SplitSpec,
    StoreSpec, Task, bucket_of, map_arrays, target_name,
)
from softprep.store.lifecycle import (  # noqa: F401
    RESERVED_SUFFIXES, create_store_atomically, creating_path, delete_store, deleting_path, foreign_folder,
    remove_partial_files, store_lock, unfinished_creation,
)
from softprep.store.reader import (  # noqa: F401
    ALLOWED_CODECS, ALLOWED_DTYPES, MAX_IMAGE_ELEMENTS, MAX_IMAGES, Store, StoredSample, TargetView,
    check_store_files, open_store, shard_file, softprep_marker,
)
from softprep.store.writer import (  # noqa: F401
    SampleRecords, SampleResult, TargetResult, attrs_digest, chunk_codecs, create_store, mark_complete, write_records, write_shard, write_split_attrs,
    writing,
)
