"""iGniter's analytical co-location latency model, restated from its paper and `config`.

    t = t_load + t_sched + t_active x (1 + alpha_m x sum of co-runners' L2 utilisation) + t_back

t_load/t_back move the input/output bytes at the configured host bandwidth; t_sched is the
per-kernel scheduling gap for the number of co-located instances times the kernel count;
alpha_m comes from the model's active time alone vs next to an identical instance. The clock
drop above the power cap is left out: no public row reaches the cap (see docs/benchmarks.md).
All coefficients come from `config` and the solo table; no co-location row is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.predictor.datasets.base import DatasetError, FloatArray, Queries
from services.predictor.datasets.igniter_v100 import IgniterProfiles


def _model_config(config: dict[str, dict[str, Any]], model: str) -> dict[str, Any]:
    if model not in config:
        raise DatasetError(f"config has no coefficients for {model!r}")
    return config[model]


def contention_alpha(config: dict[str, dict[str, Any]], model: str) -> float:
    """Relative active-time growth per % of co-runner L2 throughput."""
    own = _model_config(config, model)
    growth = float(own["activetime_2"]) / float(own["activetime_1"]) - 1.0
    return max(growth, 0.0) / float(own["l2cache"])


def predict(queries: Queries) -> FloatArray:
    profiles = queries.profiles
    if not isinstance(profiles, IgniterProfiles) or not profiles.config:
        raise DatasetError("iGniter's model needs the `config` file next to gpulet.config")
    config = profiles.config
    hardware = config.get("hardware", {})
    bandwidth = float(hardware.get("bandwidth", 1e7))
    idle = [float(v) for v in hardware.get("idletime", [0.0, 0.0])]
    c = queries.columns
    out = np.empty(len(queries))
    for i, (model, corunner) in enumerate(zip(queries.model, queries.corunner, strict=True)):
        own = _model_config(config, str(model))
        batch = c["batch"][i]
        transfer = (float(own["inputdata"]) + float(own["outputdata"])) * batch / bandwidth
        kernels = float(own["kernel"])
        solo_sched = kernels * idle[0]
        active = max(c["latency"][i] - transfer - solo_sched, 1e-6)
        instances = 2 if corunner else 1
        sched = kernels * idle[min(instances, len(idle)) - 1]
        l2_others = c["co_l2cache"][i] if corunner else 0.0
        alpha = contention_alpha(config, str(model))
        out[i] = transfer + sched + active * (1.0 + alpha * l2_others)
    return out
