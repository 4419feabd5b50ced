"""Inputs and outputs of a planning policy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from services.controller.planning.predictor import LatencyPredictor
    from services.controller.planning.profiles import ProfileSet


@dataclass(frozen=True)
class ModelDemand:
    """One model to serve and its SLO (its rate is passed beside it)."""

    name: str
    slo_ms: float
    profile: str = ""  # key in the profile set; empty: the model's own name

    @property
    def profile_key(self) -> str:
        return self.profile or self.name


@dataclass(frozen=True)
class Device:
    device_id: str
    memory_mb: float = 16_000.0
    kind: str = "v100"


@dataclass(frozen=True)
class PlannedInstance:
    model: str
    device_id: str
    batch: int
    share: float  # MPS active-thread fraction in (0, 1]
    max_delay_ms: float
    rate: float  # requests/s routed to this instance
    predicted_p99_ms: float  # with the co-runners it was placed next to
    profile: str = ""


@dataclass
class Plan:
    policy: str
    instances: list[PlannedInstance] = field(default_factory=list)
    # Models the policy could not place (no configuration meets the SLO, or no device left),
    # with the reason: a plan never hides a model it gave up on.
    unplaced: dict[str, str] = field(default_factory=dict)

    @property
    def devices_used(self) -> list[str]:
        return sorted({i.device_id for i in self.instances})

    def share_used(self) -> float:
        return sum(i.share for i in self.instances)

    def by_model(self) -> dict[str, list[PlannedInstance]]:
        out: dict[str, list[PlannedInstance]] = {}
        for inst in self.instances:
            out.setdefault(inst.model, []).append(inst)
        return out


class PlanningPolicy(Protocol):
    """A pure function of (models, rates, profiles, predictor, devices) -> plan."""

    name: str

    def plan(
        self,
        models: Sequence[ModelDemand],
        rates: Mapping[str, float],
        profiles: ProfileSet,
        predictor: LatencyPredictor,
        devices: Sequence[Device],
    ) -> Plan: ...
