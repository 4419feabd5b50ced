"""Typed settings read from environment variables.

Every service has one settings class deriving from `CommonSettings`; all variables share
the `DEINFER_` prefix, so `dispatcher_port` is read from `DEINFER_DISPATCHER_PORT` and the
shared `redis_url` from `DEINFER_REDIS_URL`.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# tritonclient sends and accepts messages of any size by default; a 224x224 fp32 batch of 64
# is ~38 MB, so 64 MiB leaves room while still bounding what one request may make us hold.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEINFER_", extra="ignore")

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Redis holding shared state"
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: str = Field(default="json", description="json (one object per line) or text")
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES, gt=0, description="largest gRPC message sent or received"
    )
    grace_s: float = Field(default=10.0, ge=0, description="SIGTERM: time to finish in-flight work")
    model_repository: str = Field(
        default="./model_repository", description="model repository folder"
    )
