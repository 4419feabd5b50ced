"""Feature matrices from what a serving system knows before running a configuration.

Every data set gets a base value per query (a latency the system already knows, or 100 % of
solo) and backends learn z = log(target / base): a relative slowdown generalises across
models whose absolute latencies differ by orders of magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.predictor import igniter_model, rapp_law
from services.predictor.datasets.base import (
    CPU_PROFILES,
    DEINFER_RTX3080,
    IGNITER_V100,
    RAPP_V100,
    FloatArray,
    Queries,
    Samples,
)
from services.predictor.datasets.igniter_v100 import IgniterProfiles
from services.predictor.datasets.rapp_v100 import ANCHORS, anchor_name

Columns = dict[str, FloatArray]


def _log(values: FloatArray) -> FloatArray:
    return np.log(np.maximum(values, 1e-6))


# deinfer_features that change with the configuration (shares, copies); every other one is a
# profile of the pair's two models, constant over the pair's share grid.
DEINFER_CONFIGURATION = (
    "a_share",
    "b_share",
    "b_copies",
    "b_share_per_copy",
    "free_share",
    "b_l2_pressure",
    "b_dram_pressure",
    "b_sm_pressure",
    "ab_l2",
    "ab_dram",
)


def deinfer_features(q: Queries) -> Columns:
    """A's sensitivity and B's pressure. Static Nsight columns are measured at 100 % share, so
    B's pressure on shared L2/DRAM/SMs scales with the share B actually gets."""
    c = q.columns
    a_share = c["a_share"] / 100.0
    b_share = c["b_share"] / 100.0
    copies = c["b_copies"]
    features: Columns = {
        "a_share": a_share,
        "b_share": b_share,
        "b_copies": copies,
        "b_share_per_copy": b_share / copies,
        "free_share": np.maximum(0.0, 1.0 - a_share - b_share),
    }
    for side in ("a", "b"):
        features[f"{side}_l2_hit"] = c[f"{side}_mean_l2_hit_rate"] / 100.0
        features[f"{side}_l2_util"] = c[f"{side}_mean_l2_utilization"] / 100.0
        features[f"{side}_sm_tput"] = c[f"{side}_mean_sm_efficiency"] / 100.0
        features[f"{side}_log_gflops"] = _log(c[f"{side}_model_gflops"])
        features[f"{side}_log_rate"] = _log(c[f"{side}_model_GFLOPS"])
        features[f"{side}_log_kernel_time"] = _log(c[f"{side}_mean_gpu_time_duration"])
        features[f"{side}_log_kernels"] = _log(c[f"{side}_kernel_num"])
        features[f"{side}_log_params"] = _log(c[f"{side}_model_para"])
        # DRAM traffic proxy: L2 throughput that misses L2.
        features[f"{side}_dram"] = features[f"{side}_l2_util"] * (1 - features[f"{side}_l2_hit"])
    b_active = np.minimum(1.0, b_share / np.maximum(features["b_sm_tput"], 1e-3))
    features["b_l2_pressure"] = features["b_l2_util"] * b_share
    features["b_dram_pressure"] = features["b_dram"] * b_share
    features["b_sm_pressure"] = features["b_sm_tput"] * b_active
    features["ab_l2"] = features["a_l2_util"] * features["b_l2_pressure"]
    features["ab_dram"] = features["a_dram"] * features["b_dram_pressure"]
    features["a_l2_x_b_l2"] = features["a_l2_util"] * features["b_l2_util"]
    # DeInfer's product feature L x G for each side.
    features["a_l2_rate"] = c["a_mean_l2_utilization"] * c["a_model_GFLOPS"] / 1e4
    features["b_l2_rate"] = c["b_mean_l2_utilization"] * c["b_model_GFLOPS"] / 1e4
    return features


def igniter_features(q: Queries) -> Columns:
    c = q.columns
    features: Columns = {
        "share": c["share"] / 100.0,
        "co_share": c["co_share"] / 100.0,
        "log_batch": np.log2(c["batch"]),
        "co_log_batch": np.log2(c["co_batch"]),
        "log_solo": _log(c["latency"]),
        "co_log_solo": _log(c["co_latency"]),
        "solo_ratio": _log(c["co_latency"] / c["latency"]),
        "l2": c["l2cache"] / 100.0,
        "dram": c["dram"] / 100.0,
        "co_l2": c["co_l2cache"] / 100.0,
        "co_dram": c["co_dram"] / 100.0,
        "log_items_per_s": _log(c["throughput"]),
        "co_log_items_per_s": _log(c["co_throughput"]),
    }
    features["l2_x_co_l2"] = features["l2"] * features["co_l2"]
    features["dram_x_co_dram"] = features["dram"] * features["co_dram"]
    features["dram_sum"] = features["dram"] + features["co_dram"]
    features["l2_sum"] = features["l2"] + features["co_l2"]
    profiles = q.profiles
    if isinstance(profiles, IgniterProfiles) and profiles.config:
        # iGniter's own prediction, relative to solo, as one more physically grounded input.
        features["igniter_log_ratio"] = np.log(igniter_model.predict(q) / c["latency"])
    return features


