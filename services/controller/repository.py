"""The model repository on disk: `<repo>/<name>/<version>/model.onnx` plus `config.json`.

Names and versions are validated before they get here; `version_dir` still refuses any path
that resolves outside the repository (a symlink planted in it, for instance).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from google.protobuf import json_format

from deinfer.protos.v1 import common_pb2
from services.controller.errors import invalid_argument

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.json"


def artifact_path(name: str, version: str) -> str:
    """Where a version's ONNX file lives, relative to the repository root."""
    return f"{name}/{version}/{MODEL_FILE}"


def version_dir(repository: Path, name: str, version: str) -> Path:
    root = repository.resolve()
    folder = (root / name / version).resolve()
    if not folder.is_relative_to(root) or folder == root:
        raise invalid_argument(f"model {name!r} version {version!r} escapes the model repository")
    return folder


def write_version(repository: Path, spec: common_pb2.ModelSpec, data: bytes) -> None:
    """Write the ONNX file and its config; each appears whole or not at all."""
    folder = version_dir(repository, spec.name, spec.version)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / MODEL_FILE, data)
    config = json_format.MessageToJson(spec, preserving_proto_field_name=True, indent=2)
    _atomic_write(folder / CONFIG_FILE, config.encode() + b"\n")


def remove_version(repository: Path, name: str, version: str) -> None:
    folder = version_dir(repository, name, version)
    shutil.rmtree(folder, ignore_errors=True)
    model_dir = folder.parent
    # Leave the model folder only while it still holds something (another version).
    if model_dir.is_dir() and not any(model_dir.iterdir()):
        model_dir.rmdir()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
