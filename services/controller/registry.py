"""The model registry: validation, registration, removal and the loaded flag.

Redis (through `Store`) holds the ModelSpecs; the repository folder holds the files. The
servicer only adapts gRPC to these functions.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from pathlib import Path

from deinfer.protos.v1 import common_pb2
from services.common.store import Store
from services.controller import repository
from services.controller.errors import invalid_argument, not_found
from services.controller.signature import Signature, read_signature

MAX_NAME_LENGTH = 64
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RULE = (
    "a model name is 1 to 64 characters: letters, digits, '_', '.' and '-', "
    "starting with a letter or digit, without '..'"
)
PLATFORM = "onnxruntime_onnx"


def validate_name(name: str) -> str:
    if not name:
        raise invalid_argument(f"model name is empty; {NAME_RULE}")
    if len(name) > MAX_NAME_LENGTH:
        raise invalid_argument(
            f"model name is {len(name)} characters long, more than {MAX_NAME_LENGTH}; {NAME_RULE}"
        )
    # fullmatch: `$` would also accept a trailing newline.
    if not NAME_PATTERN.fullmatch(name):
        raise invalid_argument(f"model name {name!r} is invalid; {NAME_RULE}")
    if ".." in name:
        raise invalid_argument(f"model name {name!r} contains '..'; {NAME_RULE}")
    return name


def validate_version(version: str) -> str:
    if not version.isdigit() or not version.isascii():
        raise invalid_argument(f"model version {version!r} is invalid: versions are 1, 2, ...")
    return version


def validate_slo(slo_ms: float) -> float:
    if not math.isfinite(slo_ms) or slo_ms <= 0:
        raise invalid_argument(
            f"slo_ms must be a finite number of milliseconds greater than 0, got {slo_ms}"
        )
    return slo_ms


def validate_max_batch_size(max_batch_size: int) -> int:
    if max_batch_size < 0:
        raise invalid_argument(
            f"max_batch_size must be 0 (the controller's default) or positive, got {max_batch_size}"
        )
    return max_batch_size


def resolve_max_batch_size(requested: int, default: int, signature: Signature) -> int:
    """The model's max_batch_size: 0 when the graph cannot batch, else requested or default."""
    if not signature.batchable:
        if requested > 0:
            raise invalid_argument(
                f"max_batch_size {requested} was requested but the model cannot batch: "
                f"{signature.no_batching_reason}; send 0"
            )
        return 0
    return requested or default


def build_spec(
    name: str,
    version: str,
    slo_ms: float,
    max_batch_size: int,
    signature: Signature,
    data: bytes,
) -> common_pb2.ModelSpec:
    return common_pb2.ModelSpec(
        name=name,
        version=version,
        platform=PLATFORM,
        artifact_path=repository.artifact_path(name, version),
        inputs=signature.inputs,
        outputs=signature.outputs,
        slo_ms=slo_ms,
        max_batch_size=max_batch_size,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        registered_at=time.time(),
        loaded=True,
    )


class Registry:
    def __init__(self, store: Store, repository_root: Path, default_max_batch_size: int) -> None:
        self.store = store
        self.root = repository_root
        self.default_max_batch_size = default_max_batch_size

    async def register(
        self, name: str, slo_ms: float, max_batch_size: int, data: bytes
    ) -> common_pb2.ModelSpec:
        validate_name(name)
        validate_slo(slo_ms)
        validate_max_batch_size(max_batch_size)
        if not data:
            raise invalid_argument("the ONNX file is empty: no message carried a chunk")
        # Parsing, checking and hashing a large model takes a while: keep the loop free.
        signature = await asyncio.to_thread(read_signature, data)
        batch = resolve_max_batch_size(max_batch_size, self.default_max_batch_size, signature)
        version = await self.store.next_model_version(name)
        spec = build_spec(name, version, slo_ms, batch, signature, data)
        await asyncio.to_thread(repository.write_version, self.root, spec, data)
        try:
            await self.store.put_model(spec)
        except BaseException:
            # Not registered: do not leave an orphan folder behind.
            await asyncio.to_thread(repository.remove_version, self.root, name, version)
            raise
        return spec

    async def remove(self, name: str, version: str) -> list[str]:
        validate_name(name)
        if version:
            validate_version(version)
        removed = await self.store.delete_model(name, version)
        if not removed:
            if version:
                raise not_found(f"model {name!r} has no version {version!r}")
            raise not_found(f"no model named {name!r}")
        for gone in removed:
            await asyncio.to_thread(repository.remove_version, self.root, name, gone)
        return removed

    async def set_loaded(self, name: str, loaded: bool) -> common_pb2.ModelSpec:
        """Mark every version of `name`; returns the newest one."""
        validate_name(name)
        versions = await self.store.model_versions(name)
        if not versions:
            raise not_found(f"no model named {name!r}")
        for spec in versions:
            if spec.loaded != loaded:
                spec.loaded = loaded
                await self.store.put_model(spec)
        return versions[-1]

    async def list_models(self) -> list[common_pb2.ModelSpec]:
        return await self.store.list_models()
