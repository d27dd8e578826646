"""SageMaker deployment with blue/green updates, a smoke test and rollback on any failure.

    pre-flight -> build model.tar.gz (from the approved bytes) -> inspect the endpoint (read-only) -> plan
    -> lock the endpoint and the model (S3 conditional writes) -> inspect again, re-plan if it changed
    -> S3 PutObject -> CreateModel -> CreateEndpointConfig -> CreateEndpoint | UpdateEndpoint (blue/green)
    -> wait for InService -> InvokeEndpoint smoke test -> tag the endpoint -> record on the model version
    -> prune configs and models older than the rollback target -> release the lock

Every AWS call a deployment will make is decided up front in a `DeploymentPlan`; `execute_plan`
makes exactly those calls, so the plan a dry run prints is what a real run does. Each call is
recorded in a journal (in S3) before it is made, so a call whose answer was lost counts as
possibly made. A failure at any step rolls back, reconciled against what AWS says now: the
endpoint goes back to the configuration it served before (or is deleted when this deployment
created it), and the model, endpoint configuration and uploaded object this deployment created are
deleted unless the endpoint (or another deployment's model) still uses or is moving to them. The
failure is recorded on the model version, and a `DeploymentStepError` names the failed step. A
deployment whose process died is rolled back from its journal by the next deployment that takes
over its lock. An archive already in S3 is reused only when S3's SHA-256 checksum of it is the
archive's.

The boto3 clients are passed in (`AwsClients`, built from `components.aws.AwsSettings`), so the same
code runs against AWS or a local endpoint such as a moto server. The `sagemaker` SDK (3.x) is used
where it adds something boto3 lacks: resolving the official PyTorch inference image URI from the
tables it ships (offline). Its resource classes (`sagemaker.core.resources`) are not used: they fail
validation against moto.

Modules, in the order a deployment uses them:

- `settings`: `SageMakerOptions` (the one options model of the CLI, the deploy-model form and the
  deployer), `SageMakerTarget` (options + environment), `AwsClients`, step names and limits;
- `checks`: the pre-flight (`preflight`, `require_preflight` -> `PreflightResult`), no AWS call;
- `state`: what is deployed now (`inspect_endpoint`, ...), read-only calls;
- `plan`: `DeploymentPlan`, `plan_deployment` (pure);
- `prepare`: `prepare_deployment`: archive, inspect, plan (`inspect_and_plan`, run again under the lock);
- `lock`: `DeploymentLock`, the S3 lock that serialises deployments of an endpoint and of a model;
- `journal`: `Journal`, the record of intended calls (S3), and when a call may have happened;
- `execute`: `execute_plan`, the smoke test, recording, `deploy_to_sagemaker`;
- `rollback`: `roll_back` (reconciled), `recover_deployment` and pruning; `calls`: `PlannedCall`, making it,
  reading AWS errors;
- `commands`: `list_endpoints`, `endpoint_status`, `delete_endpoint`.
"""

from components.deploy.sagemaker.calls import PlannedCall, describe
from components.deploy.sagemaker.checks import (
    PreflightResult,
    preflight,
    require_preflight,
    resolve_image_uri,
    rollback_alarm_names,
)
from components.deploy.sagemaker.commands import EndpointSummary, delete_endpoint, endpoint_status, list_endpoints
from components.deploy.sagemaker.execute import (
    SageMakerDeploymentRecord,
    SmokeReport,
    deploy_to_sagemaker,
    execute_plan,
    record_failure,
)
from components.deploy.sagemaker.journal import Journal, JournalRecord, load_journal, refused_by_aws
from components.deploy.sagemaker.lock import DeploymentLock, LockHolder
from components.deploy.sagemaker.plan import (
    DeploymentPlan,
    artifact_key,
    journal_key,
    lock_keys,
    new_deploy_id,
    plan_deployment,
    resource_name,
    resource_tags,
)
from components.deploy.sagemaker.prepare import PreparedDeployment, inspect_and_plan, prepare_deployment
from components.deploy.sagemaker.rollback import recover_deployment, roll_back
from components.deploy.sagemaker.settings import (
    BUILD,
    CREATE_CONFIG,
    CREATE_ENDPOINT,
    CREATE_MODEL,
    INSPECT,
    LOCK,
    LOCK_RENEW_SECONDS,
    LOCK_TTL_SECONDS,
    MIN_FRAMEWORK,
    PREFLIGHT,
    RECORD,
    RECORD_PREFIX,
    RUNTIME_MEMORY_MB,
    SERVERLESS_DISK_MB,
    SERVERLESS_IMAGE_MAX_MB,
    SERVERLESS_MAX_CONCURRENCY,
    SERVERLESS_MEMORY_MB,
    SMOKE,
    TAG_ENDPOINT,
    TAG_PREFIX,
    TRANSITIONAL,
    UPDATE_ENDPOINT,
    UPLOAD,
    VARIANT,
    WAIT,
    AwsClients,
    SageMakerOptions,
    SageMakerTarget,
    VersionTagger,
    parse_options,
)
from components.deploy.sagemaker.state import (
    EndpointState,
    EndpointUsage,
    archive_users,
    endpoint_usage,
    inspect_endpoint,
    managed_configs,
    missing_alarms,
    object_state,
    settle_endpoint,
    sha256_base64,
)
from components.errors import DeploymentStepError, PreflightError, PreflightIssue

__all__ = [
    "BUILD", "CREATE_CONFIG", "CREATE_ENDPOINT", "CREATE_MODEL", "INSPECT", "LOCK", "LOCK_RENEW_SECONDS",
    "LOCK_TTL_SECONDS", "MIN_FRAMEWORK", "PREFLIGHT", "RECORD",
    "RECORD_PREFIX", "RUNTIME_MEMORY_MB", "SERVERLESS_DISK_MB", "SERVERLESS_IMAGE_MAX_MB",
    "SERVERLESS_MAX_CONCURRENCY", "SERVERLESS_MEMORY_MB", "SMOKE", "TAG_ENDPOINT", "TAG_PREFIX", "TRANSITIONAL",
    "UPDATE_ENDPOINT", "UPLOAD", "VARIANT", "WAIT",
    "AwsClients", "DeploymentLock", "DeploymentPlan", "DeploymentStepError", "EndpointState", "EndpointSummary",
    "EndpointUsage", "Journal", "JournalRecord", "LockHolder", "PlannedCall",
    "PreflightError", "PreflightIssue", "PreflightResult", "PreparedDeployment", "SageMakerDeploymentRecord",
    "SageMakerOptions", "SageMakerTarget", "SmokeReport", "VersionTagger",
    "archive_users", "artifact_key", "delete_endpoint", "deploy_to_sagemaker", "describe", "endpoint_status",
    "endpoint_usage", "execute_plan", "inspect_and_plan", "inspect_endpoint", "journal_key", "list_endpoints",
    "load_journal", "lock_keys", "managed_configs", "missing_alarms", "new_deploy_id", "object_state",
    "parse_options", "plan_deployment", "preflight", "prepare_deployment", "record_failure", "recover_deployment",
    "refused_by_aws", "require_preflight", "resolve_image_uri", "resource_name", "resource_tags", "roll_back",
    "rollback_alarm_names", "settle_endpoint", "sha256_base64",
]
