"""Where a run happens: environment settings with the `FINESHIP_` prefix.

Defaults are the embedded stack: MLflow in a SQLite file and artifacts under `./.fineship/`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    def s3_client(self):
        """A boto3 S3 client for this environment (built on demand)."""
        import boto3

        return boto3.client("s3", region_name=self.aws_region, endpoint_url=self.aws_endpoint_url)
