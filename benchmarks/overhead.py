"""Orchestration overhead: the demo training pipeline through Prefect against the same components in plain Python.

    .venv/bin/python benchmarks/overhead.py [--repeats 3] [--max-steps N] [--no-write]

Both variants run the demo preset (flows/configs/demo.yaml on data/sample/news.csv) as `make demo`
trains it. `--max-steps N` shrinks the training for a quick check (then the gate floors are set to 0
so the shrunk candidate is still registered); the fixed orchestration cost is then a larger share. The
Prefect variant calls `training_flow(config)`; the direct variant (`direct_pipeline` below) runs the
same flow body (`training_flow.fn`) with every task of the flow's modules replaced by its own `.fn`, so
it executes the real code and leaves out only what is orchestration: task and flow runs, their states
and logs in the Prefect API, artifacts, result persistence and cache keys, the per-model concurrency lock.

Fairness: the variants alternate A/B/A/B in one process (load changes on a shared machine hit both);
every run gets a fresh FINESHIP_HOME (own MLflow SQLite store and artifacts, no champion, so both do
the same first-run work) and, for the flow, a fresh PREFECT_LOCAL_STORAGE_PATH, so the flow's cache
of validation and split (keyed on the data's content hash) never hits; the script checks that no task
run finished `Cached`. Before the timed runs, one untimed warm-up of each variant (max_steps=2, gate
floors 0) pays the process's one-off imports, so the timed runs compare steady state.

With no Prefect API configured (FINESHIP_PREFECT_API_URL / PREFECT_API_URL unset), Prefect runs an
ephemeral server in a subprocess. Its start-up is timed on its own and is not in the per-run numbers:
it is paid once per process, i.e. once per `fineship run` on the CLI, and never with a running server
(`make up`, a team server). Both figures are printed and written to docs/benchmarks.md.

Last line: RESULT overhead_pct=<(prefect_median - direct_median) / direct_median * 100>. Target: <= 10.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

def flow_modules() -> list[str]:
    """`flows.training` and, transitively, the modules of every task it (or a task it calls) imports: the
    namespaces where a task must be swapped for its `.fn` (derived, so a new task module is never missed)."""
    import importlib

    from prefect import Task

    modules, todo = [], ["flows.training"]
    while todo:
        name = todo.pop()
        if name in modules:
            continue
        modules.append(name)
        todo += [obj.fn.__module__ for obj in vars(importlib.import_module(name)).values() if isinstance(obj, Task)]
    return modules


def flow_tasks() -> dict[str, Any]:
    """Every Prefect task the training flow can call, by task name (read from the flow's own modules)."""
    import importlib

    from prefect import Task

    found: dict[str, Any] = {}
    for name in flow_modules():
        for obj in vars(importlib.import_module(name)).values():
            if isinstance(obj, Task):
                found[obj.name] = obj
    return found


RUN_STAGES: list[str] = []  # the tasks a first run executes, in order (filled by the direct runs)


def clock_names() -> list[str]:
    return RUN_STAGES or sorted(flow_tasks())


# -- the direct path --------------------------------------------------------------------------------

class StageClock:
    """Wall seconds per stage (named like the flow's tasks)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.results: dict[str, Any] = {}

    def wrap(self, name: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                result = self.results[name] = fn(*args, **kwargs)
                return result
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        return timed


@contextmanager
def without_prefect(clock: StageClock) -> Iterator[None]:
    """The flow's own modules with every task replaced by its plain function (`.fn`, timed), Prefect artifacts
    and the per-model concurrency lock made no-ops, and the run loggers disabled: orchestration removed,
    nothing else. New tasks are picked up by name, so this never drifts from the flow."""
    import importlib

    from prefect import Task
    from prefect.logging import disable_run_logger

    saved: list[tuple[Any, str, Any]] = []
    for name in flow_modules():
        module = importlib.import_module(name)
        for attr, obj in list(vars(module).items()):
            if isinstance(obj, Task):
                new = clock.wrap(obj.name, obj.fn)
            elif attr.startswith("create_") and attr.endswith("_artifact"):
                new = lambda *a, **k: None  # noqa: E731 - Prefect artifacts have no counterpart here
            elif attr == "model_lock":
                new = lambda _name: nullcontext()  # noqa: E731 - a Prefect global concurrency limit
            else:
                continue
            saved.append((module, attr, obj))
            setattr(module, attr, new)
    try:
        with disable_run_logger():
            yield
    finally:
        for module, attr, obj in saved:
            setattr(module, attr, obj)


def direct_pipeline(config: Any, clock: StageClock | None = None) -> dict[str, Any]:
    """`training_flow`'s own body and task bodies without Prefect (see `without_prefect`)."""
    from flows.training import training_flow

    clock = clock or StageClock()
    with without_prefect(clock):
        outcome = training_flow.fn(config)
    RUN_STAGES[:] = list(clock.seconds)
    reg, trained = outcome.registered, clock.results["fine-tune"]
    return {"run_id": outcome.run_id, "steps": trained.steps, "train_rows": len(trained_rows(outcome)),
            "accuracy": outcome.candidate.accuracy, "registered": f"{reg.name} v{reg.version}",
            "aliases": list(reg.aliases)}


def trained_rows(outcome: Any) -> list[str]:
    """The training split's row hashes, from the run's split manifest."""
    from components.registry.mlflow_registry import MlflowRegistry
    from components.registry.model_card import MANIFEST_ARTIFACT
    from flows.settings import Settings

    manifest = MlflowRegistry(Settings().mlflow_tracking_uri).load_run_json(outcome.run_id, MANIFEST_ARTIFACT)
    return manifest["row_hashes"]["train"]


# -- the Prefect path -------------------------------------------------------------------------------

def _task_timings(flow_run_id: Any, expected: int, wait: float = 30.0) -> tuple[dict[str, float], list[str], float]:
    """Seconds in Running per task name, the task runs' final state names, and the flow run's own run time.

    Task runs are recorded by the server from events, a moment after the client finished them: poll.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + wait
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            done = [r for r in runs if r.state is not None and r.state.is_final()]
            if len(done) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        flow_seconds = client.read_flow_run(flow_run_id).total_run_time.total_seconds()
    per_task: dict[str, float] = {}
    for r in done:  # task run names are "<task name>-<short hex>"
        name = next((s for s in clock_names() if r.name == s or r.name.startswith(s + "-")), r.name)
        per_task[name] = per_task.get(name, 0.0) + r.total_run_time.total_seconds()
    return per_task, sorted(r.state.name for r in done), flow_seconds


def prefect_pipeline(config: Any, storage: Path) -> dict[str, Any]:
    """`training_flow(config)` with its own result storage (so the validation/split cache cannot hit)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from flows.training import training_flow

    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(storage)}):
        state = training_flow(config, return_state=True)
        outcome = state.result()
    reg = outcome.registered
    return {"run_id": outcome.run_id, "accuracy": outcome.candidate.accuracy,
            "flow_run_id": state.state_details.flow_run_id, "registered": f"{reg.name} v{reg.version}",
            "aliases": list(reg.aliases)}


