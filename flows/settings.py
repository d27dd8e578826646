"""Where a run happens: environment settings with the `FINESHIP_` prefix.

Defaults are the embedded stack: MLflow in a SQLite file and artifacts under `./.fineship/`. The operator
may also keep settings in `<home>/operator.env` (`FINESHIP_NAME=value` lines, the environment wins): the
policy of that home, for every command run against it (`make demo` writes the demo's auto-promotion there).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, DotEnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from components.aws import AwsSettings
from components.config import GateConfig
from components.registry.review import ReviewPolicy


OPERATOR_FILE = "operator.env"


class Settings(BaseSettings):
    """Environment of a run; every field can be set as `FINESHIP_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="FINESHIP_", extra="ignore")

    home: Path = Field(Path(".fineship"), description="Working directory for state, runs, endpoints and logs.")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default: SQLite file in `home`.")
    artifact_root: Path | None = Field(None, description="MLflow artifact root for new experiments; default: home/artifacts.")
    mlflow_ui_url: str | None = Field(None, description="Base URL of the MLflow UI, for links in artifacts.")
    prefect_api_url: str | None = Field(None, description="Prefect API URL; unset runs an ephemeral Prefect server.")
    aws_region: str | None = Field(None, description="AWS region for S3 and SageMaker.")
    aws_endpoint_url: str | None = Field(None, description="Override of every AWS endpoint (e.g. a local moto server).")
    # Operator policy: set in the environment of the worker or CLI, never by a run's parameters.
    auto_promote: bool = Field(False, description="Promote a gated candidate to champion with the pipeline's own "
                               "signature, and let deployments accept pipeline-signed versions.")
    auto_promote_gate: GateConfig = Field(default_factory=GateConfig, description="The gate a run's own `gate` "
                                          "section must match or tighten for auto-promotion (JSON, e.g. "
                                          "'{\"min_accuracy\": 0.9}'; unset fields: fineship's defaults). A version "
                                          "judged by a weaker gate is registered and waits for a reviewer.")
    allow_self_approval: bool = Field(False, description="Let the person who trained a version approve it "
                                      "(one-person teams).")
    trusted_reviewers: Path | None = Field(None, description="Directory of the public keys (NAME.pub) of the "
                                           "reviewers whose approvals deployments accept.")
    reviewer_keys: Path | None = Field(None, description="Where `fineship reviewer init` writes and `fineship "
                                       "approve` reads this user's private keys; default ~/.fineship/reviewers.")
    webhook_url: SecretStr | None = Field(None, description="Webhook notified of gate rejections and failed "
                                          "deployments (kept secret: never logged).")
    # SageMaker deployment: the outputs of the infra/aws/fineship.yaml stack (see infra/aws/README.md).
    aws_project: str = Field("fineship", description="ProjectName of the infra/aws stack (names the rollback alarms).")
    aws_environment: str = Field("dev", description="Environment of the infra/aws stack: dev, staging or prod.")
    sagemaker_role_arn: str | None = Field(None, description="SageMakerServingRoleArn output: the role the deployed "
                                      "models run as (never the training role).")
    artifact_bucket: str | None = Field(None, description="ArtifactBucketName output: where model.tar.gz is uploaded.")
    artifact_prefix: str = Field("fineship", description="ArtifactPrefix of the stack: the key prefix the role may read.")
    image_uri: str | None = Field(None, description="Serving image (ServingRepositoryUri:tag); unset: the official "
                                  "SageMaker PyTorch inference image for the region.")
    sagemaker_endpoint_name: str | None = Field(None, description="SageMaker endpoint to deploy to; unset: "
                                                "<aws_project>-<aws_environment>, the stack's default EndpointName.")
    rollback_alarms: list[str] | None = Field(None, description="CloudWatch alarms a blue/green update rolls back on; "
                                              "unset: the stack's 5xx and latency alarms of the endpoint.")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the home's operator file (a file only the operator writes: run
        parameters cannot name paths in the home)."""
        home = Path(os.environ.get("FINESHIP_HOME") or ".fineship")
        return init_settings, env_settings, DotEnvSettingsSource(settings_cls, env_file=home / OPERATOR_FILE)

    def review_policy(self) -> ReviewPolicy:
        """The operator's review policy from this environment."""
        return ReviewPolicy(trusted_reviewers=self.trusted_reviewers, allow_self_approval=self.allow_self_approval,
                            auto_promote=self.auto_promote, home=self.home_dir)

    @property
    def sagemaker_endpoint(self) -> str:
        """The SageMaker endpoint a deployment or monitor uses when none is given: the setting, else the stack's."""
        return self.sagemaker_endpoint_name or f"{self.aws_project}-{self.aws_environment}"

    @property
    def home_dir(self) -> Path:
        return self.home.resolve()

    @property
    def mlflow_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        db = self.home_dir / "mlflow.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db}"

    @property
    def mlflow_artifact_root(self) -> Path:
        return (self.artifact_root or self.home_dir / "artifacts").resolve()

    @property
    def endpoints_dir(self) -> Path:
        return self.home_dir / "endpoints"

    @property
    def runs_dir(self) -> Path:
        return self.home_dir / "runs"

    @property
    def aws(self) -> AwsSettings:
        """Where AWS is for this environment; it builds every boto3 client (one retry policy for all)."""
        return AwsSettings(region=self.aws_region, endpoint_url=self.aws_endpoint_url)

    def s3_client(self) -> Any:
        """A boto3 S3 client for this environment (built on demand)."""
        return self.aws.client("s3")
