"""Webhook notifications (Slack-compatible JSON: a `text` field plus structured fields)."""

from __future__ import annotations

import logging
from typing import Any

import httpx

log = logging.getLogger(__name__)


def failure_payload(flow: str, run_name: str, run_url: str | None, error: BaseException) -> dict[str, Any]:
    """What a reviewer needs: which flow failed, why, and where to look."""
    reasons = list(getattr(getattr(error, "decision", None), "reasons", []) or [])
    kind = type(error).__name__
    headline = {"GateRejected": "gate rejected the candidate", "DeploymentError": "deployment failed",
                "DataValidationError": "data validation failed"}.get(kind, f"failed with {kind}")
    text = f"fineship {flow} run '{run_name}': {headline}: {str(error)[:600]}"
    if run_url:
        text += f" ({run_url})"
    return {"text": text, "flow": flow, "run": run_name, "url": run_url, "error_type": kind,
            "message": str(error)[:2000], "reasons": reasons}


def post_webhook(url: str, payload: dict[str, Any], timeout: float = 10.0) -> int:
    """POST the payload; return the HTTP status. Never raises (a notification must not fail a run) and
    never logs the URL, which often embeds a secret token."""
    try:
        response = httpx.post(url, json=payload, timeout=timeout)
    except httpx.HTTPError as err:
        log.warning("webhook notification failed: %s", type(err).__name__)
        return 0
    if response.status_code >= 300:
        log.warning("webhook notification answered HTTP %d", response.status_code)
    return response.status_code
