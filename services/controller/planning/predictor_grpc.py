"""LatencyPredictor over the predictor service (deinfer.v1.Predictor/Predict).

One Predict call per planner request (the planner already batches its queries). The
planner's profile key travels as the model name; `versions` maps it to a registered model
version where the service needs one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import grpc

from deinfer.protos.v1 import predictor_pb2, predictor_pb2_grpc
from services.controller.planning.predictor import LatencyQuery, Placement


class PredictorServiceError(RuntimeError):
    pass


def _placement(p: Placement, versions: Mapping[str, str]) -> predictor_pb2.Placement:
    return predictor_pb2.Placement(
        model=p.model, version=versions.get(p.model, ""), batch=p.batch, share=p.share
    )


class GrpcLatencyPredictor:
    def __init__(
        self,
        channel: grpc.Channel,
        *,
        backend: str = "",
        device_type: str = "",
        timeout_s: float = 5.0,
        versions: Mapping[str, str] | None = None,
    ) -> None:
        self._stub = predictor_pb2_grpc.PredictorStub(channel)  # type: ignore[no-untyped-call]
        self.backend = backend
        self.device_type = device_type
        self.timeout_s = timeout_s
        self.versions = dict(versions or {})

    def request(self, queries: Sequence[LatencyQuery]) -> predictor_pb2.PredictRequest:
        return predictor_pb2.PredictRequest(
            backend=self.backend,
            queries=[
                predictor_pb2.PredictQuery(
                    target=_placement(q.target, self.versions),
                    corunners=[_placement(c, self.versions) for c in q.corunners],
                    device_type=self.device_type,
                )
                for q in queries
            ],
        )

    def predict(self, queries: Sequence[LatencyQuery]) -> list[float]:
        if not queries:
            return []
        response = self._stub.Predict(self.request(queries), timeout=self.timeout_s)
        if len(response.predictions) != len(queries):
            raise PredictorServiceError(
                f"predictor answered {len(response.predictions)} predictions "
                f"for {len(queries)} queries"
            )
        latencies = [p.latency_ms for p in response.predictions]
        for q, ms in zip(queries, latencies, strict=True):
            if not math.isfinite(ms) or ms <= 0:
                raise PredictorServiceError(
                    f"predictor answered latency {ms} ms for {q.target.model} "
                    f"(batch {q.target.batch}, share {q.target.share})"
                )
        return latencies
