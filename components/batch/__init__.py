"""Batch prediction: score a whole file (CSV, TSV, Parquet, JSON Lines; local or s3://) with a model package.

Modules, in the order a run uses them:

- `files`: streamed chunked readers, part files, the assembled output;
- `score`: `BatchOptions`, `score_file` (chunks -> length-sorted batches -> parts, resumable) -> `BatchResult`;
- `transform`: the same on SageMaker Batch Transform (`start_transform`, `collect_transform`);
- `paths`: where an (untrusted) run may read and write (`check_locations`).
"""

from components.batch.score import (
    MAX_INPUT_BYTES,
    BatchManifest,
    BatchOptions,
    BatchResult,
    ChunkProgress,
    ModelRef,
    output_columns,
    score_file,
    state_dir_for,
)
from components.batch.transform import (
    TransformJob,
    TransformOptions,
    TransformTarget,
    collect_transform,
    start_transform,
    transform_job_request,
)

__all__ = [
    "MAX_INPUT_BYTES", "BatchManifest", "BatchOptions", "BatchResult", "ChunkProgress", "ModelRef", "TransformJob", "TransformOptions",
    "TransformTarget", "collect_transform", "output_columns", "score_file", "start_transform", "state_dir_for",
    "transform_job_request",
]
