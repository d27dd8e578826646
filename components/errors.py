"""Typed errors. Every message says what is wrong and what to do about it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


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


class LabelConsistencyError(DataValidationError):
    """The champion disagrees with the new labels of `classes` far more than with its own test labels: the labels
    look swapped (`swaps`, pairs of labels) or corrupted. Raised before training."""

    def __init__(self, message: str, classes: Sequence[str], swaps: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.classes = list(classes)
        self.swaps = [(a, b) for a, b in swaps]


class ModelPackageError(FineshipError):
    """A model package directory is incomplete or inconsistent."""


class TrainingError(FineshipError):
    """Training could not run or produced an unusable model."""


class TuningError(FineshipError):
    """A hyperparameter search could not run or found no usable trial."""


class GateRejected(FineshipError):
    """The evaluation gate refused the candidate model."""

    def __init__(self, message: str, decision: object | None = None) -> None:
        super().__init__(message)
        self.decision = decision


class RegistryError(FineshipError):
    """A model registry operation failed or was refused."""


class SignatureProblem(StrEnum):
    """What a `SignatureError` is about, for callers and tests that branch on it."""

    MISSING = "missing"                # no signature bundle where one was expected
    MALFORMED = "malformed"            # the bundle is not a fineship signature bundle
    BAD_SIGNATURE = "bad-signature"    # the signature does not verify over the manifest
    UNTRUSTED_KEY = "untrusted-key"    # signed by a key the trust store does not hold
    SIGNER_MISMATCH = "signer-mismatch"  # the manifest names someone other than the key's owner
    WRONG_MODEL = "wrong-model"        # the signature is for another model name or version
    FILES_CHANGED = "files-changed"    # the package files differ from the signed manifest
    PURPOSE_REFUSED = "purpose-refused"  # an auto-promotion signature where policy does not allow one
    SELF_APPROVAL = "self-approval"    # separation of duties
    KEY_FILE = "key-file"              # a key file is missing, unreadable, exposed or of the wrong kind
    TRUST_STORE = "trust-store"        # the trust store directory is missing or inconsistent
    PACKAGE = "package"                # the package directory cannot be signed as it is


class SignatureError(RegistryError):
    """An approval signature could not be made or does not hold; `problem` says which rule failed."""

    def __init__(self, message: str, problem: SignatureProblem) -> None:
        super().__init__(message)
        self.problem = problem


class DeploymentError(FineshipError):
    """A deployment step failed; the message names the step."""


class DeploymentStepError(DeploymentError):
    """A SageMaker deployment failed at `step`; `rolled_back` says what was undone, `left_behind` what was not."""

    def __init__(self, message: str, step: str, rolled_back: Sequence[str] = (), left_behind: Sequence[str] = ()):
        super().__init__(message)
        self.step = step
        self.rolled_back = list(rolled_back)
        self.left_behind = list(left_behind)


@dataclass(frozen=True)
class PreflightIssue:
    """One failed pre-flight check: which check (region, role, serverless, ...) and what to change."""

    check: str
    message: str


class PreflightError(DeploymentStepError):
    """Pre-flight checks failed; nothing was called on AWS."""

    STEP = "pre-flight"  # the step name in errors, plans and the tags recorded on the model version

    def __init__(self, issues: Sequence[PreflightIssue]):
        lines = "\n".join(f"  - [{i.check}] {i.message}" for i in issues)
        super().__init__(f"pre-flight checks failed, nothing was called on AWS:\n{lines}", self.STEP)
        self.issues = list(issues)


class ExportError(FineshipError):
    """A model export (TorchScript, ONNX) failed or disagrees with the model it came from; it must not ship."""

    def __init__(self, message: str, result: object | None = None) -> None:
        super().__init__(message)
        self.result = result


class MonitoringError(FineshipError):
    """Live traffic could not be compared with a version's profile (no profile stored, unreadable capture)."""


class BatchPredictionError(FineshipError):
    """Batch prediction of a file could not run or was refused (input, output, resume state, transform job)."""


class ModelLockTimeout(FineshipError, TimeoutError):
    """A run waited too long for its model's lock (another run for the model holds it, or a dead run's slot is
    stranded)."""
