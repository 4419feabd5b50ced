"""deinfer.v1.Predictor over PredictorCore: translate messages, map errors to gRPC codes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc

from deinfer.protos.v1 import predictor_pb2, predictor_pb2_grpc
from services.predictor.artifacts import ArtifactError
from services.predictor.backends import BACKENDS
from services.predictor.core import NotTrained, PredictorCore
from services.predictor.datasets.base import DATASETS, DatasetError
from services.predictor.placements import (
    DeviceMismatch,
    InvalidQuery,
    Placement,
    Query,
    UnknownModel,
)

Context = grpc.aio.ServicerContext[Any, Any]


def _placement(message: predictor_pb2.Placement) -> Placement:
    return Placement(message.model, int(message.batch), float(message.share))


class PredictorServicer(predictor_pb2_grpc.PredictorServicer):
    def __init__(self, core: PredictorCore) -> None:
        self.core = core
        self._training = asyncio.Lock()

    async def Predict(
        self, request: predictor_pb2.PredictRequest, context: Context
    ) -> predictor_pb2.PredictResponse:
        queries = [
            Query(_placement(q.target), tuple(_placement(c) for c in q.corunners), q.device_type)
            for q in request.queries
        ]
        try:
            # Off the event loop: a large batch takes a few hundred ms (20k DeInfer queries
            # ~0.4 s) and health checks, Info and other calls must not wait behind it.
            answers = await asyncio.to_thread(self.core.predict, queries, request.backend)
        except UnknownModel as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except DeviceMismatch as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except InvalidQuery as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NotTrained as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        trained = self.core.trained
        assert trained is not None
        return predictor_pb2.PredictResponse(
            predictions=[
                predictor_pb2.Prediction(
                    latency_ms=a.latency_ms, slowdown=a.slowdown, solo_latency_ms=a.solo_latency_ms
                )
                for a in answers
            ],
            backend=trained.meta.backend,
            model_version=trained.meta.version,
        )

    async def Train(
        self, request: predictor_pb2.TrainRequest, context: Context
    ) -> predictor_pb2.TrainResponse:
        if request.dataset not in DATASETS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown data set {request.dataset!r}; one of {', '.join(DATASETS)}",
            )
        if request.backend and request.backend not in BACKENDS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown backend {request.backend!r}; one of {', '.join(BACKENDS)}",
            )
        if self._training.locked():
            await context.abort(grpc.StatusCode.ABORTED, "a training run is in progress")
        async with self._training:
            try:
                meta = await asyncio.to_thread(
                    self.core.train, request.dataset, Path(request.data_dir), request.backend
                )
            except DatasetError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except ValueError as exc:  # data a fit cannot use (scikit-learn's checks)
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"cannot train {request.dataset} on {request.data_dir}: {exc}",
                )
            except (OSError, ArtifactError) as exc:
                await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        return predictor_pb2.TrainResponse(model_version=meta.version, metrics=meta.metrics)

    async def Info(
        self, request: predictor_pb2.InfoRequest, context: Context
    ) -> predictor_pb2.InfoResponse:
        trained = self.core.trained
        response = predictor_pb2.InfoResponse(backends=sorted(BACKENDS))
        if trained is not None:
            response.backend = trained.meta.backend
            response.model_version = trained.meta.version
            response.data_hash = trained.meta.data_hash
            response.metrics.update(trained.meta.metrics)
        return response
