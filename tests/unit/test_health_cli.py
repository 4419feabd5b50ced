"""`deinfer health` / `python -m deinfer.health` against a real in-process gRPC health server."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deinfer import cli
from deinfer import health as deinfer_health


@pytest.fixture
def server() -> Iterator[tuple[str, health.HealthServicer]]:
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}", servicer
    srv.stop(None)


def test_serving_exits_zero(
    server: tuple[str, health.HealthServicer], capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert deinfer_health.main([address]) == 0
    assert capsys.readouterr().out.strip() == f"{address}: SERVING"
    assert cli.main(["health", address, "--timeout", "2"]) == 0


def test_not_serving_exits_one(
    server: tuple[str, health.HealthServicer], capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert deinfer_health.main([address]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err


def test_one_service_by_name(server: tuple[str, health.HealthServicer]) -> None:
    address, servicer = server
    servicer.set("deinfer.v1.Worker", health_pb2.HealthCheckResponse.SERVING)
    assert deinfer_health.check(address, "deinfer.v1.Worker")[0]
    serving, reason = deinfer_health.check(address, "no.Such")
    assert not serving and "NOT_FOUND" in reason


def test_unreachable_exits_one(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import free_port

    address = f"127.0.0.1:{free_port()}"
    assert deinfer_health.main([address, "--timeout", "1"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_address_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    monkeypatch.setenv(deinfer_health.ADDRESS_ENV, "health-host:8200")
    parser = argparse.ArgumentParser()
    deinfer_health.add_arguments(parser)
    assert parser.parse_args([]).address == "health-host:8200"
