"""Predictor settings (environment variables prefixed `DEINFER_PREDICTOR_`)."""

from __future__ import annotations

from pydantic import Field

from services.common.settings import CommonSettings


class PredictorSettings(CommonSettings):
    predictor_host: str = Field(default="0.0.0.0", description="address the gRPC server binds")
    predictor_port: int = Field(default=8400, ge=0, le=65535, description="gRPC port (0: any)")
    predictor_metrics_port: int = Field(
        default=8401, ge=0, le=65535, description="Prometheus HTTP port (0 disables)"
    )
    predictor_artifacts: str = Field(
        default="./predictor_artifacts", description="trained models and their metadata"
    )
    predictor_dataset: str = Field(
        default="", description="train on this data set at start when no artifact exists"
    )
    predictor_data_dir: str = Field(default="", description="folder of predictor_dataset")
    predictor_backend: str = Field(default="", description="backend (empty: data set default)")
    predictor_train_threads: int = Field(
        default=2, ge=1, le=256, description="threads for fitting tree ensembles (Train)"
    )
