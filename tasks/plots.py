"""Publishing a plot where people look: the MLflow run, and the Prefect run page (called inside tasks)."""

from __future__ import annotations

from pathlib import Path

from prefect.artifacts import create_image_artifact

from components.evaluation.plot_links import PLOTS_DIR, image_artifact_description, plot_links, plot_markdown
from components.registry.mlflow_registry import MlflowRegistry


def publish_plot(registry: MlflowRegistry, run_id: str, png: Path, title: str, key: str,
                 mlflow_ui_url: str | None = None) -> str:
    """Log `png` to the MLflow run under `plots/`; with an MLflow server's URL, add a Prefect image artifact `key`
    that loads the PNG from that server. Returns markdown that shows the plot, for the stage's report artifact."""
    registry.log_artifact(run_id, png, PLOTS_DIR)
    links = plot_links(title, run_id, png.name, mlflow_ui_url, registry.run_url(run_id, mlflow_ui_url))
    if links.image_url:
        create_image_artifact(links.image_url, key=key, description=image_artifact_description(links))
    return plot_markdown(png, links)
