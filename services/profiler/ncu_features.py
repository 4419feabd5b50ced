"""Hardware-counter features of a model run, from Nsight Compute (`ncu`).

The interference training data (data/deinfer-rtx3080, model_interference_feature*.csv)
describes each model by features of one profiled solo run. This module produces the same
columns for a model profiled here, so a new model can be predicted by the same regressor:

| column                   | from the ncu metric                                  | aggregate    |
|--------------------------|------------------------------------------------------|--------------|
| kernel_num               | one row per kernel launch                            | count        |
| mean_gpu_time_duration   | gpu__time_duration.sum (converted to microseconds)   | plain mean   |
| mean_l2_hit_rate         | lts__t_sector_hit_rate.pct                           | time-weighted|
| mean_l2_utilization      | lts__t_sectors.avg.pct_of_peak_sustained_elapsed     | time-weighted|
| mean_sm_efficiency       | sm__throughput.avg.pct_of_peak_sustained_elapsed     | time-weighted|
| mean_dram_utilization    | dram__throughput.avg.pct_of_peak_sustained_elapsed   | time-weighted|

`mean_dram_utilization` is extra: the training tables lack it. Time-weighted means weigh
each kernel by its duration, as the data README describes. The upstream tables printed
durations in ncu's unit (usually microseconds); here the unit column is honoured.

ncu's CSV comes in two layouts, both parsed: `--page raw` (one row per kernel, one column
per metric, then a units row) and the default `--page details` (one row per kernel and
metric, with "Metric Name", "Metric Unit", "Metric Value").
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

DURATION = "gpu__time_duration.sum"
L2_HIT_RATE = "lts__t_sector_hit_rate.pct"
L2_UTILIZATION = "lts__t_sectors.avg.pct_of_peak_sustained_elapsed"
SM_THROUGHPUT = "sm__throughput.avg.pct_of_peak_sustained_elapsed"
DRAM_UTILIZATION = "dram__throughput.avg.pct_of_peak_sustained_elapsed"
METRICS = (DURATION, L2_HIT_RATE, L2_UTILIZATION, SM_THROUGHPUT, DRAM_UTILIZATION)

_TO_MICROSECONDS = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3,
                    "ms": 1e3, "second": 1e6, "s": 1e6}  # fmt: skip


class NcuUnavailable(Exception):
    """Nsight Compute is not installed (not on PATH)."""


class NcuError(Exception):
    """ncu ran but produced no usable profile (the message says why)."""


@dataclass(frozen=True)
class NcuFeatures:
    kernel_num: int
    mean_gpu_time_duration: float  # microseconds
    mean_l2_hit_rate: float  # %
    mean_l2_utilization: float  # %
    mean_sm_efficiency: float  # %
    mean_dram_utilization: float  # % (not in the training tables)

    def columns(self, suffix: str = "") -> dict[str, float]:
        """The feature columns as named in the training tables (suffix "1" or "2" there)."""
        return {f"{name}{suffix}": value for name, value in asdict(self).items()}


def find_ncu() -> str | None:
    return shutil.which("ncu")


def ncu_command(
    program: Sequence[str],
    *,
    ncu: str = "ncu",
    log_file: Path | None = None,
    profile_from_start: bool = True,
    launch_skip: int = 0,
    launch_count: int = 0,
) -> list[str]:
    """The ncu command line that profiles `program` (a model run) for our metrics.

    With `profile_from_start=False` only kernels between the program's
    cudaProfilerStart/Stop calls are profiled (so warm-up and engine builds stay out);
    `launch_skip`/`launch_count` cut by kernel launch index instead. `--log-file` keeps
    the report apart from the program's own output.
    """
    if not program:
        raise ValueError("no program to profile")
    command = [ncu, "--csv", "--page", "raw", "--metrics", ",".join(METRICS)]
    command += ["--target-processes", "all"]
    if not profile_from_start:
        command += ["--profile-from-start", "off"]
    if launch_skip:
        command += ["--launch-skip", str(launch_skip)]
    if launch_count:
        command += ["--launch-count", str(launch_count)]
    if log_file is not None:
        command += ["--log-file", str(log_file)]
    return [*command, *program]


def collect_features(
    program: Sequence[str], timeout_s: float = 600.0, profile_from_start: bool = True
) -> NcuFeatures:
    """Profile `program` with ncu and return its features; NcuUnavailable without ncu."""
    ncu = find_ncu()
    if ncu is None:
        raise NcuUnavailable("Nsight Compute (ncu) is not on PATH: hardware features unavailable")
    with tempfile.TemporaryDirectory(prefix="deinfer-ncu-") as tmp:
        log_file = Path(tmp) / "ncu.csv"
        command = ncu_command(
            program, ncu=ncu, log_file=log_file, profile_from_start=profile_from_start
        )
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise NcuError(f"ncu did not finish within {timeout_s:g} s") from None
        report = log_file.read_text() if log_file.exists() else done.stdout
        if done.returncode != 0:
            tail = (done.stderr or report)[-2000:]
            raise NcuError(f"ncu exited with code {done.returncode}: {tail}")
    return parse_ncu_csv(report)


def parse_ncu_csv(text: str) -> NcuFeatures:
    """Features from ncu's CSV report (raw or details page); NcuError when it has no kernels.

    Lines before the header (ncu's `==PROF==` messages, the program's output) are skipped.
    """
    kernels = _kernel_metrics(_csv_rows(text))
    if not kernels:
        raise NcuError("the ncu report holds no profiled kernel")
    durations_us = []
    for metrics in kernels.values():
        if DURATION not in metrics:
            raise NcuError(f"the ncu report lacks {DURATION} for some kernels")
        durations_us.append(metrics[DURATION])
    return NcuFeatures(
        kernel_num=len(kernels),
        mean_gpu_time_duration=sum(durations_us) / len(durations_us),
        mean_l2_hit_rate=_time_weighted(kernels, L2_HIT_RATE),
        mean_l2_utilization=_time_weighted(kernels, L2_UTILIZATION),
        mean_sm_efficiency=_time_weighted(kernels, SM_THROUGHPUT),
        mean_dram_utilization=_time_weighted(kernels, DRAM_UTILIZATION),
    )


def _csv_rows(text: str) -> list[dict[str, str]]:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID",')), None)
    if start is None:
        raise NcuError('no ncu CSV header ("ID", ...) in the report')
    body = [line for line in lines[start:] if line.startswith('"')]  # drop ==PROF== lines
    return list(csv.DictReader(io.StringIO("\n".join(body))))


def _number(text: str) -> float | None:
    cleaned = text.replace(",", "").strip()  # the details page prints "5,632"
    try:
        return float(cleaned)
    except ValueError:
        return None  # "n/a": the metric does not apply to this kernel


def _kernel_metrics(rows: list[dict[str, str]]) -> dict[str, dict[str, float]]:
    """kernel ID -> {metric: value}, durations converted to microseconds."""
    kernels: dict[str, dict[str, float]] = {}
    if rows and "Metric Name" in rows[0]:  # details page: one row per (kernel, metric)
        for row in rows:
            name = row["Metric Name"]
            value = _number(row["Metric Value"])
            if name in METRICS and value is not None:
                kernels.setdefault(row["ID"], {})[name] = _scaled(name, value, row["Metric Unit"])
        return kernels
    units: dict[str, str] = {}
    for row in rows:
        if not row["ID"]:  # the raw page's units row
            units = row
            continue
        metrics = kernels.setdefault(row["ID"], {})
        for name in METRICS:
            value = _number(row.get(name) or "")
            if value is not None:
                metrics[name] = _scaled(name, value, units.get(name, ""))
    return kernels


def _scaled(name: str, value: float, unit: str) -> float:
    if name != DURATION:
        return value
    factor = _TO_MICROSECONDS.get(unit.strip())
    if factor is None:
        raise NcuError(f"unknown time unit {unit!r} for {DURATION}")
    return value * factor


def _time_weighted(kernels: dict[str, dict[str, float]], name: str) -> float:
    """Duration-weighted mean over the kernels that report `name`; NaN when none does."""
    pairs = [(m[name], m[DURATION]) for m in kernels.values() if name in m]
    total = sum(t for _, t in pairs)
    if not pairs or total <= 0:
        return float("nan")
    return sum(v * t for v, t in pairs) / total
