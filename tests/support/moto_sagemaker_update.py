"""moto server plugin: SageMaker `UpdateEndpoint`, endpoint lifecycles, and checks moto 5.2.5 skips.

moto 5.2.5 does not implement `UpdateEndpoint`, puts every endpoint `InService` the moment it is
created, and accepts any `CreateModel`. Loaded into the test moto server (`MOTO_SERVER_PLUGINS` in
`tests/integration/conftest.py`), this module adds, following the SageMaker API reference:

UpdateEndpoint (EndpointName, EndpointConfigName, RetainAllVariantProperties,
ExcludeRetainedVariantProperties, DeploymentConfig, RetainDeploymentConfig) -> {"EndpointArn"}
  * `ValidationException` when the endpoint or the config does not exist ("Could not find ..."), when
    the endpoint is not `InService` ("Cannot update in-progress endpoint"; a `Failed` endpoint only
    accepts DeleteEndpoint), when a blue/green or rolling update changes the variant names, when an
    instance endpoint would become serverless, and when the DeploymentConfig breaks the reference's
    limits (traffic routing type, canary/linear size, wait and timeout ranges, 1-10 alarms).
  * The endpoint goes to `Updating`, with `PendingDeploymentSummary` naming the new config, and keeps
    serving (and reporting) the old config. On a later DescribeEndpoint (see "Timing") the new
    fleet's health check decides:
      - passed: the config is swapped (`EndpointConfigName`, `ProductionVariants`, `DataCaptureConfig`),
        `LastDeploymentConfig` is the DeploymentConfig used, status `InService`;
      - the container did not answer `/ping`: the update fails and, blue/green, the old fleet keeps
        serving: `InService` on the old config with a `FailureReason` ("... did not pass the ping
        health check ...");
      - any alarm of `AutoRollbackConfiguration` is in `ALARM` in moto's CloudWatch (set it with
        `SetAlarmState`): automatic rollback, `InService` on the old config with a `FailureReason`.
    The old config is never touched, so it stays available to roll back to.
CreateEndpoint: `Creating`, then `InService` (or `Failed` if the container fails its health check);
  "Cannot create already existing endpoint" for a duplicate name.
CreateModel: the `ExecutionRoleArn` must be an IAM role in moto that trusts sagemaker.amazonaws.com
  ("Could not assume role ..."), every `ModelDataUrl` must exist in moto's S3 ("Could not find model
  data at ..."), and duplicate names are refused, as AWS does. CreateEndpointConfig refuses
  duplicate names too.
AddTags: overwrites the value of an existing key (moto appends a duplicate).
InvokeEndpoint: see `moto_sagemaker_invoke`: real predictions from the artifact the endpoint serves.
S3: importing this module also loads `moto_s3_integrity` (PutObject checks the checksum it is sent, and
  conditional writes are atomic), which the deployer's archive reuse and lock rely on.

Timing: transitions use moto's state manager under the model name `sagemaker::endpoint-deployment`.
The default is `{"progression": "manual", "times": 1}`: the first DescribeEndpoint after the call
answers `Creating`/`Updating`, the next one the outcome (once the new container answered `/ping`;
until then it stays `Updating`, as a slow-starting container keeps a real endpoint `Updating`). To
make a deployment outlast a client's timeout, set e.g. `{"progression": "time", "seconds": 3}` with
moto's documented `POST /moto-api/state-manager/set-transition` (and `unset-transition` after).

Fault injection, for outcomes no request can cause on moto: `POST /moto-api/fineship/sagemaker-faults`
with JSON `{"endpoint_name": "...", "account_id": "123456789012", "region": "us-east-1", ...}` and
  * `"deployment": "Failed"` (+ optional `"failure_reason"`): the next CreateEndpoint/UpdateEndpoint
    of that endpoint ends with status `Failed` (the state in which DeleteEndpoint is the only
    operation SageMaker allows);
  * `"container_fault": "label-order-reversed"`: the container of the next deployment of that
    endpoint loads the model with its labels reversed (see `moto_sagemaker_container`), so its
    predictions differ from the registered model's.
Each fault is used once. `DELETE` on the same path clears the armed faults; `/moto-api/reset`
clears them and every deployment state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from moto.cloudwatch.models import cloudwatch_backends
from moto.core.responses import ActionResult
from moto.core.utils import utcnow
from moto.iam.models import iam_backends
from moto.moto_api import state_manager
from moto.moto_api._internal import urls as moto_api_urls
from moto.sagemaker.exceptions import ValidationError
from moto.sagemaker.models import (
    FakeEndpoint,
    FakeEndpointConfig,
    SageMakerModelBackend,
    arn_formatter,
    sagemaker_backends,
)
from moto.sagemaker.responses import SageMakerResponse
from moto.utilities.utils import get_partition

from tests.support import moto_s3_integrity  # noqa: F401 - patches moto's S3 on import
from tests.support import moto_sagemaker_invoke as invoke

STATE_MODEL = "sagemaker::endpoint-deployment"
FAULTS_PATH = "/moto-api/fineship/sagemaker-faults"
state_manager.register_default_transition(STATE_MODEL, {"progression": "manual", "times": 1})


@dataclass
class Deployment:
    """A CreateEndpoint or UpdateEndpoint in progress."""

    kind: str  # "create" | "update"
    config_name: str
    deployment_config: dict[str, Any] | None
    retain_variant_properties: bool
    container: invoke.Container | None
    fault: str | None = None
    failure_reason: str | None = None
    started: datetime = field(default_factory=datetime.now)
    ticks: int = 0


def _deployments(backend: SageMakerModelBackend) -> dict[str, Deployment]:
    return backend.__dict__.setdefault("_fineship_deployments", {})


def _faults(backend: SageMakerModelBackend) -> dict[str, dict[str, Any]]:
    return backend.__dict__.setdefault("_fineship_faults", {})


def _endpoint_arn(backend: SageMakerModelBackend, name: str) -> str:
    return FakeEndpoint.arn_formatter(name, backend.account_id, backend.region_name)


def _due(d: Deployment) -> bool:
    transition = state_manager.get_transition(STATE_MODEL)
    progression = transition.get("progression")
    if progression == "manual":
        return d.ticks >= int(transition.get("times", 1))
    if progression == "time":
        return (datetime.now() - d.started).total_seconds() >= float(transition.get("seconds", 0))
    return True  # immediate


def _tripped_alarms(backend: SageMakerModelBackend, d: Deployment) -> list[str]:
    names = [a.get("AlarmName") for a in ((d.deployment_config or {}).get("AutoRollbackConfiguration") or {})
             .get("Alarms", [])]
    alarms = cloudwatch_backends[backend.account_id][backend.region_name].alarms
    return [n for n in names if n in alarms and alarms[n].state_value == "ALARM"]


def _finish(endpoint: FakeEndpoint, status: str, reason: str | None) -> None:
    endpoint.endpoint_status = status
    endpoint.failure_reason = reason
    endpoint.last_modified_time = utcnow()
    endpoint.__dict__.pop("pending_deployment_summary", None)


def _swap(backend: SageMakerModelBackend, endpoint: FakeEndpoint, d: Deployment) -> None:
    config = backend.endpoint_configs.get(d.config_name)
    if config is None:
        _finish(endpoint, "Failed" if d.kind == "create" else "InService",
                f"Endpoint configuration {d.config_name} was deleted during the deployment.")
        return
    old = {v["VariantName"]: v for v in endpoint.production_variants}
    variants = endpoint._process_production_variants(config.production_variants)
    if d.retain_variant_properties:
        for v in variants:
            for k in ("CurrentInstanceCount", "DesiredInstanceCount", "CurrentWeight", "DesiredWeight"):
                if k in old.get(v["VariantName"], {}):
                    v[k] = old[v["VariantName"]][k]
    endpoint.endpoint_config_name = d.config_name
    endpoint.production_variants = variants
    endpoint.data_capture_config = config.data_capture_config
    if d.kind == "update" and d.deployment_config is not None:
        endpoint.last_deployment_config = d.deployment_config
    _finish(endpoint, "InService", None)


def advance(backend: SageMakerModelBackend, name: str) -> None:
    """Move a deployment of endpoint `name` on, as a status read on AWS would observe it."""
    endpoint = backend.endpoints.get(name)
    d = _deployments(backend).get(name)
    if endpoint is None or d is None:
        return
    if not _due(d):
        d.ticks += 1
        return
    variant = endpoint.production_variants[0]["VariantName"] if endpoint.production_variants else "AllTraffic"
    if d.fault == "Failed":
        reason = d.failure_reason or "Request to service failed. If failure persists after retry, contact customer support."
    elif d.container is not None and not d.container.ready.is_set():
        return  # the new fleet's health check is still running
    elif d.container is not None and d.container.error:
        reason = (f"The primary container for production variant {variant} did not pass the ping health check. "
                  f"Please check CloudWatch logs for this endpoint. ({d.container.error})")[:1024]
    else:
        tripped = _tripped_alarms(backend, d) if d.kind == "update" else []
        if not tripped:
            _swap(backend, endpoint, d)
            del _deployments(backend)[name]
            return
        reason = (f"Deployment was rolled back: alarm(s) {', '.join(tripped)} of the AutoRollbackConfiguration "
                  "went into ALARM during the deployment.")
    del _deployments(backend)[name]
    # A failed create ends Failed; a failed blue/green update leaves the old fleet serving (InService plus a
    # FailureReason), unless the fault asked for the Failed end state.
    _finish(endpoint, "Failed" if d.kind == "create" or d.fault == "Failed" else "InService", reason)


def _begin(backend: SageMakerModelBackend, endpoint: FakeEndpoint, kind: str, config_name: str,
           deployment_config: dict[str, Any] | None, retain: bool) -> None:
    fault = _faults(backend).pop(endpoint.endpoint_name, {})
    outcome = fault.get("deployment")
    container = None
    if outcome != "Failed":
        try:
            container = invoke.start_fleet(backend, endpoint.endpoint_name, config_name, fault.get("container_fault"))
        except (KeyError, LookupError):
            container = None  # no artifact to run: nothing to health-check
    _deployments(backend)[endpoint.endpoint_name] = Deployment(
        kind=kind, config_name=config_name, deployment_config=deployment_config, retain_variant_properties=retain,
        container=container, fault=outcome, failure_reason=fault.get("failure_reason"))
    endpoint.endpoint_status = "Creating" if kind == "create" else "Updating"
    endpoint.last_modified_time = utcnow()


# -- validation of a DeploymentConfig (limits from the SageMaker API reference) -------------------

def _range(value: Any, low: int, high: int | None, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"greater than or equal to {low}" + (f" and less than or equal to {high}" if high is not None else "")
        raise ValidationError(f"1 validation error detected: Value '{value}' at '{what}' failed to satisfy "
                              f"constraint: Member must have value {bound}")


def _validate_deployment_config(dc: dict[str, Any] | None) -> None:
    if not dc:
        return
    if dc.get("BlueGreenUpdatePolicy") and dc.get("RollingUpdatePolicy"):
        raise ValidationError("Only one update policy should be used in the deployment configuration.")
    bg = dc.get("BlueGreenUpdatePolicy")
    if bg is not None:
        routing = bg.get("TrafficRoutingConfiguration") or {}
        kind = routing.get("Type")
        if kind not in ("ALL_AT_ONCE", "CANARY", "LINEAR"):
            raise ValidationError(f"1 validation error detected: Value '{kind}' at 'deploymentConfig."
                                  "blueGreenUpdatePolicy.trafficRoutingConfiguration.type' failed to satisfy "
                                  "constraint: Member must satisfy enum value set: [ALL_AT_ONCE, CANARY, LINEAR]")
        if "WaitIntervalInSeconds" not in routing:
            raise ValidationError("TrafficRoutingConfiguration.WaitIntervalInSeconds is required.")
        _range(routing.get("WaitIntervalInSeconds"), 0, 3600, "trafficRoutingConfiguration.waitIntervalInSeconds")
        size_key = {"CANARY": "CanarySize", "LINEAR": "LinearStepSize"}.get(kind)
        if size_key:
            size = routing.get(size_key)
            if not size:
                raise ValidationError(f"{size_key} must be specified for traffic routing type {kind}.")
            if size.get("Type") not in ("INSTANCE_COUNT", "CAPACITY_PERCENT"):
                raise ValidationError(f"{size_key}.Type must be INSTANCE_COUNT or CAPACITY_PERCENT.")
            _range(size.get("Value"), 1, None, f"trafficRoutingConfiguration.{size_key[0].lower()}{size_key[1:]}.value")
        _range(bg.get("TerminationWaitInSeconds"), 0, 3600, "blueGreenUpdatePolicy.terminationWaitInSeconds")
        _range(bg.get("MaximumExecutionTimeoutInSeconds"), 600, 28800,
               "blueGreenUpdatePolicy.maximumExecutionTimeoutInSeconds")
    alarms = (dc.get("AutoRollbackConfiguration") or {}).get("Alarms")
    if alarms is not None and not 1 <= len(alarms) <= 10:
        raise ValidationError(f"1 validation error detected: Value '{alarms}' at 'deploymentConfig."
                              "autoRollbackConfiguration.alarms' failed to satisfy constraint: Member must have "
                              "length less than or equal to 10 and greater than or equal to 1")


# -- the backend -----------------------------------------------------------------------------------

def update_endpoint(backend: SageMakerModelBackend, endpoint_name: str, endpoint_config_name: str,
                    retain_all_variant_properties: bool, deployment_config: dict[str, Any] | None,
                    retain_deployment_config: bool) -> FakeEndpoint:
    endpoint = backend.endpoints.get(endpoint_name)
    if endpoint is None:
        raise ValidationError(f'Could not find endpoint "{_endpoint_arn(backend, endpoint_name)}".')
    config = backend.endpoint_configs.get(endpoint_config_name)
    if config is None:
        arn = FakeEndpointConfig.arn_formatter(endpoint_config_name, backend.account_id, backend.region_name)
        raise ValidationError(f'Could not find endpoint configuration "{arn}".')
    if endpoint.endpoint_status == "Failed":
        raise ValidationError(f'Cannot update endpoint "{endpoint.arn}" in status Failed: DeleteEndpoint is the only '
                              "operation allowed on a failed endpoint.")
    if endpoint.endpoint_status != "InService":
        raise ValidationError(f'Cannot update in-progress endpoint "{endpoint.arn}".')
    if retain_deployment_config and not deployment_config:
        deployment_config = getattr(endpoint, "last_deployment_config", None)
    _validate_deployment_config(deployment_config)
    old_names = sorted(v["VariantName"] for v in endpoint.production_variants)
    new_names = sorted(v["VariantName"] for v in config.production_variants)
    if deployment_config and old_names != new_names:
        raise ValidationError("The new endpoint configuration must have the same variant names as the current one "
                              f"for a blue/green or rolling deployment: {old_names} != {new_names}.")
    if any("ServerlessConfig" in v for v in config.production_variants) and \
            any("CurrentServerlessConfig" not in v for v in endpoint.production_variants):
        raise ValidationError("Cannot update an instance-based endpoint to a serverless endpoint configuration.")
    _begin(backend, endpoint, "update", endpoint_config_name, deployment_config, bool(retain_all_variant_properties))
    endpoint.pending_deployment_summary = {
        "EndpointConfigName": endpoint_config_name, "StartTime": utcnow(),
        "ProductionVariants": [{k: v for k, v in p.items() if k.startswith(("VariantName", "Desired"))}
                               for p in endpoint._process_production_variants(config.production_variants)]}
    endpoint.failure_reason = None
    return endpoint


_original = {name: getattr(SageMakerModelBackend, name) for name in
             ("create_endpoint", "describe_endpoint", "delete_endpoint", "list_endpoints", "create_model",
              "create_endpoint_config", "add_tags")}


def _create_endpoint(self: SageMakerModelBackend, endpoint_name: str, endpoint_config_name: str,
                     tags: list[dict[str, str]]) -> FakeEndpoint:
    if endpoint_name in self.endpoints:
        raise ValidationError(f'Cannot create already existing endpoint "{_endpoint_arn(self, endpoint_name)}".')
    endpoint = _original["create_endpoint"](self, endpoint_name, endpoint_config_name, tags)
    _begin(self, endpoint, "create", endpoint_config_name, None, False)
    return endpoint


def _describe_endpoint(self: SageMakerModelBackend, endpoint_name: str) -> dict[str, Any]:
    advance(self, endpoint_name)
    return _original["describe_endpoint"](self, endpoint_name)


def _delete_endpoint(self: SageMakerModelBackend, endpoint_name: str) -> None:
    _original["delete_endpoint"](self, endpoint_name)
    _deployments(self).pop(endpoint_name, None)
    invoke.forget_endpoint(self, endpoint_name)


def _list_endpoints(self: SageMakerModelBackend, *args: Any, **kwargs: Any) -> Any:
    for name in list(_deployments(self)):
        advance(self, name)
    return _original["list_endpoints"](self, *args, **kwargs)


def _check_role(backend: SageMakerModelBackend, role_arn: str) -> None:
    message = (f"Could not assume role {role_arn}. Please ensure that the role exists and allows principal "
               "'sagemaker.amazonaws.com' to assume the role.")
    iam = iam_backends[backend.account_id][get_partition(backend.region_name)]
    try:
        role = iam.get_role_by_arn(role_arn)
    except Exception:  # noqa: BLE001 - moto raises its own NotFound type
        raise ValidationError(message) from None
    trust = role.assume_role_policy_document
    if "sagemaker.amazonaws.com" not in (trust if isinstance(trust, str) else json.dumps(trust)):
        raise ValidationError(message)


def _create_model(self: SageMakerModelBackend, model_name: str, execution_role_arn: str,
                  primary_container: dict[str, Any] | None, vpc_config: dict[str, Any] | None,
                  containers: list[dict[str, Any]] | None, tags: list[dict[str, str]] | None) -> Any:
    if model_name in self._models:
        raise ValidationError(f'Cannot create already existing model "{arn_formatter("model", model_name, self.account_id, self.region_name)}".')
    _check_role(self, execution_role_arn)
    for c in [primary_container or {}, *(containers or [])]:
        url = c.get("ModelDataUrl")
        if url:
            bucket, _, key = url.removeprefix("s3://").partition("/")
            from moto.s3.models import s3_backends

            try:
                found = s3_backends[self.account_id][get_partition(self.region_name)].get_object(bucket, key)
            except Exception:  # noqa: BLE001 - missing bucket
                found = None
            if found is None:
                raise ValidationError(f"Could not find model data at {url}.")
    return _original["create_model"](self, model_name, execution_role_arn, primary_container, vpc_config,
                                      containers, tags)


def _create_endpoint_config(self: SageMakerModelBackend, endpoint_config_name: str, *args: Any,
                            **kwargs: Any) -> Any:
    if endpoint_config_name in self.endpoint_configs:
        arn = FakeEndpointConfig.arn_formatter(endpoint_config_name, self.account_id, self.region_name)
        raise ValidationError(f'Cannot create already existing endpoint configuration "{arn}".')
    return _original["create_endpoint_config"](self, endpoint_config_name, *args, **kwargs)


def _add_tags(self: SageMakerModelBackend, arn: str, tags: list[dict[str, str]]) -> list[dict[str, str]]:
    resource = self._get_resource_from_arn(arn)
    new = {t["Key"]: t for t in tags}
    resource.tags = [t for t in resource.tags if t["Key"] not in new] + list(new.values())
    return resource.tags


SageMakerModelBackend.create_endpoint = _create_endpoint
SageMakerModelBackend.describe_endpoint = _describe_endpoint
SageMakerModelBackend.delete_endpoint = _delete_endpoint
SageMakerModelBackend.list_endpoints = _list_endpoints
SageMakerModelBackend.create_model = _create_model
SageMakerModelBackend.create_endpoint_config = _create_endpoint_config
SageMakerModelBackend.add_tags = _add_tags
SageMakerModelBackend.update_endpoint = update_endpoint


def _update_endpoint_response(self: SageMakerResponse) -> ActionResult:
    endpoint = update_endpoint(
        self.sagemaker_backend,
        endpoint_name=self._get_param("EndpointName"),
        endpoint_config_name=self._get_param("EndpointConfigName"),
        retain_all_variant_properties=bool(self._get_param("RetainAllVariantProperties", False)),
        deployment_config=self._get_param("DeploymentConfig"),
        retain_deployment_config=bool(self._get_param("RetainDeploymentConfig", False)),
    )
    return ActionResult({"EndpointArn": endpoint.arn})


SageMakerResponse.update_endpoint = _update_endpoint_response


# -- the fault-injection control path ----------------------------------------------------------------

def _faults_response(request: Any, full_url: str, headers: Any) -> tuple[int, dict[str, str], str]:
    body = json.loads(request.get_data() or b"{}")
    account = body.get("account_id", "123456789012")
    region = body.get("region", "us-east-1")
    backend = sagemaker_backends[account][region]
    if request.method == "DELETE":
        _faults(backend).clear()
        return 200, {}, "{}"
    name = body.get("endpoint_name")
    if not name:
        return 400, {}, json.dumps({"message": "endpoint_name is required"})
    fault = {k: body[k] for k in ("deployment", "failure_reason", "container_fault") if k in body}
    if fault.get("deployment") not in (None, "Failed"):
        return 400, {}, json.dumps({"message": "deployment must be 'Failed'"})
    if fault.get("container_fault") not in (None, "label-order-reversed"):
        return 400, {}, json.dumps({"message": "container_fault must be 'label-order-reversed'"})
    _faults(backend)[name] = fault
    return 201, {}, json.dumps({"armed": {name: fault}})


moto_api_urls.url_paths["{0}" + FAULTS_PATH] = _faults_response
