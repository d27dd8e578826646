"""A fake of the per-request context the SageMaker model server (TorchServe/MMS) hands the inference
toolkit's `Transformer`: request headers in, response status and content type out.

Used by the unit tests that drive `inference.py` through the real toolkit and by the moto container
stand-in (`moto_sagemaker_container.py`, which runs isolated with `python -I` and loads this file by path).
It imports nothing of the repository, so both can load it.
"""

from __future__ import annotations

from pathlib import Path


class ModelServerContext:
    """What `Transformer.validate_and_initialize` and `Transformer.transform` read and write."""

    def __init__(self, model_dir: str | Path, headers: dict[str, str]) -> None:
        self.system_properties = {"model_dir": str(model_dir)}
        self.request_processor = [self]
        self._headers = headers
        self.status: tuple[int, str] | None = None
        self.content_type: str | None = None

    def get_request_properties(self) -> dict[str, str]:
        return self._headers

    def set_response_status(self, code: int, phrase: str) -> None:
        self.status = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_type = value
