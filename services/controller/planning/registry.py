"""Policies by name."""

from __future__ import annotations

from services.controller.planning.baselines import (
    DedicatedPolicy,
    DeinferPublishedPolicy,
    IgniterPolicy,
)
from services.controller.planning.deinfer_policy import DeinferPolicy
from services.controller.planning.types import PlanningPolicy

POLICY_NAMES = ("deinfer", "igniter", "dedicated", "deinfer-published")


def make_policy(name: str) -> PlanningPolicy:
    if name == "deinfer":
        return DeinferPolicy()
    if name == "igniter":
        return IgniterPolicy()
    if name == "dedicated":
        return DedicatedPolicy()
    if name == "deinfer-published":
        return DeinferPublishedPolicy()
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")
