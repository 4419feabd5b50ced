"""Cluster simulator: scenario files, ground truth, the control loop and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deinfer.cli import main
from services.controller.planning.predictor import Placement, ProfilePredictor
from services.controller.planning.profiles import ProfileSet, data_root, load_profiles
from services.controller.simulator.engine import poisson_arrivals, run_scenario
from services.controller.simulator.scenario import ScenarioError, parse_scenario
from services.controller.simulator.truth import GroundTruth

ROOT = data_root()
pytestmark = pytest.mark.skipif(
    not (ROOT / "igniter-v100").is_dir(), reason="needs ../shared/data/igniter-v100"
)


@pytest.fixture(scope="module")
def profiles() -> ProfileSet:
    return load_profiles("igniter-v100")


@pytest.fixture(scope="module")
def truth(profiles: ProfileSet) -> GroundTruth:
    return GroundTruth(profiles, ROOT)


# --- scenarios -----------------------------------------------------------------------------

SCENARIO = """
profiles: igniter-v100
duration_s: 20
seed: 3
policies: [deinfer, dedicated]
models:
  - {name: alexnet, slo_ms: 15, rate: 300}
  - {name: resnet50, slo_ms: 40, rate: {steps: [[0, 200], [8, 500]]}}
  - {name: vgg-copy, profile: vgg19, slo_ms: 60, trace: has-gpu-traces/rps.json, scale: 4}
