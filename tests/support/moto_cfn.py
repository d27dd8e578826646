"""infra/aws/fineship.yaml on a moto server, completed where moto's CloudFormation falls short.

Shared by tests/integration/test_infra.py (the stack's resources) and test_infra_roles.py (the two SageMaker
roles). `deploy` creates a stack over HTTP, waits, and applies through each service's own API the parts of the
same template that moto skips (`complete_what_moto_skips`); `Resolver` evaluates the template's intrinsic
functions the way CloudFormation does, for those parts and for the expected Outputs.
"""

from __future__ import annotations

import ast
import json
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from tests.support.moto_server import TEST_ACCESS_KEY

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "infra" / "aws" / "fineship.yaml"
REGION = "us-east-1"
PARTITION = "aws"


def load_template() -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml  # short-form tags (!Sub, !Ref) become Fn::Sub / Ref

    return json.loads(json.dumps(cfn_yaml.loads(TEMPLATE.read_text())))


NO_VALUE = object()


class Resolver:
    """Evaluates the intrinsic functions of this template the way CloudFormation does.

    Used only for the parts moto's CloudFormation skips, and cross-checked against the Outputs
    moto does compute. `get_att` answers Fn::GetAtt from the real (moto) service APIs.
    """

    def __init__(self, template: dict[str, Any], parameters: dict[str, str], pseudo: dict[str, str],
                 get_att: Callable[[str, str], str]):
        self.template = template
        self.parameters = {name: str(spec["Default"]) for name, spec in template["Parameters"].items()
                           if "Default" in spec} | parameters
        self.pseudo = pseudo
        self.get_att = get_att
        self.physical_ids: dict[str, str] = {}

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template["Conditions"][name]))

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        return self.physical_ids[name]

    def sub(self, text: str, variables: dict[str, Any]) -> str:
        out, i = [], 0
        while (start := text.find("${", i)) >= 0:
            end = text.index("}", start)
            out.append(text[i:start])
            name = text[start + 2:end]
            if name.startswith("!"):
                out.append("${" + name[1:] + "}")
            elif name in variables:
                out.append(str(self.resolve(variables[name])))
            elif "." in name:
                out.append(self.get_att(*name.split(".", 1)))
            else:
                out.append(str(self.ref(name)))
            i = end + 1
        return "".join(out) + text[i:]

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.resolve(x) for x in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::Sub":
                return self.sub(arg, {}) if isinstance(arg, str) else self.sub(arg[0], arg[1])
            if key == "Fn::GetAtt":
                return self.get_att(*(arg if isinstance(arg, list) else arg.split(".", 1)))
            if key == "Fn::If":
                return self.resolve(arg[1] if self.condition(arg[0]) else arg[2])
            if key == "Fn::Equals":
                return self.resolve(arg[0]) == self.resolve(arg[1])
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Condition":
                return self.condition(arg)
            if key.startswith("Fn::"):
                raise NotImplementedError(f"{key}: extend Resolver before using it in the template")
        resolved = {k: self.resolve(v) for k, v in node.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}


def clients_for(endpoint: str, **credentials: str) -> Callable[[str], Any]:
    session = boto3.Session(aws_access_key_id=credentials.get("key", TEST_ACCESS_KEY),
                            aws_secret_access_key=credentials.get("secret", TEST_ACCESS_KEY),
                            aws_session_token=credentials.get("token"), region_name=REGION)
    return lambda service: session.client(service, endpoint_url=endpoint)


def policy_document(raw: Any) -> dict[str, Any]:
    """A policy document from IAM; moto returns CloudFormation-made ones as a Python repr."""
    if isinstance(raw, dict):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return ast.literal_eval(raw)  # moto gap, see MOTO_CFN_GAPS


def complete_what_moto_skips(resolver: Resolver, client: Callable[[str], Any], created: set[str],
                             skip_types: frozenset[str] = frozenset()) -> None:
    """Apply, through each service's API, the template parts moto's CloudFormation did not apply.

    Values come from the template resolved with the stack's parameters; nothing is invented here.
    Resources of `skip_types` are left out.
    """
    for logical_id, resource in resolver.template["Resources"].items():
        if "Condition" in resource and not resolver.condition(resource["Condition"]):
            continue
        if resource["Type"] in skip_types:
            continue
        kind, props = resource["Type"], resolver.resolve(resource.get("Properties", {}))
        if kind == "AWS::S3::Bucket":
            s3, bucket = client("s3"), resolver.physical_ids[logical_id]
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration=props["VersioningConfiguration"])
            s3.put_public_access_block(Bucket=bucket,
                                       PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"])
            s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls=props["OwnershipControls"])
            rules = [{"ID": r["Id"], "Status": r["Status"], "Filter": {"Prefix": r.get("Prefix", "")},
                      **{k: v for k, v in r.items() if k in {"AbortIncompleteMultipartUpload",
                                                             "NoncurrentVersionExpiration"}}}
                     for r in props["LifecycleConfiguration"]["Rules"]]
            for rule in rules:
                if "NoncurrentVersionExpiration" in rule:
                    rule["NoncurrentVersionExpiration"] = {
                        "NoncurrentDays": int(rule["NoncurrentVersionExpiration"]["NoncurrentDays"])}
            s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
        elif kind == "AWS::S3::BucketPolicy":
            assert logical_id not in created
            client("s3").put_bucket_policy(Bucket=props["Bucket"], Policy=json.dumps(props["PolicyDocument"]))
        elif kind == "AWS::ECR::Repository":
            ecr, name = client("ecr"), resolver.physical_ids[logical_id]
            ecr.put_image_scanning_configuration(
                repositoryName=name,
                imageScanningConfiguration={"scanOnPush": props["ImageScanningConfiguration"]["ScanOnPush"]})
            ecr.put_lifecycle_policy(repositoryName=name,
                                     lifecyclePolicyText=props["LifecyclePolicy"]["LifecyclePolicyText"])
        elif kind == "AWS::CloudWatch::Alarm":
            assert logical_id not in created
            alarm = dict(props)
            for key in ("Period", "EvaluationPeriods", "DatapointsToAlarm"):
                alarm[key] = int(alarm[key])
            alarm["Threshold"] = float(alarm["Threshold"])
            client("cloudwatch").put_metric_alarm(**alarm)
            resolver.physical_ids[logical_id] = alarm["AlarmName"]  # an alarm's Ref is its name
    # Inline policies (the role's own and those AWS::IAM::Policy resources added): round-trip what
    # moto stored through PutRolePolicy, which makes it JSON again and runs moto's policy validator.
    for logical_id, resource in resolver.template["Resources"].items():
        if resource["Type"] == "AWS::IAM::Role":
            iam, role = client("iam"), resolver.physical_ids[logical_id]
            for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
                stored = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
                iam.put_role_policy(RoleName=role, PolicyName=name,
                                    PolicyDocument=json.dumps(policy_document(stored)))


