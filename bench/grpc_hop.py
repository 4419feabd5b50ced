"""What one Python gRPC hop with a 224x224 image costs: the floor under every DeInfer hop.

A grpc.aio server (in its own process, like the dispatcher and the worker) answers a raw-bytes
unary call with 100 bytes; a sync client sends a 602 KB payload back-to-back. Transports:
loopback TCP and a unix-domain socket, each with gRPC's default HTTP/2 window and with a
4 MB one (`grpc.http2.lookahead_bytes`). Prints min / p10 / median round trip per transport,
each the median over `--runs` repetitions, interleaved so drift hits all alike.

    python bench/grpc_hop.py [--calls 300] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import statistics
import tempfile
import time
from multiprocessing.synchronize import Event
from typing import Any

import grpc

PAYLOAD_BYTES = 3 * 224 * 224 * 4  # one fp32 image
LIMITS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
WIDE = [("grpc.http2.lookahead_bytes", 4 << 20)]
METHOD = "/bench.Hop/Echo"


def _serve(address: str, options: list[tuple[str, Any]], ready: Event) -> None:
    async def main() -> None:
        async def echo(request: bytes, context: Any) -> bytes:
            return request[:100]

        server = grpc.aio.server(options=options)
        handler = grpc.unary_unary_rpc_method_handler(echo)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Hop", {"Echo": handler}),)
        )
        server.add_insecure_port(address)
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(main())


def measure(address: str, options: list[tuple[str, Any]], calls: int) -> list[float]:
    """Round trips in ms, after a warm-up."""
    ready = mp.Event()
    server = mp.Process(target=_serve, args=(address, LIMITS + options, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise RuntimeError(f"server on {address} did not start")
        payload = os.urandom(PAYLOAD_BYTES)
        with grpc.insecure_channel(address, options=LIMITS + options) as channel:
            call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
            for _ in range(30):
                call(payload)
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                call(payload)
                times.append((time.perf_counter() - start) * 1e3)
        return times
    finally:
        server.kill()
        server.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        variants = {
            "tcp": ("127.0.0.1:{port}", []),
            "tcp, 4 MB window": ("127.0.0.1:{port}", WIDE),
            "unix socket": (f"unix:{tmp}/hop-{{port}}.sock", []),
            "unix, 4 MB window": (f"unix:{tmp}/hop-{{port}}.sock", WIDE),
        }
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
        port = 0
        for _ in range(args.runs):
            for name, (template, options) in variants.items():
                port += 1
                address = template.format(port=_free_port() if "unix" not in name else port)
                times = sorted(measure(address, options, args.calls))
                results[name].append((times[0], times[len(times) // 10], statistics.median(times)))
    print(f"{'transport':<20}{'min ms':>9}{'p10 ms':>9}{'p50 ms':>9}  (medians over runs)")
    for name, runs in results.items():
        cols = [statistics.median(r[i] for r in runs) for i in range(3)]
        print(f"{name:<20}" + "".join(f"{c:>9.2f}" for c in cols))
    print(f"\nhost load average (1 min) at end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    main()
