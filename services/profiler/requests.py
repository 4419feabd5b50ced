"""Checking profiling requests: every bad field gets INVALID_ARGUMENT naming it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from deinfer.protos.v1 import profiler_pb2
from services.profiler.errors import invalid_argument

MAX_MEMBERS = 3


@dataclass(frozen=True)
class Limits:
    max_batch: int
    max_runs: int
    default_batches: tuple[int, ...]
    default_shares: tuple[float, ...]
    default_sequence_length: int


@dataclass(frozen=True)
class ModelPlan:
    batches: list[int]
    shares: list[float]
    runs: int
    warmup: int
    sequence_length: int


def parse_list(text: str, kind: type[int] | type[float]) -> tuple[float, ...]:
    return tuple(kind(part) for part in text.split(",") if part.strip())


def check_batch(batch: int, limits: Limits, what: str = "batch size") -> int:
    if batch <= 0:
        raise invalid_argument(f"{what} must be positive, got {batch}")
    if batch > limits.max_batch:
        raise invalid_argument(f"{what} {batch} is above the profiler's limit {limits.max_batch}")
    return batch


def check_share(share: float, what: str = "share") -> float:
    if not math.isfinite(share) or not 0.0 < share <= 1.0:
        raise invalid_argument(f"{what} must be in (0, 1], got {share}")
    return share


def check_runs(runs: int, warmup: int, limits: Limits) -> tuple[int, int]:
    if runs <= 0:
        raise invalid_argument(f"runs must be positive, got {runs}")
    if runs > limits.max_runs:
        raise invalid_argument(f"runs {runs} is above the profiler's limit {limits.max_runs}")
    if warmup < 0:
        raise invalid_argument(f"warmup must be 0 or more, got {warmup}")
    return runs, warmup


def check_sequence_length(value: int, limits: Limits) -> int:
    if value < 0:
        raise invalid_argument(f"sequence_length must be 0 (default) or positive, got {value}")
    return value or limits.default_sequence_length


def _unique(values: Iterable[float]) -> list[float]:
    return sorted(set(values))


def check_model_request(request: profiler_pb2.ProfileModelRequest, limits: Limits) -> ModelPlan:
    if not request.model:
        raise invalid_argument("model is empty: name the model to profile")
    batches = [check_batch(b, limits) for b in request.batch_sizes] or list(limits.default_batches)
    shares = [check_share(s) for s in request.shares] or list(limits.default_shares)
    runs, warmup = check_runs(request.runs, request.warmup, limits)
    return ModelPlan(
        batches=[int(b) for b in _unique(batches)],
        shares=_unique(shares),
        runs=runs,
        warmup=warmup,
        sequence_length=check_sequence_length(request.sequence_length, limits),
    )


def check_colocation_request(
    request: profiler_pb2.ProfileColocationRequest, limits: Limits
) -> tuple[Sequence[profiler_pb2.ColocationMember], int, int, int]:
    """(members, runs, warmup, sequence_length)."""
    members = list(request.members)
    if not 2 <= len(members) <= MAX_MEMBERS:
        raise invalid_argument(f"co-location needs 2 to {MAX_MEMBERS} members, got {len(members)}")
    for i, member in enumerate(members):
        if not member.model:
            raise invalid_argument(f"member {i}: model is empty")
        check_batch(member.batch, limits, f"member {i} ({member.model}) batch size")
        check_share(member.share, f"member {i} ({member.model}) share")
    runs, warmup = check_runs(request.runs, request.warmup, limits)
    return members, runs, warmup, check_sequence_length(request.sequence_length, limits)
