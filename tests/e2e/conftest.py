"""Fixtures for the Docker Compose end-to-end tests.

They need a Docker engine and Compose v2 and are skipped, with the reason, without them.
`images` builds every image offline once per session with scripts/build-images (its base image
and wheelhouse are cached across runs; DEINFER_E2E_BUILD=0 reuses the images as they are).
`cpu_stack` starts the CPU compose project under a unique project name on free loopback ports
and always removes it, volumes included, at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.e2e.compose import (
    ROOT,
    ComposeProject,
    compose_problem,
    docker_engine_problem,
    run_command,
)

# The control plane's optional services join once their packages can start (`__main__`).
CORE_SERVICES = ["redis", "controller", "dispatcher", "worker-0", "worker-1"]
OPTIONAL_SERVICES = ["predictor", "profiler"]
BUILD_TIMEOUT_S = 1500.0


def present_services() -> list[str]:
    optional = [s for s in OPTIONAL_SERVICES if (ROOT / "services" / s / "__main__.py").exists()]
    return [*CORE_SERVICES, *optional]


MEASUREMENTS: list[str] = []


def report(config: pytest.Config, line: str) -> None:
    """A line for the end of pytest's output, even without -s (the timings CI should show)."""
    del config  # kept in the signature: callers pass their pytestconfig
    MEASUREMENTS.append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASUREMENTS:
        terminalreporter.section("e2e measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def docker_ready() -> None:
    problem = docker_engine_problem() or compose_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="session")
def images(docker_ready: None, pytestconfig: pytest.Config) -> None:
    if os.environ.get("DEINFER_E2E_BUILD", "1") == "0":
        report(pytestconfig, "DEINFER_E2E_BUILD=0: using the images as they are")
        return
    start = time.monotonic()
    try:
        done = subprocess.run(
            [str(ROOT / "scripts" / "build-images")],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"scripts/build-images took more than {BUILD_TIMEOUT_S:.0f} s")
    if done.returncode != 0:
        pytest.fail(f"scripts/build-images failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    steps = [line for line in done.stdout.splitlines() if line.startswith("[build-images")]
    for line in steps:
        report(pytestconfig, line)
    report(pytestconfig, f"images built offline in {time.monotonic() - start:.0f} s")


@dataclass
class Stack:
    project: ComposeProject
    services: list[str]
    url: str  # the dispatcher, Triton gRPC
    controller_url: str

    def up(self) -> float:
        """`up -d` then wait until every service is healthy; returns the seconds it took."""
        start = time.monotonic()
        self.project.up(self.services)
        self.project.wait_healthy(self.services)
        return time.monotonic() - start


PROJECT_PREFIX = "deinfer-e2e-"


def remove_abandoned_projects() -> None:
    """`down -v` the projects of e2e sessions whose process is gone (killed mid-run)."""
    listing = json.loads(
        run_command(["docker", "compose", "ls", "--all", "--format", "json"], 60) or "[]"
    )
    for entry in listing:
        name = str(entry.get("Name", ""))
        pid = name.removeprefix(PROJECT_PREFIX).split("-")[0]
        if (
            not name.startswith(PROJECT_PREFIX)
            or not pid.isdigit()
            or Path(f"/proc/{pid}").exists()
        ):
            continue
        files = [Path(f) for f in str(entry.get("ConfigFiles", "")).split(",") if f]
        ComposeProject(name, files).down(volumes=True)


@pytest.fixture(scope="module")
def cpu_stack(images: None, pytestconfig: pytest.Config) -> Iterator[Stack]:
    remove_abandoned_projects()
    dispatcher, metrics, controller = free_port(), free_port(), free_port()
    project = ComposeProject(
        name=f"{PROJECT_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}",
        files=[ROOT / "docker-compose.yml", ROOT / "docker-compose.cpu.yml"],
        env={
            "REDIS_IMAGE": "deinfer/redis:latest",  # built by scripts/build-images
            "DEINFER_DISPATCHER_PUBLISH": f"127.0.0.1:{dispatcher}",
            "DEINFER_METRICS_PUBLISH": f"127.0.0.1:{metrics}",
            "DEINFER_CONTROLLER_PUBLISH": str(controller),
            "DEINFER_CPU_THREADS": "1",
            "COMPOSE_PROFILES": "",
        },
    )
    stack = Stack(project, present_services(), f"127.0.0.1:{dispatcher}", f"127.0.0.1:{controller}")
    try:
        seconds = stack.up()
        report(
            pytestconfig, f"{project.name}: {', '.join(stack.services)} healthy in {seconds:.0f} s"
        )
        yield stack
    finally:
        project.down(volumes=True)
