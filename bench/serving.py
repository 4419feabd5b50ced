"""Serving overhead: DeInfer's local stack vs ONNX Runtime in-process vs NVIDIA Triton.

Closed-loop clients at several concurrencies send 224x224 images to ResNet-18 and
MobileNetV2; the same ONNX files are served by each system in the same run. Every cell is
repeated `--runs` times; the table shows min and median over runs of p50/p99 latency and
throughput, and the ratios the targets are stated in.

Triton (reference (c)) runs through PyTriton in its own virtualenv, made once with
`bench/setup_pytriton.sh`: bench/triton_reference.py serves the ONNX files with ONNX Runtime
behind Triton's dynamic batcher, and is called with the same tritonclient code as DeInfer.
Without that venv the Triton rows are skipped.

    python bench/serving.py [--seconds 8] [--runs 3] [--concurrency 1 4 16] [--workers 1]
        [--systems onnxruntime triton deinfer] [--pytriton-python .venv-pytriton/bin/python]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NoReturn

import numpy as np
import onnxruntime as ort

from deinfer.zoo import save_model

MODELS = ["resnet18", "mobilenet_v2"]
SYSTEMS = ["onnxruntime", "triton", "deinfer"]
SLO_MS = 60_000.0  # the benchmark measures overhead, not admission control
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_PYTRITON_PYTHON = BENCH_DIR.parent / ".venv-pytriton" / "bin" / "python"
TRITON_READY_TIMEOUT_S = 120.0
TRITON_STOP_TIMEOUT_S = 45.0  # tritonserver waits up to 30 s for in-flight work on exit
# (system, reference) pairs the ratio lines compare, when both were measured.
RATIO_PAIRS = [("deinfer", "onnxruntime"), ("deinfer", "triton"), ("triton", "onnxruntime")]


@dataclass
class RunResult:
    p50_ms: float
    p99_ms: float
    throughput: float
    errors: int


def closed_loop(call: Callable[[], None], concurrency: int, seconds: float) -> RunResult:
    """`concurrency` threads call back-to-back for `seconds` after a short warm-up."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start_barrier = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        start_barrier.wait()
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at[0]:
                return
            try:
                call()
            except Exception:
                errors[i] += 1
                continue
            latencies[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    start_barrier.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    flat = np.array([x for per in latencies for x in per]) * 1000.0
    if flat.size == 0:
        return RunResult(float("nan"), float("nan"), 0.0, sum(errors))
    return RunResult(
        float(np.percentile(flat, 50)),
        float(np.percentile(flat, 99)),
        flat.size / elapsed,
        sum(errors),
    )


def ort_caller(path: Path, image: np.ndarray) -> Callable[[], None]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def call() -> None:
        session.run(None, {"input": image})

    return call


def grpc_caller(url: str, model: str, image: np.ndarray) -> Callable[[], None]:
    """A KServe-v2 gRPC call through tritonclient, one client per thread: DeInfer and Triton."""
    import tritonclient.grpc as grpcclient

    local = threading.local()

    def call() -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = grpcclient.InferenceServerClient(url)
        inp = grpcclient.InferInput("input", list(image.shape), "FP32")
        inp.set_data_from_numpy(image)
        client.infer(model, [inp])

    return call


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class TritonReference:
    """bench/triton_reference.py in the PyTriton venv, serving `models` on free ports.

    Started through `deinfer._deathsig`, so it gets SIGTERM (and stops Triton) even if this
    process is killed; in its own session, so that should SIGTERM not stop it in time, one
    killpg ends tritonserver and its Python backend stubs too.
    """

    def __init__(self, python: Path, models: dict[str, Path], log_path: Path) -> None:
        self.python = python
        self.models = models
        self.log_path = log_path
        grpc_port, http_port, metrics_port = free_ports(3)
        self.url = f"127.0.0.1:{grpc_port}"
        self.command = [sys.executable, "-m", "deinfer._deathsig", str(os.getpid())]
        self.command += [str(python), str(BENCH_DIR / "triton_reference.py")]
        for name, path in models.items():
            self.command += ["--model", f"{name}={path}"]
        self.command += ["--grpc-port", str(grpc_port), "--http-port", str(http_port)]
        self.command += ["--metrics-port", str(metrics_port)]
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> TritonReference:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_ready(self) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        assert self.process is not None
        client = grpcclient.InferenceServerClient(self.url)
        deadline = time.monotonic() + TRITON_READY_TIMEOUT_S
        pending = set(self.models)
        try:
            while pending:
                if self.process.poll() is not None:
                    self.fail(f"exited with status {self.process.returncode} before being ready")
                if time.monotonic() > deadline:
                    self.fail(f"not ready after {TRITON_READY_TIMEOUT_S:.0f} s: {sorted(pending)}")
                with contextlib.suppress(InferenceServerException):  # not listening yet
                    pending = {m for m in pending if not client.is_model_ready(m)}
                if pending:
                    time.sleep(0.5)
        finally:
            client.close()

    def fail(self, problem: str) -> NoReturn:
        tail = self.log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"triton reference {problem}; log tail ({self.log_path}):\n{tail}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(TRITON_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # The leader is not reaped yet, so its process group id still names our processes.
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def summarise(results: list[RunResult]) -> dict[str, float]:
    def mm(values: list[float]) -> tuple[float, float]:
        return min(values), statistics.median(values)

    p50_min, p50_med = mm([r.p50_ms for r in results])
    p99_min, p99_med = mm([r.p99_ms for r in results])
    thr = [r.throughput for r in results]
    return {
        "p50_min": p50_min,
        "p50_med": p50_med,
        "p99_min": p99_min,
        "p99_med": p99_med,
        "thr_max": max(thr),
        "thr_med": statistics.median(thr),
        "errors": float(sum(r.errors for r in results)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--workers", type=int, default=1, help="DeInfer workers (1 core each)")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=SYSTEMS)
    parser.add_argument(
        "--pytriton-python",
        type=Path,
        default=None,
        help=f"python of the PyTriton venv (default: {DEFAULT_PYTRITON_PYTHON}, if it exists)",
    )
    args = parser.parse_args()
    systems = [s for s in SYSTEMS if s in args.systems]
    pytriton_python: Path | None = args.pytriton_python
    if pytriton_python is not None and not pytriton_python.is_file():
        parser.error(f"--pytriton-python {pytriton_python} does not exist")
    if "triton" in systems and pytriton_python is None:
        if DEFAULT_PYTRITON_PYTHON.is_file():
            pytriton_python = DEFAULT_PYTRITON_PYTHON
        else:
            print("triton: skipped (run bench/setup_pytriton.sh)", flush=True)
            systems.remove("triton")

    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
    # On a shared machine other jobs decide much of the result: say how busy it was.
    load_before = os.getloadavg()
    rows: list[tuple[str, int, str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as servers:
        paths = {m: save_model(m, Path(tmp)) for m in args.models}
        urls: dict[str, str] = {}
        if "deinfer" in systems:
            urls["deinfer"] = start_deinfer(servers, paths, args.workers, Path(tmp) / "stack")
        if "triton" in systems:
            assert pytriton_python is not None
            log_path = Path(tmp) / "triton.log"
            triton = servers.enter_context(TritonReference(pytriton_python, paths, log_path))
            urls["triton"] = triton.url
        for m in args.models:
            # ONNX Runtime runs in-process; the servers are called over gRPC alike.
            callers = {
                s: grpc_caller(urls[s], m, image) if s in urls else ort_caller(paths[m], image)
                for s in systems
            }
            for c in args.concurrency:
                per_system: dict[str, list[RunResult]] = {s: [] for s in callers}
                # Interleave systems within each repetition so drift hits all alike.
                for _ in range(args.runs):
                    for name, call in callers.items():
                        closed_loop(call, c, 1.0)  # warm-up
                        per_system[name].append(closed_loop(call, c, args.seconds))
                for name, results in per_system.items():
                    rows.append((m, c, name, summarise(results)))
    print_table(rows)
    load_after = os.getloadavg()
    print(
        f"\nhost load average (1/5/15 min) at start {load_before[0]:.2f}/{load_before[1]:.2f}/"
        f"{load_before[2]:.2f}, at end {load_after[0]:.2f}/{load_after[1]:.2f}/"
        f"{load_after[2]:.2f} on {os.cpu_count()} CPUs"
    )


def start_deinfer(
    servers: contextlib.ExitStack, paths: dict[str, Path], workers: int, state_dir: Path
) -> str:
    """Start the local stack (stopped by `servers`), register the models; returns its URL."""
    from deinfer import Client
    from deinfer.local_stack import LocalStack

    stack = servers.enter_context(LocalStack(workers=workers, examples=False, state_dir=state_dir))
    with Client(stack.url, controller_url=stack.controller_url) as client:
        for m, path in paths.items():
            client.register_model(m, str(path), slo_ms=SLO_MS)
        stack.wait_ready(list(paths))
    return stack.url


def print_table(rows: list[tuple[str, int, str, dict[str, float]]]) -> None:
    header = (
        f"{'model':<13}{'conc':>5}  {'system':<12}{'p50 min':>9}{'p50 med':>9}"
        f"{'p99 min':>9}{'p99 med':>9}{'req/s max':>11}{'req/s med':>11}{'errors':>8}"
    )
    print(header)
    print("-" * len(header))
    for m, c, name, s in rows:
        print(
            f"{m:<13}{c:>5}  {name:<12}{s['p50_min']:>9.2f}{s['p50_med']:>9.2f}"
            f"{s['p99_min']:>9.2f}{s['p99_med']:>9.2f}{s['thr_max']:>11.1f}"
            f"{s['thr_med']:>11.1f}{int(s['errors']):>8}"
        )
    print()
    print("ratios (medians over runs):")
    by_key = {(m, c, n): s for m, c, n, s in rows}
    for name, ref_name in RATIO_PAIRS:
        for m, c, n, s in rows:
            ref = by_key.get((m, c, ref_name))
            if n != name or ref is None:
                continue
            print(
                f"  {name} vs {ref_name:<12} {m:<13} conc {c:>3}: "
                f"p50 {s['p50_med'] - ref['p50_med']:+.2f} ms, "
                f"throughput {100 * s['thr_med'] / ref['thr_med']:.1f}% of {ref_name}"
            )


if __name__ == "__main__":
    main()