# -- the benchmark ----------------------------------------------------------------------------------

def _fresh_home(root: Path, label: str) -> Path:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=root))
    os.environ["FINESHIP_HOME"] = str(run_dir / "home")
    return run_dir


def _cpu_seconds(server_pid: int | None) -> tuple[float, float]:
    """CPU seconds so far of this process (with its finished children) and of the Prefect server process."""
    import psutil

    t = psutil.Process().cpu_times()
    own = t.user + t.system + t.children_user + t.children_system
    server = 0.0
    if server_pid is not None:
        try:
            st = psutil.Process(server_pid).cpu_times()
            server = st.user + st.system
        except psutil.Error:
            pass
    return own, server


def one_run(variant: str, config: Any, root: Path, server_pid: int | None = None) -> dict[str, Any]:
    """One timed run of `variant` ('prefect' or 'direct') in a fresh FINESHIP_HOME, deleted afterwards."""
    run_dir = _fresh_home(root, variant)
    try:
        clock = StageClock()
        cpu0 = _cpu_seconds(server_pid)
        t0 = time.perf_counter()
        if variant == "direct":
            info = direct_pipeline(config, clock)
        else:
            info = prefect_pipeline(config, run_dir / "prefect-storage")
        info["seconds"] = time.perf_counter() - t0
        cpu1 = _cpu_seconds(server_pid)
        info["cpu"], info["server_cpu"] = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        from components.registry.mlflow_registry import MlflowRegistry
        from flows.settings import Settings

        metrics = MlflowRegistry(Settings().mlflow_tracking_uri).client.get_run(info["run_id"]).data.metrics
        info["train_loop"] = metrics.get("train_seconds", float("nan"))  # the trainer's own loop time
        if variant == "direct":
            info["stages"] = clock.seconds
        else:
            info["stages"], info["task_states"], info["flow_run_seconds"] = _task_timings(info["flow_run_id"],
                                                                                          len(clock_names()))
            cached = [s for s in info["task_states"] if s.lower() == "cached"]
            if cached:
                raise SystemExit(f"a task result came from the cache ({info['task_states']}): not a fair comparison")
        return info
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _trivial_flow_seconds() -> tuple[float, float]:
    """Wall seconds of a one-task flow: first call in the process, then a second call."""
    from prefect import flow, task

    @task(name="noop")
    def noop(x: int) -> int:
        return x + 1

    @flow(name="overhead-noop")
    def noop_flow() -> int:
        return noop(1)

    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        noop_flow()
        times.append(time.perf_counter() - t0)
    return times[0], times[1]


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (default 3)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="shrink the training to N optimizer steps (default: the demo preset as is)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="fineship-overhead-"))
    # Environment as `fineship run` sets it (flows/cli.py: _prepare_env), with the Prefect home (the ephemeral
    # server's database) and every FINESHIP_HOME under the scratch directory; no shared MLflow store.
    os.environ["FINESHIP_HOME"] = str(root / "home")
    os.environ["PREFECT_HOME"] = str(root / "prefect")
    os.environ["FINESHIP_AUTO_PROMOTE"] = "true"  # as `make demo` sets the operator policy
    dropped = [k for k in ("FINESHIP_TRACKING_URI", "FINESHIP_ARTIFACT_ROOT", "FINESHIP_MLFLOW_UI_URL")
               if os.environ.pop(k, None) is not None]
    if dropped:
        print(f"ignoring {', '.join(dropped)}: every run gets its own SQLite store", flush=True)
    t0 = time.perf_counter()
    from flows.cli import _prepare_env

    _prepare_env()
    import great_expectations  # noqa: F401
    import mlflow  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from prefect.settings import PREFECT_API_URL

    from benchmarks._report import Results, bar_chart, machine
    from components.config import load_config
    from flows.training import training_flow  # noqa: F401
    t_imports = time.perf_counter() - t0

    api = PREFECT_API_URL.value()
    t_server, server_pid = None, None
    if not api:
        from prefect.server.api.server import SubprocessASGIServer

        t0 = time.perf_counter()
        server = SubprocessASGIServer()  # the singleton the flow's client would start on first use
        server.start()
        t_server = time.perf_counter() - t0
        server_pid = server.server_process.pid
    noop_first, noop_second = _trivial_flow_seconds()
    where = f"the Prefect server at {api}" if api else "an ephemeral Prefect server (subprocess, fresh SQLite)"
    print(f"\nimports {t_imports:.1f}s; {where}" + (f" started in {t_server:.1f}s" if t_server is not None else "")
          + f"; one-task flow: first call {noop_first:.2f}s, second {noop_second:.2f}s", flush=True)

    preset = REPO / "flows" / "configs" / "demo.yaml"
    data = str(REPO / "data" / "sample" / "news.csv")
    floors = {"gate.min_accuracy": 0.0, "gate.min_macro_f1": 0.0}
    shrunk = {"training.max_steps": args.max_steps, **floors} if args.max_steps else {}
    config = load_config(preset, {"data.path": data, **shrunk})
    warm = load_config(preset, {"data.path": data, "training.max_steps": 2, **floors})

    warmup: dict[str, float] = {}
    for variant in ("direct", "prefect"):  # untimed: pays the process's one-off imports and first uses
        print(f"\n=== warm-up {variant} (max_steps=2)", flush=True)
        warmup[variant] = one_run(variant, warm, root, server_pid)["seconds"]

    results: dict[str, list[dict[str, Any]]] = {"prefect": [], "direct": []}
    for i in range(args.repeats):
        for variant in ("prefect", "direct"):  # A/B/A/B
            load = os.getloadavg()[0]
            print(f"\n=== run {i + 1}/{args.repeats} {variant}  (load average {load:.1f})", flush=True)
            info = one_run(variant, config, root, server_pid)
            info["load"] = load
            results[variant].append(info)
            print(f"=== {variant} run {i + 1}: {info['seconds']:.1f}s wall, {info['cpu']:.1f}s CPU"
                  + (f" + {info['server_cpu']:.1f}s Prefect server CPU" if server_pid else "")
                  + f"; {info['registered']}, accuracy {info['accuracy']:.4f}", flush=True)
    shutil.rmtree(root, ignore_errors=True)

    P, D = results["prefect"], results["direct"]
    p_med, d_med = _med([r["seconds"] for r in P]), _med([r["seconds"] for r in D])
    pct = (p_med - d_med) / d_med * 100
    p_cpu = _med([r["cpu"] + r["server_cpu"] for r in P])
    d_cpu = _med([r["cpu"] for r in D])
    cpu_pct = (p_cpu - d_cpu) / d_cpu * 100
    p_loop, d_loop = _med([r["train_loop"] for r in P]), _med([r["train_loop"] for r in D])
    # The training loop is the same call in both variants and, on a shared machine, by far the noisiest part;
    # everything orchestration adds (task runs, API calls, artifacts, persisted results) happens outside it.
    p_rest = _med([r["seconds"] - r["train_loop"] for r in P])
    d_rest = _med([r["seconds"] - r["train_loop"] for r in D])
    rest_pct = (p_rest - d_rest) / d_med * 100
    steps, rows, cfg = D[0]["steps"], D[0]["train_rows"], config.training
    full = cfg.epochs * -(-rows // cfg.batch_size)
    if args.max_steps:
        shrink = (f"flows/configs/demo.yaml shrunk with training.max_steps={args.max_steps} ({steps} optimizer steps "
                  f"trained instead of the preset's up to {cfg.epochs} epochs x {-(-rows // cfg.batch_size)} = "
                  f"{full} steps on {rows} training rows) and gate floors set to 0 so the shrunk candidate is still "
                  f"registered (the gate task runs either way)")
    else:
        shrink = (f"flows/configs/demo.yaml as `make demo` runs it ({steps} optimizer steps of up to {cfg.epochs} "
                  f"epochs x {-(-rows // cfg.batch_size)} on {rows} training rows, early stopping on)")

    run_rows = "\n".join(
        f"| {i + 1} | {p['seconds']:.1f} | {d['seconds']:.1f} | {p['seconds'] - d['seconds']:+.1f} | "
        f"{p['train_loop']:.1f} / {d['train_loop']:.1f} | {p['cpu']:.1f} + {p['server_cpu']:.1f} | {d['cpu']:.1f} | "
        f"{p['load']:.1f} / {d['load']:.1f} |"
        for i, (p, d) in enumerate(zip(P, D)))
    stage_rows = []
    for s in clock_names():
        dm, pm = _med([r["stages"].get(s, 0.0) for r in D]), _med([r["stages"].get(s, 0.0) for r in P])
        stage_rows.append((s, dm, pm))

    def outside_loop(runs: list[dict[str, Any]]) -> float:
        return _med([r["stages"]["fine-tune"] - r["train_loop"] for r in runs])

    stage_rows.append(("(fine-tune outside the training loop)", outside_loop(D), outside_loop(P)))
    d_glue = _med([r["seconds"] - sum(r["stages"].values()) for r in D])
    p_glue = _med([r["flow_run_seconds"] - sum(r["stages"].values()) for r in P])
    p_outer = _med([r["seconds"] - r["flow_run_seconds"] for r in P])
    stage_rows.append(("flow body between the tasks", d_glue, p_glue))
    stage_rows.append(("flow run set-up and finish (outside the flow run's Running time)", 0.0, p_outer))
    stage_md = "\n".join(f"| {s} | {dm:.2f} | {pm:.2f} | {pm - dm:+.2f} |" for s, dm, pm in stage_rows)

    one_off = ""
    if t_server is not None:
        cold_extra = t_server + max(noop_first - noop_second, 0.0)
        cold_pct = cold_extra / d_med * 100
        one_off = (f"One-off, per process: the ephemeral Prefect server started in **{t_server:.1f} s** (fresh SQLite "
                   f"database); a one-task flow then took {noop_first:.2f} s on its first call and {noop_second:.2f} s "
                   f"on the second. `fineship run` without a server is one process per run and pays the start-up "
                   f"every run: {cold_extra:.1f} s = **{cold_pct:.1f}%** of the direct median, on top of the "
                   f"per-run figure. "
                   f"With a running server (`make up`, a team server) only the per-run figure applies.")
    warm_line = (f"Warm-up runs (max_steps=2, first of each variant in the process, not in the medians): direct "
                 f"{warmup['direct']:.1f} s, then Prefect {warmup['prefect']:.1f} s. Imports took {t_imports:.1f} s.")
    print("\nper-run seconds (A/B interleaved):")
    print("run  prefect  direct   train loop P/D   CPU prefect(+server)  CPU direct")
    for i, (p, d) in enumerate(zip(P, D)):
        print(f"{i + 1:<4} {p['seconds']:7.1f}  {d['seconds']:6.1f}   {p['train_loop']:6.1f}/{d['train_loop']:<6.1f}"
              f"   {p['cpu']:7.1f} + {p['server_cpu']:5.1f}      {d['cpu']:7.1f}")
    print(f"median prefect {p_med:.1f}s, direct {d_med:.1f}s: overhead {p_med - d_med:+.1f}s = {pct:+.1f}% "
          f"(target <= 10%); CPU seconds {p_cpu:.1f} vs {d_cpu:.1f} ({cpu_pct:+.1f}%)")
    print(f"outside the training loop: median prefect {p_rest:.1f}s, direct {d_rest:.1f}s: {p_rest - d_rest:+.1f}s = "
          f"{rest_pct:+.1f}% of the direct median (training loop medians {p_loop:.1f}s / {d_loop:.1f}s)")
    print(f"shrink: {shrink}")
    print("median seconds per stage: direct | Prefect task run | difference")
    for s, dm, pm in stage_rows:
        print(f"  {s:<66} {dm:7.2f} {pm:7.2f} {pm - dm:+7.2f}")
    if one_off:
        print(one_off.replace("**", ""))
    print(warm_line)

    results = Results("Orchestration overhead")
    results.add(f"RESULT overhead_pct={pct:.1f}")
    if not args.no_write:
        results.write(f"""
`benchmarks/overhead.py --repeats {args.repeats}{f" --max-steps {args.max_steps}" if args.max_steps else ""}` on {machine()}. Medians of A/B-interleaved runs; the load average before each run is in the table (above 2, other
processes competed for the 2 cores).

The demo training pipeline — {shrink} — run as `training_flow(config)` on {where}, and as the same
component calls in plain Python (`direct_pipeline` in the script: same order, same MLflow logging; no task runs,
states, logs, artifacts, result persistence or concurrency lock). Both variants do every stage: validation with
Data Docs, split, training, evaluation, gate, fresh-process package check, MLflow registration, auto-promotion.
Every run has a fresh FINESHIP_HOME (own MLflow SQLite store, no champion) and, for the flow, a fresh
PREFECT_LOCAL_STORAGE_PATH, so the validation/split cache never hits (checked: no task run ended `Cached`).
One untimed warm-up run per variant comes first: the per-run figure is steady state with the server running.

| run | Prefect flow (s) | direct (s) | difference (s) | training loop s (P / D) | CPU s Prefect (process + server) \
| CPU s direct | load avg (P / D) |
|---|---|---|---|---|---|---|---|
{run_rows}
| **median** | **{p_med:.1f}** | **{d_med:.1f}** | **{p_med - d_med:+.1f} ({pct:+.1f}%)** | {p_loop:.1f} / {d_loop:.1f} \
| {p_cpu:.1f} | {d_cpu:.1f} | |

Outside the training loop (wall time minus the trainer's own loop time, which is the same `train()` call in both
variants and by far the noisiest part on a shared machine): median Prefect {p_rest:.1f} s, direct {d_rest:.1f} s,
**{p_rest - d_rest:+.1f} s = {rest_pct:+.1f}%** of the direct median run.

Target: at most 10% per run. Median seconds per stage (Prefect: the task run's time in Running, read from the API):

| stage | direct | Prefect | difference |
|---|---|---|---|
{stage_md}

{one_off}

{warm_line}

{bar_chart("overhead", "The demo pipeline as a Prefect flow and as plain calls (median seconds per run)",
           {"whole run": {"Prefect flow": p_med, "direct": d_med},
            "outside the training loop": {"Prefect flow": p_rest, "direct": d_rest}}, "seconds")}
""")


if __name__ == "__main__":
    main()
