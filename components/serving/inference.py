"""SageMaker inference handler: `model_fn`, `input_fn`, `predict_fn`, `output_fn`.

For the official SageMaker PyTorch inference container: copy this file alone to `code/inference.py`
in `model.tar.gz`, beside a `code/requirements.txt` that installs fineship. It imports only
`components.*` (absolute imports, no relative ones), so it runs from `code/` as the container's
top-level module `inference` as well as from the package.

Client errors leave as `InferenceRequestError`: a fineship `RequestError` and, where the SageMaker
inference toolkit is importable, its `BaseInferenceToolkitError` too, so the container answers them
with their 4xx status instead of a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from components.package import Prediction, TextClassifier
from components.serving.backends import backend_from_env, load_backend
from components.serving.handler import RequestError, format_response, negotiate, parse_request

log = logging.getLogger(__name__)

try:  # present in SageMaker's framework containers, absent from a plain fineship install
    from sagemaker_inference.errors import BaseInferenceToolkitError

    _BASES: tuple[type[Exception], ...] = (RequestError, BaseInferenceToolkitError)
except ImportError:
    _BASES = (RequestError,)


class InferenceRequestError(*_BASES):  # type: ignore[misc]
    """A client error raised by a handler function: fineship's `RequestError`, and inside a SageMaker
    container also the toolkit's error type, which it answers with `status_code` instead of 500."""

    def __init__(self, status: int, message: str) -> None:
        Exception.__init__(self, message)  # the bases' own __init__s disagree on arguments
        self.status = self.status_code = status
        self.message = message
        self.phrase = HTTPStatus(status).phrase  # the toolkit's HTTP reason phrase; `message` goes in the body

    def __str__(self) -> str:
        return self.message


def _client_error(err: RequestError) -> InferenceRequestError:
    return InferenceRequestError(err.status, err.message)


def model_fn(model_dir: str, context: Any = None) -> TextClassifier:
    """Load the model package that SageMaker extracted into `model_dir` (its `code/` folder is ignored).

    Serves the backend the deployment chose and recorded in the archive (`export/variants.json`: the
    fastest variant that passed its gate), eager when none is recorded; the environment variable
    `FINESHIP_BACKEND` overrides it with another variant that passed.
    """
    clf = load_backend(model_dir, backend_from_env())
    log.info("fineship model_fn: %d labels from %s on %s", len(clf.labels), model_dir, clf.device)
    return clf


def input_fn(request_body: bytes | bytearray | str, request_content_type: str | None,
             context: Any = None) -> list[str]:
    """Decode a request body (JSON, JSON Lines or CSV) into a list of texts."""
    try:
        return parse_request(request_body, request_content_type)
    except RequestError as err:
        raise _client_error(err) from None


def predict_fn(data: list[str], model: TextClassifier, context: Any = None) -> list[Prediction]:
    """Predict the label and label scores of each text."""
    return model.predict(data)


def output_fn(prediction: Sequence[Prediction], accept: str | None,
              context: Any = None) -> tuple[bytes, str]:
    """Serialise predictions for the `Accept` type; returns `(body, content_type)` as the toolkit allows."""
    try:
        media = negotiate(accept)
    except RequestError as err:
        raise _client_error(err) from None
    return format_response(prediction, media), media
