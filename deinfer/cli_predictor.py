"""`deinfer predictor evaluate`: train a latency predictor on one data folder, score it on another.

    deinfer predictor evaluate --dataset NAME --train DIR --test DIR [--backend B] [--json]

NAME is deinfer-rtx3080, igniter-v100 or rapp-v100 (both folders have the layout of
../shared/data/NAME), or cpu-profiles (DeInfer's own profiler CSVs: a folder of solo.csv and
colocation.csv, like data/cpu-profiles); the test folder may hold only some files and fewer
rows. `--json` prints
{"dataset", "backend", "n_train", "n_test", "mape", "r2", "mae", "under_rate"}: mape in %,
mae in pp (deinfer-rtx3080) or ms, under_rate the fraction predicted below 0.9 x measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DATASETS = ("deinfer-rtx3080", "igniter-v100", "rapp-v100", "cpu-profiles")
BACKENDS = ("analytical", "forest", "graph")


def add_predictor_cli(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    predictor = commands.add_parser("predictor", help="latency/interference predictor tools")
    actions = predictor.add_subparsers(dest="predictor_command", required=True, metavar="ACTION")
    evaluate = actions.add_parser(
        "evaluate",
        help="train on --train, predict every target of --test, print accuracy",
        description="Train on every row of --train, predict every target of --test from what a "
        "serving system knows beforehand (the models' solo/static profiles), and score it.",
    )
    evaluate.add_argument("--dataset", required=True, choices=DATASETS)
    evaluate.add_argument("--train", required=True, type=Path, metavar="DIR")
    evaluate.add_argument("--test", required=True, type=Path, metavar="DIR")
    evaluate.add_argument(
        "--backend", choices=BACKENDS, default=None, help="default: the best for the data set"
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from services.predictor.datasets.base import DatasetError
    from services.predictor.evaluate import evaluate

    try:
        result = evaluate(args.dataset, args.train, args.test, args.backend)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = result.as_json()
    if args.json:
        print(json.dumps(report))
        return 0
    unit = "pp" if args.dataset == "deinfer-rtx3080" else "ms"
    print(f"data set   {report['dataset']}")
    print(f"backend    {report['backend']}")
    print(f"rows       train {report['n_train']}, test {report['n_test']}")
    print(f"MAPE       {result.scores.mape:.2f} %  (p90 {result.scores.p90_ape:.2f} %)")
    print(f"R^2        {result.scores.r2:.3f}")
    print(f"MAE        {result.scores.mae:.3f} {unit}")
    print(f"under-pred {100 * result.scores.under_rate:.1f} % of targets below 0.9 x measured")
    return 0
