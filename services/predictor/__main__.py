"""`python -m services.predictor`: latency/interference prediction behind deinfer.v1.Predictor."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from deinfer.protos.v1 import predictor_pb2, predictor_pb2_grpc
from services.common.grpc_runtime import GrpcService
from services.common.logs import configure_logging
from services.predictor.artifacts import ArtifactError
from services.predictor.core import PredictorCore
from services.predictor.servicer import PredictorServicer
from services.predictor.settings import PredictorSettings

log = logging.getLogger("services.predictor")

SERVICE_NAME = predictor_pb2.DESCRIPTOR.services_by_name["Predictor"].full_name


def prepare(settings: PredictorSettings) -> PredictorCore:
    """Restore the newest verified artifact, else train on the configured data (if any)."""
    core = PredictorCore(Path(settings.predictor_artifacts), settings.predictor_train_threads)
    try:
        meta = core.restore()
    except (ArtifactError, OSError, ValueError) as exc:
        log.warning("not restoring the stored predictor", extra={"reason": str(exc)})
        meta = None
    if meta is None and settings.predictor_dataset and settings.predictor_data_dir:
        meta = core.train(
            settings.predictor_dataset,
            Path(settings.predictor_data_dir),
            settings.predictor_backend,
        )
    if meta is not None:
        log.info("predictor ready", extra={"version": meta.version, "backend": meta.backend})
    return core


async def serve(settings: PredictorSettings) -> None:
    core = await asyncio.to_thread(prepare, settings)
    service = GrpcService(
        "predictor",
        f"{settings.predictor_host}:{settings.predictor_port}",
        max_message_bytes=settings.max_message_bytes,
        metrics_port=settings.predictor_metrics_port or None,
        grace_s=settings.grace_s,
    )
    predictor_pb2_grpc.add_PredictorServicer_to_server(  # type: ignore[no-untyped-call]
        PredictorServicer(core), service.server
    )
    await service.run([SERVICE_NAME])


def main() -> None:
    settings = PredictorSettings()
    configure_logging("predictor", settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