"""


def test_scenario_rates_steps_and_traces() -> None:
    s = parse_scenario(SCENARIO, ROOT)
    assert s.policies == ("deinfer", "dedicated")
    alexnet, resnet, vgg = s.models
    assert alexnet.schedule.at(10) == 300
    assert (resnet.schedule.at(7.9), resnet.schedule.at(8.0)) == (200, 500)
    trace = json.loads((ROOT / "has-gpu-traces/rps.json").read_text())["processed_request_counts"]
    assert vgg.profile == "vgg19"
    assert vgg.schedule.at(0) == 4 * trace[0] and vgg.schedule.at(6) == 4 * trace[1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("profiles: nope\nduration_s: 1\nmodels: [{name: a, slo_ms: 1, rate: 1}]", "profiles must"),
        ("profiles: igniter-v100\nduration_s: 0\nmodels: []", "duration_s must be > 0"),
        ("profiles: igniter-v100\nduration_s: 5\nmodels: [{name: a, slo_ms: 1}]", "needs a rate"),
        (
            "profiles: igniter-v100\nduration_s: 5\nmodels: [{name: a, slo_ms: 1, rate: -3}]",
            "models[0].rate must be >= 0",
        ),
        (
            "profiles: igniter-v100\nduration_s: 5\n"
            "models: [{name: a, slo_ms: 1, rate: {steps: [[2, 10]]}}]",
            "must start at t = 0",
        ),
        (
            "profiles: igniter-v100\nduration_s: 5\npolicies: [magic]\n"
            "models: [{name: a, slo_ms: 1, rate: 1}]",
            "unknown policy 'magic'",
        ),
        (
            "profiles: igniter-v100\nduration_s: 5\n"
            "models: [{name: a, slo_ms: 1, rate: 1}, {name: a, slo_ms: 2, rate: 1}]",
            "appears twice",
        ),
        ("[1, 2", "not valid YAML"),
    ],
)
def test_bad_scenarios_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse_scenario(text, ROOT)


def test_arrivals_follow_the_piecewise_rate() -> None:
    s = parse_scenario(SCENARIO, ROOT)
    times = poisson_arrivals(s.models[1], 20.0, np.random.default_rng(0))
    assert np.all(np.diff(times) >= 0)
    before, after = np.sum(times < 8), np.sum(times >= 8)
    assert before == pytest.approx(200 * 8, rel=0.1)
    assert after == pytest.approx(500 * 12, rel=0.1)


# --- ground truth --------------------------------------------------------------------------


def test_truth_reproduces_the_measurements(profiles: ProfileSet, truth: GroundTruth) -> None:
    for model, p in profiles.models.items():
        for batch, share, ms in p.measured():
            assert truth.solo_ms(model, batch, share) == pytest.approx(ms)
    errors = [
        truth.solo_ms(r.a, r.batch_a, r.share_a)
        * (1 + truth.slowdown((r.a, r.batch_a, r.share_a), [(r.b, r.batch_b, r.share_b)]))
        / r.latency_a
        - 1
        for r in profiles.pairs
    ]
    assert float(np.mean(np.abs(errors))) < 0.03


def test_truth_is_not_the_policy_predictor(profiles: ProfileSet, truth: GroundTruth) -> None:
    predictor = ProfilePredictor(profiles)
    gaps = [
        predictor.solo(Placement(m, b, s)) / truth.solo_ms(m, b, s) - 1
        for m in profiles.models
        for b in (1, 7, 32)
        for s in (0.15, 0.3, 0.7, 0.9)
    ]
    assert max(abs(g) for g in gaps) > 0.01  # different models of the same data


# --- the control loop ----------------------------------------------------------------------


def test_run_reports_every_policy_and_replans_on_a_step(
    profiles: ProfileSet, truth: GroundTruth
) -> None:
    s = parse_scenario(SCENARIO, ROOT)
    results = run_scenario(s, profiles, ProfilePredictor(profiles), truth)
    by_policy = {r.policy: r for r in results}
    assert set(by_policy) == {"deinfer", "dedicated"}
    d = by_policy["deinfer"]
    assert d.reconfigurations >= 1  # the resnet50 step at 8 s was detected and re-planned
    assert d.gpus_max >= 1 and d.gpu_share_seconds > 0
    assert set(d.miss_rate_by_model) == {"alexnet", "resnet50", "vgg-copy"}
    # The misses are the 2.5x step's: ~1.5 s to detect, 2 s to load the new instances.
    assert d.miss_rate_by_model["alexnet"] < 0.02
    assert 0 <= d.slo_miss_rate < 0.15
    assert by_policy["dedicated"].gpus_max >= 3  # a whole GPU per model
    assert all(r.requests == d.requests for r in results)  # same arrivals for every policy
    again = run_scenario(s, profiles, ProfilePredictor(profiles), truth, ["deinfer"])[0]
    assert again.slo_miss_rate == d.slo_miss_rate  # seeded: reproducible


# --- the CLI -------------------------------------------------------------------------------


def test_cli_prints_json_and_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.replace("duration_s: 20", "duration_s: 5"))
    assert main(["simulate", str(path), "--json", "--policies", "dedicated"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    for key in (
        "policy",
        "gpus_max",
        "gpu_share_seconds",
        "slo_miss_rate",
        "miss_rate_by_model",
        "p99_ms_by_model",
        "reconfigurations",
        "plan_time_ms",
    ):
        assert key in row
    assert row["policy"] == "dedicated"
    assert main(["simulate", str(path), "--policies", "dedicated"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("policy") and "dedicated" in table


def test_cli_rejects_bad_scenarios(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "profiles: igniter-v100\nduration_s: 5\nmodels: [{name: x, slo_ms: 5, rate: 1}]"
    )
    assert main(["simulate", str(path)]) == 1
    assert "no profile for x" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "missing.yaml")]) == 1


def test_every_shipped_scenario_parses(profiles: ProfileSet) -> None:
    shipped = sorted((Path(__file__).resolve().parents[2] / "bench" / "scenarios").glob("*.yaml"))
    assert len(shipped) >= 7
    for path in shipped:
        s = parse_scenario(path.read_text(), ROOT, str(path))
        assert {m.profile for m in s.models} <= set(profiles.models), path.name
    names = {p.stem for p in shipped}
    assert {"scale-up", "rate-steps", "has-gpu-traces", "large-1000-models"} <= names
