"""Dispatcher settings (environment variables prefixed `DEINFER_`)."""

from __future__ import annotations

import os
import socket

from pydantic import Field

from services.common.settings import CommonSettings


def _default_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class DispatcherSettings(CommonSettings):
    dispatcher_host: str = Field(default="0.0.0.0", description="address the gRPC server binds")
    dispatcher_port: int = Field(
        default=8001, ge=0, le=65535, description="gRPC port (0: any free)"
    )
    dispatcher_metrics_port: int = Field(
        default=8002, ge=0, le=65535, description="Prometheus HTTP port (0 disables)"
    )
    dispatcher_id: str = Field(
        default_factory=_default_id, description="names this dispatcher in rate reports"
    )
    dispatcher_controller_address: str = Field(
        default="127.0.0.1:8100", description="host:port of the controller (repository load/unload)"
    )
    dispatcher_max_inflight: int = Field(
        default=4096, ge=1, description="inference requests in flight; beyond it RESOURCE_EXHAUSTED"
    )
    dispatcher_refresh_s: float = Field(
        default=2.0, gt=0, description="re-read models and routes from Redis at least this often"
    )
    dispatcher_server_name: str = Field(default="deinfer", description="name in ServerMetadata")
    dispatcher_load_wait_s: float = Field(
        default=30.0,
        ge=0,
        description="RepositoryModelLoad waits this long for a ready instance (0: no wait)",
    )
    dispatcher_rate_report_s: float = Field(
        default=1.0,
        ge=0,
        description="report arrival rates to the controller this often (0: never)",
    )
    dispatcher_cusum_threshold: float = Field(
        default=9.0, gt=0, description="rate-change CUSUM alarm level (standard deviations)"
    )
    dispatcher_cusum_slack: float = Field(
        default=0.5, ge=0, description="rate-change CUSUM slack per window (standard deviations)"
    )
    dispatcher_rate_history: int = Field(
        default=30, ge=1, description="report windows averaged into a rate between alarms"
    )
