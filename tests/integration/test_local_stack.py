"""The local stack end to end: real Redis, controller, workers and dispatcher processes.

`LocalStack(examples=True)` serves the example models with outputs equal to a direct ONNX
Runtime run; the CLI reports them; and neither `stop()`, nor `deinfer up` stopped by
SIGTERM, nor `deinfer up` SIGKILLed, leaves a process behind.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

from deinfer import AsyncClient, Client
from deinfer.local_stack import LocalStack, StackError
from tests.integration.conftest import reference

pytestmark = pytest.mark.integration

# Services finish in-flight work for this long on SIGTERM; short keeps the tests fast.
FAST_STOP = {"DEINFER_GRACE_S": "2"}


# --- processes, seen through /proc ----------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name in (...) may hold spaces
    return fields[0], int(fields[1])


def descendants(roots: Iterable[int]) -> set[int]:
    """Every live process below `roots` (the roots included)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found and _stat(pid) is not None:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"  # a zombie has exited already


def wait_all_gone(pids: set[int], timeout_s: float) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def describe(pids: set[int]) -> list[str]:
    out = []
    for pid in sorted(pids):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            command = b"(gone)"
        out.append(f"{pid}: {command.decode(errors='replace')}")
    return out


# --- a stack serving the examples -------------------------------------------------------------


@pytest.fixture(scope="module")
def examples_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(
        workers=2,
        examples=True,
        state_dir=tmp_path_factory.mktemp("examples"),
        env_overrides=FAST_STOP,
    )
    stack.start()
    yield stack
    stack.stop()


def test_examples_match_onnxruntime(examples_stack: LocalStack) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((2, 3, 224, 224), dtype=np.float32)
    tokens = {
        "input_ids": rng.integers(0, 512, (2, 8), dtype=np.int64),
        "attention_mask": np.ones((2, 8), dtype=np.int64),
    }
    examples = examples_stack.state_dir / "examples"
    with Client(examples_stack.url, examples_stack.controller_url, timeout=30) as client:
        served = client.infer("mobilenet_v2", {"input": image})
        expected = reference(examples / "mobilenet_v2.onnx", {"input": image})
        np.testing.assert_allclose(served["output"], expected["output"], rtol=1e-4, atol=1e-5)

        served = client.infer("tiny_bert", tokens, outputs=["pooled", "last_hidden_state"])
        assert list(served) == ["pooled", "last_hidden_state"]
        expected = reference(examples / "tiny_bert.onnx", tokens)
        for name in served:
            np.testing.assert_allclose(served[name], expected[name], rtol=1e-4, atol=1e-5)

        models = {(m.name, m.slo_ms) for m in client.list_models()}
        assert models == {("mobilenet_v2", 500.0), ("tiny_bert", 100.0)}


def test_async_client_against_the_stack(examples_stack: LocalStack) -> None:
    ids = np.ones((1, 4), dtype=np.int64)

    async def run() -> list[dict[str, np.ndarray]]:
        async with AsyncClient(examples_stack.url, examples_stack.controller_url) as client:
            inputs = {"input_ids": ids, "attention_mask": ids}
            return await asyncio.gather(*(client.infer("tiny_bert", inputs) for _ in range(4)))

    results = asyncio.run(run())
    assert all(r["pooled"].shape == (1, 32) for r in results)
    np.testing.assert_array_equal(results[0]["pooled"], results[3]["pooled"])


def _cli(stack: LocalStack, *argv: str) -> str:
    command = [sys.executable, "-m", "deinfer.cli", "--url", stack.url]
    command += ["--controller", stack.controller_url, *argv]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cli_lists_models_and_status(examples_stack: LocalStack) -> None:
    listing = _cli(examples_stack, "models", "list")
    assert re.search(r"^mobilenet_v2\s+1\s+yes\s+500 ms", listing, re.M), listing
    assert re.search(r"^tiny_bert\s+1\s+yes\s+100 ms", listing, re.M), listing
    status = _cli(examples_stack, "status")
    for word in ("worker-0", "worker-1", "mobilenet_v2:1", "tiny_bert:1", "READY", "plan version"):
        assert word in status, status
    plan = _cli(examples_stack, "plan")
    assert "mobilenet_v2" in plan and "tiny_bert" in plan


def test_stop_leaves_no_process(examples_stack: LocalStack) -> None:
    tree = descendants(p.pid for p in examples_stack.processes.values())
    # Redis, controller, profiler, 2 workers, dispatcher, and the workers' instance processes.
    assert len(tree) > len(examples_stack.processes) == 6
    examples_stack.stop()
    assert not wait_all_gone(tree, 1.0), describe(tree)
    assert all(p.returncode is not None for p in examples_stack.processes.values())


# --- failures during start ---------------------------------------------------------------------


def test_service_dying_at_start_reports_its_log(tmp_path: Path) -> None:
    stack = LocalStack(
        workers=1, state_dir=tmp_path, env_overrides={"DEINFER_CONTROLLER_REPLICAS": "0"}
    )
    with pytest.raises(StackError) as err:
        stack.start()
    message = str(err.value)
    assert "controller exited with code" in message
    assert "controller_replicas" in message  # the settings error, from the log tail
    assert set(stack.processes) == {"redis", "controller"}
    assert not wait_all_gone({p.pid for p in stack.processes.values()}, 1.0)


# --- `deinfer up` as a command ---------------------------------------------------------------


class Up:
    """`deinfer up --port 0 --no-examples` in the background, its output read line by line."""

    def __init__(self, state_dir: Path, workers: int) -> None:
        command = [sys.executable, "-m", "deinfer.cli", "up", "--port", "0", "--no-examples"]
        command += ["--workers", str(workers), "--state-dir", str(state_dir)]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **FAST_STOP},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.output.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.output))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    running = Up(tmp_path / "state", workers=2)
    yield running
    running.kill()


def test_deinfer_up_stops_on_sigterm_without_orphans(up: Up) -> None:
    url = up.wait_for(r"inference \(gRPC, Triton-compatible\): (\S+)", 90).group(1)
    up.wait_for(r"Ctrl-C", 10)
    with Client(url, timeout=5) as client:
        assert client.is_ready()
    tree = descendants([up.process.pid])
    assert len(tree) >= 6  # deinfer up, Redis, controller, 2 workers, dispatcher
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(60) == 0
    up.wait_for(r"deinfer up: stopped", 5)
    assert not wait_all_gone(tree, 1.0), describe(tree)


def test_children_die_when_deinfer_up_is_sigkilled(tmp_path: Path) -> None:
    up = Up(tmp_path / "state", workers=1)
    try:
        up.wait_for(r"Ctrl-C", 90)
        tree = descendants([up.process.pid]) - {up.process.pid}
        assert len(tree) >= 4  # Redis, controller, worker, dispatcher
        up.process.kill()  # no chance to clean up: PR_SET_PDEATHSIG must do it
        up.process.wait()
        assert not wait_all_gone(tree, 30.0), describe(tree)
    finally:
        up.kill()