@dataclass
class Deployment:
    """A stack of infra/aws/fineship.yaml on a moto server, completed where moto falls short."""

    stack: dict[str, Any]
    parameters: dict[str, str]
    created: set[str]
    resolver: Resolver
    client: Callable[[str], Any]
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def expected_outputs(self) -> dict[str, str]:
        return {k: self.resolver.resolve(v["Value"]) for k, v in self.resolver.template["Outputs"].items()}


def deploy(endpoint: str, parameters: dict[str, str], skip_types: frozenset[str] = frozenset()) -> Deployment:
    """Create a stack from the template on the moto server at `endpoint`, wait, complete moto's gaps."""
    client = clients_for(endpoint)
    cfn = client("cloudformation")
    name = f"{parameters['ProjectName']}-{parameters.get('Environment', 'dev')}"
    cfn.create_stack(StackName=name, TemplateBody=TEMPLATE.read_text(), Capabilities=["CAPABILITY_NAMED_IAM"],
                     Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()])
    cfn.get_waiter("stack_create_complete").wait(StackName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    resources = cfn.describe_stack_resources(StackName=name)["StackResources"]
    # moto lists skipped resources too, without a logical id.
    created = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources
               if r.get("LogicalResourceId")}
    template = load_template()
    account = client("sts").get_caller_identity()["Account"]

    def get_att(logical_id: str, attribute: str) -> str:
        kind, physical = template["Resources"][logical_id]["Type"], created[logical_id]
        if (kind, attribute) == ("AWS::S3::Bucket", "Arn"):
            return f"arn:{PARTITION}:s3:::{physical}"
        if (kind, attribute) == ("AWS::IAM::Role", "Arn"):
            return client("iam").get_role(RoleName=physical)["Role"]["Arn"]
        if kind == "AWS::ECR::Repository":
            repo = client("ecr").describe_repositories(repositoryNames=[physical])["repositories"][0]
            return {"Arn": repo["repositoryArn"], "RepositoryUri": repo["repositoryUri"]}[attribute]
        raise NotImplementedError(f"Fn::GetAtt {logical_id}.{attribute}: extend get_att")

    resolver = Resolver(template, parameters, {
        "AWS::AccountId": account, "AWS::Region": REGION, "AWS::Partition": PARTITION,
        "AWS::StackName": name, "AWS::StackId": stack["StackId"], "AWS::URLSuffix": "amazonaws.com",
    }, get_att)
    resolver.physical_ids.update(created)
    complete_what_moto_skips(resolver, client, set(created), skip_types)
    outputs = {o["OutputKey"]: o.get("OutputValue") for o in stack.get("Outputs", [])}
    return Deployment(stack, parameters, set(created), resolver, client, outputs)


def unique_project() -> str:
    return f"fs{uuid.uuid4().hex[:10]}"


def role_statements(deployment: Deployment, logical_id: str) -> list[dict[str, Any]]:
    """Every statement of the role's inline policies (its own and attached AWS::IAM::Policy ones), with Action
    and Resource as lists; asserts the role has no managed policies."""
    iam = deployment.client("iam")
    role = deployment.resolver.physical_ids[logical_id]
    assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []  # no managed policies
    statements = []
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        document = policy_document(iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"])
        found = document["Statement"]
        statements += [found] if isinstance(found, dict) else found
    for statement in statements:
        for key in ("Action", "Resource"):
            if isinstance(statement[key], str):
                statement[key] = [statement[key]]
    return statements


def set_auth(endpoint: str, unauthenticated_requests: str) -> None:
    """moto's switch for IAM enforcement: how many more requests may skip authentication."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", method="POST",
                                     data=unauthenticated_requests.encode(),
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"


def allowed(call: Callable[[], Any]) -> bool:
    """Whether moto's IAM engine lets `call` through; a refusal must be a 403 by policy."""
    try:
        call()
    except ClientError as exc:
        # A refusal by policy, not a signature or token problem (moto's ECR answers in XML,
        # which botocore cannot parse into a code, hence the message check).
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 403, exc
        assert "AccessDenied" in exc.response["Error"]["Code"] or "not authorized" in str(exc), exc
        return False
    return True
