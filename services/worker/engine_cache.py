"""Where built TensorRT engines are kept, and under which name (pure logic, no TensorRT).

An engine is only valid for the exact model bytes, GPU type, TensorRT version, batch range
of its optimisation profile and precision it was built with, so all of them are in its key.
Engines live beside the model in the repository: `<repo>/<model>/<version>/engines/`, so a
model's engines go away with it and every worker with the same GPU type shares them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

ENGINE_DIR = "engines"
SUFFIX = ".engine"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile's batch range: min <= opt <= max rows."""

    min: int
    opt: int
    max: int

    @classmethod
    def planned(cls, max_batch: int, opt_batch: int = 0) -> BatchProfile:
        """min 1, opt the planned batch (default: the max), max the planned max."""
        if max_batch < 1:
            raise ValueError(f"max batch must be >= 1, got {max_batch}")
        opt = opt_batch or max_batch
        if not 1 <= opt <= max_batch:
            raise ValueError(f"planned batch {opt} outside 1..{max_batch}")
        return cls(1, opt, max_batch)


@dataclass(frozen=True)
class EngineKey:
    model: str
    version: str
    model_sha256: str  # of the ONNX file: a re-uploaded version never reuses a stale engine
    gpu_name: str
    tensorrt_version: str
    batch: BatchProfile | None  # None: the model has no batch dimension
    precision: str  # "fp32" or "fp16"

    def digest(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def file_name(self) -> str:
        """Readable and unique: the parts people look for, then a digest of all of them."""
        batch = f"b{self.batch.min}-{self.batch.opt}-{self.batch.max}" if self.batch else "nobatch"
        parts = [
            self.model,
            f"v{self.version}",
            self.gpu_name,
            f"trt{self.tensorrt_version}",
            batch,
            self.precision,
            self.digest()[:16],
        ]
        return "_".join(_UNSAFE.sub("-", p).strip("-") for p in parts) + SUFFIX


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def engine_path(model_path: Path, key: EngineKey) -> Path:
    return model_path.parent / ENGINE_DIR / key.file_name()


def read_engine(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def write_engine(path: Path, data: bytes) -> None:
    """Write atomically: instances building the same engine at once never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".building-", suffix=SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
