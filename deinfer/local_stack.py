"""The whole system as local processes: Redis, the controller, the profiler, N workers and
the dispatcher.

Used by `deinfer up`, by the integration tests and by the benchmarks:

    with LocalStack(workers=2, state_dir=tmp) as stack:
        Client(stack.url, controller_url=stack.controller_url).register_model(...)
        stack.wait_ready(["tiny_cnn"])

Layout of `state_dir`: `models/` (the model repository), `logs/<service>.log`, `redis/`
(Redis' working folder) and `examples/` (zoo models built for `examples=True`). Redis keeps
no state across runs: the registry lives as long as the stack.

Ports: with `base_port=None` every port is a free one; with `base_port=B` the dispatcher
gets B (metrics B+1), the controller B+99 (B+100), worker i B+199+2i (B+200+2i), the
profiler B+299 (B+300), which for B=8001 is the documented default layout (8001, 8100, 8200,
..., 8300).

Children are stopped in reverse start order (dispatcher, workers, profiler, controller,
Redis): SIGTERM,
wait, then SIGKILL of the child's process group. On Linux they also die with this process,
even when it is SIGKILLed (PR_SET_PDEATHSIG, see `deinfer._deathsig`); elsewhere a SIGKILLed
parent leaves them running.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from deinfer import _redis
from deinfer._processes import Child, StackError, spawn, stop_group, wait_healthy

__all__ = ["EXAMPLE_SLO_MS", "LocalStack", "Ports", "StackError", "port_layout"]

EXAMPLE_SLO_MS = {"mobilenet_v2": 500.0, "tiny_bert": 100.0}
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Ports:
    dispatcher: int
    dispatcher_metrics: int
    controller: int
    controller_metrics: int
    workers: tuple[tuple[int, int], ...]  # (gRPC, metrics) per worker
    redis: int
    profiler: int
    profiler_metrics: int

    def all(self) -> list[int]:
        worker_ports = [p for pair in self.workers for p in pair]
        return [
            self.dispatcher,
            self.dispatcher_metrics,
            self.controller,
            self.controller_metrics,
            *worker_ports,
            self.redis,
            self.profiler,
            self.profiler_metrics,
        ]


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free right now (sockets held together so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_layout(base_port: int | None, workers: int, redis_port: int | None = None) -> Ports:
    free = iter(free_ports(7 + 2 * workers))
    redis = redis_port if redis_port is not None else next(free)
    if base_port is None:
        return Ports(
            dispatcher=next(free),
            dispatcher_metrics=next(free),
            controller=next(free),
            controller_metrics=next(free),
            workers=tuple((next(free), next(free)) for _ in range(workers)),
            redis=redis,
            profiler=next(free),
            profiler_metrics=next(free),
        )
    b = base_port
    return Ports(
        dispatcher=b,
        dispatcher_metrics=b + 1,
        controller=b + 99,
        controller_metrics=b + 100,
        workers=tuple((b + 199 + 2 * i, b + 200 + 2 * i) for i in range(workers)),
        redis=redis,
        profiler=b + 299,
        profiler_metrics=b + 300,
    )


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def _module(name: str) -> list[str]:
    return [sys.executable, "-m", name]


def source_root() -> Path | None:
    """The checkout holding `deinfer/` and `services/`, when running from one.

    `python -m services.<name>` must work even where only `deinfer` was installed (an
    editable install made before `services/` existed maps only `deinfer`).
    """
    root = Path(__file__).resolve().parent.parent
    return root if (root / "services" / "__init__.py").is_file() else None


class LocalStack:
    """Start with `start()` (or `with`); `stop()` is idempotent and always safe to call."""

    def __init__(
        self,
        workers: int = 2,
        examples: bool = False,
        state_dir: str | os.PathLike[str] = ".deinfer",
        base_port: int | None = None,
        *,
        redis_url: str | None = None,
        redis_port: int | None = None,
        host: str = LOOPBACK,
        env_overrides: Mapping[str, str] | None = None,
        worker_command: Sequence[str] | None = None,
        start_timeout_s: float = 60.0,
        ready_timeout_s: float = 180.0,
        stop_timeout_s: float = 15.0,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.examples = examples
        self.state_dir = Path(state_dir).resolve()
        self.log_dir = self.state_dir / "logs"
        self.model_repository = self.state_dir / "models"
        self.host = host
        self.env_overrides = dict(env_overrides or {})
        # Another implementation of the Worker contract (it reads the same DEINFER_* settings).
        self.worker_command = list(worker_command or [sys.executable, "-m", "services.worker"])
        self.start_timeout_s = start_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._progress = progress or (lambda _msg: None)
        self._fixed_ports = base_port is not None
        self.ports = port_layout(base_port, workers, redis_port)
        self._external_redis = redis_url is not None
        self.redis_url = redis_url or f"redis://{LOOPBACK}:{self.ports.redis}/0"
        connect_host = LOOPBACK if host in ("0.0.0.0", "::", "") else host
        self.url = f"{connect_host}:{self.ports.dispatcher}"
        self.controller_url = f"{LOOPBACK}:{self.ports.controller}"
        self.profiler_url = f"{LOOPBACK}:{self.ports.profiler}"
        # Keyed by process name (the key of `processes`); the worker id happens to be the same.
        names = [f"worker-{i}" for i in range(workers)]
        self.worker_ids: dict[str, str] = {name: name for name in names}
        self.worker_urls: dict[str, str] = {
            name: f"{LOOPBACK}:{grpc_port}"
            for name, (grpc_port, _) in zip(names, self.ports.workers, strict=True)
        }
        self.metrics_urls = {
            "dispatcher": f"http://{connect_host}:{self.ports.dispatcher_metrics}/metrics",
            "controller": f"http://{LOOPBACK}:{self.ports.controller_metrics}/metrics",
            "profiler": f"http://{LOOPBACK}:{self.ports.profiler_metrics}/metrics",
            **{
                wid: f"http://{LOOPBACK}:{metrics}/metrics"
                for wid, (_, metrics) in zip(names, self.ports.workers, strict=True)
            },
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._stages: list[list[Child]] = []  # start order; stopped in reverse
        self._started = False

    # --- lifetime -----------------------------------------------------------------------

    def start(self) -> LocalStack:
        if self._started:
            raise StackError("this LocalStack was already started")
        self._started = True
        atexit.register(self.stop)
        try:
            self._start_all()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every child (reverse start order); returns when all of them are gone."""
        atexit.unregister(self.stop)
        while self._stages:
            stage = self._stages[-1]
            if any(c.alive() for c in stage):
                self._progress(f"stopping {', '.join(c.name for c in stage)}")
            stop_group(stage, self.stop_timeout_s)
            self._stages.pop()  # only once gone: an interrupted stop() can be repeated

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_all(self) -> None:
        for path in (self.log_dir, self.model_repository, self.state_dir / "redis"):
            path.mkdir(parents=True, exist_ok=True)
        self._check_ports()
        self._start_redis()
        controller_argv = _module("services.controller")
        controller = self._spawn("controller", controller_argv, self._controller_env())
        self._wait_healthy(controller, self.controller_url)
        profiler = self._spawn("profiler", _module("services.profiler"), self._profiler_env())
        self._wait_healthy(profiler, self.profiler_url)
        stage = self._new_stage()  # workers start together, then are checked one by one
        for i, name in enumerate(self.worker_ids):
            self._spawn(name, self.worker_command, self._worker_env(i), stage)
        for child in stage:
            self._wait_healthy(child, self.worker_urls[child.name])
        dispatcher_argv = _module("services.dispatcher")
        dispatcher = self._spawn("dispatcher", dispatcher_argv, self._dispatcher_env())
        self._wait_healthy(dispatcher, self.url)
        if self.examples:
            self._register_examples()

    def _check_ports(self) -> None:
        ports = self.ports.all()
        if self._external_redis:
            ports.remove(self.ports.redis)
        busy = [p for p in ports if port_in_use(p)]
        if busy:
            hint = " (is another `deinfer up` running? choose another --port)"
            raise StackError(f"port(s) {busy} already in use{hint if self._fixed_ports else ''}")

    def _start_redis(self) -> None:
        if self._external_redis:
            self._progress(f"using Redis at {self.redis_url}")
            _redis.wait_redis(self.redis_url, 5.0)
            return
        binary = _redis.find_redis_server()
        self._progress(f"starting Redis ({binary}) on port {self.ports.redis}")
        argv = _redis.redis_argv(binary, self.ports.redis, self.state_dir / "redis")
        child = spawn("redis", argv, os.environ, self.log_dir / "redis.log")
        self._record(child, self._new_stage())
        _redis.wait_redis(self.redis_url, self.start_timeout_s, child)

    def _new_stage(self) -> list[Child]:
        stage: list[Child] = []
        self._stages.append(stage)
        return stage

    def _spawn(
        self, name: str, argv: Sequence[str], env: dict[str, str], stage: list[Child] | None = None
    ) -> Child:
        """Start `argv` in `stage` (a stage of its own when None)."""
        self._progress(f"starting {name}")
        child = spawn(name, argv, env, self.log_dir / f"{name}.log")
        self._record(child, self._new_stage() if stage is None else stage)
        return child

    def _record(self, child: Child, stage: list[Child]) -> None:
        stage.append(child)
        self.processes[child.name] = child.process

    def _wait_healthy(self, child: Child, url: str) -> None:
        wait_healthy(child, url, self.start_timeout_s)
        self._progress(f"{child.name} is serving on {url}")

    # --- environments (names: services/<name>/settings.py) -------------------------------

    def _env(self, **settings: object) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        root = source_root()
        if root is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        env["DEINFER_REDIS_URL"] = self.redis_url
        env["DEINFER_MODEL_REPOSITORY"] = str(self.model_repository)
        env.update({f"DEINFER_{key.upper()}": str(value) for key, value in settings.items()})
        env.update(self.env_overrides)
        return env

    def _controller_env(self) -> dict[str, str]:
        return self._env(
            controller_host=LOOPBACK,
            controller_port=self.ports.controller,
            controller_metrics_port=self.ports.controller_metrics,
            # One instance per worker at most: with fewer workers, fewer replicas.
            controller_replicas=min(2, self.workers),
        )

    def _profiler_env(self) -> dict[str, str]:
        return self._env(
            profiler_host=LOOPBACK,
            profiler_port=self.ports.profiler,
            profiler_metrics_port=self.ports.profiler_metrics,
            profiler_export_dir=self.state_dir / "profiles",
        )

    def _worker_env(self, index: int) -> dict[str, str]:
        name = f"worker-{index}"
        grpc_port, metrics_port = self.ports.workers[index]
        return self._env(
            worker_id=self.worker_ids[name],
            worker_host=LOOPBACK,
            worker_port=grpc_port,
            worker_advertise_address=self.worker_urls[name],
            worker_metrics_port=metrics_port,
            # Workers share this machine's cores instead of each claiming all of them.
            worker_cpu_threads=max(1, (os.cpu_count() or 1) // self.workers),
        )

    def _dispatcher_env(self) -> dict[str, str]:
        return self._env(
            dispatcher_host=self.host,
            dispatcher_port=self.ports.dispatcher,
            dispatcher_metrics_port=self.ports.dispatcher_metrics,
            dispatcher_id="dispatcher-0",
            dispatcher_controller_address=self.controller_url,
        )

    # --- models ---------------------------------------------------------------------------

    def _register_examples(self) -> None:
        from deinfer.client import Client
        from deinfer.zoo import save_model

        out = self.state_dir / "examples"
        with Client(self.url, controller_url=self.controller_url, timeout=120.0) as client:
            registered = {m.name for m in client.list_models()}
            for name, slo_ms in EXAMPLE_SLO_MS.items():
                if name in registered:
                    self._progress(f"{name} is already registered")
                    continue
                path = out / f"{name}.onnx"
                if not path.exists():  # zoo bytes depend only on (name, seed): safe to reuse
                    self._progress(f"building {name} with the zoo")
                    save_model(name, out)
                info = client.register_model(name, path, slo_ms=slo_ms)
                self._progress(f"registered {name} version {info.version} (SLO {slo_ms:g} ms)")
        self.wait_ready(EXAMPLE_SLO_MS)

    def wait_ready(self, models: Iterable[str], timeout_s: float | None = None) -> None:
        """Block until the dispatcher reports every model ready (ModelReady)."""
        from deinfer.client import Client

        pending = list(models)
        self._progress(f"waiting for {', '.join(pending)} to be ready")
        limit = self.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        # Workers may come and go (the controller re-places), these two may not.
        essential = [c for name in ("controller", "dispatcher") if (c := self._child(name))]
        with Client(self.url, controller_url=self.controller_url) as client:
            while pending:
                pending = [m for m in pending if not client.is_model_ready(m, timeout=2.0)]
                if not pending:
                    break
                for child in essential:
                    if not child.alive():
                        raise child.died_error("waiting for models")
                if time.monotonic() > deadline:
                    raise StackError(
                        f"model(s) {pending} not ready after {limit:.0f} s; "
                        f"see the logs in {self.log_dir}"
                    )
                time.sleep(0.2)
        self._progress("models ready")

    def check_alive(self) -> None:
        """Raise StackError (with its log tail) if any service has exited."""
        for stage in self._stages:
            for child in stage:
                if not child.alive():
                    raise child.died_error("running")

    def _child(self, name: str) -> Child | None:
        return next((c for s in self._stages for c in s if c.name == name), None)

    def describe(self) -> str:
        """Where to connect, for humans."""
        lines = [
            f"DeInfer is up: {self.workers} worker(s), state in {self.state_dir}",
            f"  inference (gRPC, Triton-compatible): {self.url}",
            f"  controller (gRPC):                   {self.controller_url}",
            f"  profiler (gRPC):                     {self.profiler_url}",
            f"  redis:                               {self.redis_url}",
            "  metrics:",
            *(f"    {name:<12} {url}" for name, url in self.metrics_urls.items()),
            f"  logs: {self.log_dir}",
        ]
        return "\n".join(lines)