def rapp_reference(q: Queries) -> FloatArray:
    """The first known anchor (batch 4, SM 100 %, quota 100 % unless masked or missing)."""
    reference = np.full(len(q), np.nan)
    for anchor in ANCHORS:
        missing = np.isnan(reference)
        reference[missing] = q.columns[anchor_name(anchor)][missing]
    return reference


def rapp_estimate(q: Queries, params: rapp_law.LawParams | None = None) -> Columns:
    """The latency law of `rapp_law` (default: its physical priors) and its parts relative to
    the reference anchor, for trees to correct: which of time slicing and SM share dominates,
    and how GPU-bound the configuration is."""
    parts = rapp_law.terms(q, params or rapp_law.LawParams())
    reference = parts["reference"]
    return {
        "estimate": parts["estimate"],
        "log_estimate_ratio": np.log(parts["estimate"] / reference),
        "log_spatial_ratio": np.log(parts["spatial"] / reference),
        "log_slicing": np.log(parts["sliced"] / reference),
        "log_gpu_bound_over_full": np.log(parts["gpu"] / parts["full"]),
        "log_spatial_over_sliced": np.log(parts["spatial"] / parts["sliced"]),
    }


def rapp_base(q: Queries, fallback: float, params: rapp_law.LawParams | None = None) -> FloatArray:
    estimate = rapp_law.estimate(q, params or rapp_law.LawParams())
    return np.where(np.isfinite(estimate), estimate, fallback)


def rapp_features(q: Queries) -> Columns:
    c = q.columns
    reference = rapp_reference(q)
    features: Columns = {
        "log_batch": np.log2(c["batch"]),
        "sm": c["sm"] / 100.0,
        "inv_sm": 100.0 / c["sm"],
        "quota": c["quota"] / 100.0,
        "inv_quota": 100.0 / c["quota"],
        "log_reference": np.log(reference),
    }
    for anchor in ANCHORS[1:]:
        features["ratio_" + anchor_name(anchor)] = np.log(c[anchor_name(anchor)] / reference)
    estimate = rapp_estimate(q)
    del estimate["estimate"]
    return {**features, **estimate}


def cpu_features(q: Queries) -> Columns:
    """The target's work and memory traffic per ms alone, and the co-runners' pressure:
    their summed rates alone and how many threads exceed the cores (shared cores)."""
    c = q.columns
    device = np.maximum(c["device_threads"], 1.0)
    work = c["flops"] * c["batch"]
    traffic = c["bytes_moved"] * c["batch"]
    features: Columns = {
        "log_batch": np.log2(c["batch"]),
        "share": c["share"],
        "threads": c["threads"] / device,
        "log_solo": _log(c["solo_ms"]),
        "log_flops": _log(c["flops"]),
        "log_macs": _log(c["macs"]),
        "log_params": _log(c["params"]),
        "log_bytes": _log(c["bytes_moved"]),
        "log_depth": _log(c["depth"]),
        "log_intensity": _log(c["flops"] / np.maximum(c["bytes_moved"], 1.0)),
        "log_gflops_rate": _log(work / c["solo_ms"] / 1e6),
        "log_gbytes_rate": _log(traffic / c["solo_ms"] / 1e6),
        "corunners": c["corunners"],
        "co_threads": c["co_threads"] / device,
        "co_share": c["co_share"],
        "oversubscription": np.maximum(0.0, c["threads"] + c["co_threads"] - device) / device,
        "co_log_solo_ratio": _log(c["co_solo_ms_max"] / c["solo_ms"]),
        "co_log_flops": _log(c["co_flops"]),
        "co_log_gflops_rate": np.log1p(c["co_gflops_rate"]),
        "co_log_gbytes_rate": np.log1p(c["co_gbytes_rate"]),
    }
    features["gbytes_x_co_gbytes"] = features["log_gbytes_rate"] * features["co_log_gbytes_rate"]
    features["oversubscribed_co_gflops"] = (
        features["oversubscription"] * features["co_log_gflops_rate"]
    )
    return features


FEATURES = {
    DEINFER_RTX3080: deinfer_features,
    IGNITER_V100: igniter_features,
    RAPP_V100: rapp_features,
    CPU_PROFILES: cpu_features,
}


@dataclass(frozen=True)
class Design:
    """Feature matrix and the base value that targets are expressed relative to."""

    names: tuple[str, ...]
    matrix: FloatArray
    base: FloatArray


def base_values(q: Queries, fallback: float) -> FloatArray:
    if q.dataset == DEINFER_RTX3080:
        return np.full(len(q), 100.0)
    if q.dataset == IGNITER_V100:
        return q.columns["latency"].copy()
    if q.dataset == CPU_PROFILES:
        return q.columns["solo_ms"].copy()  # the known solo median (NaN: not profiled)
    return rapp_base(q, fallback)


def design(q: Queries, fallback_base: float = 1.0) -> Design:
    columns = FEATURES[q.dataset](q)
    names = tuple(columns)
    matrix = np.column_stack([columns[name] for name in names]).astype(np.float64)
    return Design(names, matrix, base_values(q, fallback_base))


def encode(samples: Samples, base: FloatArray) -> FloatArray:
    return np.log(samples.target / base)


def decode(z: FloatArray, base: FloatArray) -> FloatArray:
    return base * np.exp(z)
