"""Orchestration overhead: the demo training pipeline through Prefect against the same components in plain Python.

    .venv/bin/python benchmarks/overhead.py [--repeats 3] [--max-steps N] [--no-write]

Both variants run the demo preset (flows/configs/demo.yaml on data/sample/news.csv) as `make demo`
trains it. `--max-steps N` shrinks the training for a quick check (then the gate floors are set to 0
so the shrunk candidate is still registered); the fixed orchestration cost is then a larger share. The
Prefect variant calls `training_flow(config)`; the direct variant (`direct_pipeline` below) calls the
same component functions in the same order with the same MLflow logging, and leaves out only what
is orchestration: task and flow runs, their states and logs in the Prefect API, artifacts, result
persistence and cache keys, the per-model concurrency lock.

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
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = ["load-dataset", "check-data", "publish-validation", "split-data", "publish-split", "fine-tune", "evaluate",
          "gate", "verify-package", "register-model"]


# -- the direct path --------------------------------------------------------------------------------

class StageClock:
    """Wall seconds per stage (named like the flow's tasks)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def direct_pipeline(config: Any, clock: StageClock | None = None) -> dict[str, Any]:
    """`training_flow` without Prefect: the same component calls, in the same order, with the same MLflow logging.

    Mirrors flows/training.py and the task bodies in tasks/*.py line by line for a local dataset with
    no explicit validation/test files and no s3; the flow's plain helpers (no @task) are reused so
    the MLflow content is identical. Prefect artifacts, logs and states have no counterpart here.
    """
    from transformers import AutoTokenizer

    from components.data.io import read_dataset
    from components.data.profile import DataProfile, build_profile
    from components.data.split import split_frame
    from components.data.validation import ValidationPolicy, validate_frame
    from components.errors import DataValidationError, GateRejected
    from components.evaluation.gate import decide
    from components.evaluation.metrics import evaluate_classifier
    from components.evaluation.plots import plot_confusion_matrix, plot_reliability, plot_training_curves
    from components.package import load_package
    from components.provenance import config_hash, git_commit
    from components.registry.mlflow_registry import MlflowRegistry
    from components.registry.package_check import verify_package
    from components.registry.review import auto_promote
    from components.training.model_factory import resolve_model_path
    from components.training.trainer import train
    from flows.settings import Settings
    from flows.training import PROFILE_ARTIFACT, _model_card
    from tasks.data import _log_docs, _policy_hash
    from tasks.registry import PIP_REQUIREMENTS
    from tasks.training import _log_health, _params

    clock = clock or StageClock()
    settings = Settings()
    uri = settings.mlflow_tracking_uri
    registry = MlflowRegistry(uri, settings.mlflow_artifact_root)
    d = config.data
    with clock("load-dataset"):
        df, ref = read_dataset(d.path, d.format, s3_client=None)
    docs_root = settings.home_dir / "cache" / "data_docs"
    run_id = registry.start_run(config.registry.experiment, run_name=f"train-{config.registry.model_name}",
                                tags={"fineship.prefect_flow_run_id": "", "fineship.git_commit": git_commit(),
                                      "fineship.config_hash": config_hash(config),
                                      "fineship.data_fingerprint": ref.fingerprint})
    registry.log_dict(run_id, config.model_dump(mode="json"), "config.json")
    try:
        policy = ValidationPolicy(
            text_column=d.text_column, label_column=d.label_column, labels=d.labels,
            min_examples_per_class=d.min_examples_per_class, max_chars=d.max_chars,
            max_duplicate_rate=d.max_duplicate_rate, max_imbalance_ratio=d.max_imbalance_ratio,
            max_length=config.training.max_length, max_truncated_share=d.max_truncated_share)
        champion_version = registry.find_version(config.registry.model_name, "champion")
        reference = None
        if champion_version is not None and champion_version.run_id:
            stored = registry.load_run_json(champion_version.run_id, PROFILE_ARTIFACT)
            reference = DataProfile.model_validate(stored) if stored else None
        if reference is not None:
            raise RuntimeError("fresh FINESHIP_HOME expected: found a champion")
        docs_dir = str(docs_root / f"{ref.fingerprint[:16]}-{_policy_hash(policy, reference)}")
        with clock("check-data"):  # tasks.data.check_data
            tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(config.training.model))
            report = validate_frame(df, policy, ref.uri, tokenizer, docs_dir=docs_dir)
            profile = build_profile(df, policy.text_column, policy.label_column) if report.passed else None
        with clock("publish-validation"):  # tasks.data.publish_validation
            MlflowRegistry(uri).log_dict(run_id, report.model_dump(), "validation/report.json")
            if report.docs_dir and Path(report.docs_dir).is_dir():
                with tempfile.TemporaryDirectory() as tmp:
                    docs = Path(tmp) / "data_docs"
                    shutil.copytree(report.docs_dir, docs)
                    _log_docs(docs, uri, run_id)
            if not report.passed:
                raise DataValidationError(report.summary(), report)
        registry.log_dict(run_id, profile.model_dump(), PROFILE_ARTIFACT)
        labels = list(d.labels) if d.labels else sorted(report.class_counts)

        sp = config.split
        with clock("split-data"):  # tasks.data.split_data
            splits = split_frame(df, d.text_column, d.label_column, sp.train, sp.validation, sp.test, sp.seed,
                                 sp.near_duplicate_threshold)
        m = splits.manifest
        registry.log_dict(run_id, m.model_dump(), "data/split_manifest.json")
        registry.log_dataset_inputs(run_id, {k: splits.frame(k) for k in ("train", "validation", "test")}, ref.uri,
                                    {k: f"{m.digest}-{k}" for k in ("train", "validation", "test")}, d.label_column)
        registry.set_tags(run_id, {"fineship.split_digest": m.digest})
        registry.log_params(run_id, {"data.uri": ref.uri, "data.rows": ref.rows, "split.seed": sp.seed,
                                     "split.near_duplicate_threshold": sp.near_duplicate_threshold,
                                     **{f"split.{k}_rows": v for k, v in m.sizes.items()}})

        package_dir = str(settings.runs_dir / run_id / "package")
        cfg = config.training
        with clock("fine-tune"):  # tasks.training.fine_tune (local backend, one process)
            treg = MlflowRegistry(uri)
            treg.log_params(run_id, _params(cfg))
            tc, lc = d.text_column, d.label_column
            trained = train(splits.train[tc].tolist(), splits.train[lc].astype(str).tolist(),
                            splits.validation[tc].tolist(), splits.validation[lc].astype(str).tolist(),
                            labels, cfg, package_dir, on_metrics=lambda mt, step: treg.log_metrics(run_id, mt, step))
            treg.log_metrics(run_id, {"train_seconds": trained.train_seconds,
                                      "train_samples_per_second": trained.samples_per_second})
            _log_health(treg, run_id, trained)
            if trained.history:
                with tempfile.TemporaryDirectory() as tmp:
                    treg.log_artifact(run_id, plot_training_curves(trained.history, Path(tmp) / "training_curves.png"),
                                      "plots")
        with clock("evaluate"):  # tasks.evaluation.evaluate_model, role "candidate"
            clf = load_package(trained.package_dir)
            test = splits.test
            candidate = evaluate_classifier(clf, test[tc].tolist(), test[lc].astype(str).tolist(),
                                            model=trained.package_dir, split_digest=m.digest)
            ereg = MlflowRegistry(uri)
            ereg.log_metrics(run_id, {f"candidate_test_{k}": v for k, v in candidate.headline().items()}
                             | {"candidate_latency_ms_per_example": candidate.latency_ms_per_example})
            ereg.log_dict(run_id, candidate.model_dump(), "evaluation/candidate_report.json")
            with tempfile.TemporaryDirectory() as tmp:
                cm_png = plot_confusion_matrix(candidate, Path(tmp) / "candidate_confusion_matrix.png")
                ereg.log_artifact(run_id, cm_png, "plots")
                ereg.log_artifact(run_id, plot_reliability(candidate, Path(tmp) / "candidate_reliability.png"), "plots")
        champion = None  # fresh home: no champion to download and score
        with clock("gate"):  # tasks.evaluation.gate
            decision = decide(candidate, champion, config.gate, None)
            MlflowRegistry(uri).set_tags(run_id, {"fineship.gate": "passed" if decision.passed else "rejected",
                                                  "fineship.gate_reasons": "; ".join(decision.reasons)})
        smoke_texts = splits.test[d.text_column].head(5).tolist()
        if not decision.passed:
            registry.end_run(run_id, "FINISHED")
            raise GateRejected(decision.summary() + "; nothing was registered", decision)

        with clock("verify-package"):  # tasks.registry.verify_package_task
            vclf = load_package(trained.package_dir)
            verify_package(trained.package_dir, smoke_texts, vclf.predict_proba(smoke_texts))
        tags = {
            "fineship.data_fingerprint": ref.fingerprint, "fineship.split_digest": m.digest,
            "fineship.git_commit": git_commit(), "fineship.config_hash": config_hash(config),
            "fineship.gate": "passed", "fineship.gate_reasons": "; ".join(decision.reasons),
            "fineship.labels": ",".join(labels), "fineship.base_model": cfg.model,
            **{f"metric.{k}": f"{v:.4f}" for k, v in candidate.headline().items()},
            "metric.accuracy_ci95": "[{:.4f}, {:.4f}]".format(*candidate.accuracy_ci),
            "metric.macro_f1_ci95": "[{:.4f}, {:.4f}]".format(*candidate.macro_f1_ci),
            "fineship.auto_promote": str(config.registry.auto_promote).lower(),
            "fineship.profile": f"runs:/{run_id}/{PROFILE_ARTIFACT}",
        }
        card = _model_card(config, ref, candidate, decision, champion)
        registry.log_text(run_id, card, "model_card.md")
        with clock("register-model"):  # tasks.registry.register_model
            registered = MlflowRegistry(uri).log_and_register(
                run_id, trained.package_dir, config.registry.model_name, smoke_texts, PIP_REQUIREMENTS, tags, card,
                aliases=("challenger",), idempotency_key=f"direct:{uuid.uuid4()}")
        if config.registry.auto_promote:
            auto_promote(registry, registered.name, registered.version)
            registered = registry.get_version(registered.name, version=registered.version)
        registry.end_run(run_id, "FINISHED")
    except GateRejected:
        raise
    except BaseException:
        registry.end_run(run_id, "FAILED")
        raise
    return {"run_id": run_id, "steps": trained.steps, "train_rows": m.sizes["train"], "accuracy": candidate.accuracy,
            "registered": f"{registered.name} v{registered.version}", "aliases": list(registered.aliases)}


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
        name = next((s for s in STAGES if r.name == s or r.name.startswith(s + "-")), r.name)
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
                                                                                          len(STAGES))
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

    from benchmarks._report import machine, write_section
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
    for s in STAGES:
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
    result = f"RESULT overhead_pct={pct:.1f}"

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

    if not args.no_write:
        write_section("Orchestration overhead", f"""
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

```
{result}
```
""")
    print(result)


if __name__ == "__main__":
    main()
