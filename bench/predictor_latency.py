"""How long the predictor takes to answer, serial prediction against two threads per call.

    .venv/bin/python bench/predictor_latency.py [--data ../shared/data] [--repeats 7]

Trains each public data set's default backend once (as the service does), then times
`PredictorCore.predict` for 1, 100 and 10,000 identical queries: with the ensembles as trained
(prediction serial, the service's setting) and with every tree ensemble switched to
n_jobs=2 (the setting before). Prints min and median milliseconds of --repeats calls and the
ratio of the medians. In-process: the gRPC hop costs the same for both.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

from services.predictor.core import PredictorCore
from services.predictor.placements import Placement, Query

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# One query each data set's profiles can answer.
QUERIES = {
    "deinfer-rtx3080": Query(Placement("resnet-18", 4, 0.3), (Placement("resnet-34", 16, 0.4),)),
    "igniter-v100": Query(Placement("alexnet", 8, 0.4), (Placement("vgg19", 4, 0.6),)),
    "rapp-v100": Query(Placement("resnet50", 4, 0.5)),
}
COUNTS = (1, 100, 10_000)


def ensembles(root: Any, seen: set[int] | None = None) -> Iterator[Any]:
    """Every thread-parallel tree ensemble reachable from a trained backend."""
    seen = set() if seen is None else seen
    if id(root) in seen:
        return
    seen.add(id(root))
    if isinstance(root, (ExtraTreesRegressor, RandomForestRegressor)):
        yield root
        return
    if isinstance(root, dict):
        children: Any = root.values()
    elif isinstance(root, (list, tuple)):
        children = root
    elif hasattr(root, "__dict__"):
        children = vars(root).values()
    else:
        return
    for child in children:
        yield from ensembles(child, seen)


def timings(core: PredictorCore, query: Query, count: int, repeats: int) -> list[float]:
    batch = [query] * count
    core.predict(batch)  # warm
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        core.predict(batch)
        out.append(1000 * (time.perf_counter() - started))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(
        "| data set | backend | queries | serial min / median ms | 2 threads min / median ms "
        "| 2 threads / serial |"
    )
    print("|---|---|---|---|---|---|")
    for dataset, query in QUERIES.items():
        with tempfile.TemporaryDirectory() as artifacts:
            core = PredictorCore(Path(artifacts))
            meta = core.train(dataset, args.data / dataset)
            assert core.trained is not None
            forests = list(ensembles(core.trained.backend))
            for count in COUNTS:
                rows = {}
                for jobs in (None, 2):
                    for forest in forests:
                        forest.n_jobs = jobs
                    rows[jobs] = timings(core, query, count, args.repeats)
                serial, threaded = rows[None], rows[2]
                ratio = statistics.median(threaded) / statistics.median(serial)
                print(
                    f"| {dataset} | {meta.backend} ({len(forests)} forests) | {count} | "
                    f"{min(serial):.1f} / {statistics.median(serial):.1f} | "
                    f"{min(threaded):.1f} / {statistics.median(threaded):.1f} | {ratio:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
