"""Placement policies on every shipped scenario, in the cluster simulator.

Every policy runs on the same arrivals of each scenario in bench/scenarios/ (ground truth:
services/controller/simulator/truth.py, fitted to ../shared/data). Printed: one table per
scenario, then the targets of issue 4:
- scale-up: deinfer <= 0.9 x igniter's GPUs (or GPU-share-seconds) at an SLO miss rate <= 1 %.
  iGniter at its own plan misses far more than 1 %, so it is also run with its SLO budget
  scaled down (0.9, 0.8, ...) until its miss rate is <= 1 %: the GPUs it needs then are the
  like-for-like comparison;
- rate-steps: deinfer's miss rate <= 0.5 x deinfer-published's;
- planning 1000 models onto 500 GPUs (the DeInfer policy alone, warm caches): min and
  median of --runs runs <= 0.2 s.

    python bench/controller.py [--runs 5] [--scenarios NAME ...] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deinfer.cli_simulate import format_table  # noqa: E402
from services.controller.planning.baselines import IgniterPolicy  # noqa: E402
from services.controller.planning.deinfer_policy import DeinferPolicy  # noqa: E402
from services.controller.planning.predictor import ProfilePredictor  # noqa: E402
from services.controller.planning.profiles import data_root, load_profiles  # noqa: E402
from services.controller.planning.types import Device, ModelDemand  # noqa: E402
from services.controller.simulator.engine import (  # noqa: E402
    PolicyResult,
    run_policy,
    scenario_arrivals,
)
from services.controller.simulator.scenario import Scenario, load_scenario  # noqa: E402
from services.controller.simulator.truth import GroundTruth  # noqa: E402

SCENARIOS = ROOT / "bench" / "scenarios"


def run_all(scenario: Scenario, root: Path) -> tuple[list[PolicyResult], list[PolicyResult]]:
    profiles = load_profiles(scenario.profiles, root)
    predictor = ProfilePredictor(profiles, str(root))
    truth = GroundTruth(profiles, root)
    arrivals = scenario_arrivals(scenario)
    results = [
        run_policy(scenario, p, profiles, predictor, truth, arrivals) for p in scenario.policies
    ]
    iso: list[PolicyResult] = []
    if scenario.source.endswith("scale-up.yaml"):
        for scale in (0.9, 0.8, 0.7, 0.6, 0.5):
            policy = IgniterPolicy(name=f"igniter@slo x{scale}", slo_scale=scale)
            r = run_policy(scenario, policy.name, profiles, predictor, truth, arrivals, policy)
            iso.append(r)
            if r.slo_miss_rate <= 0.01:
                break
    return results, iso


def planning_time(root: Path, runs: int) -> tuple[float, float, float, int]:
    """Seconds to plan 1000 models onto 500 GPUs (wall min, wall median, CPU min over runs),
    GPUs used. CPU time shows the cost without the contention of a shared machine."""
    scenario = load_scenario(SCENARIOS / "large-1000-models.yaml", root)
    profiles = load_profiles(scenario.profiles, root)
    predictor = ProfilePredictor(profiles, str(root))
    models = [ModelDemand(m.name, m.slo_ms, m.profile) for m in scenario.models]
    rates = {m.name: m.schedule.at(0.0) for m in scenario.models}
    devices = [Device(f"gpu{i}") for i in range(500)]
    policy = DeinferPolicy()
    policy.plan(models, rates, profiles, predictor, devices)  # warm the predictor's caches
    times, cpu, used = [], [], 0
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        plan = policy.plan(models, rates, profiles, predictor, devices)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        used = len(plan.devices_used)
    return min(times), statistics.median(times), min(cpu), used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="planning-time runs (default 5)")
    parser.add_argument("--scenarios", nargs="*", default=None, metavar="NAME")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    root = data_root(args.data_dir)
    paths = sorted(SCENARIOS.glob("*.yaml"))
    if args.scenarios:
        paths = [p for p in paths if p.stem in args.scenarios]
    by_name: dict[str, list[PolicyResult]] = {}
    for path in paths:
        scenario = load_scenario(path, root)
        t0 = time.perf_counter()
        results, iso = run_all(scenario, root)
        by_name[path.stem] = results + iso
        total = sum(r.requests for r in results[:1])
        print(
            f"\n## {path.stem}: {len(scenario.models)} models, {scenario.duration_s:g} s, "
            f"{total} requests ({time.perf_counter() - t0:.1f} s to simulate)"
        )
        print(format_table([r.as_dict() for r in results + iso]))

    print("\n## Targets")
    if "scale-up" in by_name:
        rows = {r.policy: r for r in by_name["scale-up"]}
        d, ig = rows["deinfer"], rows["igniter"]
        iso = [
            r
            for r in by_name["scale-up"]
            if r.policy.startswith("igniter@") and r.slo_miss_rate <= 0.01
        ]
        print(
            f"scale-up: deinfer {d.gpus_max} GPUs, {d.gpu_share_seconds:.0f} share-s, "
            f"miss {100 * d.slo_miss_rate:.2f} %; igniter {ig.gpus_max} GPUs, "
            f"{ig.gpu_share_seconds:.0f} share-s, miss {100 * ig.slo_miss_rate:.2f} %; "
            f"GPU ratio {d.gpus_max / ig.gpus_max:.2f}, share-s ratio "
            f"{d.gpu_share_seconds / ig.gpu_share_seconds:.2f} (target <= 0.9 at miss <= 1 %)"
        )
        if iso:
            r = iso[0]
            print(
                f"  vs {r.policy} (miss {100 * r.slo_miss_rate:.2f} %): GPU ratio "
                f"{d.gpus_max / r.gpus_max:.2f}, share-s ratio "
                f"{d.gpu_share_seconds / r.gpu_share_seconds:.2f}"
            )
        else:
            print("  igniter reached no miss rate <= 1 % down to SLO x 0.5")
    if "rate-steps" in by_name:
        rows = {r.policy: r for r in by_name["rate-steps"]}
        d, pub = rows["deinfer"], rows["deinfer-published"]
        ratio = d.slo_miss_rate / pub.slo_miss_rate if pub.slo_miss_rate else float("inf")
        print(
            f"rate-steps: deinfer miss {100 * d.slo_miss_rate:.2f} %, deinfer-published "
            f"{100 * pub.slo_miss_rate:.2f} %: ratio {ratio:.2f} (target <= 0.5)"
        )
    best, median, cpu, used = planning_time(root, args.runs)
    print(
        f"planning 1000 models onto 500 GPUs (deinfer): wall min {best:.3f} s, median "
        f"{median:.3f} s, CPU min {cpu:.3f} s over {args.runs} runs, {used} GPUs used "
        "(target <= 0.2 s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
