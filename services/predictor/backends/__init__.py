"""Predictor backends behind one interface (`Backend.fit` / `Backend.predict`)."""

from __future__ import annotations

from services.predictor.backends.analytical import AnalyticalBackend
from services.predictor.backends.base import Backend, NotFittedError
from services.predictor.backends.forest import ForestBackend
from services.predictor.backends.graph import GraphBackend
from services.predictor.datasets.base import CPU_PROFILES, DEINFER_RTX3080, IGNITER_V100, RAPP_V100

BACKENDS: dict[str, type[Backend]] = {
    AnalyticalBackend.name: AnalyticalBackend,
    ForestBackend.name: ForestBackend,
    GraphBackend.name: GraphBackend,
}

# Best backend per data set by grouped cross-validation on the public data (held-out pairs
# and held-out models; bench/predictor.py, recorded in docs/benchmarks.md).
DEFAULT_BACKEND = {
    DEINFER_RTX3080: ForestBackend.name,
    IGNITER_V100: AnalyticalBackend.name,
    RAPP_V100: ForestBackend.name,
    CPU_PROFILES: ForestBackend.name,  # best on held-out models of data/cpu-profiles
}


def make_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; one of {', '.join(BACKENDS)}")
    return BACKENDS[name]()


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "NotFittedError", "make_backend"]
