"""Controller settings (environment variables prefixed `DEINFER_`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.common.settings import CommonSettings

GIB = 1024 * 1024 * 1024


class ControllerSettings(CommonSettings):
    controller_host: str = Field(default="0.0.0.0", description="address the gRPC server binds")
    controller_port: int = Field(
        default=8100, ge=0, le=65535, description="gRPC port (0: any free)"
    )
    controller_metrics_port: int = Field(
        default=8101, ge=0, le=65535, description="Prometheus HTTP port (0 disables)"
    )
    controller_replicas: int = Field(
        default=2, ge=1, description="instances per model, each on a distinct worker"
    )
    controller_default_max_batch_size: int = Field(
        default=8, ge=1, description="batch size when the upload does not ask for one"
    )
    controller_default_max_delay_ms: float = Field(
        default=0.0, ge=0, description="longest wait for a batch to fill"
    )
    controller_queue_capacity: int = Field(
        default=64, ge=1, description="bound of each instance queue"
    )
    controller_reconcile_s: float = Field(
        default=1.0, gt=0, description="re-check the cluster at least this often"
    )
    controller_max_model_bytes: int = Field(
        default=2 * GIB, gt=0, description="largest ONNX file RegisterModel accepts"
    )
    controller_instances_per_worker: int = Field(
        default=16, ge=1, description="most instances one worker hosts"
    )
    controller_load_timeout_s: float = Field(
        default=60.0, gt=0, description="LoadInstance deadline (includes warm-up)"
    )
    controller_policy: Literal[
        "first_fit", "deinfer", "igniter", "dedicated", "deinfer-published"
    ] = Field(
        default="first_fit",
        description="placement policy; the planning ones need profiles of the served models "
        "(models without one are placed first-fit)",
    )
    controller_drain_timeout_s: float = Field(
        default=10.0, ge=0, description="UnloadInstance: time the worker gets to finish queued work"
    )
