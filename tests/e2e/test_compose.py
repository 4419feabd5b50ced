"""DeInfer under Docker Compose, end to end: images built offline, the CPU project up and
healthy, a model registered with the CLI from the host and served to tritonclient, a worker
killed under load, Redis restarted under load, and `down` + `up` keeping the models.

The tests share one compose project and run in file order (each leaves the stack serving).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from deinfer import Client
from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.inference import grpc_service_pb2_grpc as pb_grpc
from deinfer.tensors import to_raw
from deinfer.zoo import save_model
from tests.e2e.compose import ROOT, ComposeProject, compose_problem
from tests.e2e.conftest import Stack, report
from tests.integration.conftest import reference
from tests.integration.loadgen import LoadReport, Outcome, _one, closed_loop

# The first test that needs the images waits for scripts/build-images (its own limit: 25 min).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

MODEL = "tiny_cnn"
SHAPE = (1, 3, 32, 32)
REQUEST_TIMEOUT_S = 2.0
# Stated bounds, checked below.
RESUME_BOUND_S = 5.0  # worker killed: successes continue; no gap without one longer than this
REPLACE_BOUND_S = 10.0  # worker killed: the routes hold only the survivor within this
REDIS_RESUME_BOUND_S = 10.0  # Redis restarted: successes again within this after it is back


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(MODEL, tmp_path_factory.mktemp("zoo"))


def _cli(stack: Stack, *args: str) -> str:
    argv = [sys.executable, "-m", "deinfer.cli", "--url", stack.url]
    argv += ["--controller", stack.controller_url, "--timeout", "120", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def _wait_ready(stack: Stack, model: str = MODEL, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    with Client(stack.url, controller_url=stack.controller_url) as client:
        while not client.is_model_ready(model, timeout=2.0):
            assert time.monotonic() < deadline, f"{model} not ready after {timeout_s:.0f} s"
            time.sleep(0.5)


def _routes(stack: Stack) -> list[str]:
    with Client(stack.url, controller_url=stack.controller_url) as client:
        plan = client.get_plan(timeout=10.0)
    return sorted(r.worker_id for m in plan.routes.models if m.model == MODEL for r in m.routes)


def _wait_routes(stack: Stack, want: Callable[[list[str]], bool], timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    routes = _routes(stack)
    while not want(routes) and time.monotonic() < deadline:
        time.sleep(0.2)
        routes = _routes(stack)
    return routes


def _infer_matches_onnxruntime(stack: Stack, path: Path, model: str = MODEL) -> None:
    image = np.random.default_rng(7).standard_normal((4, *SHAPE[1:]), dtype=np.float32)
    client = grpcclient.InferenceServerClient(stack.url)
    try:
        inp = grpcclient.InferInput("input", list(image.shape), "FP32")
        inp.set_data_from_numpy(image)
        got = client.infer(model, [inp], client_timeout=30).as_numpy("output")
    finally:
        client.close()
    want = reference(path, {"input": image})["output"]
    assert got is not None and got.shape == want.shape == (4, 10)
    assert np.max(np.abs(got - want)) <= 1e-4


def _request() -> pb.ModelInferRequest:
    data = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    req = pb.ModelInferRequest(model_name=MODEL)
    req.inputs.add(name="input", datatype="FP32", shape=list(SHAPE))
    req.raw_input_contents.append(to_raw(data))
    return req


async def _paced(url: str, rate_hz: float, seconds: float) -> LoadReport:
    """Light open-loop load: one request every 1/rate_hz s, each awaited on its own."""
    report = LoadReport()
    request = _request()
    async with grpc.aio.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        tasks: list[asyncio.Task[Outcome]] = []
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            report.sent += 1
            tasks.append(asyncio.create_task(_one(stub, request, REQUEST_TIMEOUT_S)))
            await asyncio.sleep(1.0 / rate_hz)
        report.outcomes = list(await asyncio.gather(*tasks))
    return report


def _check_accounted(report: LoadReport) -> None:
    report.check_accounted()  # sent = ok + errors: every request got an answer
    slowest = max(o.end - o.start for o in report.outcomes)
    assert slowest <= REQUEST_TIMEOUT_S + 1.0, f"a request took {slowest:.1f} s"  # none hangs


def _longest_gap(report: LoadReport, since: float) -> float:
    """Longest time after `since` without a successful answer (to the end of the run)."""
    ends = sorted(o.end for o in report.outcomes if o.code == grpc.StatusCode.OK and o.end > since)
    last = max(o.end for o in report.outcomes)
    points = [since, *ends, last]
    return max(b - a for a, b in itertools.pairwise(points))


def _started_at(project: ComposeProject, services: list[str]) -> dict[str, object]:
    return {s: project.state(s)["StartedAt"] for s in services}


# --- the tests, in order ---------------------------------------------------------------------


def test_gpu_compose_file_is_valid(pytestconfig: pytest.Config) -> None:
    problem = compose_problem()
    if problem:
        pytest.skip(problem)
    project = ComposeProject(
        "deinfer-config", [ROOT / "docker-compose.yml"], {"COMPOSE_PROFILES": "gpu1"}
    )
    config = json.loads(project.compose("config", "--format", "json", timeout=60))
    services = config["services"]
    assert set(services) == {
        "redis",
        "controller",
        "predictor",
        "profiler",
        "dispatcher",
        "mps",
        "worker-0",
        "worker-1",
    }
    for index, name in enumerate(["worker-0", "worker-1"]):
        worker = services[name]
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["device_ids"] == [str(index)]
        assert device["capabilities"] == ["gpu"]
        assert worker["ipc"] == "service:mps"
        assert any(v["target"] == "/tmp/nvidia-mps" for v in worker["volumes"])
        assert worker["depends_on"]["mps"]["condition"] == "service_healthy"
    # The profiler runs GPU workers' executors at MPS shares: every GPU, an MPS client.
    profiler = services["profiler"]
    (device,) = profiler["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] in ("all", -1)  # -1: all
    assert profiler["ipc"] == "service:mps"
    assert any(v["target"] == "/tmp/nvidia-mps" for v in profiler["volumes"])
    assert profiler["command"] == ["python", "-m", "services.profiler"]
    assert services["mps"]["ipc"] == "shareable"
    assert services["mps"]["command"][0] == "nvidia-cuda-mps-control"
    assert "--appendonly" in services["redis"]["command"]
    published = {p["target"] for p in services["dispatcher"]["ports"]}
    assert published == {8001, 8002}
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        assert service.get("healthcheck", {}).get("test"), name
    report(pytestconfig, "docker-compose.yml (GPU) passes `docker compose config`")


def test_serves_a_model_registered_from_the_host(cpu_stack: Stack, model_path: Path) -> None:
    out = _cli(cpu_stack, "models", "register", MODEL, str(model_path), "--slo-ms", "5000")
    assert f"registered {MODEL} version 1" in out
    _wait_ready(cpu_stack)
    _infer_matches_onnxruntime(cpu_stack, model_path)
    assert MODEL in _cli(cpu_stack, "models", "list")
    # Two CPU workers, two replicas: one instance on each.
    both = ["worker-0", "worker-1"]
    assert _wait_routes(cpu_stack, lambda r: r == both, 30) == both


def test_worker_killed_under_load(cpu_stack: Stack, pytestconfig: pytest.Config) -> None:
    victim, survivor = "worker-0", "worker-1"
    kill_at: list[float] = []
    moved: list[tuple[float, list[str]]] = []  # (seconds after the kill, routes then)

    def kill_then_watch() -> None:
        time.sleep(2.0)
        kill_at.append(time.monotonic())
        cpu_stack.project.docker("kill", victim)
        routes = _wait_routes(cpu_stack, lambda r: r == [survivor], REPLACE_BOUND_S)
        moved.append((time.monotonic() - kill_at[0], routes))

    killer = threading.Thread(target=kill_then_watch)
    killer.start()
    report_ = asyncio.run(closed_loop(cpu_stack.url, _request(), 8, 12.0, REQUEST_TIMEOUT_S))
    killer.join()
    _check_accounted(report_)
    codes = report_.codes
    allowed = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    assert set(codes) <= allowed, codes
    gap = _longest_gap(report_, kill_at[0])
    late_ok = [
        o for o in report_.outcomes if o.start > kill_at[0] + RESUME_BOUND_S and o.code.name == "OK"
    ]
    moved_after, routes = moved[0]
    report(
        pytestconfig,
        f"worker killed: sent {report_.sent} = {dict((c.name, n) for c, n in codes.items())}; "
        f"longest gap without a success {gap:.2f} s (bound {RESUME_BOUND_S} s); "
        f"routes only on the survivor {moved_after:.1f} s after the kill "
        f"(bound {REPLACE_BOUND_S} s)",
    )
    assert gap <= RESUME_BOUND_S
    assert len(late_ok) > 20, codes
    assert routes == [survivor], routes
    # Bring the worker back; the controller places the second replica on it again.
    cpu_stack.project.docker("start", victim)
    cpu_stack.project.wait_healthy([victim])
    both = ["worker-0", "worker-1"]
    assert _wait_routes(cpu_stack, lambda r: r == both, 60) == both


def test_redis_restart_under_light_load(
    cpu_stack: Stack, model_path: Path, pytestconfig: pytest.Config
) -> None:
    project = cpu_stack.project
    others = [s for s in cpu_stack.services if s != "redis"]
    started = _started_at(project, others)
    routes_before = _routes(cpu_stack)
    back_at: list[float] = []

    def restart_later() -> None:
        time.sleep(2.0)
        project.docker("restart", "redis")
        back_at.append(time.monotonic())

    restarter = threading.Thread(target=restart_later)
    restarter.start()
    load = asyncio.run(_paced(cpu_stack.url, 20.0, 20.0))
    restarter.join()
    _check_accounted(load)
    codes = load.codes
    assert back_at, "docker restart redis did not return"
    project.wait_healthy(["redis"])
    resumed = [
        o.end - back_at[0]
        for o in load.outcomes
        if o.code == grpc.StatusCode.OK and o.start >= back_at[0]
    ]
    report(
        pytestconfig,
        f"redis restarted: sent {load.sent} = {dict((c.name, n) for c, n in codes.items())}; "
        f"first success {min(resumed, default=float('nan')):.2f} s after Redis was back",
    )
    assert resumed and min(resumed) <= REDIS_RESUME_BOUND_S, codes
    assert codes[grpc.StatusCode.OK] >= 0.8 * load.sent, codes
    # Nobody restarted: the services reconnected by themselves.
    assert _started_at(project, others) == started
    for service in others:
        assert project.health(service) == "healthy", service
    # Registry and plan survived (append-only file), and serving goes on.
    assert MODEL in _cli(cpu_stack, "models", "list")
    assert _wait_routes(cpu_stack, lambda r: r == routes_before, 30) == routes_before
    after = asyncio.run(closed_loop(cpu_stack.url, _request(), 2, 2.0, REQUEST_TIMEOUT_S))
    assert after.ok == after.sent > 0, after.codes
    # Their Redis connections work again: a new model goes through controller, Redis, workers
    # and dispatcher, then leaves.
    _cli(cpu_stack, "models", "register", "second", str(model_path), "--slo-ms", "5000")
    _wait_ready(cpu_stack, "second")
    _infer_matches_onnxruntime(cpu_stack, model_path, "second")
    _cli(cpu_stack, "models", "remove", "second")


def test_down_and_up_keep_registered_models(
    cpu_stack: Stack, model_path: Path, pytestconfig: pytest.Config
) -> None:
    cpu_stack.project.down(volumes=False)
    seconds = cpu_stack.up()
    _wait_ready(cpu_stack)
    assert MODEL in _cli(cpu_stack, "models", "list")
    _infer_matches_onnxruntime(cpu_stack, model_path)
    report(pytestconfig, f"down + up: healthy again in {seconds:.0f} s, {MODEL} still served")
