"""The monitor report as markdown (Prefect artifact) and as a webhook payload."""

from __future__ import annotations

from typing import Any

from components.monitoring.drift import MonitorReport


def monitor_markdown(report: MonitorReport, plot: str = "") -> str:
    """The report for people: verdict, one row per measure, the traffic read, the plot."""
    head = "DRIFT" if report.drifted else ("no verdict" if not report.enough_traffic else "no drift")
    rows = "\n".join(
        f"| {m.name} | {m.statistic} {m.value:.3f} | {m.threshold:g} | "
        f"{'' if m.p_value is None else f'{m.p_value:.2g}'} | **{'DRIFT' if m.drifted else 'ok'}** | "
        f"{m.reference} | {m.current} |" for m in report.measures)
    window = (f", {report.first:%Y-%m-%d %H:%M} to {report.last:%Y-%m-%d %H:%M} UTC" if report.first and report.last
              else "")
    lines = [f"# Live traffic of {report.model_name} v{report.model_version}: {head}", "",
             report.summary(), "",
             f"Read {report.requests} requests ({report.texts} texts{window}) from `{report.source}`"
             + (f" since {report.since:%Y-%m-%d %H:%M} UTC" if report.since else "")
             + (f"; {report.skipped} malformed records skipped" if report.skipped else "")
             + ("; read limit reached, older capture not read" if report.truncated else "") + ".", "",
             "| measure | statistic | limit | p-value | verdict | served version | live traffic |",
             "|---|---|---|---|---|---|---|", rows]
    if report.top_unknown_words:
        words = ", ".join(f"`{w}` ({n})" for w, n in report.top_unknown_words[:15])
        lines += ["", f"Most frequent unknown words: {words}"]
    if plot:
        lines += ["", plot]
    return "\n".join(lines)


def monitor_payload(report: MonitorReport, run_url: str | None = None) -> dict[str, Any]:
    """Slack-compatible webhook body (`text`) with the structured verdict."""
    text = f"fineship monitor: {report.summary()}" + (f" ({run_url})" if run_url else "")
    return {"text": text, "flow": "monitor", "model": report.model_name, "version": report.model_version,
            "drifted": report.drifted, "url": run_url,
            "measures": {m.name: {"value": round(m.value, 4), "threshold": m.threshold, "drifted": m.drifted}
                         for m in report.measures}}
