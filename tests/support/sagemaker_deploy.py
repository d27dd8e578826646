"""Shared pieces of the SageMaker deployment tests (over HTTP against the session's moto server).

Used by tests/integration/test_sagemaker_deploy.py (the flow, the CLI, a failure at each step) and
test_sagemaker_deploy_state.py (lost answers, crashes, concurrent deployments, tampered archives). Builders are
cached per process, so both modules share the same packages (and so the same archives and moto containers).

Two models are used: A, a 5-label classifier on the tiny random BERT, and B, the same network with one class
bias raised so that some held-out predictions differ (which version serves shows in its answers).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3

from components.aws import AwsSettings
from components.deploy.sagemaker import AwsClients, SageMakerOptions, SageMakerTarget, checks, rollback_alarm_names
from components.provenance import git_commit
from tests.support.tiny import REPO

REGION = "us-east-1"
BUCKET = "fineship-dev-artifacts-test"
ROLE_NAME = "fineship-dev-sagemaker-serving"  # the stack's serving role
COMMIT = git_commit(REPO)  # what the flow records, so equal packages give equal archives (and share a container)
TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
                                                 "Action": "sts:AssumeRole"}]}
# Fast timings for moto: poll every 0.2 s, no baking, no termination wait.
FAST = {"poll_seconds": 0.2, "wait_timeout_seconds": 120, "rollback_timeout_seconds": 120,
        "wait_interval_seconds": 0, "termination_wait_seconds": 0}
TRANSITION = {"model_name": "sagemaker::endpoint-deployment"}  # moto's state-manager name for deployments

_cache: dict[Any, Any] = {}


def moto_api(url: str, path: str, body: dict | None = None, method: str = "POST") -> None:
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status in (200, 201), r.read()


def moto_state(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=10) as r:
        data = json.loads(r.read())
    return {service: data.get(service) for service in ("sagemaker", "s3", "cloudwatch")}


def make_aws(moto_endpoint: str) -> SimpleNamespace:
    """The account as infra/aws/fineship.yaml leaves it: artifact bucket and the serving role."""
    s3, iam = boto3.client("s3"), boto3.client("iam")
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    try:
        role_arn = iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(TRUST))["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        role_arn = iam.get_role(RoleName=ROLE_NAME)["Role"]["Arn"]
    return SimpleNamespace(url=moto_endpoint, role_arn=role_arn,
                           clients=AwsClients.create(AwsSettings(region=REGION, endpoint_url=moto_endpoint)),
                           cloudwatch=boto3.client("cloudwatch"))


def new_clients(aws: SimpleNamespace, **settings: Any) -> AwsClients:
    """Clients of their own (for event hooks that must not touch other tests' clients)."""
    return AwsClients.create(AwsSettings(region=REGION, endpoint_url=aws.url, **settings))


def target(aws: SimpleNamespace, endpoint: str, **overrides: Any) -> SageMakerTarget:
    """A target on the test account; keys that are `SageMakerOptions` fields go to its options."""
    options = {k: overrides.pop(k) for k in list(overrides) if k in SageMakerOptions.model_fields}
    return SageMakerTarget(**{"endpoint_name": endpoint, "region": REGION, "role_arn": aws.role_arn, "bucket": BUCKET,
                              "rollback_alarms": rollback_alarm_names("fineship", "dev", endpoint), **overrides},
                           options=SageMakerOptions(**{**FAST, **options}))


class PreflightCounter:
    """Counts the pre-flight runs (`checks.preflight`, which `require_preflight` calls) while active."""

    def __init__(self) -> None:
        self.calls = 0
        self._real = checks.preflight

    def __call__(self, target, package_dir):
        self.calls += 1
        return self._real(target, package_dir)

    def take(self) -> int:
        """The number of runs since the last `take`."""
        n, self.calls = self.calls, 0
        return n


def put_alarms(aws: SimpleNamespace, endpoint: str) -> tuple[str, str]:
    """The stack's two rollback alarms for `endpoint` (moto's CloudFormation skips alarms: put them directly)."""
    names = rollback_alarm_names("fineship", "dev", endpoint)
    for name, metric, stat in zip(names, ("Invocation5XXErrors", "ModelLatency"), ("Sum", "Average")):
        aws.cloudwatch.put_metric_alarm(
            AlarmName=name, Namespace="AWS/SageMaker", MetricName=metric, Statistic=stat, Period=60,
            EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanOrEqualToThreshold",
            TreatMissingData="notBreaching",
            Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": "AllTraffic"}])
    return names


def held_out_texts(sample_df) -> list[str]:
    """Held-out examples: one text per class."""
    return sample_df.groupby("label").head(1).text.tolist()


def _classifier_package(tiny_bert: Path, out: Path, seed: int, bias: dict[int, float] | None = None) -> Path:
    """A 5-label package on the tiny BERT: random classifier head (seeded), optional bias offsets."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from components.package import PackageMeta, save_package
    from tests.support.tiny import LABELS

    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(tiny_bert, num_labels=len(LABELS),
                                                          ignore_mismatched_sizes=True)
    with torch.no_grad():
        model.classifier.weight.mul_(20.0)  # spread the logits so that texts get different labels
        for i, offset in (bias or {}).items():
            model.classifier.bias[i] += offset
    return save_package(model, AutoTokenizer.from_pretrained(tiny_bert), out,
                        PackageMeta(labels=LABELS, max_length=48))


def build_packages(tiny_bert: Path, root: Path, texts: list[str]) -> SimpleNamespace:
    """Model A, and model B: A with one class bias raised so that the first text gets another label (cached)."""
    key = ("packages", str(tiny_bert), tuple(texts))
    if key in _cache:
        return _cache[key]
    from components.package import load_package
    from tests.support.tiny import LABELS

    a = _classifier_package(tiny_bert, root / "a", seed=7)
    logits = load_package(a).logits(texts)
    now = int(logits[0].argmax())
    # not the middle label: reversing the label order (the smoke-test fault) must change B's answers
    other = next(i for i in range(len(LABELS)) if i not in (now, len(LABELS) // 2))
    b = _classifier_package(tiny_bert, root / "b", seed=7, bias={other: float(logits[0][now] - logits[0][other]) + 1.0})
    labels_a = [p.label for p in load_package(a).predict(texts)]
    labels_b = [p.label for p in load_package(b).predict(texts)]
    assert labels_a != labels_b and labels_b != [LABELS[len(LABELS) - 1 - LABELS.index(x)] for x in labels_b]
    _cache[key] = SimpleNamespace(a=a, b=b, labels_a=labels_a, labels_b=labels_b)
    return _cache[key]


def invoke(aws: SimpleNamespace, endpoint: str, texts: list[str]) -> list[str]:
    r = aws.clients.runtime.invoke_endpoint(EndpointName=endpoint, ContentType="application/json",
                                            Accept="application/json", Body=json.dumps({"inputs": texts}))
    return [p["label"] for p in json.loads(r["Body"].read())["predictions"]]


def inventory(aws: SimpleNamespace, endpoint: str, model: str | None = None) -> dict[str, set[str]]:
    """Every model and endpoint config this endpoint's deployments own, and the model archives in the bucket
    (of `model` only, if given; locks and journals under deployments/ are not archives)."""
    sm = aws.clients.sagemaker
    prefix = f"{endpoint}-v"
    archives = "fineship/models/" + (f"{model}/" if model else "")
    objects = aws.clients.s3.list_objects_v2(Bucket=BUCKET, Prefix=archives).get("Contents", [])
    return {"models": {m["ModelName"] for m in sm.list_models()["Models"] if m["ModelName"].startswith(prefix)},
            "configs": {c["EndpointConfigName"] for c in sm.list_endpoint_configs(MaxResults=100)["EndpointConfigs"]
                        if c["EndpointConfigName"].startswith(prefix)},
            "objects": {o["Key"] for o in objects}}


def locks_held(aws: SimpleNamespace) -> list[str]:
    """Lock objects in the bucket (none once every deployment finished)."""
    found = aws.clients.s3.list_objects_v2(Bucket=BUCKET, Prefix="fineship/deployments/locks/").get("Contents", [])
    return [o["Key"] for o in found]


def serving(aws: SimpleNamespace, endpoint: str) -> tuple[str, str]:
    d = aws.clients.sagemaker.describe_endpoint(EndpointName=endpoint)
    return d["EndpointStatus"], d["EndpointConfigName"]
