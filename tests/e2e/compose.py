"""Drive one Docker Compose project from a test: up, down, health, kill, restart, logs.

Every call is a real `docker compose` / `docker` command with a time limit; a failure raises
ComposeError carrying the command's output, so a test failure says what Docker said.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class ComposeError(RuntimeError):
    pass


def run_command(argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ComposeError(f"{' '.join(argv)}: no answer within {timeout:.0f} s") from exc
    if done.returncode != 0:
        output = done.stdout[-3000:] + done.stderr[-3000:]
        raise ComposeError(f"{' '.join(argv)} exited {done.returncode}:\n{output}")
    return done.stdout


def docker_engine_problem() -> str | None:
    """Why Docker cannot be used here, or None when an engine answers."""
    if shutil.which("docker") is None:
        return "no docker command on PATH"
    try:
        run_command(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=20)
    except ComposeError as exc:
        return f"no Docker engine answers `docker info`: {str(exc).splitlines()[-1]}"
    return None


def compose_problem() -> str | None:
    """Why Compose v2 (`docker compose`) cannot be used, or None."""
    try:
        run_command(["docker", "compose", "version", "--short"], timeout=20)
    except ComposeError:
        return "Docker Compose v2 is missing (`docker compose`; CI installs it: .ci/run)"
    return None


@dataclass
class ComposeProject:
    name: str
    files: Sequence[Path]
    env: dict[str, str] = field(default_factory=dict)

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def compose(self, *args: str, timeout: float = 300) -> str:
        argv = ["docker", "compose", "--project-name", self.name, "--project-directory", str(ROOT)]
        for path in self.files:
            argv += ["--file", str(path)]
        return run_command([*argv, *args], timeout, self._env())

    def up(self, services: Sequence[str], timeout: float = 300) -> None:
        self.compose("up", "--detach", "--no-build", "--pull", "never", *services, timeout=timeout)

    def down(self, volumes: bool = False, timeout: float = 180) -> None:
        self.compose(
            "down",
            "--remove-orphans",
            "--timeout",
            "15",
            *(["--volumes"] if volumes else []),
            timeout=timeout,
        )

    def container(self, service: str) -> str:
        ids = self.compose("ps", "--all", "--quiet", service, timeout=60).split()
        if len(ids) != 1:
            raise ComposeError(f"service {service}: expected one container, found {ids}")
        return ids[0]

    def state(self, service: str) -> dict[str, object]:
        raw = run_command(
            ["docker", "inspect", "--format", "{{json .State}}", self.container(service)], 60
        )
        state: dict[str, object] = json.loads(raw)
        return state

    def health(self, service: str) -> str:
        state = self.state(service)
        health = state.get("Health")
        if isinstance(health, dict):
            return str(health.get("Status"))
        return str(state.get("Status"))

    def wait_healthy(self, services: Sequence[str], timeout: float = 240) -> float:
        """Block until every service's container is healthy; returns the seconds it took."""
        start = time.monotonic()
        pending = list(services)
        while pending:
            status = {s: self.health(s) for s in pending}
            pending = [s for s, h in status.items() if h != "healthy"]
            if not pending:
                break
            if time.monotonic() - start > timeout:
                tails = "\n".join(f"--- {s} ({status[s]})\n{self.logs(s)}" for s in pending)
                raise ComposeError(f"not healthy after {timeout:.0f} s: {pending}\n{tails}")
            time.sleep(1.0)
        return time.monotonic() - start

    def logs(self, service: str, tail: int = 40) -> str:
        try:
            return self.compose("logs", "--no-color", "--tail", str(tail), service, timeout=60)
        except ComposeError as exc:
            return str(exc)

    def docker(self, verb: str, service: str, timeout: float = 120) -> None:
        """`docker kill|start|restart|stop` on the service's container."""
        run_command(["docker", verb, self.container(service)], timeout)
