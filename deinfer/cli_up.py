"""`deinfer up`: run the whole stack locally until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

DEFAULT_PORT = 8001


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def add_up_cli(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = commands.add_parser(
        "up",
        help="run Redis, the controller, workers and the dispatcher locally",
        description="Start DeInfer as local processes and serve until Ctrl-C or SIGTERM. "
        f"Ports: dispatcher PORT (metrics PORT+1), controller PORT+99 (PORT+100), "
        f"worker i PORT+199+2i (PORT+200+2i); with the default {DEFAULT_PORT} that is "
        "8001, 8100, 8200, ...; --port 0 picks free ports for everything.",
    )
    up.add_argument("--workers", type=_positive_int, default=2, metavar="N", help="default: 2")
    up.add_argument(
        "--no-examples",
        action="store_true",
        help="do not build and register mobilenet_v2 and tiny_bert",
    )
    up.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, metavar="PORT", help="default: %(default)s"
    )
    up.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="ADDR",
        help="address the dispatcher binds (0.0.0.0 to serve other machines)",
    )
    up.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".deinfer"),
        metavar="DIR",
        help="model repository, logs and Redis files (default: ./.deinfer)",
    )
    up.add_argument(
        "--redis-url", default=None, metavar="URL", help="use this Redis instead of starting one"
    )
    up.add_argument(
        "--redis-port", type=_port, default=0, metavar="PORT", help="default: a free port"
    )
    up.set_defaults(func=run_up)


def _say(message: str) -> None:
    print(f"deinfer up: {message}", flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # First Ctrl-C/SIGTERM starts the shutdown; later ones must not cut it short.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def hints(url: str, controller_url: str, examples: bool) -> str:
    flags = "" if url == "127.0.0.1:8001" else f" --url {url}"
    if controller_url != "127.0.0.1:8100":
        flags += f" --controller {controller_url}"
    lines = ["try:", f"  deinfer{flags} status", f"  deinfer{flags} models list"]
    if examples:
        lines.append(
            '  python -c "import numpy as np, tritonclient.grpc as g; '
            f"c = g.InferenceServerClient('{url}'); "
            "x = g.InferInput('input', [1, 3, 224, 224], 'FP32'); "
            "x.set_data_from_numpy(np.random.rand(1, 3, 224, 224).astype(np.float32)); "
            "print(c.infer('mobilenet_v2', [x]).as_numpy('output').argmax())\""
        )
    else:
        lines.append(f"  deinfer{flags} models register NAME model.onnx --slo-ms 100")
    return "\n".join(lines)


def run_up(args: argparse.Namespace) -> int:
    from deinfer.local_stack import LocalStack, StackError

    stack = LocalStack(
        workers=args.workers,
        examples=not args.no_examples,
        state_dir=args.state_dir,
        base_port=args.port or None,
        redis_url=args.redis_url,
        redis_port=args.redis_port or None,
        host=args.host,
        progress=_say,
    )
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stack.start()
        print(stack.describe())
        print(hints(stack.url, stack.controller_url, stack.examples))
        print("Ctrl-C (or SIGTERM) stops everything.", flush=True)
        while True:
            time.sleep(1.0)
            stack.check_alive()
    except KeyboardInterrupt:
        _say("stopping")
        return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        stack.stop()
        _say("stopped")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
