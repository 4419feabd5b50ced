"""Worker settings (environment variables `DEINFER_WORKER_...`)."""

from __future__ import annotations

import os
import socket

from pydantic import Field, field_validator, model_validator

from services.common.settings import CommonSettings
from services.worker.device import DeviceSpec, parse_device
from services.worker.mps import pipe_directory

# On a CPU device the gRPC work of a burst competes with the model for the same cores: batches
# run slower exactly while a burst is being admitted, before any measurement can show it.
CPU_ADMISSION_MARGIN = 1.5


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(CommonSettings):
    worker_id: str = Field(default_factory=_default_worker_id, description="unique worker name")
    worker_port: int = Field(default=8200, ge=0, le=65535, description="gRPC port")
    worker_host: str = Field(default="0.0.0.0", description="address the gRPC server binds")
    worker_advertise_address: str = Field(
        default="", description="host:port others dial (heartbeat); default 127.0.0.1:<worker_port>"
    )
    worker_metrics_port: int = Field(
        default=8201, ge=0, le=65535, description="Prometheus; 0 disables"
    )
    worker_heartbeat_s: float = Field(default=1.0, gt=0, description="heartbeat period")
    worker_heartbeat_ttl_s: float = Field(default=3.0, gt=0, description="heartbeat key lifetime")
    worker_device: str = Field(
        default="cpu",
        description="cpu | tensorrt[:N] | cuda[:N] | python:module:Factory (docs/gpu.md)",
    )
    worker_cpu_threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1, gt=0, description="CPU threads to share"
    )
    worker_admission_margin: float = Field(
        default=0.0,
        ge=0,
        description="least factor on the mean batch time that admission plans with; 0: "
        f"{CPU_ADMISSION_MARGIN} on the cpu device (serving shares its cores with the model, "
        "so a burst slows the batches it is admitted against), 1.0 otherwise",
    )
    worker_default_queue_capacity: int = Field(
        default=64, gt=0, description="queue bound when InstanceSpec.queue_capacity is 0"
    )
    worker_max_instances: int = Field(default=16, gt=0, description="instances hosted at most")
    worker_load_timeout_s: float = Field(
        default=120.0, gt=0, description="longest wait for an instance process to load its model"
    )
    worker_shm_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="shared memory per instance for batch tensors (half in, half out); "
        "larger tensors go through the pipe",
    )

    worker_fp16: bool = Field(default=False, description="TensorRT: build FP16 engines")
    worker_trt_workspace_mb: int = Field(
        default=1024, gt=0, description="TensorRT: builder workspace per engine build"
    )
    worker_engine_cache: bool = Field(
        default=True, description="TensorRT: keep built engines in the model repository"
    )
    worker_mps_pipe_directory: str = Field(
        default_factory=lambda: str(pipe_directory(os.environ)),
        description="MPS control daemon's pipe directory (default: $CUDA_MPS_PIPE_DIRECTORY "
        "or /tmp/nvidia-mps)",
    )
    worker_gpu_monitor_s: float = Field(
        default=2.0, ge=0, description="NVML sampling period; 0 disables GPU monitoring"
    )

    @field_validator("worker_device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        parse_device(value)  # ValueError names the accepted forms
        return value

    @model_validator(mode="after")
    def _fill_advertise_address(self) -> WorkerSettings:
        if not self.worker_advertise_address:
            self.worker_advertise_address = f"127.0.0.1:{self.worker_port}"
        return self

    @property
    def admission_margin(self) -> float:
        """The least slow-case factor admission plans with (see worker_admission_margin)."""
        if self.worker_admission_margin > 0:
            return self.worker_admission_margin
        return CPU_ADMISSION_MARGIN if self.worker_device == "cpu" else 1.0

    @property
    def bind_address(self) -> str:
        return f"{self.worker_host}:{self.worker_port}"

    @property
    def device(self) -> DeviceSpec:
        return parse_device(self.worker_device)
