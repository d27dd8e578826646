"""Where a run's plots are looked at: their MLflow download and UI addresses, and markdown that shows them.

The Prefect UI renders an image artifact as `<img src=URL>`, and renders markdown images whose URL is http(s) or a
`data:image/...` URI (both UIs: the React one allows `data:` for `img src` explicitly, the Vue one passes the URL
through). So a plot is shown in Prefect from the MLflow server's download route when there is a server, and embedded
in the stage's markdown report in any case, which shows even where the browser cannot reach MLflow (a file or
SQLite store, a server behind a login the browser has not passed).
"""

from __future__ import annotations

import base64
from html import escape
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

PLOTS_DIR = "plots"
"""Where plots go in an MLflow run."""
THUMBNAIL_WIDTH = 280
"""Pixels: the width of an artifact card on the Prefect run page."""
MAX_EMBEDDED_BYTES = 512 * 1024
"""Larger PNGs are linked, not embedded: a Prefect artifact is stored and sent whole with every page view."""


def mlflow_download_url(mlflow_url: str, run_id: str, artifact_path: str) -> str:
    """The URL an MLflow server serves one run artifact at, with the file's content type (`GET /get-artifact`,
    the route MLflow's own UI fetches artifact files from; it serves proxied and direct artifact stores alike)."""
    query = urlencode({"path": artifact_path, "run_uuid": run_id}, quote_via=quote)
    return f"{mlflow_url.rstrip('/')}/get-artifact?{query}"


@dataclass(frozen=True)
class PlotLinks:
    """Where one plot of an MLflow run is: its artifact path, and when an MLflow server's URL is known, the URL of
    the PNG itself and of the file in the MLflow UI's run page."""

    title: str
    run_id: str
    artifact_path: str
    image_url: str | None = None
    page_url: str | None = None


def plot_links(title: str, run_id: str, file_name: str, mlflow_url: str | None = None,
               run_page_url: str | None = None) -> PlotLinks:
    """The links of plot `file_name` logged under `PLOTS_DIR` of run `run_id`; `mlflow_url` is the MLflow server's
    base URL (None: no server, so no URLs), `run_page_url` the run's page in its UI (`MlflowRegistry.run_url`)."""
    path = f"{PLOTS_DIR}/{file_name}"
    if not mlflow_url:
        return PlotLinks(title=title, run_id=run_id, artifact_path=path)
    page = f"{run_page_url.rstrip('/')}/artifacts/{path}" if run_page_url else None
    return PlotLinks(title=title, run_id=run_id, artifact_path=path,
                     image_url=mlflow_download_url(mlflow_url, run_id, path), page_url=page)


def where_markdown(links: PlotLinks) -> str:
    """One line saying where the plot is in MLflow: a link to it in the MLflow UI, or its artifact path."""
    if links.page_url:
        return f"[`{links.artifact_path}` in MLflow run {links.run_id[:8]}]({links.page_url})"
    return f"`{links.artifact_path}` in MLflow run `{links.run_id}`"


def image_artifact_description(links: PlotLinks) -> str:
    """The description of a plot's Prefect image artifact: a thumbnail of the plot, then where it is in MLflow.

    Both Prefect UIs render an artifact's description as markdown on the artifact cards of the run page (the Vue UI
    only its first line), so the thumbnail line shows the plot on the run page itself; the HTML `width` (allowed by
    the React UI's sanitizer) keeps it inside the card.
    """
    if not links.image_url:
        return f"{links.title}: {where_markdown(links)}"
    thumbnail = (f'<img src="{escape(links.image_url)}" alt="{escape(links.title)}" '
                 f'width="{THUMBNAIL_WIDTH}">')
    return f"{thumbnail}\n\n{links.title}: {where_markdown(links)}"


def plot_markdown(png: str | Path, links: PlotLinks) -> str:
    """Markdown that shows the plot: the PNG embedded as a `data:` URI (shown with no access to MLflow), or when
    it is larger than `MAX_EMBEDDED_BYTES`, the MLflow download URL (or nothing but where it is, without a server);
    followed by where it is in MLflow."""
    data = Path(png).read_bytes()
    if len(data) <= MAX_EMBEDDED_BYTES:
        image = f"![{links.title}](data:image/png;base64,{base64.b64encode(data).decode('ascii')})\n\n"
    elif links.image_url:
        image = f"![{links.title}]({links.image_url})\n\n"
    else:
        image = ""
    return f"{image}{links.title}: {where_markdown(links)}"
