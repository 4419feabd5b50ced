"""Nsight Compute features: command line, CSV parsing, ncu absent / failing.

The CSV reports below are SYNTHETIC: written by hand in the layout of ncu's `--csv` output
(raw page: a header, a units row, one row per kernel; details page: one row per kernel and
metric), with round numbers so the expected features can be checked by hand. No GPU or
ncu produced them. Three kernels, durations 2, 6 and 12 us (weights 2:6:12 out of 20):
  L2 hit rate  80, 90, 60  -> (160 + 540 + 720) / 20 = 71
  L2 util      20, 30, 50  -> (40 + 180 + 600) / 20  = 41
  SM           40, 60, 70  -> (80 + 360 + 840) / 20  = 64
  DRAM         10, 30, n/a -> (20 + 180) / 8         = 25
  mean duration (2 + 6 + 12) / 3 us
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from services.profiler.ncu_features import (
    METRICS,
    NcuError,
    NcuUnavailable,
    collect_features,
    find_ncu,
    ncu_command,
    parse_ncu_csv,
)

HEAD = '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC"'  # noqa: E501
METRIC_COLUMNS = (
    '"dram__throughput.avg.pct_of_peak_sustained_elapsed","gpu__time_duration.sum",'
    '"lts__t_sector_hit_rate.pct","lts__t_sectors.avg.pct_of_peak_sustained_elapsed",'
    '"sm__throughput.avg.pct_of_peak_sustained_elapsed"'
)
KERNEL = (
    '"{id}","4242","python3.11","127.0.0.1","{name}","1","7","(256, 1, 1)","(196, 1, 1)","0","9.0"'
)
RAW_REPORT = "\n".join(
    [
        "==PROF== Connected to process 4242 (/usr/bin/python3.11)",
        "model loaded",  # the program's own output
        '==PROF== Profiling "implicit_convolve_sgemm" - 0: 0%....50%....100% - 9 passes',
        f"{HEAD},{METRIC_COLUMNS}",
        '"","","","","","","","","","","","%","nsecond","%","%","%"',
        KERNEL.format(id=0, name="implicit_convolve_sgemm") + ',"10","2000","80","20","40"',
        KERNEL.format(id=1, name="cudnn::bn_fw_inf") + ',"30","6000","90","30","60"',
        KERNEL.format(id=2, name="sm90_xmma_gemm") + ',"n/a","12000","60","50","70"',
        "==PROF== Disconnected from process 4242",
    ]
)


def details_report() -> str:
    """The same three kernels on the details page, with mixed time units."""
    head = f'{HEAD},"Section Name","Metric Name","Metric Unit","Metric Value"'
    values = {
        0: [("gpu__time_duration.sum", "nsecond", "2,000"), ("dram", "%", "10")],
        1: [("gpu__time_duration.sum", "usecond", "6"), ("dram", "%", "30")],
        2: [("gpu__time_duration.sum", "msecond", "0.012")],
    }
    rest = {0: ("80", "20", "40"), 1: ("90", "30", "60"), 2: ("60", "50", "70")}
    rows = [head]
    for kernel, metrics in values.items():
        hit, l2, sm = rest[kernel]
        metrics = [
            *metrics,
            ("lts__t_sector_hit_rate.pct", "%", hit),
            ("lts__t_sectors.avg.pct_of_peak_sustained_elapsed", "%", l2),
            ("sm__throughput.avg.pct_of_peak_sustained_elapsed", "%", sm),
            ("launch__grid_size", "", "196"),  # a metric we do not use
        ]
        for name, unit, value in metrics:
            name = "dram__throughput.avg.pct_of_peak_sustained_elapsed" if name == "dram" else name
            prefix = KERNEL.format(id=kernel, name=f"k{kernel}")
            rows.append(f'{prefix},"Command line profiler metrics","{name}","{unit}","{value}"')
    return "\n".join(rows)


@pytest.mark.parametrize("report", [RAW_REPORT, details_report()], ids=["raw", "details"])
def test_features_from_both_csv_layouts(report: str) -> None:
    features = parse_ncu_csv(report)
    assert features.kernel_num == 3
    assert features.mean_gpu_time_duration == pytest.approx(20 / 3)
    assert features.mean_l2_hit_rate == pytest.approx(71.0)
    assert features.mean_l2_utilization == pytest.approx(41.0)
    assert features.mean_sm_efficiency == pytest.approx(64.0)
    assert features.mean_dram_utilization == pytest.approx(25.0)


def test_columns_are_named_like_the_training_tables() -> None:
    columns = parse_ncu_csv(RAW_REPORT).columns("1")
    training = {  # model_interference_feature.csv, target model A
        "kernel_num1",
        "mean_gpu_time_duration1",
        "mean_l2_hit_rate1",
        "mean_l2_utilization1",
        "mean_sm_efficiency1",
    }
    assert training <= set(columns)
    assert set(columns) - training == {"mean_dram_utilization1"}


def test_reports_without_kernels_or_header_are_errors() -> None:
    with pytest.raises(NcuError, match="no ncu CSV header"):
        parse_ncu_csv("==PROF== No kernels were profiled.\n")
    with pytest.raises(NcuError, match="holds no profiled kernel"):
        parse_ncu_csv(f"{HEAD},{METRIC_COLUMNS}\n")
    bad_unit = RAW_REPORT.replace('"nsecond"', '"fortnight"')
    with pytest.raises(NcuError, match="unknown time unit 'fortnight'"):
        parse_ncu_csv(bad_unit)


def test_command_line() -> None:
    command = ncu_command(["python", "-m", "run_model"], log_file=Path("/tmp/r.csv"))
    assert command[:5] == ["ncu", "--csv", "--page", "raw", "--metrics"]
    assert command[5].split(",") == list(METRICS)
    assert command[-3:] == ["python", "-m", "run_model"]
    assert command[-5:-3] == ["--log-file", "/tmp/r.csv"]
    assert "--profile-from-start" not in command
    ranged = ncu_command(["prog"], profile_from_start=False, launch_skip=10, launch_count=50)
    assert ranged[ranged.index("--profile-from-start") + 1] == "off"
    assert ranged[ranged.index("--launch-skip") + 1] == "10"
    assert ranged[ranged.index("--launch-count") + 1] == "50"
    with pytest.raises(ValueError):
        ncu_command([])


def test_ncu_absent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH directory
    assert find_ncu() is None
    with pytest.raises(NcuUnavailable, match="not on PATH"):
        collect_features(["python", "-c", "pass"])


def fake_ncu(directory: Path, script: str) -> None:
    """An `ncu` executable on PATH that stands in for Nsight Compute (a test double)."""
    path = directory / "ncu"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_collect_runs_ncu_and_parses_its_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "report.csv").write_text(RAW_REPORT)
    # Writes the report where --log-file says, and records its arguments.
    fake_ncu(
        tmp_path,
        f'echo "$@" > {tmp_path}/args\n'
        'while [ "$1" != "--log-file" ]; do shift; done\n'
        f'cp {tmp_path}/report.csv "$2"\n',
    )
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    features = collect_features(["python", "-m", "model_run"])
    assert features.kernel_num == 3 and features.mean_l2_hit_rate == pytest.approx(71.0)
    assert (tmp_path / "args").read_text().strip().endswith("python -m model_run")


def test_collect_reports_ncu_failures(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_ncu(tmp_path, 'echo "==ERROR== ERR_NVGPUCTRPERM - no permission" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(NcuError, match="code 1: ==ERROR== ERR_NVGPUCTRPERM"):
        collect_features(["prog"])
