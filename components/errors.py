"""Typed errors. Every message says what is wrong and what to do about it."""

from __future__ import annotations


class FineshipError(Exception):
    """Base class of every error fineship raises on purpose."""


class ConfigError(FineshipError):
    """A configuration file or override is invalid."""


class DataLoadError(FineshipError):
    """A dataset could not be read (missing file, bad encoding, ragged rows, unknown format)."""


class DataValidationError(FineshipError):
    """The data broke at least one error-severity validation rule."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class ModelPackageError(FineshipError):
    """A model package directory is incomplete or inconsistent."""


class TrainingError(FineshipError):
    """Training could not run or produced an unusable model."""


class GateRejected(FineshipError):
    """The evaluation gate refused the candidate model."""

    def __init__(self, message: str, decision: object | None = None) -> None:
        super().__init__(message)
        self.decision = decision


class RegistryError(FineshipError):
    """A model registry operation failed or was refused."""


class DeploymentError(FineshipError):
    """A deployment step failed; the message names the step."""


class ExportError(FineshipError):
    """A model export (TorchScript, ONNX) failed or disagrees with the model it came from; it must not ship."""

    def __init__(self, message: str, result: object | None = None) -> None:
        super().__init__(message)
        self.result = result
