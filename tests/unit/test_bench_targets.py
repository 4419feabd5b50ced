"""bench/predictor.py's target lines: the gap per bound and the verdict."""

from __future__ import annotations

from bench.predictor import target_report
from services.predictor.metrics import Scores


def _scores(mape: float, r2: float, mae: float, under_rate: float) -> Scores:
    return Scores(n=10, mape=mape, p90_ape=0.0, p99_ape=0.0, r2=r2, mae=mae, under_rate=under_rate)


def test_r2_is_a_lower_bound_and_the_rest_upper_bounds() -> None:
    lines = target_report(
        {
            ("deinfer-rtx3080", "held-out-pairs", "forest"): _scores(1.0, 0.9, 1.6, 0.0),
            ("deinfer-rtx3080", "held-out-models", "forest"): _scores(1.0, 0.75, 2.0, 0.0),
            ("igniter-v100", "held-out-pairs", "analytical"): _scores(2.4, 0.99, 0.7, 0.03),
        }
    )
    assert lines == [
        "target deinfer-rtx3080 held-out-pairs (r2 >= 0.85, mae <= 1.5): "
        "forest r2 0.9 (+0.05), mae 1.6 (+0.1): missed",
        "target deinfer-rtx3080 held-out-models (r2 >= 0.7): forest r2 0.75 (+0.05): met",
        "target igniter-v100 held-out-pairs (mape <= 2.5, under_rate <= 0.02): "
        "analytical mape 2.4 (-0.1), under_rate 0.03 (+0.01): missed",
    ]


def test_baselines_and_data_sets_that_did_not_run_are_left_out() -> None:
    scored = {("rapp-v100", "held-out-models", "rapp-anchor-gbt"): _scores(20.0, 0.9, 1.0, 0.1)}
    assert target_report(scored) == []
