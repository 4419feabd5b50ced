"""`deinfer simulate SCENARIO.yaml [--json]`: the cluster simulator on a scenario file.

Runs every policy the scenario names (or --policies) on the same arrivals and prints one row
per policy, or with --json one object per policy (a JSON list).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def add_simulate_cli(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = commands.add_parser(
        "simulate",
        help="discrete-event cluster simulation of a scenario under each placement policy",
        description="Simulate dispatcher, instance queues, batching, GPUs and re-planning on "
        "the measured profiles (scenario format: docs/simulator.md).",
    )
    sim.add_argument("scenario", type=Path, metavar="SCENARIO.yaml")
    sim.add_argument("--json", action="store_true", help="one JSON object per policy")
    sim.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="folder holding the profile data sets (default: $DEINFER_DATA_DIR or ../shared/data)",
    )
    sim.add_argument(
        "--policies", default=None, metavar="A,B", help="only these policies (comma-separated)"
    )
    sim.set_defaults(func=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    from services.controller.planning.predictor import ProfilePredictor
    from services.controller.planning.profiles import data_root, load_profiles
    from services.controller.planning.registry import POLICY_NAMES
    from services.controller.simulator.engine import run_scenario
    from services.controller.simulator.scenario import ScenarioError, load_scenario
    from services.controller.simulator.truth import GroundTruth

    root = data_root(args.data_dir)
    try:
        scenario = load_scenario(args.scenario, root)
    except ScenarioError as err:
        print(f"error: {args.scenario}: {err}", file=sys.stderr)
        return 1
    policies = args.policies.split(",") if args.policies else list(scenario.policies)
    unknown = [p for p in policies if p not in POLICY_NAMES]
    if unknown:
        print(
            f"error: unknown policy {unknown[0]!r}; known: {', '.join(POLICY_NAMES)}",
            file=sys.stderr,
        )
        return 1
    profiles = load_profiles(scenario.profiles, root)
    missing = sorted({m.profile for m in scenario.models} - set(profiles.models))
    if missing:
        print(
            f"error: {args.scenario}: no profile for {', '.join(missing)} in {scenario.profiles} "
            f"(has {', '.join(sorted(profiles.models))})",
            file=sys.stderr,
        )
        return 1
    results = run_scenario(
        scenario,
        profiles,
        ProfilePredictor(profiles, str(root)),
        GroundTruth(profiles, root),
        policies,
    )
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2, default=_json_default))
        return 0
    print(format_table([r.as_dict() for r in results]))
    return 0


def _json_default(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def format_table(rows: list[dict[str, object]]) -> str:
    header = (
        "policy",
        "GPUs max",
        "GPU-share-s",
        "SLO miss %",
        "worst model miss %",
        "replans",
        "plan ms",
    )
    lines = [header]
    for r in rows:
        by_model = r["miss_rate_by_model"]
        assert isinstance(by_model, dict)
        worst = max(by_model.values(), default=0.0)
        lines.append(
            (
                str(r["policy"]),
                str(r["gpus_max"]),
                f"{r['gpu_share_seconds']:.1f}",
                f"{100 * float(r['slo_miss_rate']):.2f}",  # type: ignore[arg-type]
                f"{100 * worst:.2f}",
                str(r["reconfigurations"]),
                f"{r['plan_time_ms']:.1f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )
