"""Ask a DeInfer service whether it is serving, through the standard gRPC health service.

    python -m deinfer.health [HOST:PORT] [--service NAME] [--timeout S]
    deinfer health [HOST:PORT] ...          (the same, through the CLI)

Exit status 0 when the service answers SERVING, 1 otherwise (not serving, unreachable, or
too slow), with one line saying why. Container HEALTHCHECKs and compose healthchecks run
`python -m deinfer.health`: it imports only gRPC, so a check costs little CPU. The address
defaults to $DEINFER_HEALTH_ADDRESS, which each image sets for the service it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

ADDRESS_ENV = "DEINFER_HEALTH_ADDRESS"
DEFAULT_ADDRESS = "127.0.0.1:8001"


def check(address: str, service: str = "", timeout: float = 3.0) -> tuple[bool, str]:
    """(serving, a one-line reason) for `service` ("" = the whole server) at `address`."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = err.details() if isinstance(err, grpc.Call) else str(err)
            return False, f"{address}: {code.name}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {status}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "address",
        nargs="?",
        default=os.environ.get(ADDRESS_ENV, DEFAULT_ADDRESS),
        metavar="HOST:PORT",
        help=f"service to ask (env {ADDRESS_ENV}; default %(default)s)",
    )
    parser.add_argument(
        "--service", default="", metavar="NAME", help="one gRPC service (default: the server)"
    )
    parser.add_argument(
        "--health-timeout",
        "--timeout",
        dest="health_timeout",
        type=float,
        default=3.0,
        metavar="S",
        help="seconds to wait for the answer (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    serving, reason = check(args.address, args.service, args.health_timeout)
    print(reason, file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deinfer.health", description="Exit 0 when a service is SERVING."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
