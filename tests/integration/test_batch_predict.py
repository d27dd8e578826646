"""Batch prediction (components/batch): every format in and out, column names, resume after a kill, S3 and
SageMaker Batch Transform against the session's moto server over HTTP."""

from __future__ import annotations

import json

import boto3
import numpy as np
import pandas as pd
import pytest

from components.batch import BatchOptions, ModelRef, TransformOptions, TransformTarget, output_columns, score_file
from components.batch.score import MANIFEST, state_dir_for
from components.batch.transform import collect_transform, record_bytes, start_transform
from components.deploy.sagemaker import require_preflight
from components.errors import BatchPredictionError, DataLoadError
from components.package import load_package
from components.serving.handler import MAX_TEXTS
from tests.support.sagemaker_deploy import BUCKET, REGION

MODEL = ModelRef(name="batch-news", version="3", run_id="r1")
IMAGE = f"123456789012.dkr.ecr.{REGION}.amazonaws.com/fineship-serving:1"  # the stack's repository, a fixed tag
WRITERS = {"csv": lambda df, p: df.to_csv(p, index=False), "tsv": lambda df, p: df.to_csv(p, index=False, sep="\t"),
           "parquet": lambda df, p: df.to_parquet(p, index=False),
           "jsonl": lambda df, p: df.to_json(p, orient="records", lines=True, force_ascii=False)}
READERS = {"csv": lambda p: pd.read_csv(p, keep_default_na=False, na_values=[""]),
           "tsv": lambda p: pd.read_csv(p, sep="\t", keep_default_na=False, na_values=[""]),
           "parquet": pd.read_parquet, "jsonl": lambda p: pd.read_json(p, lines=True, dtype=False)}


@pytest.fixture(scope="module")
def clf(packages):
    return load_package(packages.a)


@pytest.fixture(scope="module")
def frame(sample_df):
    """The sample news with an id, a text-less row and a column already called `label`."""
    df = sample_df.head(260).copy()
    df.insert(0, "id", range(len(df)))
    df.loc[5, "text"] = None
    return df


@pytest.fixture(scope="module")
def expected(clf, frame):
    present = frame.text.notna()
    probs = clf.predict_proba(frame.text[present].tolist())
    return present.to_numpy(), [clf.labels[i] for i in probs.argmax(axis=1)], probs


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet", "jsonl"])
def test_each_format_round_trips_with_predictions_and_probabilities(kind, tmp_path, clf, frame, expected):
    src, out = tmp_path / f"in.{kind}", tmp_path / f"out.{kind}"
    WRITERS[kind](frame, src)
    result = score_file(clf, str(src), str(out), BatchOptions(chunk_rows=100, probabilities=True), model=MODEL,
                        work_root=tmp_path / "state")
    got = READERS[kind](out)
    probs_cols = [f"prob_{lab}" for lab in clf.labels]
    # The input's columns first, unchanged; `label` was taken, so the prediction is `predicted_label`.
    assert list(got.columns) == ["id", "text", "label", "predicted_label", "score", *probs_cols]
    assert result.added_columns == ["predicted_label", "score", *probs_cols]
    assert (result.rows, result.chunks, result.missing_texts) == (len(frame), 3, 1) and len(got) == len(frame)
    assert got.id.tolist() == frame.id.tolist() and got.label.tolist() == frame.label.tolist()
    present, labels, probs = expected
    assert got.predicted_label[present].tolist() == labels
    assert np.allclose(got[probs_cols][present].to_numpy(dtype=float), probs, atol=1e-6)
    assert np.allclose(got.score[present].to_numpy(dtype=float), probs.max(axis=1), atol=1e-6)
    assert got.predicted_label.isna()[5] and pd.isna(got.score[5])  # no text, no prediction
    assert not any((tmp_path / "state").iterdir())  # the resume state is gone once the output is complete


def test_added_columns_are_prefixed_only_where_the_input_has_the_name(tmp_path, clf):
    assert output_columns(["text"], ["a"], False) == {"label": "label", "score": "score", "probs": {}}
    names = output_columns(["text", "label", "predicted_label", "prob_b"], ["a", "b"], True)
    assert names == {"label": "predicted_predicted_label", "score": "score",
                     "probs": {"a": "prob_a", "b": "predicted_prob_b"}}
    # Without --probabilities nothing but label and score is added.
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"body": ["a match report", "a budget speech"]}).to_csv(src, index=False)
    score_file(clf, str(src), str(out), BatchOptions(text_column="body"), model=MODEL, work_root=tmp_path / "s")
    assert list(pd.read_csv(out).columns) == ["body", "label", "score"]
    with pytest.raises(DataLoadError, match="no column 'text'"):
        score_file(clf, str(src), str(tmp_path / "x.csv"), BatchOptions(), model=MODEL, work_root=tmp_path / "s")


class Killed(Exception):
    pass


