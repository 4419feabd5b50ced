"""The worker's view of its device: MPS reachability, and what each instance process gets.

For GPU devices every instance process is started with its MPS share and memory cap in its
environment (services.worker.mps) and with the executor options of its plan (batch range,
precision). CPU workers pass nothing: there the share maps to ONNX Runtime threads.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge

from services.worker.executor import ExecutorOptions
from services.worker.mps import (
    MpsStatus,
    check_share,
    instance_environment,
    probe_control_daemon,
)
from services.worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class DeviceRuntime:
    def __init__(self, settings: WorkerSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.spec = settings.device
        self.pipe_dir = Path(settings.worker_mps_pipe_directory)
        self.mps = MpsStatus(False, "not checked yet")
        self._gauge = (
            Gauge(
                "deinfer_worker_mps_reachable",
                "1 when the MPS control daemon answers (GPU workers); shares < 100% need it",
                registry=registry,
            )
            if registry is not None and self.spec.uses_mps
            else None
        )

    def refresh_mps(self) -> MpsStatus:
        """Probe the control daemon (cheap: a stat and an open); log when the state changes."""
        if not self.spec.uses_mps:
            return self.mps
        status = probe_control_daemon(self.pipe_dir)
        if status != self.mps:
            if status.reachable:
                log.info("MPS reachable", extra={"detail": status.detail})
            else:
                log.warning(
                    "MPS NOT REACHABLE: instances with a share below 100%% will be refused",
                    extra={"detail": status.detail},
                )
        self.mps = status
        if self._gauge is not None:
            self._gauge.set(1 if status.reachable else 0)
        return status

    def check_share(self, share: float) -> None:
        """ShareRefused when this share cannot be applied here (docs/gpu.md, MPS policy)."""
        if self.spec.uses_mps:
            check_share(share, self.refresh_mps())

    def instance_env(self, share: float, memory_mb: int) -> dict[str, str]:
        if not self.spec.uses_mps:
            return {}
        return instance_environment(share, self.spec.index, memory_mb, self.pipe_dir)

    def executor_options(self, max_rows: int, batching: bool) -> ExecutorOptions:
        return ExecutorOptions(
            max_batch_size=max_rows if batching else 0,
            fp16=self.settings.worker_fp16,
            workspace_mb=self.settings.worker_trt_workspace_mb,
            engine_cache=self.settings.worker_engine_cache,
        )
