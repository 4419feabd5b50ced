"""Scenario files (YAML): which models, SLOs, arrival rates, policies and run length.

    profiles: igniter-v100        # a folder under the data root
    duration_s: 300
    seed: 1
    policies: [deinfer, igniter, dedicated, deinfer-published]
    gpus: 64                      # devices the policies may use (default: 2 per model + 16)
    models:
      - {name: alexnet,  slo_ms: 7.5, rate: 500}                      # Poisson, req/s
      - {name: resnet50, slo_ms: 20,  rate: {steps: [[0, 400], [120, 800], [200, 300]]}}
      - {name: vgg19,    slo_ms: 30,  trace: has-gpu-traces/rps.json, scale: 20}
      - {name: r50-b,    slo_ms: 25,  rate: 40, profile: resnet50}   # a copy of a profiled model

Optional control-loop settings: window_s (rate window, 1), load_s (time to load and warm a
new instance, 2), min_replan_s (least time between re-plans, 5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from services.controller.planning.profiles import DATASETS, FloatArray
from services.controller.planning.registry import POLICY_NAMES


class ScenarioError(ValueError):
    pass


@dataclass(frozen=True)
class RateSchedule:
    """Piecewise-constant rate: `rates[i]` req/s from `starts[i]` on (starts[0] == 0)."""

    starts: FloatArray
    rates: FloatArray

    def at(self, t: float) -> float:
        return float(self.rates[np.searchsorted(self.starts, t, side="right") - 1])


@dataclass(frozen=True)
class ScenarioModel:
    name: str
    slo_ms: float
    profile: str
    schedule: RateSchedule


@dataclass(frozen=True)
class Scenario:
    profiles: str
    duration_s: float
    seed: int
    policies: tuple[str, ...]
    models: tuple[ScenarioModel, ...]
    gpus: int
    window_s: float = 1.0
    load_s: float = 2.0
    min_replan_s: float = 5.0
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _number(value: Any, where: str, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(f"{where} must be a number, got {value!r}")
    if value < 0 or (positive and value == 0) or not np.isfinite(value):
        raise ScenarioError(f"{where} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _schedule(spec: dict[str, Any], where: str, data_root: Path, duration: float) -> RateSchedule:
    if "trace" in spec:
        path = data_root / str(spec["trace"])
        if not path.is_file():
            raise ScenarioError(f"{where}.trace: no file {path}")
        trace = json.loads(path.read_text())
        counts = trace.get("processed_request_counts")
        if not isinstance(counts, list) or not counts:
            raise ScenarioError(f"{where}.trace: {path} has no processed_request_counts")
        stage = float(str(trace.get("parameters", {}).get("duration", "5s")).rstrip("s"))
        scale = _number(spec.get("scale", 1.0), f"{where}.scale")
        stages = int(np.ceil(duration / stage))
        rates = np.array([counts[i % len(counts)] for i in range(stages)], dtype=float) * scale
        return RateSchedule(np.arange(stages, dtype=float) * stage, rates)
    rate = spec.get("rate")
    if isinstance(rate, dict):
        steps = rate.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ScenarioError(f"{where}.rate.steps must be a list of [t, rate] pairs")
        pairs = []
        for i, step in enumerate(steps):
            if not isinstance(step, list | tuple) or len(step) != 2:
                raise ScenarioError(f"{where}.rate.steps[{i}] must be [t, rate], got {step!r}")
            pairs.append(
                (
                    _number(step[0], f"{where}.rate.steps[{i}][0]", positive=False),
                    _number(step[1], f"{where}.rate.steps[{i}][1]", positive=False),
                )
            )
        pairs.sort()
        if pairs[0][0] != 0:
            raise ScenarioError(f"{where}.rate.steps must start at t = 0")
        return RateSchedule(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
    if rate is None:
        raise ScenarioError(f"{where} needs a rate (number or {{steps: ...}}) or a trace")
    return RateSchedule(np.array([0.0]), np.array([_number(rate, f"{where}.rate", False)]))


def parse_scenario(text: str, data_root: Path, source: str = "") -> Scenario:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ScenarioError(f"not valid YAML: {err}") from err
    if not isinstance(doc, dict):
        raise ScenarioError("a scenario is a mapping with profiles, duration_s, models, ...")
    profiles = doc.get("profiles")
    if profiles not in DATASETS:
        raise ScenarioError(f"profiles must be one of {', '.join(DATASETS)}, got {profiles!r}")
    duration = _number(doc.get("duration_s"), "duration_s")
    seed = doc.get("seed", 1)
    if not isinstance(seed, int):
        raise ScenarioError(f"seed must be an integer, got {seed!r}")
    policies = tuple(doc.get("policies") or POLICY_NAMES)
    for p in policies:
        if p not in POLICY_NAMES:
            raise ScenarioError(f"unknown policy {p!r}; known: {', '.join(POLICY_NAMES)}")
    raw_models = doc.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise ScenarioError("models must be a non-empty list")
    models = []
    seen = set()
    for i, spec in enumerate(raw_models):
        where = f"models[{i}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ScenarioError(f"{where} must be a mapping with a name")
        name = spec["name"]
        if name in seen:
            raise ScenarioError(f"{where}: model {name!r} appears twice")
        seen.add(name)
        models.append(
            ScenarioModel(
                name=name,
                slo_ms=_number(spec.get("slo_ms"), f"{where}.slo_ms"),
                profile=str(spec.get("profile", name)),
                schedule=_schedule(spec, where, data_root, duration),
            )
        )
    gpus = doc.get("gpus", 2 * len(models) + 16)
    if not isinstance(gpus, int) or gpus < 1:
        raise ScenarioError(f"gpus must be a positive integer, got {gpus!r}")
    return Scenario(
        profiles=profiles,
        duration_s=duration,
        seed=seed,
        policies=policies,
        models=tuple(models),
        gpus=gpus,
        window_s=_number(doc.get("window_s", 1.0), "window_s"),
        load_s=_number(doc.get("load_s", 2.0), "load_s", positive=False),
        min_replan_s=_number(doc.get("min_replan_s", 5.0), "min_replan_s", positive=False),
        source=source,
    )


def load_scenario(path: Path, data_root: Path) -> Scenario:
    return parse_scenario(path.read_text(), data_root, str(path))