class Counting:
    """The classifier, counting the texts it scores."""

    def __init__(self, clf) -> None:
        self.clf, self.labels, self.scored = clf, clf.labels, 0

    def predict_proba(self, texts, batch_size=32):
        self.scored += len(texts)
        return self.clf.predict_proba(texts, batch_size)


def _kill_after(n: int):
    def hook(progress):
        if progress.index == n - 1 and not progress.resumed:
            raise Killed(f"killed after chunk {progress.index}")
    return hook


def test_a_rerun_after_a_kill_resumes_at_the_first_unfinished_chunk(tmp_path, clf, frame):
    src, out, work = tmp_path / "in.csv", tmp_path / "out.csv", tmp_path / "state"
    frame = frame.head(100)
    frame.to_csv(src, index=False)
    options = BatchOptions(chunk_rows=40)
    with pytest.raises(Killed):  # the fault: the process dies between chunk 2 and chunk 3
        score_file(clf, str(src), str(out), options, model=MODEL, work_root=work, on_chunk=_kill_after(2))
    assert not out.exists()  # no half-written output
    manifest = json.loads((state_dir_for(work, str(out)) / MANIFEST).read_text())
    assert [c["index"] for c in manifest["chunks"]] == [0, 1]
    counting = Counting(clf)
    resumed = score_file(counting, str(src), str(out), options, model=MODEL, work_root=work)
    assert (resumed.resumed_chunks, resumed.chunks, resumed.rows) == (2, 3, len(frame))
    assert counting.scored == len(frame) - 80  # only the unfinished chunk was scored again
    whole = tmp_path / "whole.csv"
    score_file(clf, str(src), str(whole), options, model=MODEL, work_root=work)
    assert out.read_bytes() == whole.read_bytes()  # the same file as an uninterrupted run

    # A changed input (or model, or options) starts over, and says why.
    with pytest.raises(Killed):
        score_file(clf, str(src), str(out), options, model=MODEL, work_root=work, on_chunk=_kill_after(1))
    frame.iloc[::-1].to_csv(src, index=False)
    counting = Counting(clf)
    again = score_file(counting, str(src), str(out), options, model=ModelRef(name="batch-news", version="4"),
                       work_root=work)
    assert again.resumed_chunks == 0 and "changed" in again.restarted and counting.scored == len(frame) - 1


def test_one_run_at_a_time_writes_an_output(tmp_path, clf, frame):
    from components.batch.score import exclusive

    src, out, work = tmp_path / "in.csv", tmp_path / "out.csv", tmp_path / "state"
    frame.head(10).to_csv(src, index=False)
    state = state_dir_for(work, str(out))
    state.mkdir(parents=True)
    with exclusive(state, str(out)):  # another run holds the output
        with pytest.raises(BatchPredictionError, match="another run is writing this output"):
            score_file(clf, str(src), str(out), BatchOptions(), model=MODEL, work_root=work)
    assert score_file(clf, str(src), str(out), BatchOptions(), model=MODEL, work_root=work).rows == 10


def test_s3_input_and_output_over_http(moto_endpoint, tmp_path, clf, frame, expected):
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="fineship-batch-io")
    WRITERS["parquet"](frame, tmp_path / "in.parquet")
    s3.upload_file(str(tmp_path / "in.parquet"), "fineship-batch-io", "in/news.parquet")
    result = score_file(clf, "s3://fineship-batch-io/in/news.parquet", "s3://fineship-batch-io/out/news.jsonl",
                        BatchOptions(chunk_rows=128), model=MODEL, work_root=tmp_path / "state", s3=s3)
    body = s3.get_object(Bucket="fineship-batch-io", Key="out/news.jsonl")["Body"].read().decode()
    rows = [json.loads(line) for line in body.splitlines()]
    assert result.rows == len(rows) == len(frame) and rows[0]["id"] == 0 and "predicted_label" in rows[0]
    present, labels, _ = expected
    assert [r["predicted_label"] for r, p in zip(rows, present) if p] == labels
    with pytest.raises(DataLoadError, match="could not read from S3"):
        score_file(clf, "s3://fineship-batch-io/in/missing.csv", str(tmp_path / "o.csv"), BatchOptions(),
                   model=MODEL, work_root=tmp_path / "state", s3=s3)


