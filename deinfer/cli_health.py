"""`deinfer health HOST:PORT`: exit 0 when a service answers SERVING (see deinfer.health)."""

from __future__ import annotations

import argparse

from deinfer import health


def add_health_cli(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "health",
        help="ask one service (any DeInfer server) whether it is serving: exit 0 or 1",
        description="Query the gRPC health service of HOST:PORT; exit 0 when SERVING.",
    )
    health.add_arguments(parser)
    parser.set_defaults(func=health.run)
