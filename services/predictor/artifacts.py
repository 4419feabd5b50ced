"""Trained predictors on disk: a pickle plus metadata the predictor wrote itself.

The metadata (JSON) records the pickle's SHA-256; `load` refuses any pickle whose digest does
not match what the predictor recorded, so a file dropped or altered by anyone else is never
unpickled.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from services.predictor.backends.base import Backend

FORMAT_VERSION = 1


class ArtifactError(RuntimeError):
    pass


@dataclass(frozen=True)
class Metadata:
    version: str
    dataset: str
    backend: str
    data_dir: str
    data_hash: str
    metrics: dict[str, float]
    sha256: str
    created: float
    format: int = FORMAT_VERSION


def data_hash(folder: Path) -> str:
    """SHA-256 over every file's relative path and bytes, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def save(
    directory: Path,
    backend: Backend,
    *,
    dataset: str,
    data_dir: Path,
    digest_of_data: str,
    metrics: dict[str, float],
) -> Metadata:
    directory.mkdir(parents=True, exist_ok=True)
    blob = pickle.dumps(backend)
    sha = hashlib.sha256(blob).hexdigest()
    version = f"{dataset}-{backend.name}-{time.strftime('%Y%m%dT%H%M%S')}-{sha[:8]}"
    (directory / f"{version}.pkl").write_bytes(blob)
    meta = Metadata(
        version, dataset, backend.name, str(data_dir), digest_of_data, metrics, sha, time.time()
    )
    (directory / f"{version}.json").write_text(json.dumps(asdict(meta), indent=2))
    return meta


def latest(directory: Path) -> Metadata | None:
    found = []
    for path in directory.glob("*.json"):
        try:
            found.append(Metadata(**json.loads(path.read_text())))
        except (ValueError, TypeError):
            continue
    return max(found, key=lambda m: m.created) if found else None


def load(directory: Path, meta: Metadata) -> Backend:
    path = directory / f"{meta.version}.pkl"
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.sha256:
        raise ArtifactError(f"{path}: SHA-256 differs from the one recorded at training time")
    # Safe to unpickle only because the digest matches the one this predictor recorded.
    backend = pickle.loads(blob)
    if not isinstance(backend, Backend):
        raise ArtifactError(f"{path}: not a predictor backend")
    return backend
