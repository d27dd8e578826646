"""`python -m components.serving --model-dir DIR --port N`: the server without the CLI's imports.

`FINESHIP_BACKEND` (auto, eager, torchscript, onnx, onnx-int8 or bf16) sets the default of `--backend`, so
an entry point that cannot pass flags (the container's `serve`) can override the package's recorded choice;
`auto`, the default, serves the backend the deployment chose (`export/variants.json`), else eager.
"""

from __future__ import annotations

import argparse
import logging

from components.monitoring.capture import CaptureOptions
from components.serving.app import ServerOptions, serve
from components.serving.backends import BACKEND_ENV, BACKENDS, backend_from_env


def main() -> None:
    defaults = ServerOptions()
    parser = argparse.ArgumentParser(description="fineship inference server (SageMaker contract)")
    parser.add_argument("--model-dir", required=True, help="model package directory")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--standby-port", type=int, default=None,
                        help="blue/green: listen on 127.0.0.1:--port only, and take over --host:--standby-port "
                             "on SIGUSR1")
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch)
    parser.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms)
    parser.add_argument("--head-timeout", type=float, default=defaults.head_timeout,
                        help="seconds a client has to send its request headers")
    parser.add_argument("--body-timeout", type=float, default=defaults.body_timeout,
                        help="seconds a client has to send its request body (then 408)")
    parser.add_argument("--backend", choices=BACKENDS, default=backend_from_env(),
                        help=f"auto: the backend the deployment chose and recorded (eager when none); or a "
                             f"variant that passed its gate (env {BACKEND_ENV})")
    parser.add_argument("--pass-overhead-tokens", type=float, default=defaults.pass_overhead_tokens,
                        help="fixed cost of one forward pass in tokens: micro-batches are cut into passes of "
                             "similar length when padding would cost more (0: one pass per micro-batch)")
    parser.add_argument("--max-batch-tokens", type=int, default=defaults.max_batch_tokens,
                        help="at most this many padded token positions in one forward pass (long texts go in "
                             "smaller passes); default: no limit")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="intra-op threads for the forward pass (default: torch's, one per core)")
    parser.add_argument("--capture-dir", default=None, help="data capture for `fineship monitor`: write sampled "
                        "requests and responses here (SageMaker's layout, yyyy/mm/dd/hh/*.jsonl)")
    parser.add_argument("--capture-percent", type=float, default=100.0, help="share of requests captured (0-100)")
    parser.add_argument("--capture-max-mb", type=int, default=100, help="oldest capture files go past this size")
    args = parser.parse_args()
    capture = None if args.capture_dir is None else CaptureOptions(
        directory=args.capture_dir, percent=args.capture_percent, max_total_bytes=args.capture_max_mb * 1024 * 1024)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(args.model_dir, args.host, args.port,
          ServerOptions(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, head_timeout=args.head_timeout,
                        body_timeout=args.body_timeout, backend=args.backend, torch_threads=args.torch_threads,
                        pass_overhead_tokens=args.pass_overhead_tokens, capture=capture,
                        max_batch_tokens=args.max_batch_tokens),
          standby_port=args.standby_port)


if __name__ == "__main__":
    main()
