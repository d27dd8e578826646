"""Plot links and markdown: where a plot is shown without Prefect, MLflow or a network (pure functions)."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

from components.evaluation.plot_links import (MAX_EMBEDDED_BYTES, THUMBNAIL_WIDTH, image_artifact_description,
                                              mlflow_download_url, plot_links, plot_markdown)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
RUN = "0123456789abcdef0123456789abcdef"


def test_download_url_is_mlflow_get_artifact_route_with_the_path_quoted():
    url = mlflow_download_url("http://127.0.0.1:5000/", RUN, "plots/candidate confusion#1.png")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "127.0.0.1:5000", "/get-artifact")
    assert parse_qs(parts.query) == {"path": ["plots/candidate confusion#1.png"], "run_uuid": [RUN]}
    assert " " not in url and "#" not in url


def test_with_a_server_the_links_point_at_it_and_the_markdown_embeds_the_png(tmp_path):
    png = tmp_path / "candidate_confusion_matrix.png"
    png.write_bytes(PNG)
    links = plot_links("Confusion matrix", RUN, png.name, "http://mlflow:5000",
                       "http://mlflow:5000/#/experiments/1/runs/" + RUN)
    assert links.image_url == f"http://mlflow:5000/get-artifact?path=plots%2F{png.name}&run_uuid={RUN}"
    assert links.page_url == f"http://mlflow:5000/#/experiments/1/runs/{RUN}/artifacts/plots/{png.name}"
    md = plot_markdown(png, links)
    embedded = md.split("(data:image/png;base64,", 1)[1].split(")", 1)[0]
    assert base64.b64decode(embedded) == PNG
    assert f"[`plots/{png.name}` in MLflow run {RUN[:8]}]({links.page_url})" in md


def test_without_a_server_the_png_is_embedded_and_its_artifact_path_named(tmp_path):
    png = tmp_path / "training_curves.png"
    png.write_bytes(PNG)
    links = plot_links("Training curve", RUN, png.name)
    assert (links.image_url, links.page_url) == (None, None)
    md = plot_markdown(png, links)
    assert md.startswith("![Training curve](data:image/png;base64,")
    assert md.endswith(f"Training curve: `plots/training_curves.png` in MLflow run `{RUN}`")


def test_a_png_too_large_to_embed_is_linked_or_only_named(tmp_path):
    png = tmp_path / "big.png"
    png.write_bytes(PNG + b"\x00" * MAX_EMBEDDED_BYTES)
    served = plot_markdown(png, plot_links("Big", RUN, png.name, "http://mlflow:5000"))
    assert "data:" not in served and served.startswith("![Big](http://mlflow:5000/get-artifact?")
    local = plot_markdown(png, plot_links("Big", RUN, png.name))
    assert "data:" not in local and "![" not in local and "`plots/big.png`" in local


def test_the_image_artifact_description_starts_with_a_card_sized_thumbnail():
    links = plot_links("Training curve", RUN, "training_curves.png", "http://mlflow:5000",
                       "http://mlflow:5000/#/experiments/1/runs/" + RUN)
    first, rest = image_artifact_description(links).split("\n", 1)  # the Vue UI's cards show the first line only
    assert first == (f'<img src="http://mlflow:5000/get-artifact?path=plots%2Ftraining_curves.png&amp;run_uuid={RUN}"'
                     f' alt="Training curve" width="{THUMBNAIL_WIDTH}">')
    assert rest.strip().startswith("Training curve: [`plots/training_curves.png` in MLflow run")
    assert "<img" not in image_artifact_description(plot_links("Training curve", RUN, "training_curves.png"))
