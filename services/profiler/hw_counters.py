"""ProfileModel's hardware counters: one short run of the measuring child under Nsight Compute.

Device-agnostic on purpose: the run is the child the latency points use (same `Job`, same
model, threads and cores), only wrapped by `ncu_command`; what makes counters appear on a
GPU is the child running the model there. On a CPU, ncu finds no kernel and says so.
Mode (DEINFER_PROFILER_HW_COUNTERS): `auto` measures when `ncu` is on PATH and profiles
without counters otherwise or when ncu fails; `required` turns both into errors; `off`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from deinfer.profile_csv import hw_counter_key
from services.profiler.child import Job
from services.profiler.errors import ProfilerError, failed_precondition
from services.profiler.ncu_features import NcuError, NcuFeatures, ncu_command, parse_ncu_csv

AUTO, OFF, REQUIRED = "auto", "off", "required"
MODES = (AUTO, OFF, REQUIRED)
OUTPUT_TAIL = 2000


def ncu_for(mode: str, ncu: str | None) -> tuple[str | None, str]:
    """(ncu to run or None, why not); `required` without ncu raises FAILED_PRECONDITION."""
    if mode == OFF:
        return None, "hardware counters are off (DEINFER_PROFILER_HW_COUNTERS=off)"
    if ncu is None:
        if mode == REQUIRED:
            raise failed_precondition(
                "hardware counters are required (DEINFER_PROFILER_HW_COUNTERS=required) but "
                "Nsight Compute (ncu) is not on the profiler's PATH"
            )
        return None, "Nsight Compute (ncu) is not on PATH: profiling without hardware counters"
    return ncu, ""


def failure(mode: str, label: str, batch: int, error: NcuError) -> ProfilerError | str:
    """What a failed ncu run becomes: the error to raise (`required`) or a progress message."""
    text = f"hardware counters of {label} at batch {batch} failed: {error}"
    if mode == REQUIRED:
        return failed_precondition(text)
    return f"{text}; profiling without hardware counters"


def counter_job(job: Job, batch: int) -> Job:
    """One untimed-warm-up-free inference at `batch`: the kernels of exactly one inference."""
    return replace(job, batches=[batch], runs=1, warmup=0, mode="solo")


def counters(features: NcuFeatures, batch: int) -> dict[str, float]:
    return {hw_counter_key(k, batch): float(v) for k, v in features.columns().items()}


def child_error(stdout: str) -> str | None:
    """The measuring child's own error event, if its output (passed on by ncu) holds one."""
    for line in stdout.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == "error":
                    return str(event.get("message"))
    return None


async def measure(job: Job, ncu: str, timeout_s: float) -> NcuFeatures:
    """Run the child for `job` under ncu and parse ncu's report; NcuError when that fails."""
    with tempfile.TemporaryDirectory(prefix="deinfer-ncu-") as tmp:
        log_file = Path(tmp) / "ncu.csv"
        program = [
            sys.executable,
            "-m",
            "services.profiler.child",
            "--job",
            json.dumps(asdict(job)),
        ]
        command = [
            *(sys.executable, "-m", "deinfer._deathsig", str(os.getpid())),
            *ncu_command(program, ncu=ncu, log_file=log_file),
        ]
        # Own process group: a timeout or a cancelled request kills ncu and its target alike.
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(timeout_s):
                out, err = await process.communicate()
        except TimeoutError:
            raise NcuError(f"ncu did not finish within {timeout_s:g} s") from None
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        failed = child_error(stdout)
        if failed is not None:
            raise NcuError(f"the measuring process failed under ncu: {failed}")
        if process.returncode != 0:
            tail = (stderr.strip() or stdout.strip())[-OUTPUT_TAIL:]
            raise NcuError(f"ncu exited with code {process.returncode}: {tail}")
        report = log_file.read_text() if log_file.exists() else stdout
    return parse_ncu_csv(report)
