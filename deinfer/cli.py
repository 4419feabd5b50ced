"""The `deinfer` command line.

    deinfer [--url HOST:PORT] [--controller HOST:PORT] [--timeout S] COMMAND
      models register NAME PATH --slo-ms N [--max-batch-size B]
      models list | models remove NAME [--version V]
      status | plan
      up [--workers N] [--no-examples] [--port P] [--state-dir DIR] [--redis-url URL]
      profile MODEL [--batches B,B] [--shares S,S] [--runs N] [--csv OUT] [--profiler H:P]
      profile colocate A[:BATCH[:SHARE]] B[...] [C[...]] [--runs N] [--csv OUT]
      zoo list | zoo build NAME --out DIR

Exit codes: 0 success, 1 an error (printed as `error: <CODE>: <message>`), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import grpc

from deinfer import cli_format
from deinfer._calls import DEFAULT_CONTROLLER_URL, DEFAULT_URL
from deinfer.errors import DeinferError

if TYPE_CHECKING:
    from deinfer.client import Client

URL_ENV = "DEINFER_URL"
CONTROLLER_ENV = "DEINFER_CONTROLLER_URL"

Handler = Callable[[argparse.Namespace], int]


def build_parser(
    env: Mapping[str, str] | None = None, load_zoo: bool = True
) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="deinfer", description="DeInfer: SLO-aware inference serving."
    )
    parser.add_argument(
        "--url",
        default=env.get(URL_ENV, DEFAULT_URL),
        metavar="HOST:PORT",
        help=f"dispatcher (inference) address (env {URL_ENV}; default %(default)s)",
    )
    parser.add_argument(
        "--controller",
        default=env.get(CONTROLLER_ENV, DEFAULT_CONTROLLER_URL),
        metavar="HOST:PORT",
        help=f"controller (management) address (env {CONTROLLER_ENV}; default %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="RPC deadline in seconds"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_models(commands)
    status = commands.add_parser("status", help="workers, instances, plan and routes")
    status.set_defaults(func=run_status)
    plan = commands.add_parser("plan", help="the controller's current plan and routing table")
    plan.set_defaults(func=run_plan)
    from deinfer import cli_health, cli_predictor, cli_profile, cli_simulate, cli_up

    cli_up.add_up_cli(commands)
    cli_profile.add_profile_cli(commands)
    cli_predictor.add_predictor_cli(commands)
    cli_health.add_health_cli(commands)
    cli_simulate.add_simulate_cli(commands)
    _add_zoo(commands, load_zoo)
    return parser


def _add_models(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = commands.add_parser("models", help="register, list and remove models")
    actions = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    register = actions.add_parser("register", help="upload an ONNX model with its SLO")
    register.add_argument("name", metavar="NAME")
    register.add_argument("path", metavar="PATH", help="ONNX file")
    register.add_argument(
        "--slo-ms", type=float, required=True, metavar="N", help="latency SLO in milliseconds"
    )
    register.add_argument(
        "--max-batch-size", type=int, default=0, metavar="B", help="0: the controller's default"
    )
    register.set_defaults(func=run_register)

    listing = actions.add_parser("list", help="registered model versions")
    listing.set_defaults(func=run_list)

    remove = actions.add_parser("remove", help="remove a model (every version by default)")
    remove.add_argument("name", metavar="NAME")
    remove.add_argument("--version", default="", metavar="V", help="only this version")
    remove.set_defaults(func=run_remove)


ZOO_HELP = "generate built-in ONNX models"


def _add_zoo(commands: argparse._SubParsersAction[argparse.ArgumentParser], load: bool) -> None:
    """The zoo's own parser when `load` (the zoo imports onnx: slow), else a listing entry."""
    if not load:
        commands.add_parser("zoo", help=ZOO_HELP)
        return
    try:
        from deinfer.zoo.cli import add_zoo_cli
    except ImportError as exc:
        reason = f"the model zoo is unavailable: {exc}"
        zoo = commands.add_parser("zoo", help=ZOO_HELP)
        zoo.set_defaults(func=lambda _args: _fail(reason))
        return
    add_zoo_cli(commands)


def _connect(args: argparse.Namespace) -> Client:
    from deinfer.client import Client  # lazy: `--help` and `zoo` need no gRPC channel

    return Client(args.url, controller_url=args.controller, timeout=args.timeout)


def run_register(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        info = client.register_model(
            args.name, args.path, slo_ms=args.slo_ms, max_batch_size=args.max_batch_size
        )
    print(f"registered {info.name} version {info.version}")
    print(cli_format.models_table([info]))
    return 0


def run_list(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        models = client.list_models()
    print(cli_format.models_table(models))
    return 0


def run_remove(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        removed = client.remove_model(args.name, args.version)
    print(f"removed {args.name} version(s) {', '.join(removed)}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        status = client.status()
    print(cli_format.status_text(status, now=time.time()))
    return 0


def run_plan(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        plan = client.get_plan()
    print(cli_format.plan_text(plan))
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(load_zoo="zoo" in argv).parse_args(argv)  # exits with 2 on bad usage
    handler: Handler = args.func
    try:
        return handler(args)
    except DeinferError as exc:
        _fail(f"{exc.code.name}: {exc.message}")
        if exc.code == grpc.StatusCode.UNAVAILABLE:
            print(
                f"hint: is DeInfer running (`deinfer up`)? dispatcher --url {args.url}, "
                f"controller --controller {args.controller}",
                file=sys.stderr,
            )
        return 1
    except OSError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
