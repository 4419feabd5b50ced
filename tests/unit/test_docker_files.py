"""The image files: the lock covers pyproject's requirements; Dockerfiles keep their rules."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_lock", ROOT / "docker" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_covers_pyproject(lock: ModuleType) -> None:
    assert lock.problems((ROOT / "docker" / "requirements.lock").read_text()) == []


def test_lock_problems_name_what_is_wrong(lock: ModuleType, tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\ndependencies = ["numpy>=2", "redis>=5"]\n'
        '[build-system]\nrequires = ["setuptools>=69"]\n'
    )
    text = "numpy==1.26.4\nsetuptools==70.0.0\n"
    assert lock.problems(text, pyproject) == [
        "numpy==1.26.4 does not satisfy numpy>=2",
        "redis is not in the lock",
    ]


@pytest.mark.parametrize("name", ["Dockerfile", "worker-gpu.Dockerfile", "redis.Dockerfile"])
def test_dockerfiles_use_public_bases_and_no_root(name: str) -> None:
    text = (ROOT / "docker" / name).read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base is not None and base.group(1) in {
        "python:3.11-slim",
        "nvcr.io/nvidia/tensorrt:25.01-py3",
        "debian:bookworm-slim",
    }
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and "root" not in users
    assert "HEALTHCHECK" in text
