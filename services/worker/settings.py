"""Worker settings (environment variables `DEINFER_WORKER_...`)."""

from __future__ import annotations

import os
import socket

from pydantic import Field, model_validator

from services.common.settings import CommonSettings


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
    worker_device: str = Field(default="cpu", description="device the executors use")
    worker_cpu_threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1, gt=0, description="CPU threads to share"
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

    @model_validator(mode="after")
    def _fill_advertise_address(self) -> WorkerSettings:
        if not self.worker_advertise_address:
            self.worker_advertise_address = f"127.0.0.1:{self.worker_port}"
        return self

    @property
    def bind_address(self) -> str:
        return f"{self.worker_host}:{self.worker_port}"
