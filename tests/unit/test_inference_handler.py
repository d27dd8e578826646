"""The SageMaker handler functions in components/serving/inference.py, as the PyTorch container calls them."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from components.errors import ModelPackageError
from components.package import Prediction, TextClassifier
from components.serving import inference
from components.serving.handler import RequestError
from tests.support.sagemaker_context import ModelServerContext
from tests.support.tiny import LABELS

INFERENCE_PY = Path(inference.__file__)
SPORT = "The striker scored twice in the cup final."


@pytest.fixture(scope="module")
def model_dir(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`/opt/ml/model` as SageMaker extracts model.tar.gz: the package plus `code/`."""
    root = tmp_path_factory.mktemp("sagemaker") / "model"
    shutil.copytree(tiny_package, root)
    (root / "code").mkdir()
    shutil.copy(INFERENCE_PY, root / "code" / "inference.py")
    (root / "code" / "requirements.txt").write_text("fineship\n")
    return root


@pytest.fixture(scope="module")
def model(model_dir: Path) -> TextClassifier:
    return inference.model_fn(str(model_dir))


def test_model_fn_loads_the_package_and_ignores_code(model: TextClassifier):
    assert isinstance(model, TextClassifier)
    assert model.labels == LABELS


def test_model_fn_names_what_is_missing(tmp_path: Path):
    with pytest.raises(ModelPackageError, match="config.json"):
        inference.model_fn(str(tmp_path))


def test_model_fn_refuses_an_unknown_backend(model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FINESHIP_BACKEND", "tensorrt")
    with pytest.raises(ModelPackageError, match="unknown backend 'tensorrt'.*FINESHIP_BACKEND"):
        inference.model_fn(str(model_dir))


@pytest.mark.parametrize("body,content_type,expected", [
    (b'{"inputs": "one"}', "application/json", ["one"]),
    ('{"inputs": ["one", "two"]}', "application/json", ["one", "two"]),  # the toolkit decodes JSON to str
    (bytearray(b'["one", "two"]'), "application/json; charset=utf-8", ["one", "two"]),  # TorchServe bytearray
    ('"one, with a comma"\ntwo\n', "text/csv", ["one, with a comma", "two"]),
    (b'{"inputs": "one"}\n"two"\n', "application/jsonlines", ["one", "two"]),
    (b'{"inputs": "no content type"}', None, ["no content type"]),
])
def test_input_fn_decodes_every_supported_type(body, content_type, expected):
    assert inference.input_fn(body, content_type) == expected


@pytest.mark.parametrize("body,content_type,status", [
    (b"hello", "text/plain", 415),
    (b'{"inputs": ', "application/json", 400),
    (b'{"texts": ["a"]}', "application/json", 400),
    (b'{"inputs": []}', "application/json", 400),
    (b"\xff\xfe", "application/json", 400),
    (b"[" * 50_000, "application/json", 400),
    (json.dumps(["t"] * 1025), "application/json", 413),
])
def test_input_fn_raises_client_errors_with_their_status(body, content_type, status):
    with pytest.raises(RequestError) as info:
        inference.input_fn(body, content_type)
    assert info.value.status == status
    assert isinstance(info.value, inference.InferenceRequestError)


def test_client_errors_are_toolkit_errors_inside_a_container():
    errors = pytest.importorskip("sagemaker_inference.errors")
    with pytest.raises(errors.BaseInferenceToolkitError) as info:
        inference.input_fn(b"hello", "text/plain")
    assert info.value.status_code == 415
    assert info.value.phrase == "Unsupported Media Type"
    assert "content type 'text/plain' is not supported" in str(info.value)


def test_predict_fn_returns_one_prediction_per_text(model: TextClassifier):
    preds = inference.predict_fn([SPORT, "Shares fell after the profit warning.", ""], model)
    assert len(preds) == 3 and all(isinstance(p, Prediction) for p in preds)
    for p in preds:
        assert p.label in LABELS and set(p.scores) == set(LABELS)
        assert sum(p.scores.values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_fn_agrees_with_the_model(model: TextClassifier):
    assert inference.predict_fn([SPORT], model)[0] == model.predict([SPORT])[0]


@pytest.mark.parametrize("accept,media", [
    ("application/json", "application/json"),
    ("application/jsonlines", "application/jsonlines"),
    ("*/*", "application/json"),
    (None, "application/json"),
    ("text/html, application/jsonlines", "application/jsonlines"),
])
def test_output_fn_serialises_for_the_accept_type(model: TextClassifier, accept, media):
    preds = inference.predict_fn([SPORT, "second"], model)
    body, content_type = inference.output_fn(preds, accept)
    assert content_type == media
    if media == "application/json":
        rows = json.loads(body)["predictions"]
    else:
        rows = [json.loads(line) for line in body.decode().splitlines()]
    assert [r["label"] for r in rows] == [p.label for p in preds]


def test_output_fn_refuses_an_unsupported_accept(model: TextClassifier):
    preds = inference.predict_fn([SPORT], model)
    with pytest.raises(RequestError) as info:
        inference.output_fn(preds, "text/csv")
    assert info.value.status == 406


def test_the_file_works_copied_alone_as_code_inference_py(model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """As in model.tar.gz: `code/inference.py` imported as the top-level module `inference`."""
    spec = importlib.util.spec_from_file_location("inference", model_dir / "code" / "inference.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "inference", module)
    spec.loader.exec_module(module)
    model = module.model_fn(str(model_dir))
    data = module.input_fn(json.dumps({"inputs": [SPORT]}), "application/json")
    body, content_type = module.output_fn(module.predict_fn(data, model), "application/json")
    assert content_type == "application/json"
    assert json.loads(body)["predictions"][0]["label"] in LABELS


def test_the_real_inference_toolkit_drives_the_handler(model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """sagemaker-inference's own Transformer finds `inference` by SAGEMAKER_PROGRAM and calls the four functions."""
    transformer_mod = pytest.importorskip("sagemaker_inference.transformer")
    monkeypatch.setenv("SAGEMAKER_PROGRAM", "inference.py")
    monkeypatch.syspath_prepend(str(model_dir / "code"))
    monkeypatch.delitem(sys.modules, "inference", raising=False)
    transformer = transformer_mod.Transformer()

    ok = ModelServerContext(model_dir, {"Content-Type": "application/json", "Accept": "application/jsonlines"})
    [body] = transformer.transform([{"body": bytearray(json.dumps({"inputs": [SPORT, "x"]}).encode())}], ok)
    assert ok.status is None and ok.content_type == "application/jsonlines"
    assert [json.loads(line)["label"] in LABELS for line in body.decode().splitlines()] == [True, True]

    wildcard = ModelServerContext(model_dir, {"Content-Type": "text/csv", "Accept": "*/*"})
    [body] = transformer.transform([{"body": bytearray(b"one\ntwo\n")}], wildcard)
    assert wildcard.content_type == "application/json" and len(json.loads(body)["predictions"]) == 2

    bad = ModelServerContext(model_dir, {"Content-Type": "text/plain"})
    transformer.transform([{"body": bytearray(b"hello")}], bad)
    assert bad.status == (415, "Unsupported Media Type")

    bad_json = ModelServerContext(model_dir, {"Content-Type": "application/json"})
    transformer.transform([{"body": bytearray(b'{"inputs": []}')}], bad_json)
    assert bad_json.status[0] == 400
