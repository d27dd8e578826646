"""Where a batch run may read and write (components/batch/paths.py): the operator's locations only."""

from __future__ import annotations

import pytest

from components.batch.paths import check_locations
from components.errors import BatchPredictionError


def test_a_run_request_cannot_reach_outside_the_operators_batch_locations(tmp_path):
    home, data = tmp_path / "home", tmp_path / "data"
    roots = [str(data), "s3://team-bucket/batch"]

    def check(output: str, input_uri: str = str(data / "in.csv")) -> None:
        check_locations(input_uri, output, roots, [home])

    check(str(data / "out" / "scored.parquet"))  # positive controls
    check("s3://team-bucket/batch/out.csv", "s3://team-bucket/batch/in/news.parquet")
    for bad in (str(tmp_path / "elsewhere.csv"), str(data / ".." / "escape.csv"), "file:///etc/passwd",
                "s3://other-bucket/batch/out.csv", "s3://team-bucket/models/out.csv", "s3://team-bucket/batch-x/o.csv",
                "s3://team-bucket/batch/../models/x.csv"):
        with pytest.raises(BatchPredictionError, match="refused|only local paths"):
            check(bad)
    (data / "link").parent.mkdir(parents=True, exist_ok=True)
    (data / "link").symlink_to(home, target_is_directory=True)  # a symlink into the home counts as the home
    with pytest.raises(BatchPredictionError, match="fineship's home"):
        check(str(data / "o.csv"), str(data / "link" / "keys" / "pipeline.key"))
