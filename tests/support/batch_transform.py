"""Plays the data plane of a SageMaker Batch Transform job that moto accepted but cannot run.

moto 5.2.5 records `CreateTransformJob` and reports the job `Completed` at once, without running a container or
writing any output. `run_transform` does what the job's container fleet would have done, from the job's own
description as moto stored it:

- read every object under `TransformInput.DataSource.S3DataSource.S3Uri` (S3Prefix) from moto's S3;
- `SplitType: Line` + `BatchStrategy: MultiRecord`: cut each object into lines and pack consecutive lines into
  mini-batches of at most `MaxPayloadInMB` (MiB here; the record that does not fit starts the next batch);
- send each mini-batch to the model the way the serving container does: the archive's handler contract
  (`components.serving.inference.input_fn` -> `predict_fn` -> `output_fn`) with `ContentType` and `Accept` from
  the request, on the package the job's model points at (given here as a directory: the test built it);
- `AssembleWith: Line`: join the answers of one object with a newline and write `<object>.out` under
  `TransformOutput.S3OutputPath`.

Not emulated: instances, `MaxConcurrentTransforms`, retries of failed mini-batches, CloudWatch logs, the job's
timing and states other than Completed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.serving import inference


def mini_batches(body: bytes, max_payload_mb: int) -> list[bytes]:
    """Lines packed into payloads of at most `max_payload_mb` MiB, in order (SplitType Line, MultiRecord)."""
    limit = max_payload_mb * 1024 * 1024
    batches: list[bytes] = []
    current = b""
    for line in body.split(b"\n"):
        if not line.strip():
            continue
        record = line + b"\n"
        if len(record) > limit:
            raise AssertionError(f"a record of {len(record)} bytes is over MaxPayloadInMB: SageMaker fails the job")
        if current and len(current) + len(record) > limit:
            batches.append(current)
            current = b""
        current += record
    if current:
        batches.append(current)
    return batches


def run_transform(s3: Any, description: dict[str, Any], package_dir: str | Path) -> list[int]:
    """Write the job's output objects; returns the number of texts in each request sent to the handler."""
    source = description["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
    content_type = description["TransformInput"]["ContentType"]
    accept = description["TransformOutput"]["Accept"]
    out_prefix = description["TransformOutput"]["S3OutputPath"].rstrip("/")
    assert description["TransformInput"]["SplitType"] == "Line" and description["BatchStrategy"] == "MultiRecord"
    assert description["TransformOutput"]["AssembleWith"] == "Line"
    bucket, _, prefix = source[5:].partition("/")
    out_bucket, _, out_key = out_prefix[5:].partition("/")
    model = inference.model_fn(str(package_dir))
    sizes = []
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        answers = []
        for payload in mini_batches(body, description["MaxPayloadInMB"]):
            texts = inference.input_fn(payload.decode("utf-8"), content_type)  # 413 beyond MAX_TEXTS
            sizes.append(len(texts))
            answer, _ = inference.output_fn(inference.predict_fn(texts, model), accept)
            answers.append(answer.decode("utf-8").rstrip("\n"))
        name = obj["Key"][len(prefix):].lstrip("/") or obj["Key"].rsplit("/", 1)[-1]
        s3.put_object(Bucket=out_bucket, Key=f"{out_key}/{name}.out", Body="\n".join(answers).encode("utf-8"))
    return sizes
