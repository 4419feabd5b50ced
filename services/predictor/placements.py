"""Turn service queries (model, batch, share, co-runners) into a data set's `Queries`.

The profiles come from the training folder: iGniter's solo tables, DeInfer's static rows
per (model, batch), RaPP's anchor measurements. Shares are fractions in (0, 1].
- igniter-v100: zero co-runners (the solo latency) or exactly one;
- deinfer-rtx3080: co-runners are copies of one (model, batch); only the slowdown is known
  (the table holds no solo milliseconds), so latencies are reported as 0;
- rapp-v100: solo only (no co-location in that data); share = SM fraction, quota 100 %;
- cpu-profiles: zero co-runners (the solo profile) or any number; share = CPU thread fraction,
  mapped to threads by the profiler's rule; every member needs a solo point at its
  (batch, share) in the training folder's solo table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.predictor.datasets.base import (
    CPU_PROFILES,
    DEINFER_RTX3080,
    IGNITER_V100,
    RAPP_V100,
    DatasetError,
    FloatArray,
    Queries,
    Samples,
)
from services.predictor.datasets.cpu_profiles import CpuProfiles, Member, member_row, threads_for
from services.predictor.datasets.deinfer_rtx3080 import STATIC
from services.predictor.datasets.igniter_v100 import METRICS, IgniterProfiles
from services.predictor.datasets.rapp_v100 import ANCHORS, anchor_name


@dataclass(frozen=True)
class Placement:
    model: str
    batch: int
    share: float


@dataclass(frozen=True)
class Query:
    target: Placement
    corunners: tuple[Placement, ...] = ()
    device_type: str = ""  # the profile key of the device asked about; empty: any


class UnknownModel(LookupError):
    """No profile for this model (or this batch of it) in the training data."""


class DeviceMismatch(LookupError):
    """The query is about a device type the training data does not describe."""


class InvalidQuery(ValueError):
    """A query outside what the data set can describe (bad share/batch, co-runner shape)."""


def validate(query: Query) -> None:
    for placement in (query.target, *query.corunners):
        if not placement.model:
            raise InvalidQuery("model name is empty")
        if placement.batch <= 0:
            raise InvalidQuery(f"{placement.model}: batch must be >= 1, got {placement.batch}")
        if not 0.0 < placement.share <= 1.0:
            raise InvalidQuery(f"{placement.model}: share must be in (0, 1], got {placement.share}")


class ProfileBook:
    """What the training data tells about each model, to answer queries about it."""

    def __init__(self, samples: Samples) -> None:
        self.dataset = samples.dataset
        self.profiles = samples.queries.profiles
        q = samples.queries
        self.models = set(map(str, q.model)) | {str(m) for m in q.corunner if m}
        self._static: dict[tuple[str, int], dict[str, float]] = {}
        self._anchors: dict[tuple[str, tuple[int, int, int]], float] = {}
        if self.dataset == DEINFER_RTX3080:
            for side, names in (("a", q.model), ("b", q.corunner)):
                batches = q.columns[f"{side}_batchsize"]
                for i, name in enumerate(names):
                    key = (str(name), int(batches[i]))
                    if key not in self._static:
                        self._static[key] = {f: q.columns[f"{side}_{f}"][i] for f in STATIC}
        if self.dataset == RAPP_V100:
            wanted = set(ANCHORS)
            c = q.columns
            for i, name in enumerate(q.model):
                config = (int(c["batch"][i]), int(c["sm"][i]), int(c["quota"][i]))
                if config in wanted:
                    self._anchors[(str(name), config)] = float(samples.target[i])
        if isinstance(self.profiles, IgniterProfiles):
            self.models = set(self.profiles.solo)
        if isinstance(self.profiles, CpuProfiles):
            self.models = set(self.profiles.static)

    def check_device(self, device_type: str) -> None:
        """DeviceMismatch when the training rows name their device types and this is none of
        them (the public data sets name none: each is one GPU's table)."""
        known = self.profiles.device_types if isinstance(self.profiles, CpuProfiles) else None
        if device_type and known and device_type not in known:
            raise DeviceMismatch(
                f"the trained predictor describes device type(s) {', '.join(sorted(known))}, "
                f"not {device_type!r}: train it on that device's profiles"
            )

    def _known(self, model: str) -> None:
        if model not in self.models:
            raise UnknownModel(f"no profile for model {model!r} in the training data")

    def solo_latency(self, placement: Placement) -> float:
        """iGniter, cpu-profiles: the solo table at (batch, share); other data sets: NaN."""
        if isinstance(self.profiles, CpuProfiles):
            self._known(placement.model)
            return self._cpu_solo(self.profiles, placement)
        if not isinstance(self.profiles, IgniterProfiles):
            return float("nan")
        self._known(placement.model)
        try:
            return self.profiles.value(
                placement.model, "latency", placement.batch, 100.0 * placement.share
            )
        except DatasetError as exc:
            raise UnknownModel(str(exc)) from exc

    def queries(self, batch: Sequence[Query]) -> Queries:
        """One row per query; raises UnknownModel/InvalidQuery for the first bad one."""
        rows: list[dict[str, float]] = []
        for query in batch:
            validate(query)
            for placement in (query.target, *query.corunners):
                self._known(placement.model)
            rows.append(self._row(query))
        names = rows[0].keys() if rows else ()
        columns: dict[str, FloatArray] = {
            n: np.array([row[n] for row in rows], dtype=np.float64) for n in names
        }
        if self.dataset == CPU_PROFILES:
            corunners = [";".join(c.model for c in q.corunners) for q in batch]
        else:
            corunners = [q.corunners[0].model if q.corunners else "" for q in batch]
        return Queries(
            self.dataset,
            np.array([q.target.model for q in batch], dtype=np.str_),
            np.array(corunners, dtype=np.str_),
            columns,
            self.profiles,
        )

    def _row(self, query: Query) -> dict[str, float]:
        if self.dataset == IGNITER_V100:
            return self._igniter_row(query)
        if self.dataset == DEINFER_RTX3080:
            return self._deinfer_row(query)
        if self.dataset == CPU_PROFILES:
            return self._cpu_row(query)
        return self._rapp_row(query)

    def _igniter_row(self, query: Query) -> dict[str, float]:
        if len(query.corunners) != 1:
            raise InvalidQuery("igniter-v100 predicts two-model co-location: one co-runner")
        assert isinstance(self.profiles, IgniterProfiles)
        own, other = query.target, query.corunners[0]
        row = {
            "batch": float(own.batch),
            "share": 100.0 * own.share,
            "co_batch": float(other.batch),
            "co_share": 100.0 * other.share,
        }
        try:
            for metric in METRICS:
                row[metric] = self.profiles.value(own.model, metric, own.batch, row["share"])
                row["co_" + metric] = self.profiles.value(
                    other.model, metric, other.batch, row["co_share"]
                )
        except DatasetError as exc:
            raise UnknownModel(str(exc)) from exc
        return row

    def _static_of(self, placement: Placement) -> dict[str, float]:
        key = (placement.model, placement.batch)
        if key not in self._static:
            raise UnknownModel(
                f"no static profile for {placement.model} at batch {placement.batch}"
            )
        return self._static[key]

    def _deinfer_row(self, query: Query) -> dict[str, float]:
        if not query.corunners:
            raise InvalidQuery("deinfer-rtx3080 predicts slowdown next to co-runners: give one")
        first = query.corunners[0]
        if any((c.model, c.batch) != (first.model, first.batch) for c in query.corunners):
            raise InvalidQuery("deinfer-rtx3080 co-runners must be copies of one (model, batch)")
        row = {f"a_{k}": v for k, v in self._static_of(query.target).items()}
        row.update({f"b_{k}": v for k, v in self._static_of(first).items()})
        row["a_share"] = 100.0 * query.target.share
        row["b_share"] = 100.0 * sum(c.share for c in query.corunners)
        row["b_copies"] = float(len(query.corunners))
        return row

    def _rapp_row(self, query: Query) -> dict[str, float]:
        if query.corunners:
            raise InvalidQuery("rapp-v100 holds solo latencies only: no co-runners")
        own = query.target
        row = {"batch": float(own.batch), "sm": 100.0 * own.share, "quota": 100.0}
        for anchor in ANCHORS:
            row[anchor_name(anchor)] = self._anchors.get((own.model, anchor), float("nan"))
        return row

    @staticmethod
    def _cpu_solo(profiles: CpuProfiles, placement: Placement) -> float:
        key = (placement.model, placement.batch, placement.share)
        if key not in profiles.solo:
            raise UnknownModel(
                f"no solo profile for {placement.model} at batch {placement.batch}, "
                f"share {placement.share}"
            )
        return profiles.solo[key]

    def _cpu_row(self, query: Query) -> dict[str, float]:
        if not query.corunners:
            raise InvalidQuery("cpu-profiles predicts co-location: give at least one co-runner")
        profiles = self.profiles
        assert isinstance(profiles, CpuProfiles)
        members = []
        for placement in (query.target, *query.corunners):
            self._cpu_solo(profiles, placement)
            threads = threads_for(placement.share, profiles.device_threads)
            members.append(Member(placement.model, placement.batch, placement.share, threads))
        return member_row(profiles, members[0], members[1:], float(profiles.device_threads))
