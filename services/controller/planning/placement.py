"""GPU bookkeeping shared by the policies: residents, shares, memory, interference checks."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from services.controller.planning.candidates import Candidate
from services.controller.planning.predictor import LatencyPredictor, LatencyQuery, Placement
from services.controller.planning.types import Device, ModelDemand

SHARE_EPS = 1e-9
# Placements are values: one object per (profile, batch, share), shared by the residents
# (building one costs more than looking it up).
_placement = lru_cache(maxsize=1 << 16)(Placement)


@dataclass
class Resident:
    """One instance placed (or to be placed) on a GPU, with its ordered options."""

    demand: ModelDemand
    rate: float
    options: list[Candidate]
    choice: int = 0
    slowdown: float = 0.0  # predicted with its current co-runners
    # Placement per option, built once: placement checks ask for them thousands of times.
    _placements: dict[int, Placement] = field(default_factory=dict, repr=False, compare=False)

    @property
    def candidate(self) -> Candidate:
        return self.options[self.choice]

    def placement(self, choice: int | None = None) -> Placement:
        j = self.choice if choice is None else choice
        p = self._placements.get(j)
        if p is None:
            c = self.options[j]
            p = self._placements[j] = _placement(self.demand.profile_key, c.batch, c.share)
        return p


@dataclass
class Gpu:
    device: Device
    residents: list[Resident] = field(default_factory=list)
    # Kept up to date by add() / refresh(): placement reads them thousands of times.
    share: float = 0.0
    memory_mb: float = 0.0
    # Per resident, at its current option: placement, full-batch solo latency, tolerance.
    placements: list[Placement] = field(default_factory=list, init=False, repr=False)
    solo_full_s: list[float] = field(default_factory=list, init=False, repr=False)
    tolerances: list[float] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Recompute the totals and lists (after residents or their options changed)."""
        self.share = sum(r.candidate.share for r in self.residents)
        self.memory_mb = sum(r.candidate.memory_mb for r in self.residents)
        self.placements = [r.placement() for r in self.residents]
        self.solo_full_s = [r.candidate.solo_full_s for r in self.residents]
        self.tolerances = [r.candidate.tolerance for r in self.residents]

    def add(self, resident: Resident) -> None:
        """Append a resident, the others unchanged: refresh() without the recomputation
        (the same sums, added in the same order)."""
        c = resident.candidate
        self.residents.append(resident)
        self.share += c.share
        self.memory_mb += c.memory_mb
        self.placements.append(resident.placement())
        self.solo_full_s.append(c.solo_full_s)
        self.tolerances.append(c.tolerance)

    def fits(self, candidate: Candidate) -> bool:
        return (
            self.share + candidate.share <= 1.0 + SHARE_EPS
            and self.memory_mb + candidate.memory_mb <= self.device.memory_mb
        )


def predicted_slowdowns(
    predictor: LatencyPredictor, placements: Sequence[Placement], solo_full_s: Sequence[float]
) -> list[float]:
    """Slowdown of each placement's full batch next to all the others (one predictor call;
    predictors with a `predict_group` answer the whole group at once)."""
    group = getattr(predictor, "predict_group", None)
    if group is not None:
        latencies = group(placements)
        return [lat / 1e3 / solo - 1.0 for lat, solo in zip(latencies, solo_full_s, strict=True)]
    queries = [
        LatencyQuery(p, tuple(placements[:i]) + tuple(placements[i + 1 :]))
        for i, p in enumerate(placements)
    ]
    latencies = predictor.predict(queries)
    return [lat / 1e3 / solo - 1.0 for lat, solo in zip(latencies, solo_full_s, strict=True)]


def try_colocate(
    gpu: Gpu, newcomer: Resident, predictor: LatencyPredictor, raise_rounds: int = 3
) -> bool:
    """Add `newcomer` to `gpu` if every resident then still meets its SLO.

    A resident whose predicted slowdown exceeds its tolerance is moved to its next option
    with more share (raise a share) while the GPU has room; commits only on success.
    """
    # Everyone at their current option first (most placements end here): the GPU's lists
    # and totals hold the residents' part.
    new = newcomer.candidate
    if not gpu.fits(new):
        return False
    slowdowns = predicted_slowdowns(
        predictor, [*gpu.placements, newcomer.placement()], [*gpu.solo_full_s, new.solo_full_s]
    )
    tolerances = [*gpu.tolerances, new.tolerance]
    if any(map(operator.gt, slowdowns, tolerances)):
        return raise_rounds > 0 and _raise_shares(
            gpu, newcomer, predictor, raise_rounds, slowdowns, tolerances
        )
    for r, x in zip(gpu.residents, slowdowns, strict=False):
        r.slowdown = x
    newcomer.slowdown = slowdowns[-1]
    gpu.add(newcomer)
    return True


def _raise_shares(
    gpu: Gpu,
    newcomer: Resident,
    predictor: LatencyPredictor,
    rounds: int,
    slowdowns: list[float],
    tolerances: list[float],
) -> bool:
    """try_colocate's rounds that raise shares, from its first round's slowdowns and the
    tolerances they were compared with."""
    group = [*gpu.residents, newcomer]
    choices = [r.choice for r in group]
    for round_ in range(rounds + 1):
        if round_:
            options = [r.options[c] for r, c in zip(group, choices, strict=True)]
            if sum([o.share for o in options]) > 1 + SHARE_EPS:
                return False
            if sum([o.memory_mb for o in options]) > gpu.device.memory_mb:
                return False
            slowdowns = predicted_slowdowns(
                predictor,
                [r.placement(c) for r, c in zip(group, choices, strict=True)],
                [o.solo_full_s for o in options],
            )
            tolerances = [o.tolerance for o in options]
        failing = [i for i, (x, t) in enumerate(zip(slowdowns, tolerances, strict=True)) if x > t]
        if not failing:
            for r, c, x in zip(group, choices, slowdowns, strict=True):
                r.choice, r.slowdown = c, x
            gpu.residents.append(newcomer)
            gpu.refresh()
            return True
        for i in failing:
            r, c = group[i], choices[i]
            better = next(
                (
                    j
                    for j in range(c + 1, len(r.options))
                    if r.options[j].share > r.options[c].share
                    and r.options[j].tolerance >= slowdowns[i]
                ),
                None,
            )
            if better is None:
                return False
            choices[i] = better
    return False
