"""Profiler settings (environment variables `DEINFER_PROFILER_...`)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from services.common.settings import CommonSettings
from services.worker.mps import pipe_directory


def _available_cpus() -> int:
    return len(os.sched_getaffinity(0))


class ProfilerSettings(CommonSettings):
    profiler_host: str = Field(default="0.0.0.0", description="address the gRPC server binds")
    profiler_port: int = Field(default=8300, ge=0, le=65535, description="gRPC port (0: any)")
    profiler_metrics_port: int = Field(
        default=8301, ge=0, le=65535, description="Prometheus HTTP port (0 disables)"
    )
    profiler_cpu_threads: int = Field(
        default_factory=_available_cpus,
        gt=0,
        description="CPU threads that share 1.0 maps to when no worker is named",
    )
    profiler_default_batches: str = Field(default="1,2,4,8", description="when none are asked")
    profiler_default_shares: str = Field(default="0.5,1.0", description="when none are asked")
    profiler_sequence_length: int = Field(
        default=128, gt=0, description="symbolic non-batch input dims (tokens) when not asked"
    )
    profiler_max_batch: int = Field(default=256, gt=0, description="largest batch accepted")
    profiler_max_runs: int = Field(default=10_000, gt=0, description="most runs per point")
    profiler_job_timeout_s: float = Field(
        default=1800.0, gt=0, description="longest a measuring child may take"
    )
    profiler_export_dir: str = Field(
        default="", description="append every result to CSVs here ('' disables)"
    )
    profiler_hw_counters: Literal["auto", "off", "required"] = Field(
        default="auto",
        description="Nsight Compute counters in ProfileModel: when ncu is on PATH / never / "
        "always (refuse without ncu)",
    )

    profiler_mps_pipe_directory: str = Field(
        default_factory=lambda: str(pipe_directory(os.environ)),
        description="GPU workers: the MPS control daemon's pipe directory, as the worker's "
        "(default: $CUDA_MPS_PIPE_DIRECTORY or /tmp/nvidia-mps)",
    )
    profiler_fp16: bool = Field(
        default=False, description="GPU workers: FP16 TensorRT engines, as DEINFER_WORKER_FP16"
    )

    @property
    def bind_address(self) -> str:
        return f"{self.profiler_host}:{self.profiler_port}"
