"""ProfileModel's hardware-counter logic: modes, failures, the job under ncu, the keys and the
CSV columns they fill (also in files written before those columns existed)."""

from __future__ import annotations

import asyncio
import csv
import math
import stat
import sys
from dataclasses import fields
from pathlib import Path

import grpc
import pytest

from deinfer import profile_csv
from deinfer.protos.v1 import profiler_pb2
from services.profiler import hw_counters
from services.profiler.child import Job
from services.profiler.errors import ProfilerError
from services.profiler.ncu_features import NcuError, NcuFeatures
from services.profiler.profiling import measured_point

JOB = Job(
    model_path="/m/model.onnx",
    inputs=[("x", "FP32", [-1, 3])],
    batching=True,
    threads=2,
    cores=[0, 1],
    batches=[1, 2, 4],
    runs=20,
    warmup=3,
    sequence_length=128,
    mode="solo",
)
FEATURES = NcuFeatures(3, 6.5, 71.0, 41.0, 64.0, float("nan"))


def test_modes() -> None:
    assert hw_counters.ncu_for("auto", "/opt/nsight/ncu") == ("/opt/nsight/ncu", "")
    assert hw_counters.ncu_for("required", "/opt/nsight/ncu") == ("/opt/nsight/ncu", "")
    ncu, why = hw_counters.ncu_for("auto", None)
    assert ncu is None and "not on PATH: profiling without hardware counters" in why
    ncu, why = hw_counters.ncu_for("off", "/opt/nsight/ncu")
    assert ncu is None and "off" in why
    with pytest.raises(ProfilerError) as err:
        hw_counters.ncu_for("required", None)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "ncu) is not on the profiler's PATH" in err.value.message


def test_a_failed_run_is_a_message_in_auto_and_an_error_when_required() -> None:
    error = NcuError("ncu exited with code 1: ERR_NVGPUCTRPERM")
    message = hw_counters.failure("auto", "m/1", 4, error)
    assert message == (
        "hardware counters of m/1 at batch 4 failed: ncu exited with code 1: ERR_NVGPUCTRPERM; "
        "profiling without hardware counters"
    )
    refused = hw_counters.failure("required", "m/1", 4, error)
    assert isinstance(refused, ProfilerError)
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "m/1 at batch 4" in refused.message and "ERR_NVGPUCTRPERM" in refused.message


def test_the_counter_job_is_one_inference_of_one_batch() -> None:
    job = hw_counters.counter_job(JOB, 2)
    assert (job.batches, job.runs, job.warmup, job.mode) == ([2], 1, 0, "solo")
    assert (job.threads, job.cores, job.model_path) == (2, [0, 1], "/m/model.onnx")


def test_counter_keys_carry_the_batch() -> None:
    counters = hw_counters.counters(FEATURES, 8)
    assert counters["kernel_num@b8"] == 3.0
    assert counters["mean_l2_hit_rate@b8"] == 71.0
    assert math.isnan(counters["mean_dram_utilization@b8"])
    assert set(counters) == {f"{name}@b8" for name in profile_csv.HW_FIELDS}


def test_csv_hw_columns_are_the_ncu_features() -> None:
    assert [f.name for f in fields(NcuFeatures)] == profile_csv.HW_FIELDS
    assert profile_csv.FIELDS == profile_csv.LEGACY_FIELDS + profile_csv.HW_FIELDS


def test_child_error_is_found_among_ncu_output() -> None:
    out = '==PROF== Connected\n{"event": "loaded"}\n{"event": "error", "message": "bad"}\n'
    assert hw_counters.child_error(out) == "bad"
    assert hw_counters.child_error('{"event": "loaded"}\n{not json\n') is None


def _profile(counters: dict[str, float]) -> profiler_pb2.ModelProfile:
    return profiler_pb2.ModelProfile(
        model="m",
        version="1",
        device_type="cpu",
        points=[measured_point(1, 1.0, 2, [3.0]), measured_point(2, 1.0, 2, [5.0])],
        measured_at=1_700_000_000.0,
        hw_counters=counters,
    )


def test_solo_rows_carry_the_counters_of_their_batch() -> None:
    rows = profile_csv.solo_rows(_profile(hw_counters.counters(FEATURES, 2)))
    assert all(list(r) == profile_csv.FIELDS for r in rows)
    one, two = rows
    assert [one[name] for name in profile_csv.HW_FIELDS] == [""] * 6
    assert two["kernel_num"] == 3 and two["mean_sm_efficiency"] == 64.0


def test_legacy_files_read_with_empty_counters_and_take_appends(tmp_path: Path) -> None:
    legacy = tmp_path / "old.csv"
    with legacy.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=profile_csv.LEGACY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(profile_csv.solo_rows(_profile({})))
    rows = profile_csv.read_rows(legacy)
    assert len(rows) == 2 and rows[0]["kernel_num"] == "" and rows[0]["batch"] == "1"
    # Appending keeps the old header (the counters are dropped there, Redis keeps them).
    profile_csv.write_rows(legacy, profile_csv.solo_rows(_profile({"kernel_num@b1": 9})), True)
    assert legacy.read_text().splitlines()[0].split(",") == profile_csv.LEGACY_FIELDS
    rows = profile_csv.read_rows(legacy)
    assert len(rows) == 4 and all(r["kernel_num"] == "" for r in rows)

    current = tmp_path / "new.csv"
    profile_csv.write_rows(current, profile_csv.solo_rows(_profile({"kernel_num@b1": 9})))
    assert [r["kernel_num"] for r in profile_csv.read_rows(current)] == ["9", ""]


def _stand_in_ncu(tmp_path: Path, body: str) -> str:
    script = tmp_path / "ncu"
    script.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_measure_reports_the_childs_error_and_ncus_exit(tmp_path: Path) -> None:
    """Stand-in ncu scripts (no real ncu): what `measure` makes of their output."""
    child_failed = _stand_in_ncu(
        tmp_path, 'print(\'{"event": "error", "message": "FileNotFoundError: model"}\')'
    )
    with pytest.raises(NcuError, match="measuring process failed under ncu: FileNotFoundError"):
        asyncio.run(hw_counters.measure(JOB, child_failed, 30.0))
    denied = _stand_in_ncu(tmp_path, 'sys.exit("==ERROR== ERR_NVGPUCTRPERM")')
    with pytest.raises(NcuError, match="code 1: ==ERROR== ERR_NVGPUCTRPERM"):
        asyncio.run(hw_counters.measure(JOB, denied, 30.0))
    slow = _stand_in_ncu(tmp_path, "import time; time.sleep(30)")
    with pytest.raises(NcuError, match=r"did not finish within 0\.5 s"):
        asyncio.run(hw_counters.measure(JOB, slow, 0.5))