def test_batch_transform_job_against_moto(aws, packages, tmp_path, clf, frame, expected):
    from tests.support.batch_transform import run_transform

    clients = aws.clients
    target = TransformTarget(region=REGION, role_arn=aws.role_arn, bucket=BUCKET, prefix="fineship", image_uri=IMAGE,
                             options=TransformOptions(instance_count=2, poll_seconds=0.1, timeout_seconds=30))
    checked = require_preflight(target.deployment_target("batch-test"), packages.a)
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    frame.to_csv(src, index=False)
    options = BatchOptions(chunk_rows=100, probabilities=True)
    args = dict(model=MODEL, labels=clf.labels, work_root=tmp_path / "state", git_commit="test")
    job = start_transform(clients, checked, target, str(src), str(out), options, **args)

    sm = clients.sagemaker
    desc = sm.describe_transform_job(TransformJobName=job.name)  # what moto recorded of the request
    assert desc["ModelName"] == job.model_name and desc["BatchStrategy"] == "MultiRecord"
    assert desc["MaxPayloadInMB"] == 1 and desc["TransformJobStatus"] == "Completed"
    assert desc["TransformInput"]["SplitType"] == "Line"
    assert desc["TransformInput"]["ContentType"] == desc["TransformOutput"]["Accept"] == "application/jsonlines"
    assert desc["TransformOutput"]["AssembleWith"] == "Line"
    assert desc["TransformResources"] == {"InstanceType": "ml.m5.large", "InstanceCount": 2}
    container = sm.describe_model(ModelName=job.model_name)["PrimaryContainer"]
    assert container["Image"] == IMAGE and container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    archive = container["ModelDataUrl"][len(f"s3://{BUCKET}/"):]
    assert clients.s3.head_object(Bucket=BUCKET, Key=archive)["ContentLength"] > 0
    prefix = job.input_uri[len(f"s3://{BUCKET}/"):]
    objects = clients.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
    assert [o["Key"][len(prefix):] for o in objects] == job.parts == ["part-00000.jsonl", "part-00001.jsonl"]
    lines = [x for o in objects for x in clients.s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read().split(b"\n")
             if x.strip()]
    assert job.records == len(frame) - 1 == len(lines) and job.part_records == [130, 129]  # a file per instance
    assert json.loads(lines[0]) == {"inputs": frame.text[0]}
    assert {len(x) for x in lines} == {record_bytes(1)}  # padded: one 1 MB payload <= MAX_TEXTS records

    # A rerun while the job exists re-attaches to it instead of starting another.
    again = start_transform(clients, checked, target, str(src), str(out), options, **args)
    assert again.name == job.name and again.reattached

    sizes = run_transform(clients.s3, desc, packages.a)  # the container's part (see tests/support/batch_transform.py)
    assert max(sizes) <= MAX_TEXTS and sum(sizes) == job.records
    result = collect_transform(clients, job, str(src), str(out), options, poll_seconds=0.1, timeout_seconds=30,
                               **{k: v for k, v in args.items() if k != "git_commit"})
    got = pd.read_csv(out)
    present, labels, probs = expected
    assert result.transform_job == job.name and result.backend == "sagemaker" and result.rows == len(frame)
    assert got.predicted_label[present].tolist() == labels and got.predicted_label.isna()[5]
    assert np.allclose(got[[f"prob_{lab}" for lab in clf.labels]][present].to_numpy(dtype=float), probs, atol=1e-5)


def test_a_transform_output_that_does_not_match_the_input_writes_nothing(aws, packages, tmp_path, clf, frame):
    target = TransformTarget(region=REGION, role_arn=aws.role_arn, bucket=BUCKET, image_uri=IMAGE,
                             options=TransformOptions(poll_seconds=0.1, timeout_seconds=30))
    checked = require_preflight(target.deployment_target("batch-test"), packages.a)
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    frame.head(20).to_csv(src, index=False)
    job = start_transform(aws.clients, checked, target, str(src), str(out), BatchOptions(), model=MODEL,
                          labels=clf.labels, work_root=tmp_path / "state", git_commit="test")
    key = f"{job.output_prefix[len(f's3://{BUCKET}/'):]}/{job.parts[0]}.out"
    aws.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=b'{"label": "tech", "score": 1, "scores": {}}\n')
    with pytest.raises(BatchPredictionError, match="wrote 1 predictions for 19 texts"):
        collect_transform(aws.clients, job, str(src), str(out), BatchOptions(), model=MODEL, labels=clf.labels,
                          work_root=tmp_path / "state", poll_seconds=0.1, timeout_seconds=30)
    assert not out.exists()


def test_padded_records_keep_every_mini_batch_within_the_handlers_limit(tmp_path):
    from components.batch.transform import write_transform_input
    from components.serving import inference
    from tests.support.batch_transform import mini_batches

    src = tmp_path / "short.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(2500)]}).to_csv(src, index=False)
    ((part, n),) = write_transform_input(str(src), src, BatchOptions(), tmp_path, max_payload_mb=1)
    body = part.read_bytes()
    batches = mini_batches(body, 1)  # how SageMaker cuts the file with MaxPayloadInMB=1 (MultiRecord, Line)
    sizes = [len(inference.input_fn(b.decode(), "application/jsonlines")) for b in batches]
    assert n == sum(sizes) == 2500 and max(sizes) <= MAX_TEXTS
    # The fault the padding prevents: the same records unpadded fill one payload with more than the handler takes.
    unpadded = b"\n".join(line.rstrip() for line in body.split(b"\n"))
    with pytest.raises(inference.InferenceRequestError) as err:
        inference.input_fn(mini_batches(unpadded, 1)[0].decode(), "application/jsonlines")
    assert err.value.status == 413
