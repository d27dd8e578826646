"""Flow state hooks shared by the flows."""

from __future__ import annotations

from typing import Any

from components.notify import failure_payload, post_webhook
from flows.settings import Settings


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """On a failed flow run (gate rejection, deployment failure, ...), POST the reasons to FINESHIP_WEBHOOK_URL."""
    url = Settings().webhook_url
    if not url:
        return
    error = state.result(raise_on_failure=False)
    if not isinstance(error, BaseException):
        error = RuntimeError(state.message or "flow run failed")
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    run_url = f"{base.rstrip('/')}/runs/flow-run/{flow_run.id}" if base else None
    post_webhook(url.get_secret_value(), failure_payload(flow.name, flow_run.name, run_url, error))
